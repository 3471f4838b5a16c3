// Plotly charts of the metrics log: the spec from a known table, the HTML (offline, bundle once,
// scripts that survive odd metric names), the report page, and `plot` in and out of a notebook.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { Float64, Int32, Table, tableToIPC, vectorFromArray } from "apache-arrow";
import {
  Chart,
  chart,
  chartHtml,
  chartSpec,
  type PlotlySpec,
  plot,
  plotlyBundle,
  plotlyScript,
  reportHtml,
  writeReport,
  writeRunReport,
} from "../../src/notebook/index.js";
import { MetricsLog } from "../../src/rl/index.js";
import { rolloutsTable } from "../../src/rl/rollouts.js";
import { runPython, tempDir } from "../helpers/python.js";

const bundleBanner = "plotly.js (basic - minified) v4.1.1";

function knownTable(): Table {
  return new Table({
    step: vectorFromArray([1, 2, 3, 4, 5], new Int32()),
    "critic/score/mean": vectorFromArray([0.1, null, 0.3, Number.NaN, 0.5], new Float64()),
    "actor/pg_loss": vectorFromArray([1, 2, 3, 4, Number.POSITIVE_INFINITY], new Float64()),
    "actor/entropy": vectorFromArray([null, null, 2.5, null, null], new Float64()),
  });
}

interface AxisLayout {
  title?: { text: string };
}

/** The parts of a chart's layout the tests look at. */
interface TestLayout {
  title: { text: string };
  xaxis: AxisLayout;
  yaxis: AxisLayout;
  yaxis2: AxisLayout;
  yaxis3?: AxisLayout;
  annotations: { text: string; yref: string }[];
  grid: { rows: number };
  showlegend: boolean;
  height: number;
}

function layoutOf(spec: PlotlySpec): TestLayout {
  return spec.layout as unknown as TestLayout;
}

/** Script bodies as an HTML tokenizer splits them: each ends at the first `</script`. */
function scriptsOf(html: string): string[] {
  return [...html.matchAll(/<script>([\s\S]*?)<\/script/gi)].map((m) => m[1] as string);
}

function occurrences(text: string, part: string): number {
  return text.split(part).length - 1;
}

/** Runs a chart's drawing script against a stub page; returns what reached Plotly.newPlot. */
function drawWithStub(script: string, divId: string, withPlotly = true) {
  const div = { id: divId, textContent: "" };
  const calls: unknown[][] = [];
  const window = withPlotly ? { Plotly: { newPlot: (...args: unknown[]) => calls.push(args) } } : {};
  vm.runInNewContext(script, {
    window,
    document: { getElementById: (id: string) => (id === divId ? div : null) },
  });
  return { div, calls: JSON.parse(JSON.stringify(calls)) as unknown[][] };
}

