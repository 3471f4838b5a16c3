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

/**
 * GRPO for pass@k: in each group only the best response gets an advantage, `r_max − r_second`
 * (divided by the group's std + ε unless `normByStd` is false); every other response gets 0. A
 * group needs ≥ 2 responses. The first of tied maxima is the best (its advantage is then 0).
 * Mirrors `compute_grpo_passk_outcome_advantage`.
 */
export function grpoPassKAdvantages(
  scores: Float64Array,
  groups: GroupIds,
  options: GrpoOptions = {},
): Float64Array {
  checkSameLength("groups", groups, scores.length);
  const normByStd = options.normByStd ?? true;
  const epsilon = options.epsilon ?? grpoEpsilon;
  const advantages = new Float64Array(scores.length);
  for (const [id, members] of responsesByGroup(groups)) {
    if (members.length < 2) {
      throw new RangeError(
        `grpo_passk needs at least 2 responses per group; group ${JSON.stringify(id)} has ${members.length}`,
      );
    }
    let best = members[0] as number;
    for (const i of members) if (scores[i] > scores[best]) best = i;
    let second = Number.NEGATIVE_INFINITY;
    for (const i of members) if (i !== best && scores[i] > second) second = scores[i];
    const gap = scores[best] - second;
    advantages[best] = normByStd ? gap / (meanStd(scores, members).std + epsilon) : gap;
  }
  return advantages;
}

/**
 * OPO: `score − baseline_g`, the baseline the length-weighted mean score of the group,
 * `Σ len·score / Σ len` (a group of one has baseline 0; a group whose responses are all empty has
 * no tokens to weigh and gets baseline 0 too, where verl divides 0 by 0). Mirrors
 * `compute_opo_outcome_advantage`.
 */
export function opoAdvantages(
  scores: Float64Array,
  groups: GroupIds,
  responseLengths: Int32Array,
): Float64Array {
  checkSameLength("groups", groups, scores.length);
  checkSameLength("responseLengths", responseLengths, scores.length);
  const advantages = new Float64Array(scores.length);
  for (const members of responsesByGroup(groups).values()) {
    let weighted = 0;
    let tokens = 0;
    for (const i of members) {
      weighted += responseLengths[i] * scores[i];
      tokens += responseLengths[i];
    }
    const baseline = members.length === 1 || tokens === 0 ? 0 : weighted / tokens;
    for (const i of members) advantages[i] = scores[i] - baseline;
  }
  return advantages;
}

/**
 * GPG: `α · (score − mean_g) / f_norm` with α = responses / max(responses with a non-zero score, 1)
 * over the whole batch and f_norm = 1 (a group of one has mean 0). Mirrors
 * `compute_gpg_outcome_advantage` with its defaults.
 */
export function gpgAdvantages(scores: Float64Array, groups: GroupIds): Float64Array {
  checkSameLength("groups", groups, scores.length);
  let nonZero = 0;
  for (const s of scores) if (s !== 0) nonZero++;
  // verl divides a Python int by a torch count, which torch computes as a float32 reciprocal times
  // the int (Tensor.__rtruediv__): α is rounded the same way here.
  const alpha = Math.fround(Math.fround(1 / Math.max(nonZero, 1)) * scores.length);
  const advantages = new Float64Array(scores.length);
  for (const members of responsesByGroup(groups).values()) {
    const mean = members.length === 1 ? 0 : meanStd(scores, members).mean;
    for (const i of members) advantages[i] = alpha * (scores[i] - mean);
  }
  return advantages;
}

/**
 * REINFORCE++ with per-token rewards: the discounted return `G_t = r_t + γ·G_{t+1}` at every
 * response token, whitened over all tokens of the batch. tokenRewards[i]: [responseLength_i] (an
 * outcome reward sits on the last token). Mirrors `compute_reinforce_plus_plus_outcome_advantage`
 * (algorithm.gamma).
 */
export function reinforcePlusPlusTokenAdvantages(
  tokenRewards: readonly ArrayLike<number>[],
  gamma = 1,
): Float64Array[] {
  checkGamma(gamma, "gamma");
  const returns = tokenRewards.map((r) => {
    const out = new Float64Array(r.length);
    let running = 0;
    for (let t = r.length - 1; t >= 0; t--) {
      running = (r[t] as number) + gamma * running;
      out[t] = running;
    }
    return out;
  });
  return whitenTokens(returns);
}

export interface GaeResult {
  /** Per response, per token: GAE advantages whitened over every token of the batch. */
  advantages: Float64Array[];
  /** Per response, per token: advantage (before whitening) + value, the critic's target. */
  returns: Float64Array[];
}

/**
 * Generalised advantage estimation: `δ_t = r_t + γ·V_{t+1} − V_t` (V after the last token is 0),
 * `A_t = δ_t + γλ·A_{t+1}`, returns `A_t + V_t`, then the advantages whitened over the batch's
 * tokens. tokenRewards[i], values[i]: [responseLength_i]. Mirrors `compute_gae_advantage_return`
 * (algorithm.gamma, algorithm.lam).
 */
export function gaeAdvantages(
  tokenRewards: readonly ArrayLike<number>[],
  values: readonly ArrayLike<number>[],
  gamma = 1,
  lam = 1,
): GaeResult {
  checkSameLength("values", values, tokenRewards.length, "tokenRewards");
  checkGamma(gamma, "gamma");
  checkGamma(lam, "lam");
  const raw: Float64Array[] = [];
  const returns: Float64Array[] = [];
  tokenRewards.forEach((r, i) => {
    const v = values[i] as ArrayLike<number>;
    checkSameLength(`values[${i}]`, v, r.length, `tokenRewards[${i}]`);
    const a = new Float64Array(r.length);
    const ret = new Float64Array(r.length);
    let nextValue = 0;
    let gae = 0;
    for (let t = r.length - 1; t >= 0; t--) {
      const delta = (r[t] as number) + gamma * nextValue - (v[t] as number);
      gae = delta + gamma * lam * gae;
      nextValue = v[t] as number;
      a[t] = gae;
      ret[t] = gae + (v[t] as number);
    }
    raw.push(a);
    returns.push(ret);
  });
  return { advantages: whitenTokens(raw), returns };
}

function checkGamma(value: number, field: string): void {
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) {
    throw new RangeError(`${field}: ${JSON.stringify(value)} must be a number in [0, 1]`);
  }
}

/** masked_whiten over every token of the batch: `(x − mean) / sqrt(var + 1e-8)`, unbiased variance. */
function whitenTokens(values: readonly Float64Array[]): Float64Array[] {
  let n = 0;
  let sum = 0;
  for (const r of values) {
    n += r.length;
    for (const v of r) sum += v;
  }
  if (n < 2) throw new RangeError(`whitening needs at least 2 response tokens in the batch, got ${n}`);
  const mean = sum / n;
  let squares = 0;
  for (const r of values) for (const v of r) squares += (v - mean) ** 2;
  const scale = 1 / Math.sqrt(squares / (n - 1) + whitenEpsilon);
  return values.map((r) => r.map((v) => (v - mean) * scale));
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
