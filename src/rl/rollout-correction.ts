// Rollout correction (verl's algorithm.rollout_correction, trainer/ppo/rollout_corr_helper.py):
// when the rollout engine's logprobs differ from the training engine's, truncated importance
// weights π_old / π_rollout per token or per sequence, rejection masks that drop tokens or whole
// sequences whose divergence passes a threshold, and verl's `rollout_corr/` metrics. Pure
// functions over per-response arrays; arithmetic is float64 where verl runs float32.
import { checkSameLength } from "./groups.js";

/** verl's rollout_rs options: the statistic (k1, k2, k3 of log π_old − log π_rollout) and where it is taken. */
export type RejectionOption =
  | "token_k1"
  | "token_k2"
  | "token_k3"
  | "seq_sum_k1"
  | "seq_sum_k2"
  | "seq_sum_k3"
  | "seq_mean_k1"
  | "seq_mean_k2"
  | "seq_mean_k3"
  | "seq_max_k2"
  | "seq_max_k3";
export const rejectionOptions: readonly RejectionOption[] = [
  "token_k1",
  "token_k2",
  "token_k3",
  "seq_sum_k1",
  "seq_sum_k2",
  "seq_sum_k3",
  "seq_mean_k1",
  "seq_mean_k2",
  "seq_mean_k3",
  "seq_max_k2",
  "seq_max_k3",
];

export interface RolloutCorrectionConfig {
  /** Importance weights per token or per sequence (verl's rollout_is); absent: none. */
  rolloutIs?: "token" | "sequence";
  /**
   * verl's rollout_is_threshold: an upper bound the weights are truncated to (default 2), or
   * `"lower_upper"` (e.g. "0.5_2"): weights outside [lower, upper] become 0 (IcePop).
   */
  rolloutIsThreshold?: number | string;
  /** Divide the weights by their batch mean (token or sequence level). Default false. */
  rolloutIsBatchNormalize?: boolean;
  /** Rejection options (verl's rollout_rs, comma-separated or a list); absent: no rejection. */
  rolloutRs?: string | readonly RejectionOption[];
  /**
   * verl's rollout_rs_threshold: one value for every option or one per option (a comma-separated
   * string or a list). k1 options take an upper ratio bound u (lower 1/u) or "lower_upper"; k2/k3
   * options an upper bound on the statistic.
   */
  rolloutRsThreshold?: number | string | readonly (number | string)[];
  /**
   * Use the rollout logprobs as the old logprobs (no recomputation), verl's bypass_mode with
   * loss_type ppo_clip. Importance weights and rejection need both, so they are refused with it.
   */
  bypassMode?: boolean;
}

/** The checked form: thresholds parsed. */
export interface ResolvedRolloutCorrection {
  rolloutIs?: "token" | "sequence";
  isUpper: number;
  /** Set for IcePop ("lower_upper"). */
  isLower?: number;
  rolloutIsBatchNormalize: boolean;
  rejection: { option: RejectionOption; lower?: number; upper: number }[];
  bypassMode: boolean;
}

const SAFETY_BOUND = 20;

function bound(field: string, text: string): number {
  const v = Number(text);
  if (text.trim() === "" || !Number.isFinite(v) || v <= 0) {
    throw new RangeError(`${field}: ${JSON.stringify(text)} must be a positive number`);
  }
  return v;
}

