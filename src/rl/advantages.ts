// Outcome advantage estimators: one scalar score per response (the reward on its last token) in,
// one advantage per response out. Each mirrors a function in verl/trainer/ppo/core_algos.py;
// arithmetic is float64 where verl runs float32, so values agree to float32 precision.
import { checkSameLength, type GroupIds, responsesByGroup } from "./groups.js";

/** verl's default epsilon in the GRPO denominator `std + epsilon`. */
export const grpoEpsilon = 1e-6;
/** verl_F.masked_whiten's epsilon inside `rsqrt(var + epsilon)`. */
export const whitenEpsilon = 1e-8;

export interface GrpoOptions {
  /** Divide by the group's std (GRPO); `false` subtracts the mean only (Dr.GRPO). Default true. */
  normByStd?: boolean;
  /** Added to the std before dividing. Default 1e-6, as verl. */
  epsilon?: number;
}

/**
 * GRPO: `(score − mean_g) / (std_g + ε)`, std with Bessel's correction (torch.std), or
 * `score − mean_g` for Dr.GRPO. A group of one response has mean 0 and std 1, so its advantage
 * is `score / (1 + ε)`. Mirrors `compute_grpo_outcome_advantage` (`norm_adv_by_std_in_grpo`).
 */
export function grpoAdvantages(
  scores: Float64Array,
  groups: GroupIds,
  options: GrpoOptions = {},
): Float64Array {
  checkSameLength("groups", groups, scores.length);
  const normByStd = options.normByStd ?? true;
  const epsilon = options.epsilon ?? grpoEpsilon;
  const advantages = new Float64Array(scores.length);
  for (const members of responsesByGroup(groups).values()) {
    const { mean, std } = members.length === 1 ? { mean: 0, std: 1 } : meanStd(scores, members);
    for (const i of members) {
      advantages[i] = normByStd ? (scores[i] - mean) / (std + epsilon) : scores[i] - mean;
    }
  }
  return advantages;
}

/**
 * RLOO: `score − mean of the other responses of the group`, written as verl does:
 * `score·n/(n−1) − mean_g·n/(n−1)`. A group of one keeps its score unchanged.
 * Mirrors `compute_rloo_outcome_advantage`.
 */
export function rlooAdvantages(scores: Float64Array, groups: GroupIds): Float64Array {
  checkSameLength("groups", groups, scores.length);
  const advantages = new Float64Array(scores.length);
  for (const members of responsesByGroup(groups).values()) {
    const n = members.length;
    if (n === 1) {
      advantages[members[0]] = scores[members[0]];
      continue;
    }
    const { mean } = meanStd(scores, members);
    for (const i of members) advantages[i] = (scores[i] * n) / (n - 1) - (mean * n) / (n - 1);
  }
  return advantages;
}

/**
 * REINFORCE++ in the outcome case: with the score on the last token and discount 1, the return
 * at every token of a response is its score; returns are then whitened over all valid tokens of
 * the batch (so a response weighs by its length). The whitened value is constant within a
 * response, hence one advantage per response; expand with `advantagesPerToken`. Responses of
 * length 0 get 0. Mirrors `compute_reinforce_plus_plus_outcome_advantage` (gamma = 1) followed by
 * `masked_whiten` (unbiased variance, ε = 1e-8).
 */
export function reinforcePlusPlusAdvantages(scores: Float64Array, responseLengths: Int32Array): Float64Array {
  checkSameLength("responseLengths", responseLengths, scores.length);
  return whitenOverTokens(scores, responseLengths);
}

/**
 * REINFORCE++-baseline: subtract the group mean (a group of one subtracts 0), broadcast to the
 * tokens, then whiten over all valid tokens of the batch. Mirrors
 * `compute_reinforce_plus_plus_baseline_outcome_advantage`.
 */
export function reinforcePlusPlusBaselineAdvantages(
  scores: Float64Array,
  groups: GroupIds,
  responseLengths: Int32Array,
): Float64Array {
  checkSameLength("groups", groups, scores.length);
  checkSameLength("responseLengths", responseLengths, scores.length);
  const centred = new Float64Array(scores.length);
  for (const members of responsesByGroup(groups).values()) {
    const mean = members.length === 1 ? 0 : meanStd(scores, members).mean;
    for (const i of members) centred[i] = scores[i] - mean;
  }
  return whitenOverTokens(centred, responseLengths);
}

/**
 * ReMax: `score − score of the greedy response to the same prompt` (the baseline is given per
 * response). Mirrors `compute_remax_outcome_advantage`, whose per-token returns are the score at
 * every valid token for an outcome reward.
 */
export function remaxAdvantages(scores: Float64Array, baselineScores: Float64Array): Float64Array {
  checkSameLength("baselineScores", baselineScores, scores.length);
  return scores.map((s, i) => s - baselineScores[i]);
}

/** Broadcast one advantage per response to its tokens: `result[i]` has `responseLengths[i]` entries. */
export function advantagesPerToken(advantages: Float64Array, responseLengths: Int32Array): Float64Array[] {
  checkSameLength("responseLengths", responseLengths, advantages.length, "advantages");
  return Array.from(advantages, (a, i) => new Float64Array(responseLengths[i]).fill(a));
}

function meanStd(values: Float64Array, members: readonly number[]): { mean: number; std: number } {
  let sum = 0;
  for (const i of members) sum += values[i];
  const mean = sum / members.length;
  let squares = 0;
  for (const i of members) squares += (values[i] - mean) ** 2;
  return { mean, std: Math.sqrt(squares / (members.length - 1)) };
}

/**
 * `masked_whiten` of per-response constants broadcast over `responseLengths` tokens:
 * `(v − mean) / sqrt(var + 1e-8)`, mean and unbiased variance over valid tokens.
 */
function whitenOverTokens(values: Float64Array, responseLengths: Int32Array): Float64Array {
  let tokenCount = 0;
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    if (responseLengths[i] < 0) {
      throw new RangeError(`responseLengths[${i}] is ${responseLengths[i]}; lengths must be ≥ 0`);
    }
    tokenCount += responseLengths[i];
    sum += values[i] * responseLengths[i];
  }
  // verl's masked_var raises on these too: the unbiased variance needs two tokens.
  if (tokenCount < 2) {
    throw new RangeError(`whitening needs at least 2 response tokens in the batch, got ${tokenCount}`);
  }
  const mean = sum / tokenCount;
  let squares = 0;
  for (let i = 0; i < values.length; i++) squares += responseLengths[i] * (values[i] - mean) ** 2;
  const variance = squares / (tokenCount - 1);
  const scale = 1 / Math.sqrt(variance + whitenEpsilon);
  return values.map((v, i) => (responseLengths[i] === 0 ? 0 : (v - mean) * scale));
}
