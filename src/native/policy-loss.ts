// The RL policy loss of native/src/train/policy_loss.h (verl's core_algos): its config, the
// argument checks shared by Model.policyStep and policyLoss, and policyLoss itself, which runs the
// loss on given per-token arrays (no model) and returns its gradients, for checking it.
import { addon } from "./binding.js";

export type LossAggMode =
  | "token-mean"
  | "seq-mean-token-sum"
  | "seq-mean-token-mean"
  | "seq-mean-token-sum-norm";
/** verl's names: k1 = "kl", k2 = "mse", k3 = "low_var_kl" (clamped to ±10), abs = "abs". */
export type KlPenaltyType = "none" | "k1" | "k2" | "k3" | "low_var_kl" | "abs";

export interface PolicyLossConfig {
  /** The ratio is clipped below at 1 − clipRatioLow (default 0.2). */
  clipRatioLow?: number;
  /** …and above at 1 + clipRatioHigh (default 0.2; DAPO's clip-higher e.g. 0.28). */
  clipRatioHigh?: number;
  /** Dual-clip: for negative advantages the loss is at most −A · clipRatioC (default 3, > 1). */
  clipRatioC?: number;
  /**
   * How per-token losses become a scalar (default token-mean), dividing by the mini-batch counts:
   * token-mean: Σ m·L / counts.tokens; seq-mean-token-sum: Σ_seq Σ m·L / counts.sequences;
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
}

/**
 * This micro-batch's share of each metric verl reports; summed over the micro-batches (and ranks)
 * of a mini-batch they give the mini-batch's value. pgLoss, entropy and klLoss use aggMode;
 * pgClipfrac, pgClipfracLower (dual-clip) and ppoKl (mean old − new logprob) are token means.
 */
export interface PolicyLossMetrics {
  pgLoss: number;
  pgClipfrac: number;
  pgClipfracLower: number;
  ppoKl: number;
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
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
];
const KL_TYPES: KlPenaltyType[] = ["none", "k1", "k2", "k3", "low_var_kl", "abs"];

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
  if (config.aggMode !== undefined && !AGG_MODES.includes(config.aggMode)) {
    throw new RangeError(
      `config.aggMode: ${JSON.stringify(config.aggMode)}; allowed: ${AGG_MODES.join(", ")}`,
    );
  }
  if (config.kl !== undefined) {
    if (config.kl === null || typeof config.kl !== "object") {
      throw new TypeError("config.kl: expected {type, coeff}");
    }
    if (!KL_TYPES.includes(config.kl.type)) {
      throw new RangeError(
        `config.kl.type: ${JSON.stringify(config.kl.type)}; allowed: ${KL_TYPES.join(", ")}`,
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
  const cu = inputs.cuSeqlens;
  if (!(cu instanceof Int32Array) || cu.length < 2 || cu[0] !== 0 || cu[cu.length - 1] !== n) {
    throw new RangeError(`inputs.cuSeqlens: expected an Int32Array running from 0 to ${n}`);
  }
  for (let i = 1; i < cu.length; i++) {
    if ((cu[i] ?? 0) < (cu[i - 1] ?? 0)) throw new RangeError(`inputs.cuSeqlens: decreases at ${i}`);
  }
  return (addon() as unknown as NativePolicyLossAddon).policyLoss(inputs, counts, config);
}
