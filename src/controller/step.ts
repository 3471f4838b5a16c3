// A step's batch and what is computed from it alone: the samples and their stage results, packing
// them for the workers, and the step's metrics row (verl's names) as a pure function of the batch.
import type { ImageInputs } from "../native/model.js";
import { trainingFlops } from "../plan/flops.js";
import { gpuTypes } from "../plan/gpus.js";
import { type ModelSpec, modelSpec } from "../plan/model.js";
import type { ExperimentStage as StageName } from "../protocol/messages.js";
import type { RolloutRecord } from "../rl/rollouts.js";

/** One response with everything the stages learn about it (the rollouts table's fields and more). */
export interface Sample extends RolloutRecord {
  /** MoE, routing replay on: the experts of every token, [prompt + response, moe layers, topK]. */
  experts?: Int32Array;
  extra: Record<string, unknown>;
  rewardStatus?: "ok" | "timeout" | "error";
  rewardReason?: string;
  /** ReMax: the greedy response's score for the same prompt. */
  baselineScore?: number;
  /** Per response token: the reward after the KL penalty (when KL is in the reward). */
  tokenRewards?: Float64Array;
  /** PPO with a critic: per response token, the critic's value when scored and the GAE return. */
  values?: Float32Array;
  returns?: Float32Array;
  /** The reward function's fields besides score (verl's reward_extra_info), for validation metrics. */
  rewardExtras?: Record<string, unknown>;
  /** Rollout correction: per response token, the importance weight and the mask after rejection. */
  rolloutIsWeights?: Float32Array;
  lossMask?: Float32Array;
  /** Vision-language models: the prompt's preprocessed images (shared by its group). */
  pixels?: ImageInputs;
}

/** The batch of the step in progress, as the stages fill it. */
export interface StepBatch {
  step: number;
  samples: Sample[];
  /** Generation rounds so far (dynamic sampling may add some). */
  rounds: number;
  stagesDone: StageName[];
  /** The old_logprobs stage left the old logprobs to the update's own forward (on-policy). */
  oldLogprobsFromUpdate?: boolean;
  timings: Record<string, number>;
  metrics: Record<string, number>;
}

export function concat(
  parts: ArrayLike<number>[],
  Type: Float32ArrayConstructor | Int32ArrayConstructor,
): Float32Array | Int32Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Type(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Per predicted token of a packed (prompt + response) sequence: zeros over the prompt, `values` over the response. */
export function responseAligned(sample: Sample, values: ArrayLike<number> | undefined): Float32Array {
  const out = new Float32Array(sample.prompt.length + sample.response.length - 1);
  if (values) out.set(values, sample.prompt.length - 1);
  return out;
}

/** Sequences packed one after another (prompt then response each) with their boundaries. */
export function packSamples(samples: readonly Sample[]): { tokens: Int32Array; cuSeqlens: Int32Array } {
  const cu = new Int32Array(samples.length + 1);
  samples.forEach((s, i) => {
    cu[i + 1] = (cu[i] as number) + s.prompt.length + s.response.length;
  });
  const tokens = concat(
    samples.flatMap((s) => [s.prompt, s.response]),
    Int32Array,
  ) as Int32Array;
  return { tokens, cuSeqlens: cu };
}

/**
 * Peak dense bf16 FLOP/s by device name (the planner's GPU table), for perf/mfu/actor when the
 * config gives none.
 */
export function defaultPeakFlops(deviceName: string | undefined): number | undefined {
  if (!deviceName) return undefined;
  const type = /\bH20\b/.test(deviceName)
    ? "H20-96GB"
    : /H200/.test(deviceName)
      ? "H200-141GB"
      : /H100|H800|GH200/.test(deviceName)
        ? "H100-80GB"
        : /B200/.test(deviceName)
          ? "B200"
          : /A100|A800/.test(deviceName)
            ? "A100-80GB"
            : undefined;
  return type ? gpuTypes[type]?.bf16FlopsPerSecond : undefined;
}

export function stats(values: ArrayLike<number>): { mean: number; max: number; min: number } {
  if (values.length === 0) return { mean: Number.NaN, max: Number.NaN, min: Number.NaN };
  let sum = 0;
  let max = -Infinity;
  let min = Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    sum += v;
    if (v > max) max = v;
    if (v < min) min = v;
  }
  return { mean: sum / values.length, max, min };
}

export function putStats(into: Record<string, number>, prefix: string, values: ArrayLike<number>): void {
  const s = stats(values);
  into[`${prefix}/mean`] = s.mean;
  into[`${prefix}/max`] = s.max;
  into[`${prefix}/min`] = s.min;
}

