// The run views beyond single metrics, from known tables: stacked stage timings with throughput,
// distributions per step and over steps, validation panels per data source, runs and branches
// overlaid (tables and run folders), two steps' rollouts side by side, HTML tables.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Float64, Int32, Table, tableToIPC, vectorFromArray } from "apache-arrow";
import {
  compareRolloutsHtml,
  compareSpec,
  distributionSpec,
  evaluationKeys,
  readRunMetrics,
  tableHtml,
  timingSpec,
} from "../../src/notebook/index.js";
import { rolloutsTable } from "../../src/rl/rollouts.js";
import { tempDir } from "../helpers/python.js";

const f64 = (xs: number[]) => vectorFromArray(xs, new Float64());
const steps = (n: number) =>
  vectorFromArray(
    Array.from({ length: n }, (_, i) => i + 1),
    new Int32(),
  );

test("timingSpec stacks each step's stage timings and adds throughput; it names what is missing", () => {
  const metrics = new Table({
    step: steps(3),
    "timing_s/gen": f64([0.1, 0.2, 0.1]),
    "timing_s/update_actor": f64([0.3, 0.3, 0.4]),
    "timing_s/step": f64([0.45, 0.55, 0.55]),
    "perf/throughput": f64([1000, 900, 950]),
  });
  const spec = timingSpec(metrics);
  const bars = spec.data.filter((t) => t.type === "bar");
  assert.deepEqual(
    bars.map((t) => [t.name, t.y]),
    [
      ["gen", [0.1, 0.2, 0.1]],
      ["update_actor", [0.3, 0.3, 0.4]],
    ],
  );
  assert.equal(spec.layout.barmode, "stack");
  const lines = spec.data.filter((t) => t.type === "scatter");
  assert.deepEqual(
    lines.map((t) => [t.name, t.yaxis]),
    [["perf/throughput", "y2"]],
  );
  assert.throws(() => timingSpec(new Table({ step: steps(1), x: f64([1]) })), /no timing_s\/<stage> columns/);
});

test("distributionSpec: a histogram of the last step and a heatmap of counts over the steps (square markers)", () => {
  const byStep = new Map<number, number[]>([
    [1, [0, 0, 0, 1]],
    [2, [0, 1, 1, 1]],
  ]);
  const spec = distributionSpec(byStep, "score");
  const [histogram, heatmap] = spec.data;
  assert.equal(histogram?.type, "bar");
  assert.deepEqual(histogram?.x, [0, 1], "integer values: a bin each");
  assert.deepEqual(histogram?.y, [1, 3], "step 2: one 0, three 1s");
  // The heatmap as square markers (the basic plotly bundle has no heatmap trace): (step, bin) → count.
  assert.equal(heatmap?.mode, "markers");
  assert.deepEqual(heatmap?.x, [1, 1, 2, 2]);
  assert.deepEqual(heatmap?.y, [0, 1, 0, 1]);
  assert.deepEqual(heatmap?.marker?.color, [3, 1, 1, 3]);
  const lengths = rolloutsTable({
    step: 4,
    samples: [3, 5, 5].map((n, i) => ({
      uid: `u${i}`,
      round: 0,
      prompt: Int32Array.from([1]),
      response: Int32Array.from({ length: n }, () => 2),
      rolloutLogprobs: new Float32Array(n),
      finishReason: "stop" as const,
      dataSource: "d",
      groundTruth: "x",
    })),
  });
  const single = distributionSpec(lengths, "response_length");
  assert.equal(single.data.length, 1, "one step: the histogram alone");
  assert.deepEqual(single.data[0]?.x, [3, 4, 5]);
  assert.deepEqual(single.data[0]?.y, [1, 0, 2]);
  assert.throws(() => distributionSpec(lengths, "nope"), /needs "step" and "nope" columns/);
  assert.throws(() => distributionSpec(new Map(), "score"), /no finite "score" values/);
  assert.throws(() => distributionSpec(byStep, "score", { bins: 0 }), /options\.bins/);
});

test("evaluationKeys groups validation metrics by metric, one line per data source", () => {
  assert.deepEqual(
    evaluationKeys([
      "step",
      "critic/score/mean",
      "val-core/gsm8k/acc/mean@1",
      "val-core/math/acc/mean@1",
      "val-core/gsm8k/pass@4",
      "val-aux/gsm8k/response_length/mean",
    ]),
    [
      ["val-core/gsm8k/acc/mean@1", "val-core/math/acc/mean@1"],
      ["val-core/gsm8k/pass@4"],
      ["val-aux/gsm8k/response_length/mean"],
    ],
  );
  assert.deepEqual(evaluationKeys(["step", "actor/pg_loss"]), []);
});

test("compareSpec overlays runs (tables and run folders with their branches), a colour per run", () => {
  const a = new Table({ step: steps(3), "critic/score/mean": f64([0.1, 0.2, 0.3]) });
  const b = new Table({ step: steps(2), "critic/score/mean": f64([0.2, 0.4]) });
  const dir = tempDir("compare");
  try {
    const run = join(dir.path, "run-1");
    mkdirSync(join(run, "branches"), { recursive: true });
    writeFileSync(join(run, "metrics.arrow"), tableToIPC(b, "file"));
    writeFileSync(join(run, "branches", "branch-001.arrow"), tableToIPC(a, "file"));
    assert.deepEqual(
      readRunMetrics(run).map((r) => [r.name, r.metrics.numRows]),
      [
        ["run-1", 2],
        ["run-1/branch-001", 3],
      ],
    );
    const spec = compareSpec([{ name: "lr 1e-3", metrics: a }, run], ["critic/score/mean"]);
    assert.deepEqual(
      spec.data.map((t) => [t.name, t.y, t.showlegend]),
      [
        ["lr 1e-3: critic/score/mean", [0.1, 0.2, 0.3], true],
        ["run-1: critic/score/mean", [0.2, 0.4], true],
        ["run-1/branch-001: critic/score/mean", [0.1, 0.2, 0.3], true],
      ],
    );
    const colors = spec.data.map((t) => (t.line as { color?: string }).color);
    assert.equal(new Set(colors).size, 3);
    assert.equal((spec.data[2]?.line as { dash?: string } | undefined)?.dash, "dash", "a branch is dashed");
    assert.ok(spec.layout.legend, "the panel lists the runs");
    assert.throws(() => compareSpec([join(dir.path, "nothing")], ["x"]), /has no metrics\.arrow/);
    assert.throws(() => compareSpec([], ["x"]), /at least one run/);
  } finally {
    dir.cleanup();
  }
});

test("compareRolloutsHtml puts one inspector per step side by side; tableHtml escapes and formats", () => {
  const sample = (uid: string) => ({
    uid,
    round: 0,
    prompt: Int32Array.from([1]),
    response: Int32Array.from([2]),
    rolloutLogprobs: Float32Array.from([-1]),
    finishReason: "stop" as const,
    dataSource: "d",
    groundTruth: "x",
  });
  const html = compareRolloutsHtml([
    rolloutsTable({ step: 1, samples: [sample("1.0.0")] }),
    rolloutsTable({ step: 9, samples: [sample("9.0.0")] }),
  ]);
  assert.equal(html.split('data-testid="inspector"').length - 1, 2);
  assert.match(html, /grid-template-columns:repeat\(2,/);
  assert.throws(() => compareRolloutsHtml([]), /two or more/);
  const t = tableHtml([{ stage: "<gen>", ms: 12.345678 }]);
  assert.match(t, /<td>&#60;gen&#62;<\/td><td class="num">12\.35<\/td>/);
});
