// The metrics log: rows, columns, the Arrow table and file (read back by tiller and by pyarrow),
// rewinding, and the reduction rule across ranks.
import assert from "node:assert/strict";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Int32, Table, tableFromArrays, Utf8, vectorFromArray } from "apache-arrow";
import { MetricsLog, reduceMetrics, reductionFor } from "../../src/rl/index.js";
import { runPython, tempDir } from "../helpers/python.js";

function sampleLog(): MetricsLog {
  const log = new MetricsLog();
  log.append({ step: 1, "critic/score/mean": 0.25, "actor/pg_loss": -0.5 });
  log.append({ step: 2, "actor/pg_loss": Number.NaN, "timing_s/gen": 3.5 });
  log.append({ step: 5, "critic/score/mean": 0.75, "actor/pg_loss": -0, "actor/grad_norm": Infinity });
  return log;
}

test("columns are step, then metrics by first appearance; missing values are absent, NaN kept", () => {
  const log = sampleLog();
  assert.deepEqual(log.columns(), [
    "step",
    "critic/score/mean",
    "actor/pg_loss",
    "timing_s/gen",
    "actor/grad_norm",
  ]);
  assert.equal(log.length, 3);
  assert.deepEqual(log.rows[1], { step: 2, "actor/pg_loss": Number.NaN, "timing_s/gen": 3.5 });
  assert.equal(log.last()?.step, 5);
  assert.deepEqual([...(log.column("critic/score/mean") ?? [])], [0.25, Number.NaN, 0.75]);
  assert.deepEqual([...(log.column("step") ?? [])], [1, 2, 5]);
  assert.equal(log.column("actor/entropy"), undefined);
  assert.throws(() => (log.rows as unknown as { push(r: unknown): void }).push({ step: 9 }), TypeError);
  assert.throws(() => {
    (log.rows[0] as Record<string, number>).step = 7;
  }, TypeError);
  assert.equal(new MetricsLog().last(), undefined);
});

test("null and undefined mean not logged and create no column", () => {
  const log = new MetricsLog();
  log.append({ step: 0, a: null, b: undefined, c: 1 });
  assert.deepEqual(log.columns(), ["step", "c"]);
  assert.deepEqual(log.rows[0], { step: 0, c: 1 });
});

test("bad steps and values are refused with the field and the values", () => {
  const log = sampleLog();
  assert.throws(
    () => log.append({ step: 5, x: 1 }),
    /metrics\.step: steps must increase; got step 5 after step 5/,
  );
  assert.throws(() => log.append({ step: 3 }), /got step 3 after step 5/);
  assert.throws(() => log.append({ step: 6.5 }), /metrics\.step: expected an integer .* got 6\.5/);
  assert.throws(() => log.append({ step: -1 }), /metrics\.step/);
  assert.throws(() => log.append({ step: 2 ** 31 }), /metrics\.step/);
  assert.throws(() => log.append({} as { step: number }), /metrics\.step: .* got undefined/);
  assert.throws(
    () => log.append({ step: 6, "actor/kl": "0.1" as unknown as number }),
    /metrics\["actor\/kl"\] at step 6: expected a number, got "0\.1"/,
  );
  // a refused row leaves the log as it was
  assert.equal(log.length, 3);
  assert.equal(log.columns().includes("actor/kl"), false);
});

test("table(): Int32 step, Float64 metrics, null where not logged, NaN where NaN was logged", () => {
  const table = sampleLog().table();
  assert.deepEqual(
    table.schema.fields.map((f) => [f.name, String(f.type), f.nullable]),
    [
      ["step", "Int32", false],
      ["critic/score/mean", "Float64", true],
      ["actor/pg_loss", "Float64", true],
      ["timing_s/gen", "Float64", true],
      ["actor/grad_norm", "Float64", true],
    ],
  );
  assert.equal(table.numRows, 3);
  const score = table.getChild("critic/score/mean");
  assert.deepEqual([score?.get(0), score?.get(1), score?.get(2)], [0.25, null, 0.75]);
  assert.equal(score?.nullCount, 1);
  const loss = table.getChild("actor/pg_loss");
  assert.equal(loss?.nullCount, 0);
  assert.ok(Number.isNaN(loss?.get(1)));
  assert.ok(Object.is(loss?.get(2), -0));
  assert.deepEqual([...(table.getChild("step")?.toArray() ?? [])], [1, 2, 5]);
  assert.equal(new MetricsLog().table().numRows, 0);
});

