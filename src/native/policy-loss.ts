// The RL policy loss of native/src/train/policy_loss.h (verl's core_algos): its config, the
// argument checks shared by Model.policyStep and policyLoss, and policyLoss itself, which runs the
// loss on given per-token arrays (no model) and returns its gradients, for checking it.
import { addon } from "./binding.js";

export type LossAggMode =
  | "token-mean"
  | "token-sum"
  | "seq-mean-token-sum"
  | "seq-mean-token-mean"
  | "seq-mean-token-sum-norm";
type KlBase = "k1" | "kl" | "k2" | "mse" | "k3" | "low_var_kl" | "abs";
/**
 * verl's names: k1 = "kl", k2 = "mse", k3 = "low_var_kl" (clamped to ±10), abs = "abs"; a trailing
 * "+" (e.g. "k3+") keeps the estimator's value with k2's gradient (verl's straight-through).
 */
export type KlPenaltyType = "none" | KlBase | `${KlBase}+`;

/** verl's policy_loss.loss_mode. */
export type PolicyLossMode =
  | "vanilla"
  | "gspo"
  | "sapo"
  | "gpg"
  | "clip_cov"
  | "kl_cov"
  | "geo_mean"
  | "cispo";
export const policyLossModes: readonly PolicyLossMode[] = [
  "vanilla",
  "gspo",
  "sapo",
  "gpg",
  "clip_cov",
  "kl_cov",
  "geo_mean",
  "cispo",
];

export interface PolicyLossConfig {
  /**
   * The surrogate (default vanilla: PPO clip with dual-clip). gspo: one ratio per sequence (the
   * geometric mean of its tokens'), token gradients; sapo: a sigmoid gate of temperature
   * tauPos/tauNeg instead of the clip, always seq-mean-token-mean; gpg: −A·logprob; clip_cov: the
   * clip, and the gradient cut at a random clipCovRatio of the tokens whose covariance of advantage
   * and logprob lies in (clipCovLb, clipCovUb); kl_cov: + ppoKlCoef·|log ratio| on the klCovRatio of
   * tokens of largest covariance; geo_mean (GMPO): the geometric mean of clipped token ratios per
   * sequence, a mean over sequences whatever aggMode; cispo: −sg(clip(ratio))·A·logprob.
   */
  lossMode?: PolicyLossMode;
  /** The ratio is clipped below at 1 − clipRatioLow (default 0.2). */
  clipRatioLow?: number;
  /** …and above at 1 + clipRatioHigh (default 0.2; DAPO's clip-higher e.g. 0.28). */
  clipRatioHigh?: number;
  /** Dual-clip: for negative advantages the loss is at most −A · clipRatioC (default 3, > 1). */
  clipRatioC?: number;
  /**
   * How per-token losses become a scalar (default token-mean), dividing by the mini-batch counts:
   * token-mean: Σ m·L / counts.tokens; token-sum: Σ m·L; seq-mean-token-sum: Σ_seq Σ m·L / counts.sequences;
   * seq-mean-token-mean: Σ_seq (Σ m·L / tokens of the seq) / counts.sequences;
   * seq-mean-token-sum-norm (Dr. GRPO): Σ_seq Σ m·L / (counts.sequences · lossScaleFactor).
   */
  aggMode?: LossAggMode;
  /** seq-mean-token-sum-norm's constant, the maximum response length in tokens (default 1). */
  lossScaleFactor?: number;
  /** loss −= entropyCoeff · agg(entropy) (default 0). */
  entropyCoeff?: number;
  /** loss += kl.coeff · agg(penalty(logprob, refLogprob)) (default none). */
  kl?: { type: KlPenaltyType; coeff?: number };
  /** sapo's gate temperatures for A > 0 and A ≤ 0 (verl's tau_pos 1, tau_neg 1.05). */
  tauPos?: number;
  tauNeg?: number;
  /** clip_cov (verl's defaults 0.0002, 1, 5). */
  clipCovRatio?: number;
  clipCovLb?: number;
  clipCovUb?: number;
  /** kl_cov (verl's defaults 0.0002, 0.1). */
  klCovRatio?: number;
  ppoKlCoef?: number;
  /** Seeds clip_cov's random choice among its candidate tokens (default 0). */
  seed?: number;
}