/** Checks and parses a config as verl does; errors name the field and what is allowed. */
export function resolveRolloutCorrection(
  config: RolloutCorrectionConfig,
  field = "algorithm.rolloutCorrection",
): ResolvedRolloutCorrection {
  if (config === null || typeof config !== "object") throw new TypeError(`${field}: expected an object`);
  if ("isUpper" in config && "rejection" in config)
    return resolvedAgain(config as unknown as ResolvedRolloutCorrection, field);
  const known = [
    "rolloutIs",
    "rolloutIsThreshold",
    "rolloutIsBatchNormalize",
    "rolloutRs",
    "rolloutRsThreshold",
    "bypassMode",
  ];
  for (const key of Object.keys(config)) {
    if (!known.includes(key))
      throw new RangeError(`${field}.${key}: unknown setting; known here: ${known.join(", ")}`);
  }
  if (config.rolloutIs !== undefined && config.rolloutIs !== "token" && config.rolloutIs !== "sequence") {
    throw new RangeError(
      `${field}.rolloutIs: ${JSON.stringify(config.rolloutIs)}; allowed: "token", "sequence"`,
    );
  }
  const threshold = config.rolloutIsThreshold ?? 2;
  let isUpper: number;
  let isLower: number | undefined;
  if (typeof threshold === "number") {
    isUpper = bound(`${field}.rolloutIsThreshold`, String(threshold));
  } else if (typeof threshold === "string" && threshold.includes("_")) {
    const [lower, upper] = threshold.trim().split("_", 2) as [string, string];
    isLower = bound(`${field}.rolloutIsThreshold`, lower);
    isUpper = bound(`${field}.rolloutIsThreshold`, upper);
    if (isLower > isUpper) {
      throw new RangeError(
        `${field}.rolloutIsThreshold: ${JSON.stringify(threshold)}: lower bound above upper`,
      );
    }
  } else if (typeof threshold === "string") {
    isUpper = bound(`${field}.rolloutIsThreshold`, threshold);
  } else {
    throw new TypeError(`${field}.rolloutIsThreshold: expected a number or "lower_upper"`);
  }
  const rejection: ResolvedRolloutCorrection["rejection"] = [];
  if (config.rolloutRs !== undefined) {
    const names = typeof config.rolloutRs === "string" ? config.rolloutRs.split(",") : [...config.rolloutRs];
    const options: RejectionOption[] = [];
    for (const raw of names) {
      const name = raw.trim() as RejectionOption;
      if (name === ("" as RejectionOption)) continue;
      if (!rejectionOptions.includes(name)) {
        throw new RangeError(
          `${field}.rolloutRs: ${JSON.stringify(raw)}; allowed: ${rejectionOptions.join(", ")}`,
        );
      }
      if (!options.includes(name)) options.push(name);
    }
    if (options.length === 0) throw new RangeError(`${field}.rolloutRs: names no option`);
    const given = config.rolloutRsThreshold;
    if (given === undefined) {
      throw new RangeError(`${field}.rolloutRsThreshold: required when rolloutRs is set`);
    }
    let specs = (typeof given === "string" ? given.split(",") : Array.isArray(given) ? given : [given])
      .map((s) => String(s).trim())
      .filter((s) => s !== "");
    if (specs.length === 1) specs = options.map(() => specs[0] as string);
    if (specs.length !== options.length) {
      throw new RangeError(
        `${field}.rolloutRsThreshold: ${specs.length} thresholds for ${options.length} options; give one, or one per option`,
      );
    }
    options.forEach((option, i) => {
      const spec = specs[i] as string;
      const f = `${field}.rolloutRsThreshold`;
      if (option.endsWith("k1")) {
        const [lowerText, upperText] = spec.includes("_")
          ? (spec.split("_", 2) as [string, string])
          : [undefined, spec];
        const upper = bound(f, upperText);
        const lower = lowerText === undefined ? 1 / upper : bound(f, lowerText);
        if (lower > upper)
          throw new RangeError(`${f}: ${JSON.stringify(spec)} for ${option}: lower bound above upper`);
        rejection.push({ option, lower, upper });
      } else {
        if (spec.includes("_")) {
          throw new RangeError(`${f}: ${JSON.stringify(spec)} for ${option} must be a single upper bound`);
        }
        rejection.push({ option, upper: bound(f, spec) });
      }
    });
  }
  const bypassMode = config.bypassMode ?? false;
  if (typeof bypassMode !== "boolean") throw new TypeError(`${field}.bypassMode: expected true or false`);
  if (bypassMode && (config.rolloutIs !== undefined || rejection.length > 0)) {
    throw new RangeError(
      `${field}.bypassMode: with bypass the old logprobs are the rollout's, so there is nothing to weigh or reject; drop rolloutIs and rolloutRs`,
    );
  }
  return {
    ...(config.rolloutIs ? { rolloutIs: config.rolloutIs } : {}),
    isUpper,
    ...(isLower !== undefined ? { isLower } : {}),
    rolloutIsBatchNormalize: config.rolloutIsBatchNormalize ?? false,
    rejection,
    bypassMode,
  };
}