test("chartSpec: one panel per group, points with null/NaN/inf left out, a legend per panel, each axis titled", () => {
  const spec = chartSpec(knownTable(), ["critic/score/mean", ["actor/pg_loss", "actor/entropy"]]);
  assert.deepEqual(
    spec.data.map((t) => ({
      name: t.name,
      x: t.x,
      y: t.y,
      xaxis: t.xaxis,
      yaxis: t.yaxis,
      mode: t.mode,
      showlegend: t.showlegend,
      legend: t.legend,
    })),
    [
      {
        name: "critic/score/mean",
        x: [1, 3, 5],
        y: [0.1, 0.3, 0.5],
        xaxis: "x",
        yaxis: "y",
        mode: "lines+markers",
        showlegend: false,
        legend: "legend",
      },
      {
        name: "actor/pg_loss",
        x: [1, 2, 3, 4],
        y: [1, 2, 3, 4],
        xaxis: "x2",
        yaxis: "y2",
        mode: "lines+markers",
        showlegend: true,
        legend: "legend2",
      },
      {
        name: "actor/entropy",
        x: [3],
        y: [2.5],
        xaxis: "x2",
        yaxis: "y2",
        mode: "markers",
        showlegend: true,
        legend: "legend2",
      },
    ],
  );
  const layout = spec.layout as Record<string, Record<string, unknown> & { title?: { text: string } }>;
  assert.equal(layout.title, undefined, "stacked panels: each is named by its caption, no long figure title");
  assert.equal(layout.xaxis2?.title?.text, "step", "the bottom panel's step axis is titled");
  assert.equal(layout.xaxis2?.matches, "x", "the panels zoom together");
  assert.equal(layout.yaxis?.title?.text, "critic/score/mean");
  assert.equal(
    layout.yaxis2?.title?.text,
    "actor/ pg_loss, entropy",
    "several metrics: all named, prefix once",
  );
  assert.ok(layout.legend2, "the second panel has its own legend");
  assert.equal(layout.legend, undefined, "a one-metric panel needs no legend");
  const domain1 = layout.yaxis?.domain as number[];
  const domain2 = layout.yaxis2?.domain as number[];
  assert.ok((domain1[0] as number) > (domain2[1] as number), "panels are stacked without overlap");
  assert.equal(layout.legend2?.y, domain2[1], "the legend sits on its own panel");
  assert.deepEqual(
    (layout.annotations as unknown as { text: string }[]).map((a) => a.text),
    ["critic/score/mean", "actor/pg_loss, actor/entropy"],
  );
  assert.equal(layout.showlegend as unknown, true);
  assert.equal(spec.config.displaylogo, false);
  assert.equal(spec.config.showSendToCloud, false);
  assert.equal(chartSpec(knownTable(), "actor/pg_loss", { title: "loss" }).layout.showlegend, false);
  assert.equal(layoutOf(chartSpec(knownTable(), "actor/pg_loss", { title: "loss" })).title.text, "loss");
  assert.equal(
    chartSpec(knownTable(), "actor/pg_loss", { panelHeightPx: 100 }).layout.height,
    (chartSpec(knownTable(), "actor/pg_loss").layout.height as number) - 160,
  );
});

test("chartSpec: no SI letters in ticks, whole steps, a second axis for a metric of another scale, flat and stepped series", () => {
  const steps = [1, 2, 3];
  const table = new Table({
    step: vectorFromArray(steps, new Int32()),
    "actor/pg_loss": vectorFromArray([2e-8, -1e-8, 3e-8], new Float64()),
    "actor/entropy": vectorFromArray([2.1, 2.0, 1.9], new Float64()),
    "actor/ppo_kl": vectorFromArray([1e-4, 3e-4, 2e-4], new Float64()),
    "actor/lr": vectorFromArray([1e-3, 1e-3, 1e-3], new Float64()),
  });
  const spec = chartSpec(table, [["actor/entropy", "actor/ppo_kl"], "actor/pg_loss", "actor/lr"]);
  const layout = spec.layout as Record<string, Record<string, unknown> & { title?: { text: string } }>;
  for (const axis of ["yaxis", "yaxis2", "yaxis3", "yaxis4"]) {
    assert.equal(layout[axis]?.exponentformat, "power", `${axis}: 2e-8 is not "20n"`);
  }
  assert.deepEqual(
    spec.data.map((t) => [t.name, t.yaxis]),
    [
      ["actor/entropy", "y"],
      ["actor/ppo_kl (right axis)", "y2"],
      ["actor/pg_loss", "y3"],
      ["actor/lr", "y4"],
    ],
    "ppo_kl (1e-4) is not drawn flat on entropy's axis (2)",
  );
  assert.equal(layout.yaxis2?.overlaying, "y");
  assert.equal(layout.yaxis2?.side, "right");
  assert.equal(layout.yaxis2?.title?.text, "actor/ppo_kl");
  assert.equal(layout.xaxis?.dtick, 1, "three steps: a tick per step, no 1.5");
  assert.equal(layout.xaxis?.tickformat, "d");
  assert.deepEqual(layout.yaxis4?.range, [5e-4, 1.5e-3], "a constant lr is drawn at its value, not at 0");
  assert.equal(spec.data[3]?.line?.shape, "hv", "lr changes between steps: drawn as steps");
  assert.equal(spec.data[0]?.line?.shape, "linear");
  const long = "response_length/clip_ratio, critic/advantages/mean, critic/returns/mean, perf/throughput";
  const titled = chartSpec(table, "actor/entropy", { title: long }).layout.title as { text: string };
  assert.ok(titled.text.includes("<br>"), "a long title is wrapped, not cut off at the edge");
  const wide = new Table({
    step: vectorFromArray(
      Array.from({ length: 50 }, (_, i) => i + 1),
      new Int32(),
    ),
    x: vectorFromArray(
      Array.from({ length: 50 }, (_, i) => i),
      new Float64(),
    ),
  });
  assert.equal((chartSpec(wide, "x").layout.xaxis as Record<string, unknown>).dtick, undefined);
});

