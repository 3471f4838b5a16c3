// Rich output in a tslab kernel, and nothing (no throw) outside one. tslab's public `display.raw`
// sends one MIME type per output; its kernel's own writer sends a whole MIME bundle, so we use that
// when we can find it and fall back to the public API (HTML or text only) when we cannot.
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

/** MIME type → data: strings for text types, plain objects for JSON types (`application/…+json`). */
export type MimeBundle = Record<string, string | object>;

/** tslab 1.0.22's public `Display` (from `import * as tslab from "tslab"`), the part we use. */
interface TslabDisplay {
  html(s: string): void;
  text(s: string): void;
}

interface TslabPublic {
  display: TslabDisplay;
  newDisplay(): TslabDisplay;
}

/** The kernel's iopub writer (tslab/dist/jupyter.js `lastWriteDisplayData`): display_data or, with update, update_display_data. */
type WriteDisplayData = (
  content: { data: MimeBundle; metadata: Record<string, unknown>; transient: { display_id?: string } },
  update: boolean,
) => void;

interface Kernel {
  tslab: TslabPublic;
  /** tslab's jupyter module; its `lastWriteDisplayData` is replaced at every cell execution. */
  jupyter: { lastWriteDisplayData?: unknown } | undefined;
}

// Looked up at each call (a require-cache scan, cheap next to sending an output) rather than
// once, so that nothing goes stale.
function findKernel(): Kernel | undefined {
  // tslab's executor sets globalThis.__tslab__ = {exports, require}; its require hands the
  // kernel's own tslab module to `require("tslab")`, whichever copy of tslab tiller itself sees.
  const hook = (globalThis as { __tslab__?: { require?: unknown } }).__tslab__;
  if (typeof hook?.require !== "function") return undefined;
  let tslab: TslabPublic;
  try {
    tslab = (hook.require as (id: string) => TslabPublic)("tslab");
  } catch {
    return undefined;
  }
  if (typeof tslab?.display?.html !== "function" || typeof tslab.newDisplay !== "function") return undefined;
  // The kernel's jupyter.js sits beside the public module in the CommonJS module cache.
  const cache = createRequire(import.meta.url).cache;
  const publicModule = Object.values(cache).find((m) => m?.exports === tslab);
  const jupyter = publicModule
    ? cache[join(dirname(publicModule.filename), "jupyter.js")]?.exports
    : undefined;
  return { tslab, jupyter: jupyter as Kernel["jupyter"] };
}

/** True inside a tslab Jupyter kernel. */
export function inNotebook(): boolean {
  return findKernel() !== undefined;
}

function bundleWriter(kernel: Kernel): WriteDisplayData | undefined {
  const write = kernel.jupyter?.lastWriteDisplayData;
  return typeof write === "function" ? (write as WriteDisplayData) : undefined;
}

/** The one part of a bundle that tslab's public API can send: HTML if there is some, else text. */
function publicFallback(bundle: MimeBundle, display: TslabDisplay): void {
  const html = bundle["text/html"];
  const text = bundle["text/plain"];
  if (typeof html === "string") display.html(html);
  else if (typeof text === "string") display.text(text);
  else display.text(JSON.stringify(bundle));
}

/** Shows a MIME bundle as a new output of the running cell. Returns false outside a notebook. */
export function showBundle(bundle: MimeBundle): boolean {
  const kernel = findKernel();
  if (!kernel) return false;
  const write = bundleWriter(kernel);
  if (write) write({ data: bundle, metadata: {}, transient: {} }, false);
  else publicFallback(bundle, kernel.tslab.display);
  return true;
}

/**
 * One output that is replaced in place: the first `show` adds it to the running cell, later calls
 * send Jupyter's update_display_data for the same display id (also after the cell has finished).
 * With `minIntervalMs`, updates closer together than that are merged: the latest is sent when the
 * interval has passed, or by flush(). The kernel's iopub socket drops messages a slow front end has
 * not taken yet (ZeroMQ's high-water mark), and a dropped last update leaves a stale output behind:
 * a 300-step run's progress stayed at "step 113/300" in the saved notebook.
 */
export class LiveOutput {
  readonly displayId = randomBytes(8).toString("hex");
  #shown = false;
  #publicDisplay: TslabDisplay | undefined;
  #sentAtMs = Number.NEGATIVE_INFINITY;
  #pending: MimeBundle | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(readonly minIntervalMs = 0) {}

  /** Shows or replaces the output (now, or merged as above). Returns false (and does nothing) outside a notebook. */
  show(bundle: MimeBundle): boolean {
    const kernel = findKernel();
    if (!kernel) return false;
    const since = performance.now() - this.#sentAtMs;
    if (this.#shown && since < this.minIntervalMs) {
      this.#pending = bundle;
      this.#timer ??= setTimeout(() => this.flush(), this.minIntervalMs - since);
      return true;
    }
    this.#send(kernel, bundle);
    return true;
  }

  /** Sends the update held back by `minIntervalMs`, if any. */
  flush(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const bundle = this.#pending;
    this.#pending = undefined;
    const kernel = bundle ? findKernel() : undefined;
    if (bundle && kernel) this.#send(kernel, bundle);
  }

  #send(kernel: Kernel, bundle: MimeBundle): void {
    this.#pending = undefined;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const write = bundleWriter(kernel);
    if (write) {
      write({ data: bundle, metadata: {}, transient: { display_id: this.displayId } }, this.#shown);
    } else {
      this.#publicDisplay ??= kernel.tslab.newDisplay();
      publicFallback(bundle, this.#publicDisplay);
    }
    this.#shown = true;
    this.#sentAtMs = performance.now();
  }
}