/** A config resolved before (a resumed run's, set() re-checking the whole config): checked, kept. */
function resolvedAgain(r: ResolvedRolloutCorrection, field: string): ResolvedRolloutCorrection {
  if (!(r.isUpper > 0) || (r.isLower !== undefined && !(r.isLower > 0 && r.isLower <= r.isUpper))) {
    throw new RangeError(
      `${field}: the resolved IS thresholds ${r.isLower ?? ""}_${r.isUpper} are not valid`,
    );
  }
  for (const { option } of r.rejection) {
    if (!rejectionOptions.includes(option))
      throw new RangeError(`${field}.rejection: unknown option ${JSON.stringify(option)}`);
  }
  return { ...r, rejection: r.rejection.map((o) => ({ ...o })) };
}

export interface RolloutCorrectionResult {
  /** Per response, per token: the importance weight (0 outside the mask); absent without rolloutIs. */
  weights?: Float64Array[];
  /** Per response, per token: the mask after rejection (the input mask without rejection). */
  mask: Float64Array[];
  /** verl's `rollout_corr/...` metrics. */
  metrics: Record<string, number>;
}

type Rows = readonly ArrayLike<number>[];

/** Batch statistics over per-response rows, as verl's masked_* helpers on a padded batch. */
class Batch {
  constructor(readonly mask: Rows) {}
  get tokenCount(): number {
    let n = 0;
    for (const m of this.mask) for (let t = 0; t < m.length; t++) n += m[t] as number;
    return n;
  }
  /** masked_mean over every token. */
  mean(values: (i: number, t: number) => number): number {
    let sum = 0;
    let n = 0;
    this.mask.forEach((m, i) => {
      for (let t = 0; t < m.length; t++) {
        const w = m[t] as number;
        if (w !== 0) sum += values(i, t) * w;
        n += w;
      }
    });
    return sum / (n + 1e-8);
  }
  /** masked_sum per response. */
  rowSums(values: (i: number, t: number) => number): Float64Array {
    return Float64Array.from(this.mask, (m, i) => {
      let sum = 0;
      for (let t = 0; t < m.length; t++) if (m[t] !== 0) sum += values(i, t) * (m[t] as number);
      return sum;
    });
  }
  /** masked_mean per response (0 for a response without tokens). */
  rowMeans(values: (i: number, t: number) => number): Float64Array {
    const sums = this.rowSums(values);
    return sums.map((s, i) => s / (rowCount(this.mask[i] as ArrayLike<number>) + 1e-8));
  }
  /** Max / min over masked tokens. */
  extreme(
    values: (i: number, t: number) => number,
    pick: (a: number, b: number) => number,
    start: number,
  ): number {
    let out = start;
    this.mask.forEach((m, i) => {
      for (let t = 0; t < m.length; t++) if (m[t] !== 0) out = pick(out, values(i, t));
    });
    return out;
  }
}

function rowCount(m: ArrayLike<number>): number {
  let n = 0;
  for (let t = 0; t < m.length; t++) n += m[t] as number;
  return n;
}

