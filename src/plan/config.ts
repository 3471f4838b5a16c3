// What `plan()` takes, checked at the boundary (errors name the field, the value and what is
// allowed), with the batch and training layout taken from a recipe when one is named.
import { recipe as recipeByName, recipes } from "../../recipes/index.js";
import { type ExperimentConfig, resolveConfig } from "../rl/config.js";
import { type GpuType, gpuTypes, resolveGpu } from "./gpus.js";
import type { RolloutLayoutInput, TrainLayoutInput } from "./layout.js";
import type { DeviceKind, Dtype, Recompute } from "./memory.js";

/** The RL batch of one step; every size says what it counts. */
export interface PlanBatch {
  promptsPerStep: number;
  samplesPerPrompt: number;
  /** Tokens of each prompt (the longest, for memory). */
  promptTokens: number;
  /** The response limit (memory and the KV cache are sized for it). */
  responseTokens: number;
  /** The mean response length, for the time estimate; default responseTokens (every response runs to the limit). */
  meanResponseTokens: number;
  /** Packed tokens of one training micro-batch on one data-parallel replica. */
  tokensPerMicroBatch: number;
  /** Optimizer updates per step. */
  miniBatchesPerStep: number;
  /** Passes over the step's batch. */
  epochsPerStep: number;
}

/**
 * The efficiencies the step-time estimate assumes (fractions of the GPU type's peaks). They are
 * assumptions, not measurements: override them with what a run of your own measured.
 */
export interface Assumptions {
  /** Model FLOPs per second of training passes ÷ bf16 peak (Megatron-class MoE runs report 0.2–0.45). */
  trainComputeEfficiency: number;
  /** The same for rollout prefill. */
  prefillComputeEfficiency: number;
  /** Bytes per second a decode step reads ÷ HBM peak. */
  hbmEfficiency: number;
  /** Bus bandwidth a collective reaches ÷ link peak (NVLink or network). */
  linkEfficiency: number;
  /** Fixed cost of one collective call within a node / across nodes, seconds. */
  nvlinkLatencySeconds: number;
  networkLatencySeconds: number;
  /** Device memory that is not the model's: CUDA context, communicator buffers, allocator fragmentation. */
  runtimeReserveBytes: number;
  /** Host ↔ device bandwidth an offload reaches ÷ PCIe peak. */
  pcieEfficiency: number;
}

export const defaultAssumptions: Assumptions = {
  trainComputeEfficiency: 0.35,
  prefillComputeEfficiency: 0.5,
  hbmEfficiency: 0.7,
  linkEfficiency: 0.7,
  nvlinkLatencySeconds: 15e-6,
  networkLatencySeconds: 40e-6,
  runtimeReserveBytes: 4 * 2 ** 30,
  pcieEfficiency: 0.7,
};

export type OffloadInput = "none" | "all" | { parameters?: boolean; optimizer?: boolean };

export interface PlanConfig {
  /** An HF folder, a config.json path, or the parsed config.json (default: the recipe's model.path). */
  model?: string | Record<string, unknown>;
  /** A recipe by name (recipes/index.ts) or an ExperimentConfig: the batch, the training layout and KL. */
  recipe?: string | ExperimentConfig;
  /** A GPU type (H20-96GB, H100-80GB, H200-141GB, B200) or a custom entry (see resolveGpu). */
  gpu: string | Partial<GpuType>;
  /** GPUs in all (default: the recipe's parallel.gpus). */
  gpus?: number;
  train?: TrainLayoutInput;
  rollout?: RolloutLayoutInput;
  batch?: Partial<PlanBatch>;
  /** Parameter (and activation) dtype. Default bfloat16. */
  dtype?: Dtype;
  /**
   * Whose kernels the activation and logprob estimates follow: "cuda" (default: flash attention,
   * fused norms, rope and SwiGLU, one chunk of logits) or "cpu" (the CPU engine, as CPU workers and
   * the multi-rank tests run it: composite norms, the whole micro-batch's logits kept for backward;
   * src/plan/cpu-activations.ts). Memory capacity and times still come from `gpu`.
   */
  device?: DeviceKind;
  /** What lives in host memory while the rollout runs (back on the GPU for the update). Default none. */
  offload?: OffloadInput;
  /** Activation recomputation of the training passes. Default none. */
  recompute?: Recompute;
  /** A reference model (KL loss or KL in the reward); default from the recipe, else false. */
  reference?: boolean;
  /** Old logprobs recomputed by a forward before the update (default true; false when rollout logprobs are used as they are). */
  oldLogprobs?: boolean;
  /** The optimizer's weight-decay rule (changes only how ZeRO groups pad). Default "none": every parameter decays. */
  noDecay?: "none" | "biases-and-norms";
  /** Qwen2.5-VL: the vision tower frozen (held as buffers, no gradients or optimizer state). */
  freezeVision?: boolean;
  /** Tokens whose vocabulary logits exist at once in the logprob pass. Default 1024 (the engine's). */
  logprobChunkTokens?: number;
  assumptions?: Partial<Assumptions>;
}

