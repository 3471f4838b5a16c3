// Outcome advantage estimators against hand-worked values (verl core_algos definitions).
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  advantagesPerToken,
  gaeAdvantages,
  gpgAdvantages,
  grpoAdvantages,
  grpoPassKAdvantages,
  opoAdvantages,
  reinforcePlusPlusAdvantages,
  reinforcePlusPlusBaselineAdvantages,
  reinforcePlusPlusTokenAdvantages,
  remaxAdvantages,
  rlooAdvantages,
} from "../../src/rl/index.js";

function assertClose(actual: ArrayLike<number>, expected: number[], atol = 1e-9, rtol = 1e-7): void {
  assert.equal(actual.length, expected.length, "length");
  for (let i = 0; i < expected.length; i++) {
    const ok = Math.abs(actual[i] - expected[i]) <= atol + rtol * Math.abs(expected[i]);
    assert.ok(ok, `[${i}]: got ${actual[i]}, expected ${expected[i]}`);
  }
}

const f64 = (xs: number[]) => new Float64Array(xs);
const i32 = (xs: number[]) => new Int32Array(xs);

test("GRPO: unbiased std, ties give 0, a singleton has mean 0 and std 1", () => {
  // group 0: [1, 0, 0]: mean 1/3, std sqrt(((2/3)² + 2·(1/3)²) / 2) = sqrt(1/3)
  // group 1: [1, 1]: zero spread. group 2: [3] alone.
  const scores = f64([1, 0, 0, 1, 1, 3]);
  const groups = i32([0, 0, 0, 1, 1, 2]);
  const std = Math.sqrt(1 / 3) + 1e-6;
  assertClose(grpoAdvantages(scores, groups), [
    2 / 3 / std,
    -1 / 3 / std,
    -1 / 3 / std,
    0,
    0,
    3 / (1 + 1e-6),
  ]);
  assertClose(grpoAdvantages(scores, groups, { normByStd: false }), [2 / 3, -1 / 3, -1 / 3, 0, 0, 3]);
});

test("GRPO accepts string group ids (verl's uid), in any order", () => {
  const advantages = grpoAdvantages(f64([1, 5, 0, 5]), ["a", "b", "a", "b"], { normByStd: false });
  assertClose(advantages, [0.5, 0, -0.5, 0]);
});

test("GRPO rejects a group list of the wrong length, naming both", () => {
  assert.throws(() => grpoAdvantages(f64([1, 2]), i32([0])), /groups has 1 entries but scores has 2/);
});

test("RLOO: score minus the mean of the others; a singleton keeps its score", () => {
  // group [1, 0, 0]: 1 − 0 = 1; 0 − (1 + 0)/2 = −0.5. group [2, 2]: 0. group [7]: 7.
  const advantages = rlooAdvantages(f64([1, 0, 0, 2, 2, 7]), i32([0, 0, 0, 1, 1, 2]));
  assertClose(advantages, [1, -0.5, -0.5, 0, 0, 7]);
});

test("REINFORCE++: returns whitened over tokens, so responses weigh by length", () => {
  // tokens [1 | 0 0 0]: mean 0.25, unbiased var (0.75² + 3·0.25²) / 3 = 0.25, std 0.5.
  // (ε = 1e-8 inside the sqrt moves these by ~2e-8.) The third response has no tokens: 0.
  const advantages = reinforcePlusPlusAdvantages(f64([1, 0, 9]), i32([1, 3, 0]));
  assertClose(advantages, [1.5, -0.5, 0]);
  const perToken = advantagesPerToken(advantages, i32([1, 3, 0]));
  assert.deepEqual(
    perToken.map((a) => a.length),
    [1, 3, 0],
  );
  assertClose(perToken[1], [-0.5, -0.5, -0.5]);
});

test("REINFORCE++: a batch of equal scores whitens to 0; one token is an error as in verl", () => {
  assertClose(reinforcePlusPlusAdvantages(f64([2, 2]), i32([2, 3])), [0, 0]);
  assert.throws(() => reinforcePlusPlusAdvantages(f64([1]), i32([1])), /at least 2 response tokens/);
});

test("REINFORCE++-baseline: group mean subtracted (0 for a singleton), then whitened", () => {
  // centred [0.5, −0.5 | 5]; tokens [.5 .5 −.5 −.5 5]: mean 1, squares 21, var 21/4.
  const std = Math.sqrt(21 / 4);
  const advantages = reinforcePlusPlusBaselineAdvantages(f64([1, 0, 5]), i32([0, 0, 1]), i32([2, 2, 1]));
  assertClose(advantages, [-0.5 / std, -1.5 / std, 4 / std]);
});

