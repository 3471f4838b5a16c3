// KL estimators and controllers against hand-worked values (verl core_algos definitions).
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  AdaptiveKlController,
  applyKlPenalty,
  FixedKlController,
  type KlEstimator,
  klPerToken,
} from "../../src/rl/index.js";

function assertClose(actual: ArrayLike<number>, expected: number[], tolerance = 1e-12): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Math.abs(actual[i] - expected[i]) <= tolerance, `[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

test("per-token estimators on d = logprob − ref = [1, −1, 0]", () => {
  const logprobs = [-1, -2, -0.5];
  const ref = [-2, -1, -0.5];
  const expected: Record<KlEstimator, number[]> = {
    k1: [1, -1, 0],
    kl: [1, -1, 0],
    abs: [1, 1, 0],
    k2: [0.5, 0.5, 0],
    mse: [0.5, 0.5, 0],
    // e^(−d) + d − 1
    k3: [Math.exp(-1), Math.E - 2, 0],
    low_var_kl: [Math.exp(-1), Math.E - 2, 0],
  };
  for (const [estimator, values] of Object.entries(expected)) {
    assertClose(klPerToken(logprobs, ref, estimator as KlEstimator), values);
  }
});

test("k3 is clamped to ±10 and stays finite for extreme log-ratios", () => {
  // d = 50: e^(−20) + 20 − 1 = 19 → 10; d = −50: e^20 … → 10; d = 2: e^(−2) + 1 unclamped.
  assertClose(klPerToken([0, -50, -3], [-50, 0, -5], "k3"), [10, 10, Math.exp(-2) + 1]);
});

test("an unknown estimator is rejected with the allowed names", () => {
  assert.throws(() => klPerToken([0], [0], "full" as KlEstimator), /use one of k1, kl, abs/);
});

test("adaptive controller: proportional error clipped to ±0.2, scaled by responses / horizon", () => {
  const controller = new AdaptiveKlController({
    initialCoefficient: 0.1,
    targetKl: 0.05,
    horizonResponses: 1000,
  });
  controller.update(0.1, 100); // error 1 → 0.2; β · (1 + 0.2·100/1000) = 0.102
  assert.ok(Math.abs(controller.coefficient - 0.102) < 1e-15);
  controller.update(0.0, 100); // error −1 → −0.2; · 0.98
  assert.ok(Math.abs(controller.coefficient - 0.102 * 0.98) < 1e-15);
  controller.update(0.06, 500); // error 0.2 (not clipped) · 0.5 → · 1.1
  assert.ok(Math.abs(controller.coefficient - 0.102 * 0.98 * 1.1) < 1e-15);
  const before = controller.coefficient;
  controller.update(0.05, 500); // on target: unchanged
  assert.equal(controller.coefficient, before);
});

test("reward-side penalty: score − β·kl per token, mean of per-response mean KL", () => {
  const controller = new FixedKlController(0.5);
  const { tokenRewards, meanKl } = applyKlPenalty(
    [new Float64Array([0, 0, 1]), new Float64Array([2])],
    [new Float64Array([0.1, 0.2, 0.3]), new Float64Array([0.4])],
    controller,
  );
  assertClose(tokenRewards[0], [-0.05, -0.1, 0.85]);
  assertClose(tokenRewards[1], [1.8]);
  assert.ok(Math.abs(meanKl - (0.2 + 0.4) / 2) < 1e-15);
  assert.equal(controller.coefficient, 0.5);
});