export interface ResolvedPlanConfig {
  model: string | Record<string, unknown>;
  gpu: GpuType;
  gpus: number;
  train: TrainLayoutInput;
  rollout: RolloutLayoutInput;
  batch: PlanBatch;
  dtype: Dtype;
  device: DeviceKind;
  offload: { parameters: boolean; optimizer: boolean };
  recompute: Recompute;
  reference: boolean;
  oldLogprobs: boolean;
  noDecay: "none" | "biases-and-norms";
  freezeVision: boolean;
  logprobChunkTokens: number;
  assumptions: Assumptions;
  /** The recipe's name, when one was used. */
  recipe?: string;
}

export class PlanConfigError extends RangeError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "PlanConfigError";
  }
}

const topKeys = [
  "model",
  "recipe",
  "gpu",
  "gpus",
  "train",
  "rollout",
  "batch",
  "dtype",
  "device",
  "offload",
  "recompute",
  "reference",
  "oldLogprobs",
  "noDecay",
  "freezeVision",
  "logprobChunkTokens",
  "assumptions",
];
const batchKeys: (keyof PlanBatch)[] = [
  "promptsPerStep",
  "samplesPerPrompt",
  "promptTokens",
  "responseTokens",
  "meanResponseTokens",
  "tokensPerMicroBatch",
  "miniBatchesPerStep",
  "epochsPerStep",
];

function positiveInt(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
    throw new PlanConfigError(field, `${JSON.stringify(v)} must be an integer ≥ 1`);
  }
  return v;
}

function oneOf<T extends string>(v: unknown, field: string, values: readonly T[], fallback: T): T {
  if (v === undefined) return fallback;
  if (typeof v !== "string" || !values.includes(v as T)) {
    throw new PlanConfigError(
      field,
      `${JSON.stringify(v)}; allowed: ${values.map((x) => JSON.stringify(x)).join(", ")}`,
    );
  }
  return v as T;
}

function flag(v: unknown, field: string, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw new PlanConfigError(field, `${JSON.stringify(v)} must be true or false`);
  return v;
}