const mean = (xs: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i] as number;
  return s / xs.length;
};
/** torch.std: unbiased. */
const std = (xs: ArrayLike<number>) => {
  const m = mean(xs);
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += ((xs[i] as number) - m) ** 2;
  return Math.sqrt(s / (xs.length - 1));
};
const max = (xs: ArrayLike<number>) => Math.max(...Array.from(xs));
const min = (xs: ArrayLike<number>) => Math.min(...Array.from(xs));
const fraction = (xs: ArrayLike<number>, ok: (v: number) => boolean) => {
  let n = 0;
  for (let i = 0; i < xs.length; i++) if (ok(xs[i] as number)) n++;
  return n / xs.length;
};
const clamp = (x: number, lo: number, hi: number) => Math.min(Math.max(x, lo), hi);

/**
 * IS weights, rejection mask and metrics from the training policy's old logprobs and the rollout
 * engine's. oldLogprobs[i], rolloutLogprobs[i], mask[i]: [responseLength_i]. Mirrors
 * `compute_rollout_correction_and_rejection_mask` (decoupled mode).
 */
export function rolloutCorrection(
  oldLogprobs: Rows,
  rolloutLogprobs: Rows,
  mask: Rows,
  config: ResolvedRolloutCorrection,
): RolloutCorrectionResult {
  checkSameLength("rolloutLogprobs", rolloutLogprobs, oldLogprobs.length, "oldLogprobs");
  checkSameLength("mask", mask, oldLogprobs.length, "oldLogprobs");
  oldLogprobs.forEach((o, i) => {
    checkSameLength(
      `rolloutLogprobs[${i}]`,
      rolloutLogprobs[i] as ArrayLike<number>,
      o.length,
      `oldLogprobs[${i}]`,
    );
    checkSameLength(`mask[${i}]`, mask[i] as ArrayLike<number>, o.length, `oldLogprobs[${i}]`);
  });
  const batch = new Batch(mask);
  if (!(batch.tokenCount > 0)) throw new RangeError("rollout correction: the mask has no token");
  const logRatio = oldLogprobs.map((o, i) =>
    Float64Array.from(o, (v, t) => v - ((rolloutLogprobs[i] as ArrayLike<number>)[t] as number)),
  );
  const metrics: Record<string, number> = {};
  let weights: Float64Array[] | undefined;
  if (config.rolloutIs) {
    const r = importanceWeights(logRatio, batch, config);
    weights = r.weights;
    Object.assign(metrics, r.metrics);
  }
  let keptMask = mask.map((m) => Float64Array.from(m));
  if (config.rejection.length > 0) {
    const r = rejectionMask(logRatio, batch, config.rejection);
    keptMask = r.mask;
    Object.assign(metrics, r.metrics);
  }
  Object.assign(metrics, offPolicyMetrics(oldLogprobs, rolloutLogprobs, mask));
  const prefixed: Record<string, number> = {};
  for (const [k, v] of Object.entries(metrics)) prefixed[`rollout_corr/${k}`] = v;
  return { ...(weights ? { weights } : {}), mask: keptMask, metrics: prefixed };
}