test("chartSpec reads a MetricsLog the same as its table", () => {
  const log = MetricsLog.fromTable(knownTable());
  const keys = [["critic/score/mean", "actor/entropy"], "actor/pg_loss"];
  assert.deepEqual(chartSpec(log, keys), chartSpec(log.table(), keys));
  assert.deepEqual(chartSpec(log, keys), chartSpec(knownTable(), keys));
});

test("chartSpec names an unknown metric and the columns there are, unless told to draw it empty", () => {
  assert.throws(
    () => chartSpec(knownTable(), ["critic/score/mean", "actor/pg_los"]),
    /no metric "actor\/pg_los"; the columns are: critic\/score\/mean, actor\/pg_loss, actor\/entropy/,
  );
  const spec = chartSpec(knownTable(), ["val/score"], { missing: "empty" });
  assert.deepEqual([spec.data[0]?.x, spec.data[0]?.y], [[], []]);
  assert.throws(() => chartSpec(knownTable(), []), /keys: expected/);
  assert.throws(() => chartSpec(knownTable(), [[]]), /keys\[0\]/);
  const noStep = new Table({ loss: vectorFromArray([1], new Float64()) });
  assert.throws(() => chartSpec(noStep, "loss"), /no `step` column/);
});

test("chartHtml inlines the bundle once, fetches nothing, and its script draws the spec", () => {
  const spec = chartSpec(knownTable(), ["critic/score/mean"]);
  const html = chartHtml(spec, { divId: "score-chart" });
  assert.equal(occurrences(html, bundleBanner), 1);
  assert.ok(html.includes(plotlyBundle().slice(-200)), "the whole bundle is there, to its last bytes");
  assert.doesNotMatch(html, /<script[^>]*\ssrc\s*=/i);
  assert.doesNotMatch(html, /<(link|img|iframe)[^>]*(href|src)\s*=\s*["']?https?:/i);
  assert.match(html, /<div id="score-chart" class="tiller-chart" style="[^"]*height: 390px"/);
  const scripts = scriptsOf(html);
  assert.equal(scripts.length, 2);
  const { calls } = drawWithStub(scripts[1] as string, "score-chart");
  assert.equal(calls.length, 1);
  assert.deepEqual(calls[0]?.[0], { id: "score-chart", textContent: "" });
  assert.deepEqual(calls[0]?.slice(1), [spec.data, spec.layout, spec.config]);
});

test("chartHtml without inline has no bundle and says so on a page without plotly", () => {
  const spec = chartSpec(knownTable(), "actor/pg_loss");
  const html = chartHtml(spec, { inline: false, divId: "c1" });
  assert.equal(occurrences(html, bundleBanner), 0);
  const { div, calls } = drawWithStub(scriptsOf(html)[0] as string, "c1", false);
  assert.equal(calls.length, 0);
  assert.match(
    div.textContent,
    /plotly\.js is not on this page .*notebook\.loadPlotly\(true\)/,
    "it says how to get it back",
  );
  assert.throws(() => chartHtml(spec, { divId: 'x" onload="alert(1)' }), /options\.divId/);
  const a = chartHtml(spec, { inline: false });
  const b = chartHtml(spec, { inline: false });
  assert.notEqual(a.match(/id="([^"]+)"/)?.[1], b.match(/id="([^"]+)"/)?.[1], "fresh ids by default");
});

test("a metric name with </script> in it cannot break out of the script", () => {
  const name = "x</script><script>window.pwned = 1</script><!--";
  const table = new Table({
    step: vectorFromArray([1, 2], new Int32()),
    [name]: vectorFromArray([1, 2], new Float64()),
  });
  const spec: PlotlySpec = chartSpec(table, name);
  const html = chartHtml(spec, { inline: false, divId: "odd" });
  const scripts = scriptsOf(html);
  assert.equal(scripts.length, 1);
  const { calls } = drawWithStub(scripts[0] as string, "odd");
  const traces = calls[0]?.[1] as { name: string }[] | undefined;
  assert.equal(traces?.[0]?.name, name);
});

test("the bundle script is valid JS and leaves a page's existing Plotly alone", () => {
  const body = scriptsOf(plotlyScript())[0] as string;
  assert.equal(scriptsOf(plotlyScript()).length, 1);
  new vm.Script(body); // parses
  const existing = { newPlot: () => undefined };
  const window = { Plotly: existing };
  // With Plotly present the bundle is skipped entirely: no DOM is touched (there is none here).
  vm.runInNewContext(body, { window });
  assert.equal(window.Plotly, existing);
});

test("writeReport writes one self-contained page: summary table, one chart per group, bundle once", async () => {
  const dir = tempDir("report");
  try {
    const file = join(dir.path, "report.html");
    const log = MetricsLog.fromTable(knownTable());
    const charts = [["critic/score/mean"], ["actor/pg_loss", "actor/entropy"]];
    await writeReport(file, log, {
      title: "GRPO <demo>",
      charts,
      summary: { model: "Qwen3-0.6B", "final score": 0.123456789, steps: 5 },
    });
    assert.deepEqual(readdirSync(dir.path), ["report.html"]);
    const html = readFileSync(file, "utf8");
    assert.equal(
      html,
      reportHtml(log, {
        title: "GRPO <demo>",
        charts,
        summary: { model: "Qwen3-0.6B", "final score": 0.123456789, steps: 5 },
      }),
    );
    assert.equal(occurrences(html, bundleBanner), 1);
    const page = JSON.parse(runPython("html_check.py", [file]));
    assert.equal(page.doctype, "doctype html");
    assert.equal(page.title, "GRPO <demo>");
    assert.deepEqual(page.unclosed, []);
    assert.deepEqual(page.stray_end_tags, []);
    assert.deepEqual(page.div_ids, ["chart-1", "chart-2"]);
    assert.deepEqual(page.script_srcs, []);
    assert.equal(page.scripts, 4, "the bundle, two charts, the linked zoom");
    assert.deepEqual(page.table_rows, [
      ["model", "Qwen3-0.6B"],
      ["final score", "0.123457"],
      ["steps", "5"],
    ]);
    assert.match(html, /steps 1–5, 5 rows/);
    // each chart's script draws its own group into its own div
    const scripts = scriptsOf(html);
    const first = drawWithStub(scripts[1] as string, "chart-1").calls[0] as { name: string }[][];
    const second = drawWithStub(scripts[2] as string, "chart-2").calls[0] as { name: string }[][];
    assert.deepEqual(
      first[1]?.map((t) => t.name),
      ["critic/score/mean"],
    );
    assert.deepEqual(
      second[1]?.map((t) => t.name),
      ["actor/pg_loss", "actor/entropy"],
    );
    await assert.rejects(writeReport(file, log, { title: "t", charts: [] }), /options\.charts/);
  } finally {
    dir.cleanup();
  }
});

test("chart() builds the chart without showing it; plot() outside a notebook shows nothing and returns nothing", () => {
  const built = chart(knownTable(), ["critic/score/mean", "actor/pg_loss"]);
  assert.ok(built instanceof Chart);
  assert.equal(built.show(), false);
  assert.deepEqual(built.spec, chartSpec(knownTable(), ["critic/score/mean", "actor/pg_loss"]));
  assert.equal(occurrences(built.html, bundleBanner), 1);
  assert.equal(String(built), "Chart(critic/score/mean, actor/pg_loss; 7 points)");
  assert.equal(plot(knownTable(), ["critic/score/mean"]), undefined);
});

test("a run report adds validation panels, stage timings, the change log, the config and the best and worst groups", async () => {
  const dir = tempDir("run-report");
  try {
    const metrics = new Table({
      step: vectorFromArray([1, 2, 3], new Int32()),
      "critic/score/mean": vectorFromArray([0.1, 0.5, 0.9], new Float64()),
      "timing_s/gen": vectorFromArray([0.1, 0.1, 0.1], new Float64()),
      "timing_s/update_actor": vectorFromArray([0.2, 0.2, 0.3], new Float64()),
      "val-core/next-digit/acc/mean@1": vectorFromArray([null, 0.4, 0.8], new Float64()),
    });
    writeFileSync(join(dir.path, "metrics.arrow"), tableToIPC(metrics, "file"));
    writeFileSync(join(dir.path, "config.json"), JSON.stringify({ optimizer: { lr: 0.003 } }));
    const changes = [
      {
        time: "t1",
        event: "set",
        step: 2,
        patch: { optimizer: { lr: 0.002 } },
        changed: { "optimizer.lr": [0.003, 0.002] },
      },
      { time: "t2", event: "restore", step: 3, toStep: 1, branch: "branch-001" },
    ];
    writeFileSync(join(dir.path, "changes.jsonl"), `${changes.map((c) => JSON.stringify(c)).join("\n")}\n`);
    const sample = (uid: string, score: number, text: string) => ({
      uid,
      round: 0,
      prompt: Int32Array.from([1]),
      response: Int32Array.from([2]),
      rolloutLogprobs: Float32Array.from([-1]),
      finishReason: "stop" as const,
      dataSource: "d",
      groundTruth: "x",
      promptText: `p-${uid}`,
      responseText: text,
      score,
      shapedScore: score,
    });
    const rollouts = rolloutsTable({
      step: 3,
      samples: [
        sample("a", 1, "good"),
        sample("a", 1, "fine"),
        sample("b", 0, "bad"),
        sample("c", 0.5, "meh"),
      ],
    });
    const file = await writeRunReport(dir.path, { title: "run", rollouts, sampleGroups: 1 });
    const html = readFileSync(file, "utf8");
    assert.match(html, /optimizer\.lr: 0\.003 → 0\.002/, "the change log says what set() changed");
    assert.match(html, /back to step 1; the steps left are kept as branch-001/);
    assert.match(
      html,
      /<details data-testid="config"><summary>Config<\/summary><pre>\{\n {2}&#34;optimizer&#34;/,
    );
    assert.match(html, /best: group a \(mean score 1\)/);
    assert.match(html, /worst: group b \(mean score 0\)/);
    assert.doesNotMatch(html, /group c/, "one best and one worst group only");
    assert.match(html, /validation, per data source/);
    assert.match(html, /where a step&#39;s time goes|where a step's time goes/);
    assert.match(html, /plotly_relayout/, "the charts zoom together");
    assert.equal(occurrences(html, bundleBanner), 1);
    await assert.rejects(writeRunReport(join(dir.path, "none")), /has no metrics\.arrow/);
  } finally {
    dir.cleanup();
  }
});