function fromRecipe(r: string | ExperimentConfig): {
  name: string;
  modelPath: string;
  batch: Partial<PlanBatch>;
  train: TrainLayoutInput;
  /** The recipe's rollout.parallel, when it has one. */
  rollout?: RolloutLayoutInput;
  gpus: number;
  reference: boolean;
  oldLogprobs: boolean;
} {
  let config: ExperimentConfig;
  if (typeof r === "string") {
    if (!Object.hasOwn(recipes, r)) {
      throw new PlanConfigError(
        "recipe",
        `${JSON.stringify(r)} is not a recipe; known: ${Object.keys(recipes).join(", ")}`,
      );
    }
    config = recipeByName(r);
  } else if (r !== null && typeof r === "object") {
    config = r;
  } else {
    throw new PlanConfigError(
      "recipe",
      `${JSON.stringify(r)}; expected a recipe name or an ExperimentConfig`,
    );
  }
  let c: ReturnType<typeof resolveConfig>;
  try {
    c = resolveConfig(config);
  } catch (error) {
    throw new PlanConfigError("recipe", (error as Error).message);
  }
  const p = c.parallel;
  return {
    name: typeof r === "string" ? r : c.name,
    modelPath: c.model.path,
    batch: {
      promptsPerStep: c.promptsPerStep,
      samplesPerPrompt: c.rollout.samplesPerPrompt,
      promptTokens: c.data.maxPromptTokens,
      responseTokens: c.rollout.maxResponseTokens,
      tokensPerMicroBatch: c.tokensPerMicroBatch,
      miniBatchesPerStep: c.miniBatchesPerStep,
      epochsPerStep: c.epochsPerStep,
    },
    train: {
      tensor: p.tensor,
      context: p.context,
      pipeline: p.pipeline,
      expert: p.expert,
      expertTensor: p.expertTensor,
      sequenceParallel: p.sequenceParallel,
      ...(p.firstStageLayers !== undefined ? { firstStageLayers: p.firstStageLayers } : {}),
      ...(p.lastStageLayers !== undefined ? { lastStageLayers: p.lastStageLayers } : {}),
    },
    gpus: p.gpus,
    // The recipe's rollout layout (rollout.parallel); none: the training layout's tensor size.
    ...(c.rollout.parallel ? { rollout: { tensor: c.rollout.parallel.tensor } } : {}),
    reference: c.algorithm.loss.kl !== undefined || c.algorithm.klReward !== undefined,
    oldLogprobs: c.algorithm.recomputeOldLogprobs !== false,
  };
}

