// KL between the policy and the reference model, on plain arrays: the per-token estimators and
// the reward-side penalty with its fixed or adaptive coefficient. These are the reference the
// engine's tensor versions are tested against. Mirrors verl/trainer/ppo/core_algos.py
// (`kl_penalty`, `FixedKLController`, `AdaptiveKLController`) and `apply_kl_penalty` in
// verl/trainer/ppo/ray_trainer.py.
import { checkSameLength } from "./groups.js";

/**
 * Per-token KL estimators, with verl's names as aliases:
 * `k1`/`kl`: d; `abs`: |d|; `k2`/`mse`: ½d²; `k3`/`low_var_kl`: e^(−d) + d − 1, where
 * d = logprob − refLogprob. k3 clamps −d to ±20 before the exp and the result to ±10, as verl.
 */
export type KlEstimator = "k1" | "kl" | "abs" | "k2" | "mse" | "k3" | "low_var_kl";

const estimatorNames: readonly KlEstimator[] = ["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl"];

/** KL estimate per token. logprobs, refLogprobs: [tokens], natural-log probabilities. */
export function klPerToken(
  logprobs: ArrayLike<number>,
  refLogprobs: ArrayLike<number>,
  estimator: KlEstimator,
): Float64Array {
  checkSameLength("refLogprobs", refLogprobs, logprobs.length, "logprobs");
  const estimate = estimatorFunction(estimator);
  const kl = new Float64Array(logprobs.length);
  for (let t = 0; t < kl.length; t++) kl[t] = estimate(logprobs[t] - refLogprobs[t]);
  return kl;
}

function estimatorFunction(estimator: KlEstimator): (d: number) => number {
  switch (estimator) {
    case "k1":
    case "kl":
      return (d) => d;
    case "abs":
      return Math.abs;
    case "k2":
    case "mse":
      return (d) => 0.5 * d * d;
    case "k3":
    case "low_var_kl":
      return (d) => {
        const logRatio = clamp(-d, -20, 20);
        return clamp(Math.exp(logRatio) - logRatio - 1, -10, 10);
      };
    default:
      throw new RangeError(
        `unknown KL estimator ${JSON.stringify(estimator)}; use one of ${estimatorNames.join(", ")}`,
      );
  }
}

function clamp(x: number, low: number, high: number): number {
  return Math.min(Math.max(x, low), high);
}

/** A KL coefficient β that may change after each step. */
export interface KlController {
  readonly coefficient: number;
  /** Called once per step with the batch's mean KL and the number of responses in it. */
  update(currentKl: number, responseCount: number): void;
}

/** β stays fixed. Mirrors `FixedKLController`. */
export class FixedKlController implements KlController {
  constructor(readonly coefficient: number) {}
  update(): void {}
}

export interface AdaptiveKlOptions {
  initialCoefficient: number;
  /** The KL the controller steers towards (verl's `target_kl`). */
  targetKl: number;
  /** Responses over which β may change by e^(±0.2) (verl's `horizon`, counted in responses). */
  horizonResponses: number;
}

/**
 * Proportional controller of Ziegler et al.: `β ← β · (1 + clip(KL/target − 1, ±0.2) · n/horizon)`
 * with n the responses in the step. Mirrors `AdaptiveKLController`.
 */
export class AdaptiveKlController implements KlController {
  #coefficient: number;
  readonly targetKl: number;
  readonly horizonResponses: number;

  constructor(options: AdaptiveKlOptions) {
    if (!(options.targetKl > 0)) throw new RangeError(`targetKl must be > 0, got ${options.targetKl}`);
    if (!(options.horizonResponses > 0)) {
      throw new RangeError(`horizonResponses must be > 0, got ${options.horizonResponses}`);
    }
    this.#coefficient = options.initialCoefficient;
    this.targetKl = options.targetKl;
    this.horizonResponses = options.horizonResponses;
  }

  get coefficient(): number {
    return this.#coefficient;
  }

  update(currentKl: number, responseCount: number): void {
    const proportionalError = clamp(currentKl / this.targetKl - 1, -0.2, 0.2);
    this.#coefficient *= 1 + (proportionalError * responseCount) / this.horizonResponses;
  }
}

export interface KlPenaltyResult {
  /** Per response, per token: score − β·KL. */
  tokenRewards: Float64Array[];
  /** Mean over responses of each response's mean token KL (verl's `actor/reward_kl_penalty`). */
  meanKl: number;
}

/**
 * Reward-side KL penalty: `reward_t = score_t − β·kl_t` for every valid token, then the controller
 * is updated with the batch's mean KL. tokenScores[i], tokenKl[i]: [responseLength_i]. A response
 * of length 0 counts 0 towards the mean (verl's masked_mean gives 0 there too). Mirrors
 * `apply_kl_penalty`.
 */
export function applyKlPenalty(
  tokenScores: readonly Float64Array[],
  tokenKl: readonly Float64Array[],
  controller: KlController,
): KlPenaltyResult {
  checkSameLength("tokenKl", tokenKl, tokenScores.length, "tokenScores");
  const beta = controller.coefficient;
  let klSum = 0;
  const tokenRewards = tokenScores.map((scores, i) => {
    const kl = tokenKl[i];
    checkSameLength(`tokenKl[${i}]`, kl, scores.length, `tokenScores[${i}]`);
    let responseKl = 0;
    for (const k of kl) responseKl += k;
    if (kl.length > 0) klSum += responseKl / kl.length;
    return scores.map((s, t) => s - beta * kl[t]);
  });
  const meanKl = tokenScores.length === 0 ? 0 : klSum / tokenScores.length;
  controller.update(meanKl, tokenScores.length);
  return { tokenRewards, meanKl };
}