function importanceWeights(
  logRatio: Float64Array[],
  batch: Batch,
  config: ResolvedRolloutCorrection,
): { weights: Float64Array[]; metrics: Record<string, number> } {
  const upper = config.isUpper;
  const icepop = config.isLower !== undefined;
  const lower = config.isLower ?? 1 / upper;
  const sequence = config.rolloutIs === "sequence";
  const seqLogRatio = batch.rowSums((i, t) => logRatio[i]?.[t] as number); // [responses]
  const raw = logRatio.map((lr, i) =>
    Float64Array.from(lr, (v, t) => {
      const m = batch.mask[i]?.[t] as number;
      const l = sequence ? (seqLogRatio[i] as number) : v;
      return Math.exp(clamp(l, -SAFETY_BOUND, SAFETY_BOUND)) * m;
    }),
  );
  let weights = raw.map((row) =>
    row.map((w) => (icepop ? (w >= (config.isLower as number) && w <= upper ? w : 0) : Math.min(w, upper))),
  );
  const at = (rows: Float64Array[]) => (i: number, t: number) => rows[i]?.[t] as number;
  const metrics: Record<string, number> = {};
  metrics.rollout_is_mean = batch.mean(at(weights));
  if (sequence) {
    metrics.rollout_is_max = Math.exp(Math.min(max(seqLogRatio), SAFETY_BOUND));
    metrics.rollout_is_min = Math.exp(min(seqLogRatio));
    metrics.rollout_is_ratio_fraction_high = fraction(seqLogRatio, (v) => v > Math.log(upper));
    metrics.rollout_is_ratio_fraction_low = fraction(seqLogRatio, (v) => v < Math.log(lower));
  } else {
    metrics.rollout_is_ratio_fraction_high = batch.mean((i, t) => ((raw[i]?.[t] as number) > upper ? 1 : 0));
    metrics.rollout_is_ratio_fraction_low = batch.mean((i, t) => ((raw[i]?.[t] as number) < lower ? 1 : 0));
    metrics.rollout_is_max = batch.extreme(at(weights), Math.max, Number.NEGATIVE_INFINITY);
    metrics.rollout_is_min = batch.extreme(at(weights), Math.min, Number.POSITIVE_INFINITY);
  }
  const truncated = (i: number, t: number) => clamp(weights[i]?.[t] as number, 0, upper);
  if (batch.tokenCount > 1) {
    const m = batch.mean(truncated);
    metrics.rollout_is_std = Math.sqrt(Math.max(batch.mean((i, t) => truncated(i, t) ** 2) - m * m, 0));
  } else {
    metrics.rollout_is_std = 0;
  }
  const essMean = batch.mean(truncated);
  metrics.rollout_is_eff_sample_size = 1 / batch.mean((i, t) => (truncated(i, t) / (essMean + 1e-8)) ** 2);
  const seqMeans = batch.rowMeans(at(weights));
  metrics.rollout_is_seq_mean = mean(seqMeans);
  metrics.rollout_is_seq_std = seqMeans.length > 1 ? std(seqMeans) : 0;
  metrics.rollout_is_seq_max = max(seqMeans);
  metrics.rollout_is_seq_min = min(seqMeans);
  metrics.rollout_is_seq_max_deviation = max(seqMeans.map((v) => Math.abs(v - 1)));
  const rawSeqMeans = batch.rowMeans(at(raw));
  metrics.rollout_is_seq_fraction_high = fraction(rawSeqMeans, (v) => v > upper);
  metrics.rollout_is_seq_fraction_low = fraction(rawSeqMeans, (v) => v < lower);
  if (icepop) {
    metrics.rollout_is_oob_ratio = batch.mean((i, t) => {
      const w = raw[i]?.[t] as number;
      return w < (config.isLower as number) || w > upper ? 1 : 0;
    });
  }
  if (config.rolloutIsBatchNormalize) {
    let factor: number;
    if (sequence) {
      const valid = batch.mask.map((m) => rowCount(m) > 0);
      const n = valid.filter(Boolean).length;
      factor = seqMeans.reduce((s, v, i) => s + (valid[i] ? v : 0), 0) / Math.max(n, 1e-8);
    } else {
      factor = batch.mean(at(weights));
    }
    if (factor > 1e-8) {
      weights = weights.map((row) => row.map((w) => w / factor));
      metrics.rollout_is_batch_norm_factor = factor;
    } else {
      metrics.rollout_is_batch_norm_factor = 1;
    }
  }
  return { weights, metrics };
}

