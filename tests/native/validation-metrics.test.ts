// Validation metrics (src/rl/validation.ts) against verl 0.9.1's process_validation_metrics and
// naming, written with numpy (tests/python/validation_reference.py): numpy's legacy generator
// reproduced index for index, and every val-core / val-aux metric on batches with several data
// sources, 1 to 9 responses per prompt, acc and pred (maj@n) and missing values.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  numpyLegacyChoice,
  subsetSizes,
  type ValidationSamples,
  validationMetrics,
} from "../../src/rl/index.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("val-metrics");
after(() => dir.cleanup());

function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("np.random.seed(42); np.random.choice(n, (rows, cols)) reproduced index for index", () => {
  for (const [n, rows, cols] of [
    [2, 1000, 2],
    [7, 1000, 4],
    [16, 1000, 16],
    [1000, 3, 5],
    [1, 2, 2],
  ] as const) {
    const expected = JSON.parse(
      runPython("validation_reference.py", ["choice", String(n), String(rows), String(cols)]),
    );
    assert.deepEqual(Array.from(numpyLegacyChoice(n, rows, cols, 42)), expected, `n=${n} ${rows}×${cols}`);
  }
  assert.deepEqual(subsetSizes(1), []);
  assert.deepEqual(subsetSizes(2), [2]);
  assert.deepEqual(subsetSizes(5), [2, 4, 5]);
  assert.deepEqual(subsetSizes(8), [2, 4, 8]);
});

function randomSamples(seed: number, withAcc: boolean): ValidationSamples {
  const rand = random(seed);
  const dataSources: string[] = [];
  const uids: string[] = [];
  const reward: (number | null)[] = [];
  const acc: (boolean | null)[] = [];
  const pred: string[] = [];
  for (let p = 0; p < 9; p++) {
    const source = p % 3 === 0 ? "math_dapo" : "gsm8k";
    const n = 1 + (p % 9);
    for (let k = 0; k < n; k++) {
      dataSources.push(source);
      uids.push(`u${p}`);
      const right = rand() < 0.4;
      reward.push(right ? 1 : rand() < 0.5 ? -1 : 0);
      acc.push(right);
      pred.push(String(Math.floor(rand() * 3)));
    }
  }
  const infos: ValidationSamples["infos"] = { reward, pred };
  if (withAcc) infos.acc = acc;
  return { dataSources, uids, infos };
}

test("val-core / val-aux metrics (mean@N, std@N, best@n, worst@n, maj@n with /mean and /std) equal verl's", () => {
  const cases = [randomSamples(1, true), randomSamples(2, false), randomSamples(3, true)];
  const file = join(dir.path, "cases.json");
  writeFileSync(file, JSON.stringify(cases));
  const expected = JSON.parse(runPython("validation_reference.py", [file])) as Record<string, number>[];
  let worst = 0;
  cases.forEach((c, i) => {
    const got = validationMetrics(c);
    const ref = expected[i] as Record<string, number>;
    assert.deepEqual(Object.keys(got).sort(), Object.keys(ref).sort(), `case ${i}: metric names`);
    for (const [k, v] of Object.entries(ref)) {
      const d = Math.abs((got[k] as number) - v);
      worst = Math.max(worst, d);
      assert.ok(d <= 1e-12, `case ${i} ${k}: ${got[k]} vs ${v}`);
    }
  });
  const sample = validationMetrics(cases[0] as ValidationSamples);
  console.log(
    `${Object.keys(sample).length} metrics in case 0 (e.g. val-core/gsm8k/acc/mean@9 = ${sample["val-core/gsm8k/acc/mean@9"]}); max |ours − verl| = ${worst.toExponential(2)}`,
  );
  // The largest N among gsm8k's prompts is 9: its acc metrics at @9 are the headline ones.
  for (const k of [
    "val-core/gsm8k/acc/mean@9",
    "val-core/gsm8k/acc/maj@9/mean",
    "val-core/gsm8k/acc/best@9/mean",
  ]) {
    assert.ok(k in sample, k);
  }
  assert.ok("val-aux/gsm8k/acc/best@8/mean" in sample && "val-aux/gsm8k/reward/worst@2/std" in sample);
});