/** Checks a PlanConfig and fills every default (the recipe's values under the config's own). */
export function resolvePlanConfig(input: PlanConfig): ResolvedPlanConfig {
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw new PlanConfigError("config", "expected an object {model, gpu, gpus, train, rollout, batch, …}");
  }
  for (const k of Object.keys(input)) {
    if (!topKeys.includes(k)) throw new PlanConfigError(k, `unknown; allowed: ${topKeys.join(", ")}`);
  }
  const r = input.recipe === undefined ? undefined : fromRecipe(input.recipe);
  const model = input.model ?? r?.modelPath;
  if (model === undefined)
    throw new PlanConfigError("model", "missing; give an HF folder, a config.json path or the parsed config");
  if (input.gpu === undefined) {
    throw new PlanConfigError(
      "gpu",
      `missing; known: ${Object.keys(gpuTypes).join(", ")}, or a custom entry`,
    );
  }
  let gpu: GpuType;
  try {
    gpu = resolveGpu(input.gpu);
  } catch (error) {
    const m = /^(gpu(?:\.\w+)?): (.*)$/s.exec((error as Error).message);
    throw new PlanConfigError(m?.[1] ?? "gpu", m?.[2] ?? (error as Error).message);
  }
  const gpus = positiveInt(input.gpus ?? r?.gpus, "gpus");
  const given = input.batch ?? {};
  if (given === null || typeof given !== "object") throw new PlanConfigError("batch", "expected an object");
  for (const k of Object.keys(given)) {
    if (!batchKeys.includes(k as keyof PlanBatch)) {
      throw new PlanConfigError(`batch.${k}`, `unknown; allowed: ${batchKeys.join(", ")}`);
    }
  }
  const merged: Partial<PlanBatch> = { ...(r?.batch ?? {}), ...given };
  for (const k of ["promptsPerStep", "samplesPerPrompt", "promptTokens", "responseTokens"] as const) {
    if (merged[k] === undefined) {
      throw new PlanConfigError(`batch.${k}`, "missing (give it, or a recipe that has it)");
    }
  }
  const promptTokens = positiveInt(merged.promptTokens, "batch.promptTokens");
  const responseTokens = positiveInt(merged.responseTokens, "batch.responseTokens");
  const batch: PlanBatch = {
    promptsPerStep: positiveInt(merged.promptsPerStep, "batch.promptsPerStep"),
    samplesPerPrompt: positiveInt(merged.samplesPerPrompt, "batch.samplesPerPrompt"),
    promptTokens,
    responseTokens,
    meanResponseTokens: positiveInt(merged.meanResponseTokens ?? responseTokens, "batch.meanResponseTokens"),
    tokensPerMicroBatch: positiveInt(
      merged.tokensPerMicroBatch ?? promptTokens + responseTokens,
      "batch.tokensPerMicroBatch",
    ),
    miniBatchesPerStep: positiveInt(merged.miniBatchesPerStep ?? 1, "batch.miniBatchesPerStep"),
    epochsPerStep: positiveInt(merged.epochsPerStep ?? 1, "batch.epochsPerStep"),
  };
  if (batch.meanResponseTokens > responseTokens) {
    throw new PlanConfigError(
      "batch.meanResponseTokens",
      `${batch.meanResponseTokens} exceeds batch.responseTokens ${responseTokens}`,
    );
  }
  if (batch.tokensPerMicroBatch < promptTokens + responseTokens) {
    throw new PlanConfigError(
      "batch.tokensPerMicroBatch",
      `${batch.tokensPerMicroBatch} cannot hold one sequence of ${promptTokens} + ${responseTokens} tokens`,
    );
  }
  let offload = { parameters: false, optimizer: false };
  const o = input.offload;
  if (o === "all") offload = { parameters: true, optimizer: true };
  else if (o !== undefined && o !== "none") {
    if (o === null || typeof o !== "object") {
      throw new PlanConfigError(
        "offload",
        `${JSON.stringify(o)}; allowed: "none", "all", {parameters?, optimizer?}`,
      );
    }
    for (const k of Object.keys(o)) {
      if (k !== "parameters" && k !== "optimizer") {
        throw new PlanConfigError(`offload.${k}`, "unknown; allowed: parameters, optimizer");
      }
    }
    offload = {
      parameters: flag(o.parameters, "offload.parameters", false),
      optimizer: flag(o.optimizer, "offload.optimizer", false),
    };
  }
  const assumptions = { ...defaultAssumptions };
  if (input.assumptions !== undefined) {
    if (input.assumptions === null || typeof input.assumptions !== "object") {
      throw new PlanConfigError("assumptions", "expected an object");
    }
    for (const [k, v] of Object.entries(input.assumptions)) {
      if (!Object.hasOwn(defaultAssumptions, k)) {
        throw new PlanConfigError(
          `assumptions.${k}`,
          `unknown; allowed: ${Object.keys(defaultAssumptions).join(", ")}`,
        );
      }
      const fraction = k.endsWith("Efficiency");
      if (typeof v !== "number" || !(v > 0) || (fraction && v > 1) || !Number.isFinite(v)) {
        throw new PlanConfigError(
          `assumptions.${k}`,
          `${JSON.stringify(v)} must be ${fraction ? "in (0, 1]" : "a positive number"}`,
        );
      }
      (assumptions as Record<string, number>)[k] = v;
    }
  }
  for (const name of ["train", "rollout"] as const) {
    const v = input[name];
    if (v !== undefined && (v === null || typeof v !== "object" || Array.isArray(v))) {
      throw new PlanConfigError(name, `${JSON.stringify(v)}; expected an object`);
    }
  }
  const train = { ...(r?.train ?? {}), ...(input.train ?? {}) };
  const rollout = input.rollout ?? r?.rollout ?? {};
  return {
    model,
    gpu,
    gpus,
    train,
    rollout,
    batch,
    dtype: oneOf(input.dtype, "dtype", ["bfloat16", "float16", "float32"] as const, "bfloat16"),
    device: oneOf(input.device, "device", ["cuda", "cpu"] as const, "cuda"),
    offload,
    recompute: oneOf(input.recompute, "recompute", ["none", "full"] as const, "none"),
    reference: flag(input.reference, "reference", r?.reference ?? false),
    oldLogprobs: flag(input.oldLogprobs, "oldLogprobs", r?.oldLogprobs ?? true),
    noDecay: oneOf(input.noDecay, "noDecay", ["none", "biases-and-norms"] as const, "none"),
    freezeVision: flag(input.freezeVision, "freezeVision", false),
    logprobChunkTokens: positiveInt(input.logprobChunkTokens ?? 1024, "logprobChunkTokens"),
    assumptions,
    ...(r ? { recipe: r.name } : {}),
  };
}
