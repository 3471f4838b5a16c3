// Headless Chromium for the browser checks: playwright-core drives the system's Chromium (Debian's
// `chromium` package; $TILLER_CHROMIUM names another binary), so no browser is ever downloaded.
// A page opened here records its console errors, uncaught exceptions, dialogs and any request that
// would leave the machine, and takes screenshots into test-output/screenshots/.
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { repoRoot } from "../../scripts/setup.js";

/** The Chromium binary the tests launch: $TILLER_CHROMIUM, else /usr/bin/chromium. */
export function chromiumPath(): string {
  return process.env.TILLER_CHROMIUM ?? "/usr/bin/chromium";
}

/** Why browser tests cannot run (no Chromium binary), or false when they can: for `test(name, { skip }, fn)`. */
export function noChromium(): string | false {
  const path = chromiumPath();
  if (existsSync(path)) return false;
  return `no Chromium at ${path}: install it (apt-get install chromium) or set TILLER_CHROMIUM to a Chromium binary`;
}

/** Where screenshots go: $TILLER_SCREENSHOTS, else test-output/screenshots/ (git-ignored). */
export function screenshotDir(): string {
  return process.env.TILLER_SCREENSHOTS ?? join(repoRoot, "test-output", "screenshots");
}

export interface OpenedPage {
  page: Page;
  /** console.error messages, uncaught exceptions and dialogs (alert, confirm …), in order. */
  errors: string[];
  /** Requests for anything but file: and data: URLs; the pages under test must work offline. */
  remoteRequests: string[];
  /** Saves a full-page PNG as `<screenshotDir>/<name>.png` and returns its path. */
  screenshot(name: string): Promise<string>;
  close(): Promise<void>;
}

export class HeadlessBrowser {
  private constructor(readonly browser: Browser) {}

  static async launch(): Promise<HeadlessBrowser> {
    const browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox"] });
    return new HeadlessBrowser(browser);
  }

  /** Opens a local HTML file and waits for its load event. */
  async open(file: string, viewport = { width: 1400, height: 900 }): Promise<OpenedPage> {
    const page = await this.browser.newPage({ viewport });
    const errors: string[] = [];
    const remoteRequests: string[] = [];
    page.on("console", (message) => {
      if (message.type() === "error") errors.push(`console.error: ${message.text()}`);
    });
    page.on("pageerror", (error) => errors.push(`uncaught: ${error.message}`));
    page.on("dialog", (dialog) => {
      errors.push(`dialog ${dialog.type()}: ${dialog.message()}`);
      void dialog.dismiss();
    });
    page.on("request", (request) => {
      if (!/^(file|data|about):/.test(request.url())) remoteRequests.push(request.url());
    });
    await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
    return {
      page,
      errors,
      remoteRequests,
      screenshot: async (name) => {
        const dir = screenshotDir();
        mkdirSync(dir, { recursive: true });
        const path = join(dir, `${name}.png`);
        await page.screenshot({ path, fullPage: true });
        return path;
      },
      close: () => page.close(),
    };
  }

  async close(): Promise<void> {
    await this.browser.close();
  }
}