test("truncate keeps steps up to the given one and drops columns no row has", () => {
  const log = sampleLog();
  log.truncate(2);
  assert.deepEqual(
    log.rows.map((r) => r.step),
    [1, 2],
  );
  assert.deepEqual(log.columns(), ["step", "critic/score/mean", "actor/pg_loss", "timing_s/gen"]);
  assert.equal(log.column("actor/grad_norm"), undefined);
  log.append({ step: 3, "actor/pg_loss": 0.1 });
  assert.deepEqual(
    log.rows.map((r) => r.step),
    [1, 2, 3],
  );
  log.truncate(0);
  assert.equal(log.length, 0);
  assert.deepEqual(log.columns(), ["step"]);
  assert.throws(() => log.truncate(Number.NaN), /truncate\(step\)/);
});

test("writeFile/readFile round trip is exact and leaves no temporary file", async () => {
  const dir = tempDir("metrics");
  try {
    const path = join(dir.path, "metrics.arrow");
    const log = sampleLog();
    await log.writeFile(path);
    const back = await MetricsLog.readFile(path);
    assert.deepEqual(back.columns(), log.columns());
    assert.deepEqual(back.rows, log.rows);
    assert.ok(Object.is(back.rows[2]?.["actor/pg_loss"], -0));
    assert.equal(back.rows[2]?.["actor/grad_norm"], Infinity);
    // overwrite with a longer log: the reader sees the new file whole
    log.append({ step: 6, "critic/score/mean": 1 });
    await log.writeFile(path);
    assert.equal((await MetricsLog.readFile(path)).length, 4);
    assert.deepEqual(readdirSync(dir.path), ["metrics.arrow"]);
    assert.deepEqual(MetricsLog.fromTable(log.table()).rows, log.rows);
  } finally {
    dir.cleanup();
  }
});

test("readFile refuses a file that is not Arrow; writeFile to a missing folder fails cleanly", async () => {
  const dir = tempDir("metrics-bad");
  try {
    const path = join(dir.path, "junk.arrow");
    writeFileSync(path, "step,loss\n1,0.5\n");
    await assert.rejects(MetricsLog.readFile(path), /junk\.arrow: not an Arrow IPC file/);
    await assert.rejects(sampleLog().writeFile(join(dir.path, "missing", "m.arrow")), /ENOENT/);
    assert.equal(existsSync(join(dir.path, "missing")), false);
  } finally {
    dir.cleanup();
  }
});

test("fromTable names what is wrong with a table", () => {
  assert.throws(
    () => MetricsLog.fromTable(tableFromArrays({ loss: new Float64Array([1]) })),
    /no "step" column \(columns: loss\)/,
  );
  assert.throws(
    () => MetricsLog.fromTable(tableFromArrays({ step: new Float64Array([1]) })),
    /column "step" must be integer/,
  );
  const labelled = new Table({
    step: vectorFromArray([1, 2], new Int32()),
    note: vectorFromArray(["a", "b"], new Utf8()),
  });
  assert.throws(() => MetricsLog.fromTable(labelled), /column "note" must be numeric/);
  assert.throws(
    () => MetricsLog.fromTable(tableFromArrays({ step: new Int32Array([2, 1]) })),
    /got step 1 after step 2/,
  );
});

