// Metric charts and the run report as Chromium draws them: each panel's own legend, every y axis
// titled, powers of ten instead of SI letters, a right axis for a metric of another scale, whole
// step ticks, a constant lr at its value, a long title inside the figure, the plotly bundle once
// per page, and the report's charts zooming together.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Float64, Int32, Table, vectorFromArray } from "apache-arrow";
import type { Page } from "playwright-core";
import { chart, reportHtml } from "../../src/notebook/index.js";
import { HeadlessBrowser, noChromium, type OpenedPage } from "../helpers/browser.js";
import { tempDir } from "../helpers/python.js";

// Run in the page (the tests' tsconfig has no DOM library).
declare const document: { getElementById(id: string): unknown };
declare const window: { Plotly: { relayout(div: unknown, update: unknown): Promise<void> } };

const skip = noChromium();
const dir = tempDir("charts");
let browser: HeadlessBrowser | undefined;
before(async () => {
  if (!skip) browser = await HeadlessBrowser.launch();
});
after(async () => {
  await browser?.close();
  dir.cleanup();
});

const f64 = (xs: number[]) => vectorFromArray(xs, new Float64());

function metrics(): Table {
  return new Table({
    step: vectorFromArray([1, 2, 3], new Int32()),
    "actor/entropy": f64([2.1, 2.0, 1.9]),
    "actor/ppo_kl": f64([1e-4, 3e-4, 2e-4]),
    "actor/pg_loss": f64([2e-8, -1e-8, 3e-8]),
    "actor/lr": f64([1e-3, 1e-3, 1e-3]),
    "critic/score/mean": f64([0.1, 0.4, 0.6]),
    "timing_s/gen": f64([0.1, 0.2, 0.1]),
    "timing_s/update_actor": f64([0.3, 0.2, 0.3]),
  });
}

async function openHtml(name: string, body: string): Promise<OpenedPage> {
  assert.ok(browser, "the browser did not start");
  const file = join(dir.path, `${name}.html`);
  writeFileSync(
    file,
    body.startsWith("<!doctype") ? body : `<!doctype html><meta charset="utf-8"><body>${body}</body>`,
  );
  const opened = await browser.open(file);
  await opened.page.locator(".tiller-chart .main-svg").first().waitFor();
  return opened;
}

/** SVG texts by plotly's class names: "ytitle", "y2title" …; "legendtext", "legend2text" …. */
async function textsByClass(
  page: Page,
  pattern: RegExp,
): Promise<{ cls: string; text: string; top: number }[]> {
  const found = await page.locator(".tiller-chart text").evaluateAll((els) =>
    els.map((e) => ({
      cls: e.getAttribute("class") ?? "",
      text: e.textContent ?? "",
      top: e.getBoundingClientRect().top,
    })),
  );
  return found.filter((t) => pattern.test(t.cls));
}

test("a chart in Chromium: a legend per panel on its panel, every y axis titled, powers of ten, a right axis, whole steps, lr at its value", {
  skip,
}, async () => {
  const long = "actor/entropy and actor/ppo_kl against the loss and the learning rate of a long named run";
  const built = chart(metrics(), [["actor/entropy", "actor/ppo_kl"], "actor/pg_loss", "actor/lr"], {
    title: long,
  });
  const opened = await openHtml("panels", built.html);
  const { page } = opened;
  try {
    const titles = await textsByClass(page, /^y\d*title$/);
    assert.deepEqual(
      titles.map((t) => t.text),
      ["actor/entropy", "actor/ppo_kl", "actor/pg_loss", "actor/lr"],
      "each axis names its metric (no shared prefix, no blank)",
    );
    const legends = await textsByClass(page, /^legend\d*text$/);
    assert.deepEqual(
      legends.map((l) => l.text).sort(),
      ["actor/entropy", "actor/ppo_kl (right axis)"],
      "only the two-metric panel has a legend, and it names its own metrics",
    );
    const secondPanelTitle = titles.find((t) => t.text === "actor/pg_loss");
    assert.ok(
      legends.every((l) => l.top < (secondPanelTitle?.top ?? 0)),
      "the legend sits on its panel, above the next",
    );
    const ticks = await page
      .locator(
        ".tiller-chart .ytick text, .tiller-chart .y2tick text, .tiller-chart .y3tick text, .tiller-chart .y4tick text",
      )
      .allTextContents();
    assert.deepEqual(
      ticks.filter((t) => /\d\s*[nµum]$/.test(t)),
      [],
      `no SI letters: ${ticks.join(" ")}`,
    );
    const lossTicks = await page.locator(".tiller-chart .y3tick text").allTextContents();
    assert.ok(
      lossTicks.some((t) => t.includes("×10")),
      `pg_loss ≈ 1e-8 in powers of ten: ${lossTicks.join(" ")}`,
    );
    const lrTicks = await page.locator(".tiller-chart .y4tick text").allTextContents();
    assert.ok(lrTicks.includes("0.001"), `the constant lr is drawn at 0.001: ${lrTicks.join(" ")}`);
    assert.ok(!lrTicks.includes("−1"), "not centred on 0 with ±1");
    const steps = await page.locator(".tiller-chart .xtick text").allTextContents();
    assert.deepEqual([...new Set(steps)], ["1", "2", "3"], "three steps: three whole ticks");
    const figure = await page.locator(".tiller-chart .main-svg").first().boundingBox();
    const title = await page.locator(".tiller-chart .gtitle").boundingBox();
    assert.ok(
      figure && title && title.x + title.width <= figure.x + figure.width,
      "the long title fits the figure",
    );
    await opened.screenshot("chart-panels");
    assert.deepEqual(opened.errors, []);
    assert.deepEqual(opened.remoteRequests, []);
  } finally {
    await opened.close();
  }
});

test("the report carries plotly once, draws every chart with the stage timings, and its charts zoom together", {
  skip,
}, async () => {
  const html = reportHtml(metrics(), {
    title: "report",
    charts: [["critic/score/mean"], ["actor/pg_loss"], ["actor/entropy", "actor/ppo_kl"], ["actor/lr"]],
  });
  assert.equal(html.split("plotly.js (basic - minified) v4.1.1").length - 1, 1, "one bundle for five charts");
  const opened = await openHtml("report", html);
  const { page } = opened;
  try {
    assert.equal((await page.locator(".tiller-chart .main-svg").count()) >= 5, true);
    assert.equal(
      await page.locator(".tiller-chart .barlayer .trace").count(),
      2,
      "the stacked stage timings",
    );
    await page.evaluate(() =>
      window.Plotly.relayout(document.getElementById("chart-1"), { "xaxis.range": [1.5, 2.5] }),
    );
    const range = await page.evaluate(
      () =>
        (document.getElementById("chart-2") as { layout: { xaxis: { range: number[] } } }).layout.xaxis.range,
    );
    assert.deepEqual(range, [1.5, 2.5], "zooming the first chart zoomed the second");
    await opened.screenshot("report-linked-zoom");
    assert.deepEqual(opened.errors, []);
  } finally {
    await opened.close();
  }
});