/**
 * The model's shape for the FLOP model of perf/mfu/actor (src/plan/flops.ts: active parameters per
 * token, attention by sequence length), read from config.json's shapes; or why there is none
 * (perf/mfu/actor is then left out, and the reason logged).
 */
export function readFlopShape(modelPath: string): ModelSpec | string {
  try {
    return modelSpec(modelPath);
  } catch (error) {
    return (error as Error).message;
  }
}

/** verl's critic/vf_explained_var: 1 − var(returns − values) / (var(returns) + 1e-5), unbiased variances. */
export function explainedVariance(returns: Float32Array, values: Float32Array): number {
  const n = returns.length;
  if (n === 0) return Number.NaN;
  const variance = (x: (i: number) => number) => {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += x(i);
    const mean = sum / n;
    let squares = 0;
    for (let i = 0; i < n; i++) squares += (x(i) - mean) ** 2;
    return squares / (n - 1);
  };
  const diff = variance((i) => (returns[i] as number) - (values[i] as number));
  return 1 - diff / (variance((i) => returns[i] as number) + 1e-5);
}

/** What stepMetrics needs besides the batch. */
export interface StepMetricsContext {
  maxPromptTokens: number;
  gpus: number;
  epochsPerStep: number;
  /** Peak FLOP/s of one device; perf/mfu/actor is left out without it (or without the shape). */
  peakFlopsPerDevice?: number;
  flopShape?: ModelSpec;
}

/**
 * A finished step's metrics row: score, reward, advantage, value and length statistics, the
 * stages' metrics and timings, throughput (per GPU, all ranks counted) and MFU.
 */
export function stepMetrics(
  batch: StepBatch,
  c: StepMetricsContext,
): { step: number } & Record<string, number> {
  const m: { step: number } & Record<string, number> = { step: batch.step };
  const samples = batch.samples;
  putStats(
    m,
    "critic/score",
    samples.map((s) => s.score ?? 0),
  );
  putStats(
    m,
    "critic/rewards",
    samples.map((s) => (s.tokenRewards ? s.tokenRewards.reduce((a, b) => a + b, 0) : (s.shapedScore ?? 0))),
  );
  if (samples.some((s) => s.acc !== undefined))
    m["critic/acc/mean"] = stats(samples.map((s) => s.acc ?? 0)).mean;
  const advantageTokens = concat(
    samples.map((s) => s.advantages ?? new Float32Array()),
    Float32Array,
  );
  putStats(m, "critic/advantages", advantageTokens);
  if (samples.some((s) => s.values)) {
    const values = concat(
      samples.map((s) => s.values ?? new Float32Array()),
      Float32Array,
    ) as Float32Array;
    const returns = concat(
      samples.map((s) => (s.values ? (s.returns ?? new Float32Array()) : new Float32Array())),
      Float32Array,
    ) as Float32Array;
    putStats(m, "critic/values", values);
    putStats(m, "critic/returns", returns);
    m["critic/vf_explained_var"] = explainedVariance(returns, values);
  }
  const responseLengths = samples.map((s) => s.response.length);
  const promptLengths = samples.map((s) => s.prompt.length);
  putStats(m, "response_length", responseLengths);
  m["response_length/clip_ratio"] =
    samples.filter((s) => s.finishReason === "length").length / samples.length;
  putStats(m, "prompt_length", promptLengths);
  m["prompt_length/clip_ratio"] =
    samples.filter((s) => s.prompt.length >= c.maxPromptTokens).length / samples.length;
  m["reward/errors"] = samples.filter((s) => s.rewardStatus !== "ok").length;
  Object.assign(m, batch.metrics, batch.timings);
  const stepTime = Object.values(batch.timings).reduce((a, b) => a + b, 0);
  m["timing_s/step"] = stepTime;
  const totalTokens = responseLengths.reduce((a, b) => a + b, 0) + promptLengths.reduce((a, b) => a + b, 0);
  m["perf/total_num_tokens"] = totalTokens;
  m["perf/time_per_step"] = stepTime;
  m["perf/throughput"] = totalTokens / stepTime / c.gpus;
  const responseTokens = responseLengths.reduce((a, b) => a + b, 0);
  m["timing_per_token_ms/gen"] = responseTokens
    ? ((batch.timings["timing_s/gen"] ?? 0) * 1000) / responseTokens
    : 0;
  const peak = c.peakFlopsPerDevice;
  const updateS = batch.timings["timing_s/update_actor"];
  if (peak && updateS && c.flopShape) {
    const lengths = samples.map((s) => s.prompt.length + s.response.length);
    const flops = c.epochsPerStep * trainingFlops(c.flopShape, lengths);
    m["perf/mfu/actor"] = flops / (updateS * peak * c.gpus);
  }
  return m;
}