test("pyarrow reads the file with the same columns, types and values", async () => {
  const dir = tempDir("metrics-py");
  try {
    const path = join(dir.path, "metrics.arrow");
    await sampleLog().writeFile(path);
    const seen = JSON.parse(runPython("metrics_reference.py", ["read", path]));
    assert.deepEqual(seen.columns, sampleLog().columns());
    assert.deepEqual(seen.types, ["int32", "double", "double", "double", "double"]);
    assert.deepEqual(seen.nullable, [false, true, true, true, true]);
    assert.deepEqual(seen.metadata, { "tiller.format": "metrics-log/1" });
    assert.deepEqual(seen.rows, [
      {
        step: 1,
        "critic/score/mean": 0.25,
        "actor/pg_loss": -0.5,
        "timing_s/gen": null,
        "actor/grad_norm": null,
      },
      {
        step: 2,
        "critic/score/mean": null,
        "actor/pg_loss": "NaN",
        "timing_s/gen": 3.5,
        "actor/grad_norm": null,
      },
      {
        step: 5,
        "critic/score/mean": 0.75,
        "actor/pg_loss": -0,
        "timing_s/gen": null,
        "actor/grad_norm": "Infinity",
      },
    ]);
  } finally {
    dir.cleanup();
  }
});

test("a file pyarrow wrote (Int64 step, Float32 and Int64 metrics with nulls) reads back", async () => {
  const dir = tempDir("metrics-py-write");
  try {
    const path = join(dir.path, "from-python.arrow");
    runPython("metrics_reference.py", ["write", path]);
    const log = await MetricsLog.readFile(path);
    assert.deepEqual(log.columns(), ["step", "critic/score/mean", "perf/total_num_tokens"]);
    assert.deepEqual(log.rows, [
      { step: 1, "critic/score/mean": 0.25, "perf/total_num_tokens": 100 },
      { step: 2, "perf/total_num_tokens": 200 },
      { step: 3, "critic/score/mean": 0.75 },
    ]);
  } finally {
    dir.cleanup();
  }
});

test("reductionFor reads the last name segment; `how` overrides it", () => {
  assert.equal(reductionFor("response_length/max"), "max");
  assert.equal(reductionFor("perf/max_memory_allocated_gb"), "max");
  assert.equal(reductionFor("training/rollout_probs_diff_max"), "max");
  assert.equal(reductionFor("critic/score/min"), "min");
  assert.equal(reductionFor("perf/total_num_tokens"), "sum");
  assert.equal(reductionFor("batch/num_tokens"), "sum");
  assert.equal(reductionFor("actor/token_count"), "sum");
  assert.equal(reductionFor("actor/pg_loss"), "mean");
  // a segment that merely contains the word is not enough
  assert.equal(reductionFor("actor/maximal_thing"), "mean");
  assert.equal(reductionFor("perf/mfu/actor"), "mean");
  assert.equal(reductionFor("timing_s/gen", { "timing_s/gen": "max" }), "max");
  assert.throws(
    () => reductionFor("x", { x: "median" as never }),
    /how\["x"\]: expected one of mean, sum, max, min, got "median"/,
  );
});

test("reduceMetrics combines ranks by each metric's rule, over the records that have it", () => {
  const ranks: Record<string, number>[] = [
    { "actor/pg_loss": 1, "response_length/max": 10, "response_length/min": 4, "batch/num_tokens": 100 },
    { "actor/pg_loss": 3, "response_length/max": 30, "response_length/min": 2, "batch/num_tokens": 50 },
    { "actor/pg_loss": 8, "timing_s/update": 2 },
  ];
  assert.deepEqual(reduceMetrics(ranks, { "timing_s/update": "max" }), {
    "actor/pg_loss": 4,
    "response_length/max": 30,
    "response_length/min": 2,
    "batch/num_tokens": 150,
    "timing_s/update": 2,
  });
  assert.deepEqual(reduceMetrics([]), {});
  const withNaN = reduceMetrics([
    { "actor/pg_loss": 1, "x/max": Number.NaN },
    { "actor/pg_loss": Number.NaN, "x/max": 5 },
  ]);
  assert.ok(Number.isNaN(withNaN["actor/pg_loss"]));
  assert.ok(Number.isNaN(withNaN["x/max"]));
  assert.throws(() => reduceMetrics([{ a: "1" as never }]), /values\[0\]\["a"\]: expected a number/);
});