function rejectionMask(
  logRatio: Float64Array[],
  batch: Batch,
  options: ResolvedRolloutCorrection["rejection"],
): { mask: Float64Array[]; metrics: Record<string, number> } {
  const safe = logRatio.map((row) => row.map((v) => clamp(v, -SAFETY_BOUND, SAFETY_BOUND)));
  const statistic = {
    k1: (v: number) => -v,
    k2: (v: number) => 0.5 * v * v,
    k3: (v: number) => Math.exp(v) - 1 - v,
  };
  const validRows = batch.mask.map((m) => rowCount(m) > 0);
  const combined = batch.mask.map((m) => new Float64Array(m.length).fill(1));
  const metrics: Record<string, number> = {};
  for (const { option, lower, upper } of options) {
    const k1 = option.endsWith("k1");
    const f = statistic[option.slice(-2) as "k1" | "k2" | "k3"];
    const token = safe.map((row) => row.map(f));
    const tokenAt = (i: number, t: number) => token[i]?.[t] as number;
    const lowerLog = k1 ? Math.log(lower as number) : 0;
    const high = k1 ? Math.log(upper) : upper;
    const keepValue = (v: number) => (k1 ? v >= lowerLog && v <= high : v <= high);
    let perToken: Float64Array[];
    let perSequence: Float64Array | undefined;
    if (option.startsWith("token")) {
      perToken = token;
    } else {
      if (option.startsWith("seq_sum")) perSequence = batch.rowSums(tokenAt);
      else if (option.startsWith("seq_mean")) perSequence = batch.rowMeans(tokenAt);
      else {
        const m = Float64Array.from(batch.mask, (row, i) => {
          let best = Number.NEGATIVE_INFINITY;
          for (let t = 0; t < row.length; t++) if (row[t] !== 0) best = Math.max(best, tokenAt(i, t));
          return best === Number.NEGATIVE_INFINITY ? 0 : best;
        });
        perSequence = m;
      }
      const seq = perSequence;
      perToken = token.map((row, i) => new Float64Array(row.length).fill(seq[i] as number));
    }
    const keep = perToken.map((row) => row.map((v) => (keepValue(v) ? 1 : 0)));
    keep.forEach((row, i) => {
      for (let t = 0; t < row.length; t++) (combined[i] as Float64Array)[t] *= row[t] as number;
    });
    const statAt = (i: number, t: number) => perToken[i]?.[t] as number;
    const prefix = `rollout_rs_${option}`;
    const seqValues = perSequence ?? batch.rowMeans(statAt);
    const seqValid = seqValues.filter((_, i) => validRows[i]);
    metrics[`${prefix}_mean`] = batch.mean(statAt);
    const sequenceLevel = perSequence !== undefined && seqValid.length > 0;
    if (sequenceLevel) {
      metrics[`${prefix}_max`] = max(seqValid);
      metrics[`${prefix}_min`] = min(seqValid);
      metrics[`${prefix}_fraction_high`] = fraction(seqValid, (v) => v > high);
      metrics[`${prefix}_fraction_low`] = k1 ? fraction(seqValid, (v) => v < lowerLog) : 0;
    } else {
      metrics[`${prefix}_max`] = batch.extreme(statAt, Math.max, Number.NEGATIVE_INFINITY);
      metrics[`${prefix}_min`] = batch.extreme(statAt, Math.min, Number.POSITIVE_INFINITY);
      metrics[`${prefix}_fraction_high`] = batch.mean((i, t) => (statAt(i, t) > high ? 1 : 0));
      metrics[`${prefix}_fraction_low`] = k1 ? batch.mean((i, t) => (statAt(i, t) < lowerLog ? 1 : 0)) : 0;
    }
    if (batch.tokenCount > 1) {
      const c = (i: number, t: number) => clamp(statAt(i, t), k1 ? lowerLog : 0, high);
      const m = batch.mean(c);
      metrics[`${prefix}_std`] = Math.sqrt(Math.max(batch.mean((i, t) => c(i, t) ** 2) - m * m, 0));
    } else {
      metrics[`${prefix}_std`] = 0;
    }
    if (seqValid.length > 0) {
      metrics[`${prefix}_seq_mean`] = mean(seqValid);
      metrics[`${prefix}_seq_std`] = seqValid.length > 1 ? std(seqValid) : 0;
      metrics[`${prefix}_seq_max`] = max(seqValid);
      metrics[`${prefix}_seq_min`] = min(seqValid);
      metrics[`${prefix}_seq_max_deviation`] = max(seqValid.map(Math.abs));
      metrics[`${prefix}_seq_fraction_high`] = fraction(seqValid, (v) => v > high);
      if (k1) metrics[`${prefix}_seq_fraction_low`] = fraction(seqValid, (v) => v < lowerLog);
    } else {
      for (const k of [
        "seq_mean",
        "seq_std",
        "seq_max",
        "seq_min",
        "seq_max_deviation",
        "seq_fraction_high",
      ]) {
        metrics[`${prefix}_${k}`] = 0;
      }
      metrics[`${prefix}_seq_fraction_low`] = 0;
    }
    metrics[`${prefix}_masked_fraction`] = batch.mean((i, t) => 1 - (keep[i]?.[t] as number));
    const rejectedRows = keep.map((row, i) => {
      const m = batch.mask[i] as ArrayLike<number>;
      for (let t = 0; t < row.length; t++) if (row[t] === 0 && m[t] !== 0) return true;
      return false;
    });
    const validCount = validRows.filter(Boolean).length;
    metrics[`${prefix}_seq_masked_fraction`] =
      validCount > 0 ? rejectedRows.filter((r, i) => r && validRows[i]).length / validCount : 0;
  }
  metrics.rollout_rs_masked_fraction = batch.mean((i, t) => 1 - (combined[i]?.[t] as number));
  const rejected = combined.map((row, i) => {
    const m = batch.mask[i] as ArrayLike<number>;
    for (let t = 0; t < row.length; t++) if (!((row[t] as number) > 0.5) && m[t] !== 0) return 1;
    return 0;
  });
  metrics.rollout_rs_seq_masked_fraction = mean(rejected);
  const kept = combined.map((row, i) =>
    row.map((k, t) => k * ((batch.mask[i] as ArrayLike<number>)[t] as number)),
  );
  return { mask: kept, metrics };
}

