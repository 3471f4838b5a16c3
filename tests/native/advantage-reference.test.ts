// The advantage estimators of src/rl/advantages.ts against a torch transcription of verl 0.9.1's
// (tests/python/advantage_reference.py) on random batches: varied lengths, singleton groups where
// the estimator allows them, all-equal groups, and discounts below 1.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  gaeAdvantages,
  gpgAdvantages,
  grpoPassKAdvantages,
  opoAdvantages,
  reinforcePlusPlusTokenAdvantages,
} from "../../src/rl/index.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("advantages");
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

interface Case {
  estimator: "grpo_passk" | "opo" | "gpg" | "reinforce_plus_plus" | "gae";
  tokenRewards: number[][];
  groups: number[];
  values?: number[][];
  gamma?: number;
  lam?: number;
  normByStd?: boolean;
}

/** Groups of 1-5 responses (≥ 2 when the estimator needs them), one all-equal group, lengths 1-9. */
function randomCase(seed: number, estimator: Case["estimator"]): Case {
  const rand = random(seed);
  const tokenRewards: number[][] = [];
  const groups: number[] = [];
  const values: number[][] = [];
  const minGroup = estimator === "grpo_passk" ? 2 : 1;
  for (let g = 0; g < 6; g++) {
    const size = minGroup + Math.floor(rand() * (6 - minGroup));
    const equal = g === 2;
    for (let k = 0; k < size; k++) {
      const length = 1 + Math.floor(rand() * 9);
      const score = equal ? 1 : Math.round(rand() * 4) / 4;
      const rewards = Array.from({ length }, (_, t) =>
        estimator === "reinforce_plus_plus" || estimator === "gae"
          ? t === length - 1
            ? score
            : rand() * 0.2 - 0.1
          : t === length - 1
            ? score
            : 0,
      );
      tokenRewards.push(rewards);
      values.push(Array.from({ length }, () => rand() * 2 - 1));
      groups.push(g);
    }
  }
  return { estimator, tokenRewards, groups, ...(estimator === "gae" ? { values } : {}) };
}

function ours(c: Case): { advantages: Float64Array[]; returns?: Float64Array[] } {
  const scores = Float64Array.from(c.tokenRewards, (r) => r.reduce((a, b) => a + b, 0));
  const lengths = Int32Array.from(c.tokenRewards, (r) => r.length);
  const perToken = (a: Float64Array) =>
    c.tokenRewards.map((r, i) => new Float64Array(r.length).fill(a[i] ?? 0));
  switch (c.estimator) {
    case "grpo_passk":
      return {
        advantages: perToken(grpoPassKAdvantages(scores, c.groups, { normByStd: c.normByStd ?? true })),
      };
    case "opo":
      return { advantages: perToken(opoAdvantages(scores, c.groups, lengths)) };
    case "gpg":
      return { advantages: perToken(gpgAdvantages(scores, c.groups)) };
    case "reinforce_plus_plus":
      return { advantages: reinforcePlusPlusTokenAdvantages(c.tokenRewards, c.gamma ?? 1) };
    case "gae":
      return gaeAdvantages(c.tokenRewards, c.values ?? [], c.gamma ?? 1, c.lam ?? 1);
  }
}

test("grpo_passk, opo, gpg, REINFORCE++ (γ < 1) and GAE equal verl's formulas on random batches (1e-9)", () => {
  const cases: Case[] = [];
  let seed = 1;
  for (const estimator of ["grpo_passk", "opo", "gpg", "reinforce_plus_plus", "gae"] as const) {
    for (let k = 0; k < 4; k++) {
      const c = randomCase(seed++, estimator);
      if (estimator === "grpo_passk") c.normByStd = k % 2 === 0;
      if (estimator === "reinforce_plus_plus") c.gamma = [1, 0.99, 0.9, 0.5][k];
      if (estimator === "gae") {
        c.gamma = [1, 0.99, 0.9, 1][k];
        c.lam = [1, 0.95, 0.8, 0.5][k];
      }
      cases.push(c);
    }
  }
  const file = join(dir.path, "cases.json");
  writeFileSync(file, JSON.stringify(cases));
  const expected = JSON.parse(runPython("advantage_reference.py", [file])) as {
    advantages: number[][];
    returns: number[][];
  }[];
  let worst = 0;
  cases.forEach((c, i) => {
    const got = ours(c);
    const ref = expected[i] as (typeof expected)[number];
    const compare = (a: ArrayLike<number>[], b: number[][], what: string) => {
      assert.equal(a.length, b.length, `${what}: responses`);
      a.forEach((row, r) => {
        const refRow = b[r] as number[];
        assert.equal(row.length, refRow.length, `${what}[${r}]: tokens`);
        for (let t = 0; t < row.length; t++) {
          const d = Math.abs((row[t] as number) - (refRow[t] as number));
          worst = Math.max(worst, d);
          assert.ok(
            d <= 1e-9 + 1e-9 * Math.abs(refRow[t] as number),
            `${what}[${r}][${t}]: ${row[t]} vs ${refRow[t]}`,
          );
        }
      });
    };
    compare(got.advantages, ref.advantages, `${c.estimator} #${i} advantages`);
    if (got.returns) compare(got.returns, ref.returns, `${c.estimator} #${i} returns`);
  });
  console.log(`${cases.length} batches; max |ours − verl| = ${worst.toExponential(2)}`);
  // The batches are not degenerate: some advantages are far from 0.
  assert.ok(cases.some((c) => ours(c).advantages.some((a) => a.some((v) => Math.abs(v) > 0.5))));
});