/**
 * This micro-batch's share of each metric verl reports; summed over the micro-batches (and ranks)
 * of a mini-batch they give the mini-batch's value. pgLoss, entropy and klLoss use aggMode;
 * pgClipfrac, pgClipfracLower (dual-clip) and ppoKl (mean old − new logprob; kl_cov: mean
 * |log ratio|) are token means. A loss mode that does not measure one leaves it out (verl reports
 * nothing or a constant 0 there): gpg measures none, sapo and kl_cov only ppoKl, gspo, clip_cov
 * and cispo no pgClipfracLower.
 */
export interface PolicyLossMetrics {
  pgLoss: number;
  pgClipfrac?: number;
  pgClipfracLower?: number;
  ppoKl?: number;
  entropy: number;
  klLoss: number;
}

/** Counts of the whole mini-batch, every micro-batch and every data-parallel rank together. */
export interface GlobalCounts {
  /** Tokens the masks count. */
  tokens: number;
  /** Sequences with at least one counted token. */
  sequences: number;
}

export interface PolicyLossInputs {
  logprobs: Float32Array;
  oldLogprobs: Float32Array;
  advantages: Float32Array;
  mask: Float32Array;
  /** Needed when entropyCoeff is not 0. */
  entropy?: Float32Array;
  /** Needed when kl.type is not none. */
  refLogprobs?: Float32Array;
  /** Rollout-correction importance weights multiplying each token's policy loss. */
  rolloutIsWeights?: Float32Array;
  /** [sequences + 1] boundaries of the sequences in the token arrays, from 0 to their length. */
  cuSeqlens: Int32Array;
}

export interface PolicyLossResult {
  loss: number;
  metrics: PolicyLossMetrics;
  /** d loss / d logprobs and d loss / d entropy (when entropy was given). */
  gradLogprobs: Float32Array;
  gradEntropy?: Float32Array;
}

export interface NativePolicyLossAddon {
  /** addon/policy_loss.cc PolicyLoss(inputs, counts, config): synchronous */
  policyLoss(inputs: PolicyLossInputs, counts: GlobalCounts, config: PolicyLossConfig): PolicyLossResult;
}

const AGG_MODES: LossAggMode[] = [
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
];
const KL_BASES: KlBase[] = ["k1", "kl", "k2", "mse", "k3", "low_var_kl", "abs"];
export const klPenaltyTypes: readonly KlPenaltyType[] = [
  "none",
  ...KL_BASES,
  ...KL_BASES.map((k) => `${k}+` as const),
];

function finite(value: unknown, field: string, ok: (v: number) => boolean, allowed: string): void {
  if (value === undefined) return;
  if (typeof value !== "number" || !Number.isFinite(value) || !ok(value)) {
    throw new RangeError(`${field}: ${JSON.stringify(value)} must be ${allowed}`);
  }
}

/** Checks a config; errors name the field and the allowed values. Returns it unchanged. */
export function checkPolicyLossConfig(config: PolicyLossConfig): PolicyLossConfig {
  if (config === null || typeof config !== "object") throw new TypeError("config: expected an object");
  finite(config.clipRatioLow, "config.clipRatioLow", (v) => v >= 0 && v < 1, "in [0, 1)");
  finite(config.clipRatioHigh, "config.clipRatioHigh", (v) => v >= 0, ">= 0");
  finite(config.clipRatioC, "config.clipRatioC", (v) => v > 1, "> 1");
  finite(config.lossScaleFactor, "config.lossScaleFactor", (v) => v > 0, "> 0");
  finite(config.entropyCoeff, "config.entropyCoeff", () => true, "a finite number");
  if (config.lossMode !== undefined && !policyLossModes.includes(config.lossMode)) {
    throw new RangeError(
      `config.lossMode: ${JSON.stringify(config.lossMode)}; allowed: ${policyLossModes.join(", ")}`,
    );
  }
  for (const key of ["tauPos", "tauNeg", "clipCovRatio", "klCovRatio"] as const) {
    finite(config[key], `config.${key}`, (v) => v > 0, "> 0");
  }
  for (const key of ["clipCovLb", "clipCovUb", "ppoKlCoef"] as const) {
    finite(config[key], `config.${key}`, () => true, "a finite number");
  }
  finite(config.seed, "config.seed", (v) => Number.isSafeInteger(v) && v >= 0, "an integer ≥ 0");
  if (config.aggMode !== undefined && !AGG_MODES.includes(config.aggMode)) {
    throw new RangeError(
      `config.aggMode: ${JSON.stringify(config.aggMode)}; allowed: ${AGG_MODES.join(", ")}`,
    );
  }
  if (config.kl !== undefined) {
    if (config.kl === null || typeof config.kl !== "object") {
      throw new TypeError("config.kl: expected {type, coeff}");
    }
    if (!klPenaltyTypes.includes(config.kl.type)) {
      throw new RangeError(
        `config.kl.type: ${JSON.stringify(config.kl.type)}; allowed: ${klPenaltyTypes.join(", ")}`,
      );
    }
    finite(config.kl.coeff, "config.kl.coeff", () => true, "a finite number");
  }
  return config;
}