/**
 * verl's compute_offpolicy_metrics: perplexities of both policies, their KL, χ² divergences.
 * Keys without the `rollout_corr/` prefix.
 */
export function offPolicyMetrics(
  oldLogprobs: Rows,
  rolloutLogprobs: Rows,
  mask: Rows,
): Record<string, number> {
  const batch = new Batch(mask);
  const old = (i: number, t: number) => oldLogprobs[i]?.[t] as number;
  const rollout = (i: number, t: number) => rolloutLogprobs[i]?.[t] as number;
  const lr = (i: number, t: number) => old(i, t) - rollout(i, t);
  const trainMean = batch.rowMeans(old);
  const rolloutMean = batch.rowMeans(rollout);
  const diff = rolloutMean.map((v, i) => v - (trainMean[i] as number));
  const seqLogRatio = batch.rowSums(lr);
  return {
    training_ppl: mean(trainMean.map((m) => Math.exp(-m))),
    training_log_ppl: mean(trainMean.map((m) => -m)),
    kl: batch.mean((i, t) => rollout(i, t) - old(i, t)),
    k3_kl: batch.mean((i, t) => Math.exp(lr(i, t)) - lr(i, t) - 1),
    rollout_ppl: mean(rolloutMean.map((m) => Math.exp(-m))),
    rollout_log_ppl: mean(rolloutMean.map((m) => -m)),
    log_ppl_diff: mean(diff),
    log_ppl_abs_diff: mean(diff.map(Math.abs)),
    log_ppl_diff_max: max(diff),
    log_ppl_diff_min: min(diff),
    ppl_ratio: mean(diff.map(Math.exp)),
    chi2_token: batch.mean((i, t) => Math.exp(clamp(lr(i, t), -SAFETY_BOUND, SAFETY_BOUND)) ** 2) - 1,
    chi2_seq: mean(seqLogRatio.map((s) => Math.exp(2 * clamp(s, -SAFETY_BOUND, SAFETY_BOUND)))) - 1,
  };
}