test("ReMax: score minus the greedy response's score", () => {
  assertClose(remaxAdvantages(f64([1, 0.5, 0]), f64([0.5, 0.5, 1])), [0.5, 0, -1]);
});

test("GRPO pass@k: only the best of a group gets (r_max − r_second) / (std + ε); ties and equal groups give 0", () => {
  // group 0: [0, 1, 0.25]: best 1, second 0.25, std of the group sqrt(((−5/12)² + (7/12)² + (−1/6)²) / 2).
  // group 1: [1, 1]: tied best, 0. group 2: [3, 3, 3]: 0.
  const g0 = [0, 1, 0.25];
  const mean = (0 + 1 + 0.25) / 3;
  const std = Math.sqrt(g0.reduce((a, x) => a + (x - mean) ** 2, 0) / 2);
  const scores = f64([0, 1, 0.25, 1, 1, 3, 3, 3]);
  const groups = i32([0, 0, 0, 1, 1, 2, 2, 2]);
  assertClose(grpoPassKAdvantages(scores, groups), [0, 0.75 / (std + 1e-6), 0, 0, 0, 0, 0, 0]);
  assertClose(grpoPassKAdvantages(scores, groups, { normByStd: false }), [0, 0.75, 0, 0, 0, 0, 0, 0]);
  assert.throws(
    () => grpoPassKAdvantages(f64([1, 2]), i32([0, 1])),
    /at least 2 responses per group; group 0 has 1/,
  );
});

test("OPO: score minus the length-weighted group mean; a singleton keeps its score", () => {
  // group 0: scores [1, 0], lengths [1, 3]: baseline 1/4. group 1: [5] alone.
  assertClose(opoAdvantages(f64([1, 0, 5]), i32([0, 0, 1]), i32([1, 3, 2])), [0.75, -0.25, 5]);
});

test("GPG: α (score − group mean), α = responses / non-zero scores", () => {
  // 4 responses, 2 non-zero scores: α = 2. group 0 [1, 0] mean 0.5; group 1 [2, 0] mean 1.
  assertClose(gpgAdvantages(f64([1, 0, 2, 0]), i32([0, 0, 1, 1])), [1, -1, 2, -2]);
  // All zero: α = 4 / max(0, 1) = 4, advantages 0.
  assertClose(gpgAdvantages(f64([0, 0, 0, 0]), i32([0, 0, 1, 1])), [0, 0, 0, 0]);
});

test("REINFORCE++ with gamma: discounted returns per token, whitened over the batch", () => {
  // rewards [0, 0, 1] and [0, 2], γ = 0.5: returns [0.25, 0.5, 1] and [1, 2].
  const returns = [0.25, 0.5, 1, 1, 2];
  const mean = returns.reduce((a, b) => a + b, 0) / 5;
  const std = Math.sqrt(returns.reduce((a, r) => a + (r - mean) ** 2, 0) / 4 + 1e-8);
  const got = reinforcePlusPlusTokenAdvantages([f64([0, 0, 1]), f64([0, 2])], 0.5);
  assertClose(
    [...(got[0] ?? []), ...(got[1] ?? [])],
    returns.map((r) => (r - mean) / std),
  );
  assert.throws(
    () => reinforcePlusPlusTokenAdvantages([f64([1, 1])], 1.5),
    /gamma: 1.5 must be a number in \[0, 1\]/,
  );
});

test("GAE: δ and the λ-return by hand, returns = advantage + value, advantages whitened", () => {
  // One response, rewards [0, 1], values [0.5, 0.25], γ = 0.9, λ = 0.8.
  // t=1: δ = 1 + 0 − 0.25 = 0.75, A = 0.75. t=0: δ = 0 + 0.9·0.25 − 0.5 = −0.275, A = −0.275 + 0.72·0.75 = 0.265.
  const { advantages, returns } = gaeAdvantages([f64([0, 1])], [f64([0.5, 0.25])], 0.9, 0.8);
  assertClose(returns[0] ?? [], [0.265 + 0.5, 0.75 + 0.25]);
  const mean = (0.265 + 0.75) / 2;
  const std = Math.sqrt(((0.265 - mean) ** 2 + (0.75 - mean) ** 2) / 1 + 1e-8);
  assertClose(advantages[0] ?? [], [(0.265 - mean) / std, (0.75 - mean) / std]);
  assert.throws(
    () => gaeAdvantages([f64([1])], [f64([1, 2])]),
    /values\[0\] has 2 entries but tokenRewards\[0\] has 1/,
  );
});