export function checkCounts(counts: GlobalCounts): GlobalCounts {
  if (counts === null || typeof counts !== "object")
    throw new TypeError("counts: expected {tokens, sequences}");
  for (const key of ["tokens", "sequences"] as const) {
    const v = counts[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw new RangeError(`counts.${key}: ${JSON.stringify(v)} must be a positive number`);
    }
  }
  return counts;
}

/** `value` must be a Float32Array of `length` entries; `what` says what the length is. */
export function checkTokenArray(value: unknown, field: string, length: number, what: string): void {
  if (!(value instanceof Float32Array) || value.length !== length) {
    throw new RangeError(`${field}: expected a Float32Array of ${length} entries (${what})`);
  }
}

function usesKl(config: PolicyLossConfig): boolean {
  return config.kl !== undefined && config.kl.type !== "none";
}

/** Throws naming refLogprobs / entropy when the config needs them and they are absent. */
export function checkOptionalInputs(
  config: PolicyLossConfig,
  refLogprobs: unknown,
  field: string,
  length: number,
  what: string,
): void {
  if (refLogprobs !== undefined) checkTokenArray(refLogprobs, `${field}.refLogprobs`, length, what);
  else if (usesKl(config)) {
    throw new TypeError(`${field}.refLogprobs: required when config.kl.type is ${config.kl?.type}`);
  }
}

/**
 * The policy loss on given per-token arrays, with its gradients w.r.t. logprobs (and entropy).
 * The same code Model.policyStep runs after its forward pass.
 */
export function policyLoss(
  inputs: PolicyLossInputs,
  counts: GlobalCounts,
  config: PolicyLossConfig = {},
): PolicyLossResult {
  checkPolicyLossConfig(config);
  checkCounts(counts);
  if (inputs === null || typeof inputs !== "object") throw new TypeError("inputs: expected an object");
  if (!(inputs.logprobs instanceof Float32Array))
    throw new TypeError("inputs.logprobs: expected a Float32Array");
  const n = inputs.logprobs.length;
  for (const key of ["oldLogprobs", "advantages", "mask"] as const) {
    checkTokenArray(inputs[key], `inputs.${key}`, n, "as many as logprobs");
  }
  if (inputs.entropy !== undefined)
    checkTokenArray(inputs.entropy, "inputs.entropy", n, "as many as logprobs");
  else if ((config.entropyCoeff ?? 0) !== 0) {
    throw new TypeError("inputs.entropy: required when config.entropyCoeff is not 0");
  }
  checkOptionalInputs(config, inputs.refLogprobs, "inputs", n, "as many as logprobs");
  if (inputs.rolloutIsWeights !== undefined)
    checkTokenArray(inputs.rolloutIsWeights, "inputs.rolloutIsWeights", n, "as many as logprobs");
  const cu = inputs.cuSeqlens;
  if (!(cu instanceof Int32Array) || cu.length < 2 || cu[0] !== 0 || cu[cu.length - 1] !== n) {
    throw new RangeError(`inputs.cuSeqlens: expected an Int32Array running from 0 to ${n}`);
  }
  for (let i = 1; i < cu.length; i++) {
    if ((cu[i] ?? 0) < (cu[i - 1] ?? 0)) throw new RangeError(`inputs.cuSeqlens: decreases at ${i}`);
  }
  return (addon() as unknown as NativePolicyLossAddon).policyLoss(inputs, counts, config);
}
