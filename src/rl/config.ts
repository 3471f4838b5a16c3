// An experiment's configuration as typed code: every count has an explicit name, defaults are
// written here once, and resolveConfig() refuses a bad value before any GPU work, naming the
// field, the value and what is allowed. Names follow verl's where one exists (see each field).
import {
  type KlPenaltyType,
  klPenaltyTypes,
  type LossAggMode,
  type PolicyLossConfig,
  policyLossModes,
} from "../native/policy-loss.js";
import type { LrSchedule } from "../native/train.js";
import type { KlEstimator } from "./kl.js";
import type { RewardFnRef } from "./rewards/types.js";
import {
  type ResolvedRolloutCorrection,
  type RolloutCorrectionConfig,
  resolveRolloutCorrection,
} from "./rollout-correction.js";

export type AdvantageEstimator =
  | "grpo"
  | "dr-grpo"
  | "rloo"
  | "reinforce++"
  | "reinforce++-baseline"
  | "remax"
  | "grpo_passk"
  | "opo"
  | "gpg"
  | "gae";
export const advantageEstimators: AdvantageEstimator[] = [
  "grpo",
  "dr-grpo",
  "rloo",
  "reinforce++",
  "reinforce++-baseline",
  "remax",
  "grpo_passk",
  "opo",
  "gpg",
  "gae",
];
/** verl's algorithm.adv_estimator names that tiller spells differently. */
const advantageAliases: Record<string, AdvantageEstimator> = {
  reinforce_plus_plus: "reinforce++",
  reinforce_plus_plus_baseline: "reinforce++-baseline",
};

/**
 * How a model is split over GPUs (Megatron's names in verl's scripts): tensor × pipeline × context
 * × data = GPUs; experts are split over `expert` ranks taken from data × context (and tensor, when
 * `expertTensor` is 1), as Megatron's expert-model-parallel groups are.
 */
export interface ParallelLayout {
  tensor?: number;
  pipeline?: number;
  context?: number;
  expert?: number;
  /** Tensor parallelism inside each expert (Megatron's expert_tensor_parallel_size). Default 1. */
  expertTensor?: number;
  /** Data-parallel replicas; default: GPUs / (tensor · pipeline · context). */
  data?: number;
  /** Pipeline stages per rank (virtual pipeline); default 1. */
  virtualPipeline?: number;
  /**
   * Megatron's sequence parallelism (tensor > 1): norms and residuals on token shards of the
   * tensor group, all-gather before and reduce-scatter after the tensor-parallel matmuls, so
   * activation memory outside attention and the MLP falls by the tensor size. Default false.
   */
  sequenceParallel?: boolean;
  /**
   * Pipeline stages (pipeline > 1): decoder layers of the first and of the last stage, give both
   * or neither; the middle stages share the rest evenly (verl's DeepSeek-V3 recipe: 3 and 2 of 61
   * layers at pipeline 16). Neither: an even split, which the layer count must allow.
   */
  firstStageLayers?: number;
  lastStageLayers?: number;
}

/** The shape numbers of a model that a parallel layout must divide (from its HF config.json). */
export interface ModelShape {
  layers: number;
  attentionHeads: number;
  kvHeads: number;
  hiddenSize: number;
  vocabSize: number;
  experts?: number;
}

export interface ExperimentConfig {
  /** A short name; the run folder is `<runDir>` or `runs/<name>-<time>`. */
  name?: string;
  /** Where metrics.arrow, checkpoints and the report go (absolute, or relative to the client's cwd). */
  runDir?: string;
  /** Seeds data order and sampling; a resumed run continues the same streams. Default 0. */
  seed?: number;
  model: {
    /** An HF folder: config.json, safetensors, tokenizer files. */
    path: string;
    /** Parameter dtype. Default bfloat16 on CUDA, float32 on CPU. */
    dtype?: "float32" | "bfloat16" | "float16";
    /** The model's shape, for validating `parallel` without reading the folder (recipes). */
    shape?: ModelShape;
    /**
     * Vision-language models (verl's freeze_vision_tower): the vision tower is not trained. Default
     * false: the whole model is trained.
     */
    freezeVisionTower?: boolean;
  };
  data: {
    /** Prompt files in verl's layout (JSONL or Parquet). */
    train: string | string[];
    /** verl's data.max_prompt_length: longer prompts are dropped (the count is shown). */
    maxPromptTokens: number;
    /** Default true. */
    shuffle?: boolean;
    /** Render prompts with the tokenizer's chat template (default true). */
    chatTemplate?: boolean;
    /** Held-out prompt files for validation (verl's data.val_files), in the same layout. */
    val?: string | string[];
  };
  /** Validation on data.val (verl's trainer.test_freq, val_before_train, rollout.val_kwargs). */
  validation?: {
    /** Validate after every this many steps and after the last (0: only when asked). Default 0. */
    everySteps?: number;
    /** Responses per validation prompt (verl's val_kwargs.n). Default 1. */
    samplesPerPrompt?: number;
    /** 0 (the default) decodes greedily (verl's val_kwargs.do_sample false); > 0 samples. */
    temperature?: number;
    /** Default 1. */
    topP?: number;
    /** Default 0 (off). */
    topK?: number;
    /** Validate once before the first step, logged at step 0 (verl's val_before_train). Default true. */
    beforeTraining?: boolean;
  };
  /** Prompts per step (verl's data.train_batch_size). */
  promptsPerStep: number;
  rollout: {
    /** Responses per prompt (verl's rollout.n). */
    samplesPerPrompt: number;
    /** verl's data.max_response_length. */
    maxResponseTokens: number;
    /** Default 1. */
    temperature?: number;
    /** Default 1. */
    topP?: number;
    /** Default 0 (off). */
    topK?: number;
    /**
     * MoE routing replay: "record" keeps each token's experts from generation; "replay" also makes
     * the training forwards (old logprobs, update) use exactly those experts. Default "off".
     */
    routingReplay?: "off" | "record" | "replay";
    /**
     * The rollout engine's own layout over the run's GPUs (verl's rollout.tensor_model_parallel_size):
     * tensor × data = parallel.gpus. When it differs from the training layout the rollout holds its
     * own copy of the weights in this layout, resharded from the actor at every sync stage; absent
     * (or equal to the training layout), the rollout reads the training weights in place.
     */
    parallel?: { tensor?: number; data?: number };
    /**
     * Resharding at sync: tensors move a bucket of about `bucketBytes` at a time (default 256 MiB);
     * `verify` (debugging) checks every received region against a checksum from its sender.
     */
    reshard?: { bucketBytes?: number; verify?: boolean };
  };
  /** Optimizer updates per step: the step's responses are cut into this many mini-batches. Default 1. */
  miniBatchesPerStep?: number;
  /** Passes over each mini-batch (verl's ppo_epochs). Default 1. */
  epochsPerStep?: number;
  /**
   * Token budget of one micro-batch per rank (verl's ppo_max_token_len_per_gpu, use_dynamic_bsz):
   * under context parallelism each rank holds 1/context of every sequence, so a micro-batch holds
   * context × this many tokens.
   */
  tokensPerMicroBatch: number;
  /**
   * Activation recomputation of the actor's training forwards (Megatron's recompute_granularity /
   * recompute_num_layers): "full" re-runs whole decoder layers in backward, "selective" the
   * attention core and the MoE experts; `layers` from the first (default all). Gradients are the
   * same; peak activation memory falls. Default "none".
   */
  recompute?: { granularity: "none" | "full" | "selective"; layers?: number };
  /**
   * The actor's optimizer state (fp32 masters and Adam moments) in host memory between updates
   * (verl's optimizer_offload): onloaded before each update, offloaded after it, so rollout and
   * logprob passes have the device. timing_s/offload and timing_s/onload measure it. Default false.
   * `params`: the actor's parameters in host memory from the rollout to the old-logprob pass
   * (verl's param_offload); needs rollout.parallel, whose own copy of the weights generates
   * meanwhile. Default false.
   */
  offload?: { optimizer?: boolean; params?: boolean };
  algorithm?: {
    /** Default grpo. verl's reinforce_plus_plus(_baseline) are accepted for reinforce++(-baseline). */
    advantage?: AdvantageEstimator | "reinforce_plus_plus" | "reinforce_plus_plus_baseline";
    /** Discount of the token returns (verl's algorithm.gamma): reinforce++, gae. Default 1. */
    gamma?: number;
    /** GAE's λ (verl's algorithm.lam). Default 1. */
    lam?: number;
    /** The policy loss (clip ratios, aggregation, entropy bonus, KL loss), as the engine takes it. */
    loss?: PolicyLossConfig;
    /** KL to the reference model subtracted from the reward (verl's use_kl_in_reward). */
    klReward?: {
      estimator: KlEstimator;
      coefficient: number;
      /** Adaptive controller (verl's kl_ctrl.type = adaptive). */
      adaptive?: { targetKl: number; horizonResponses: number };
    };
    /** DAPO dynamic sampling: drop groups with zero spread of `metric`, generate until full. */
    dynamicSampling?: { metric?: "score" | "acc"; maxGenerationRounds: number };
    /** DAPO overlong reward shaping. */
    overlong?: { bufferTokens: number; penaltyFactor: number };
    /**
     * Recompute old logprobs with a training forward (verl always does). Default "auto": only
     * when rollout logprobs are not known to be exact (bf16 CUDA is exact; others recompute).
     */
    recomputeOldLogprobs?: "auto" | boolean;
    /**
     * verl's algorithm.rollout_correction: truncated importance weights π_old / π_rollout and
     * rejection masks, with their rollout_corr/ metrics; bypassMode trains on the rollout logprobs.
     */
    rolloutCorrection?: RolloutCorrectionConfig;
  };
  optimizer: {
    lr: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    /** Default 0.01 (verl's actor optim weight_decay). */
    weightDecay?: number;
    schedule?: Omit<LrSchedule, "lr">;
    /** Default 1.0 (verl's grad_clip). */
    maxGradNorm?: number;
  };
  /**
   * PPO's value model, used when algorithm.advantage is "gae" (verl's critic.*): an HF backbone
   * with a scalar head, its own AdamW, the same mini-batches and epochs as the actor.
   */
  critic?: {
    /** An HF folder; default the actor's (model.path), with a fresh head. */
    path?: string;
    /** Default 1e-5 (verl's critic.optim.lr). */
    lr?: number;
    /** Default 0.01. */
    weightDecay?: number;
    /** Default 1.0 (verl's critic.grad_clip). */
    maxGradNorm?: number;
    /** verl's critic.cliprange_value. Default 0.5. */
    cliprangeValue?: number;
    /** Default: the actor's loss aggregation (verl's critic.loss_agg_mode). */
    aggMode?: LossAggMode;
    /** The actor is not updated while step < warmupSteps (verl's trainer.critic_warmup). Default 0. */
    warmupSteps?: number;
  };
  reward?: {
    /** Default: verl's default_compute_score by data_source. */
    fn?: RewardFnRef;
    /** Reward worker threads. Default 4. */
    workers?: number;
    /** Per-sample limit. Default 30 s. */
    timeoutMs?: number;
  };
  /** Steps run() makes when not told (and the schedule's length). Default 100. */
  totalSteps?: number;
  checkpoint?: {
    /** Save every this many steps (0: only when asked). Default 0. */
    everySteps?: number;
    /** Checkpoints kept; older ones are deleted. Default 2. */
    keep?: number;
  };
  /** GPUs and layout; today's engine trains on one rank: larger layouts validate only. */
  parallel?: ParallelLayout & { gpus?: number };
  /** Peak FLOP/s of one device for perf/mfu/actor; default from the device (H100/H200 bf16: 989e12). */
  peakFlopsPerDevice?: number;
  /**
   * When the controller holds an experiment of this name already (a notebook run again):
   * "replace" closes it (freeing its models; its run folder stays) and builds a new one — the
   * default; "reuse" attaches to it as it is (the rest of the config is not applied); "error"
   * refuses. A busy one is never replaced. Read by the client; the controller never sees it.
   */
  ifExists?: "replace" | "reuse" | "error";
}

/** Every default filled in. */
export interface ResolvedConfig {
  name: string;
  runDir: string;
  seed: number;
  model: {
    path: string;
    dtype: "float32" | "bfloat16" | "float16" | "auto";
    shape?: ModelShape;
    freezeVisionTower?: boolean;
  };
  data: { train: string[]; val: string[]; maxPromptTokens: number; shuffle: boolean; chatTemplate: boolean };
  validation: {
    everySteps: number;
    samplesPerPrompt: number;
    temperature: number;
    topP: number;
    topK: number;
    beforeTraining: boolean;
  };
  promptsPerStep: number;
  rollout: {
    samplesPerPrompt: number;
    maxResponseTokens: number;
    temperature: number;
    topP: number;
    topK: number;
    routingReplay: "off" | "record" | "replay";
    /** Given only when the rollout's layout differs from the training layout. */
    parallel?: { tensor: number; data: number };
    reshard: { bucketBytes: number; verify: boolean };
  };
  miniBatchesPerStep: number;
  epochsPerStep: number;
  tokensPerMicroBatch: number;
  recompute: { granularity: "none" | "full" | "selective"; layers?: number };
  offload: { optimizer: boolean; params: boolean };
  algorithm: {
    advantage: AdvantageEstimator;
    gamma: number;
    lam: number;
    loss: PolicyLossConfig;
    klReward?: {
      estimator: KlEstimator;
      coefficient: number;
      adaptive?: { targetKl: number; horizonResponses: number };
    };
    dynamicSampling?: { metric: "score" | "acc"; maxGenerationRounds: number };
    overlong?: { bufferTokens: number; penaltyFactor: number };
    recomputeOldLogprobs: "auto" | boolean;
    rolloutCorrection?: ResolvedRolloutCorrection;
  };
  optimizer: ExperimentConfig["optimizer"] & { weightDecay: number; maxGradNorm: number };
  critic?: {
    path: string;
    lr: number;
    weightDecay: number;
    maxGradNorm: number;
    cliprangeValue: number;
    aggMode: LossAggMode;
    warmupSteps: number;
  };
  reward: { fn?: RewardFnRef; workers: number; timeoutMs: number };
  totalSteps: number;
  checkpoint: { everySteps: number; keep: number };
  parallel: Required<Omit<ParallelLayout, "data" | "firstStageLayers" | "lastStageLayers">> &
    Pick<ParallelLayout, "firstStageLayers" | "lastStageLayers"> & { data: number; gpus: number };
  peakFlopsPerDevice?: number;
}

/** A refused config: `field` is the dotted path of the bad value. */
export class ConfigError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "ConfigError";
  }
}

const show = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : String(v));

function int(value: unknown, field: string, min: number, fallback?: number): number {
  if (value === undefined && fallback !== undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min) {
    throw new ConfigError(field, `${show(value)} must be an integer ≥ ${min}`);
  }
  return value;
}

function num(
  value: unknown,
  field: string,
  ok: (v: number) => boolean,
  allowed: string,
  fallback?: number,
): number {
  if (value === undefined && fallback !== undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || !ok(value)) {
    throw new ConfigError(field, `${show(value)} must be ${allowed}`);
  }
  return value;
}

function oneOf<T extends string>(value: unknown, field: string, allowed: readonly T[], fallback?: T): T {
  if (value === undefined && fallback !== undefined) return fallback;
  if (!allowed.includes(value as T)) {
    throw new ConfigError(
      field,
      `${show(value)}; allowed: ${allowed.map((a) => JSON.stringify(a)).join(", ")}`,
    );
  }
  return value as T;
}

function bool(v: unknown, field: string, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw new ConfigError(field, `${show(v)} must be true or false`);
  return v;
}

function obj(value: unknown, field: string): Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError(
      field,
      `expected an object, found ${Array.isArray(value) ? "an array" : show(value)}`,
    );
  }
  return value as Record<string, unknown>;
}

/** Refuses keys a section does not know (a typo would otherwise be silently ignored). */
function known(section: Record<string, unknown>, field: string, keys: readonly string[]): void {
  for (const key of Object.keys(section)) {
    if (!keys.includes(key)) {
      throw new ConfigError(
        `${field}${field ? "." : ""}${key}`,
        `unknown setting; known here: ${keys.join(", ")}`,
      );
    }
  }
}

const AGG_MODES: LossAggMode[] = [
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
];
const KL_LOSS_TYPES: readonly KlPenaltyType[] = klPenaltyTypes;
const KL_ESTIMATORS: KlEstimator[] = ["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl"];

function resolveLoss(value: unknown, field: string, maxResponseTokens: number): PolicyLossConfig {
  const loss = value === undefined ? {} : obj(value, field);
  known(loss, field, [
    "clipRatioLow",
    "clipRatioHigh",
    "clipRatioC",
    "aggMode",
    "lossScaleFactor",
    "entropyCoeff",
    "kl",
    "lossMode",
    "tauPos",
    "tauNeg",
    "clipCovRatio",
    "clipCovLb",
    "clipCovUb",
    "klCovRatio",
    "ppoKlCoef",
    "seed",
  ]);
  const out: PolicyLossConfig = {
    lossMode: oneOf(loss.lossMode, `${field}.lossMode`, policyLossModes, "vanilla"),
    clipRatioLow: num(loss.clipRatioLow, `${field}.clipRatioLow`, (v) => v >= 0 && v < 1, "in [0, 1)", 0.2),
    clipRatioHigh: num(loss.clipRatioHigh, `${field}.clipRatioHigh`, (v) => v >= 0, "≥ 0", 0.2),
    clipRatioC: num(loss.clipRatioC, `${field}.clipRatioC`, (v) => v > 1, "> 1", 3),
    aggMode: oneOf(loss.aggMode, `${field}.aggMode`, AGG_MODES, "token-mean"),
    entropyCoeff: num(loss.entropyCoeff, `${field}.entropyCoeff`, () => true, "a finite number", 0),
  };
  // Dr. GRPO's constant: the longest response allowed, unless given.
  out.lossScaleFactor = num(
    loss.lossScaleFactor,
    `${field}.lossScaleFactor`,
    (v) => v > 0,
    "> 0",
    maxResponseTokens,
  );
  const positive = (v: number) => v > 0;
  const anyNumber = () => true;
  const modeOptions: [keyof PolicyLossConfig, (v: number) => boolean, string][] = [
    ["tauPos", positive, "> 0"],
    ["tauNeg", positive, "> 0"],
    ["clipCovRatio", positive, "> 0"],
    ["clipCovLb", anyNumber, "a finite number"],
    ["clipCovUb", anyNumber, "a finite number"],
    ["klCovRatio", positive, "> 0"],
    ["ppoKlCoef", anyNumber, "a finite number"],
    ["seed", (v) => Number.isSafeInteger(v) && v >= 0, "an integer ≥ 0"],
  ];
  for (const [key, ok, allowed] of modeOptions) {
    if (loss[key] !== undefined) {
      (out as Record<string, unknown>)[key] = num(loss[key], `${field}.${key}`, ok, allowed);
    }
  }
  if (loss.kl !== undefined) {
    const kl = obj(loss.kl, `${field}.kl`);
    known(kl, `${field}.kl`, ["type", "coeff"]);
    const type = oneOf(kl.type, `${field}.kl.type`, KL_LOSS_TYPES);
    if (type !== "none") {
      out.kl = { type, coeff: num(kl.coeff, `${field}.kl.coeff`, (v) => v >= 0, "≥ 0", 0.001) };
    }
  }
  return out;
}

function resolveParallel(value: unknown, shape: ModelShape | undefined): ResolvedConfig["parallel"] {
  const field = "parallel";
  const p = value === undefined ? {} : obj(value, field);
  known(p, field, [
    "tensor",
    "pipeline",
    "context",
    "expert",
    "expertTensor",
    "data",
    "virtualPipeline",
    "sequenceParallel",
    "gpus",
    "firstStageLayers",
    "lastStageLayers",
  ]);
  const tensor = int(p.tensor, `${field}.tensor`, 1, 1);
  const pipeline = int(p.pipeline, `${field}.pipeline`, 1, 1);
  const context = int(p.context, `${field}.context`, 1, 1);
  const expert = int(p.expert, `${field}.expert`, 1, 1);
  const expertTensor = int(p.expertTensor, `${field}.expertTensor`, 1, 1);
  const virtualPipeline = int(p.virtualPipeline, `${field}.virtualPipeline`, 1, 1);
  if (virtualPipeline > 1 && pipeline === 1) {
    throw new ConfigError(`${field}.virtualPipeline`, `${virtualPipeline} virtual stages need pipeline > 1`);
  }
  const modelRanks = tensor * pipeline * context;
  const gpus = int(
    p.gpus,
    `${field}.gpus`,
    1,
    modelRanks * (p.data === undefined ? 1 : int(p.data, `${field}.data`, 1)),
  );
  if (gpus % modelRanks !== 0) {
    throw new ConfigError(
      `${field}.gpus`,
      `${gpus} GPUs are not a multiple of tensor × pipeline × context = ${tensor} × ${pipeline} × ${context} = ${modelRanks}`,
    );
  }
  const data = int(p.data, `${field}.data`, 1, gpus / modelRanks);
  if (data * modelRanks !== gpus) {
    throw new ConfigError(
      `${field}.data`,
      `${data} × ${modelRanks} (tensor × pipeline × context) ≠ ${gpus} GPUs`,
    );
  }
  // Expert ranks come out of the non-tensor part of each pipeline stage (Megatron's EP groups).
  const expertPool = (gpus / pipeline / expertTensor) | 0;
  if ((tensor * context * data) % (expert * expertTensor) !== 0 || expertPool % expert !== 0) {
    throw new ConfigError(
      `${field}.expert`,
      `expert × expertTensor = ${expert} × ${expertTensor} must divide tensor × context × data = ${tensor * context * data}`,
    );
  }
  if (shape) {
    const s = "model.shape";
    checkTensorSplit(tensor, shape, `${field}.tensor`);
    const stages = pipeline * virtualPipeline;
    if (stages > shape.layers) {
      throw new ConfigError(
        `${field}.pipeline`,
        `${pipeline} × ${virtualPipeline} virtual stages exceed the ${shape.layers} layers (${s}.layers)`,
      );
    }
    if (expert > 1 && shape.experts === undefined) {
      throw new ConfigError(
        `${field}.expert`,
        `${expert} expert ranks for a dense model (${s}.experts is not set)`,
      );
    }
    if (shape.experts !== undefined && shape.experts % expert !== 0) {
      throw new ConfigError(
        `${field}.expert`,
        `${expert} does not divide the ${shape.experts} experts (${s}.experts)`,
      );
    }
  }
  const sequenceParallel = p.sequenceParallel === undefined ? false : p.sequenceParallel;
  if (typeof sequenceParallel !== "boolean") {
    throw new ConfigError(
      `${field}.sequenceParallel`,
      `${JSON.stringify(sequenceParallel)} must be true or false`,
    );
  }
  if (sequenceParallel && tensor === 1) {
    throw new ConfigError(
      `${field}.sequenceParallel`,
      "shards over the tensor group: needs parallel.tensor > 1",
    );
  }
  const stageSplit = resolveStageSplit(p, pipeline, shape);
  return {
    tensor,
    pipeline,
    context,
    expert,
    expertTensor,
    virtualPipeline,
    sequenceParallel,
    data,
    gpus,
    ...stageSplit,
  };
}

/** Attention heads (and KV heads, or their replication) split evenly over `tensor` ranks. */
function checkTensorSplit(tensor: number, shape: ModelShape, field: string): void {
  const s = "model.shape";
  if (shape.attentionHeads % tensor !== 0) {
    throw new ConfigError(
      field,
      `${tensor} does not divide the ${shape.attentionHeads} attention heads (${s}.attentionHeads)`,
    );
  }
  // Fewer KV heads than tensor ranks are replicated (each rank keeps the one its query heads use).
  if (shape.kvHeads >= tensor ? shape.kvHeads % tensor !== 0 : tensor % shape.kvHeads !== 0) {
    throw new ConfigError(
      field,
      shape.kvHeads >= tensor
        ? `${tensor} does not divide the ${shape.kvHeads} KV heads (${s}.kvHeads)`
        : `${shape.kvHeads} KV heads (${s}.kvHeads) do not divide ${tensor} tensor ranks, so they cannot be replicated evenly`,
    );
  }
  // The embedding and the lm-head split by rows over the tensor ranks (vocab-parallel).
  if (shape.vocabSize % tensor !== 0) {
    throw new ConfigError(
      field,
      `${tensor} does not divide the vocabulary of ${shape.vocabSize} (${s}.vocabSize)`,
    );
  }
}

/**
 * rollout.parallel: {tensor, data} over all of parallel.gpus; undefined when it places the weights
 * as the training layout does (the rollout then reads them in place).
 */
function resolveRolloutParallel(
  value: unknown,
  train: ResolvedConfig["parallel"],
  shape: ModelShape | undefined,
): { tensor: number; data: number } | undefined {
  if (value === undefined) return undefined;
  const field = "rollout.parallel";
  const p = obj(value, field);
  known(p, field, ["tensor", "data"]);
  const tensor = int(p.tensor, `${field}.tensor`, 1, 1);
  if (train.gpus % tensor !== 0) {
    throw new ConfigError(
      `${field}.tensor`,
      `${tensor} does not divide the run's ${train.gpus} GPUs (parallel.gpus)`,
    );
  }
  const data = int(p.data, `${field}.data`, 1, train.gpus / tensor);
  if (tensor * data !== train.gpus) {
    throw new ConfigError(
      `${field}.data`,
      `${tensor} × ${data} (tensor × data) ≠ the run's ${train.gpus} GPUs: the rollout is colocated with training on the same ranks`,
    );
  }
  if (shape) checkTensorSplit(tensor, shape, `${field}.tensor`);
  const same =
    tensor === train.tensor &&
    data === train.data &&
    train.pipeline === 1 &&
    train.context === 1 &&
    train.expert === 1;
  return same ? undefined : { tensor, data };
}

function resolveReshard(value: unknown): ResolvedConfig["rollout"]["reshard"] {
  const field = "rollout.reshard";
  const r = value === undefined ? {} : obj(value, field);
  known(r, field, ["bucketBytes", "verify"]);
  return {
    bucketBytes: int(r.bucketBytes, `${field}.bucketBytes`, 1, 256 * 2 ** 20),
    verify: bool(r.verify, `${field}.verify`, false),
  };
}

/** parallel.firstStageLayers / lastStageLayers: both or neither, with pipeline > 1, leaving the middle stages an even share. */
function resolveStageSplit(
  p: Record<string, unknown>,
  pipeline: number,
  shape: ModelShape | undefined,
): { firstStageLayers?: number; lastStageLayers?: number } {
  const field = "parallel";
  if (p.firstStageLayers === undefined && p.lastStageLayers === undefined) return {};
  const first = int(p.firstStageLayers, `${field}.firstStageLayers`, 1);
  const last = int(p.lastStageLayers, `${field}.lastStageLayers`, 1);
  if (pipeline === 1) {
    throw new ConfigError(`${field}.firstStageLayers`, "a stage split needs parallel.pipeline > 1");
  }
  if (shape) {
    const middle = pipeline - 2;
    const rest = shape.layers - first - last;
    if (middle === 0 ? rest !== 0 : rest < middle || rest % middle !== 0) {
      throw new ConfigError(
        `${field}.firstStageLayers`,
        `first ${first} + last ${last} leave ${rest} of the ${shape.layers} layers (model.shape.layers) for ${middle} middle stages; each needs the same number, at least 1`,
      );
    }
  }
  return { firstStageLayers: first, lastStageLayers: last };
}

function defaultRunDir(name: string): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `runs/${name}-${stamp}`;
}

/**
 * Fills the defaults in and checks every value; throws ConfigError naming the first bad field.
 * Checks what can be known without the model (shapes only when `model.shape` is given).
 */
export function resolveConfig(input: ExperimentConfig): ResolvedConfig {
  const c = obj(input, "config") as unknown as ExperimentConfig & Record<string, unknown>;
  known(c, "", [
    "name",
    "runDir",
    "seed",
    "model",
    "data",
    "validation",
    "promptsPerStep",
    "rollout",
    "miniBatchesPerStep",
    "epochsPerStep",
    "tokensPerMicroBatch",
    "recompute",
    "offload",
    "algorithm",
    "optimizer",
    "critic",
    "reward",
    "totalSteps",
    "checkpoint",
    "parallel",
    "peakFlopsPerDevice",
    "ifExists",
  ]);
  if (c.ifExists !== undefined) oneOf(c.ifExists, "ifExists", ["replace", "reuse", "error"]);
  const name = c.name ?? "run";
  if (typeof name !== "string" || !/^[A-Za-z0-9._-]{1,80}$/.test(name)) {
    throw new ConfigError("name", `${show(name)} must be 1-80 letters, digits, '.', '_' or '-'`);
  }
  if (c.runDir !== undefined && (typeof c.runDir !== "string" || c.runDir === "")) {
    throw new ConfigError("runDir", `${show(c.runDir)} must be a folder path`);
  }
  const model = obj(c.model, "model");
  known(model, "model", ["path", "dtype", "shape", "freezeVisionTower"]);
  if (model.freezeVisionTower !== undefined && typeof model.freezeVisionTower !== "boolean") {
    throw new ConfigError(
      "model.freezeVisionTower",
      `${show(model.freezeVisionTower)} must be true or false`,
    );
  }
  if (typeof model.path !== "string" || model.path === "") {
    throw new ConfigError("model.path", `${show(model.path)} must be the path of an HF model folder`);
  }
  const dtype = oneOf(
    model.dtype,
    "model.dtype",
    ["float32", "bfloat16", "float16", "auto"] as const,
    "auto",
  );
  let shape: ModelShape | undefined;
  if (model.shape !== undefined) {
    const s = obj(model.shape, "model.shape");
    known(s, "model.shape", ["layers", "attentionHeads", "kvHeads", "hiddenSize", "vocabSize", "experts"]);
    shape = {
      layers: int(s.layers, "model.shape.layers", 1),
      attentionHeads: int(s.attentionHeads, "model.shape.attentionHeads", 1),
      kvHeads: int(s.kvHeads, "model.shape.kvHeads", 1),
      hiddenSize: int(s.hiddenSize, "model.shape.hiddenSize", 1),
      vocabSize: int(s.vocabSize, "model.shape.vocabSize", 1),
      ...(s.experts === undefined ? {} : { experts: int(s.experts, "model.shape.experts", 1) }),
    };
  }

  const data = obj(c.data, "data");
  known(data, "data", ["train", "maxPromptTokens", "shuffle", "chatTemplate", "val"]);
  const train = typeof data.train === "string" ? [data.train] : data.train;
  if (!Array.isArray(train) || train.length === 0 || !train.every((f) => typeof f === "string" && f !== "")) {
    throw new ConfigError(
      "data.train",
      `${show(data.train)} must be a file path or a non-empty list of them`,
    );
  }
  const val = data.val === undefined ? [] : typeof data.val === "string" ? [data.val] : data.val;
  if (!Array.isArray(val) || !val.every((f) => typeof f === "string" && f !== "")) {
    throw new ConfigError("data.val", `${show(data.val)} must be a file path or a list of them`);
  }
  const v = c.validation === undefined ? {} : obj(c.validation, "validation");
  known(v, "validation", ["everySteps", "samplesPerPrompt", "temperature", "topP", "topK", "beforeTraining"]);
  // (A resolved config without data.val has everySteps 0 and beforeTraining false: it passes again.)
  if (val.length === 0 && ((v.everySteps !== undefined && v.everySteps !== 0) || v.beforeTraining === true)) {
    throw new ConfigError("validation", "needs held-out prompts: set data.val");
  }
  const validation: ResolvedConfig["validation"] = {
    everySteps: int(v.everySteps, "validation.everySteps", 0, 0),
    samplesPerPrompt: int(v.samplesPerPrompt, "validation.samplesPerPrompt", 1, 1),
    temperature: num(v.temperature, "validation.temperature", (x) => x >= 0, "≥ 0 (0: greedy)", 0),
    topP: num(v.topP, "validation.topP", (x) => x > 0 && x <= 1, "in (0, 1]", 1),
    topK: int(v.topK, "validation.topK", 0, 0),
    beforeTraining: bool(v.beforeTraining, "validation.beforeTraining", val.length > 0),
  };

  const promptsPerStep = int(c.promptsPerStep, "promptsPerStep", 1);
  const rollout = obj(c.rollout, "rollout");
  known(rollout, "rollout", [
    "samplesPerPrompt",
    "maxResponseTokens",
    "temperature",
    "topP",
    "topK",
    "routingReplay",
    "parallel",
    "reshard",
  ]);
  const samplesPerPrompt = int(rollout.samplesPerPrompt, "rollout.samplesPerPrompt", 1);
  const maxResponseTokens = int(rollout.maxResponseTokens, "rollout.maxResponseTokens", 1);
  const maxPromptTokens = int(data.maxPromptTokens, "data.maxPromptTokens", 1);
  const responses = promptsPerStep * samplesPerPrompt;
  const miniBatchesPerStep = int(c.miniBatchesPerStep, "miniBatchesPerStep", 1, 1);
  if (responses % miniBatchesPerStep !== 0 || miniBatchesPerStep > responses) {
    throw new ConfigError(
      "miniBatchesPerStep",
      `${miniBatchesPerStep} must divide the step's promptsPerStep × samplesPerPrompt = ${responses} responses`,
    );
  }
  const tokensPerMicroBatch = int(c.tokensPerMicroBatch, "tokensPerMicroBatch", 2);
  if (tokensPerMicroBatch < maxPromptTokens + maxResponseTokens) {
    throw new ConfigError(
      "tokensPerMicroBatch",
      `${tokensPerMicroBatch} is less than one sequence can hold (data.maxPromptTokens + rollout.maxResponseTokens = ${maxPromptTokens + maxResponseTokens})`,
    );
  }

  const recomputeIn = c.recompute === undefined ? {} : obj(c.recompute, "recompute");
  known(recomputeIn, "recompute", ["granularity", "layers"]);
  const recompute: ResolvedConfig["recompute"] = {
    granularity: oneOf(
      recomputeIn.granularity,
      "recompute.granularity",
      ["none", "full", "selective"],
      "none",
    ),
    ...(recomputeIn.layers !== undefined ? { layers: int(recomputeIn.layers, "recompute.layers", 0) } : {}),
  };

  const offloadIn = c.offload === undefined ? {} : obj(c.offload, "offload");
  known(offloadIn, "offload", ["optimizer", "params"]);
  const offload = {
    optimizer: bool(offloadIn.optimizer, "offload.optimizer", false),
    params: bool(offloadIn.params, "offload.params", false),
  };

  const algorithm = c.algorithm === undefined ? {} : obj(c.algorithm, "algorithm");
  known(algorithm, "algorithm", [
    "advantage",
    "gamma",
    "lam",
    "loss",
    "klReward",
    "dynamicSampling",
    "overlong",
    "recomputeOldLogprobs",
    "rolloutCorrection",
  ]);
  const advantage = oneOf(
    typeof algorithm.advantage === "string"
      ? (advantageAliases[algorithm.advantage] ?? algorithm.advantage)
      : algorithm.advantage,
    "algorithm.advantage",
    advantageEstimators,
    "grpo",
  );
  if (
    (advantage === "grpo" || advantage === "dr-grpo" || advantage === "rloo" || advantage === "grpo_passk") &&
    samplesPerPrompt < 2
  ) {
    throw new ConfigError(
      "rollout.samplesPerPrompt",
      `${advantage} compares responses within a group: needs ≥ 2, found ${samplesPerPrompt}`,
    );
  }
  const resolvedAlgorithm: ResolvedConfig["algorithm"] = {
    advantage,
    gamma: num(algorithm.gamma, "algorithm.gamma", (v) => v >= 0 && v <= 1, "in [0, 1]", 1),
    lam: num(algorithm.lam, "algorithm.lam", (v) => v >= 0 && v <= 1, "in [0, 1]", 1),
    loss: resolveLoss(algorithm.loss, "algorithm.loss", maxResponseTokens),
    recomputeOldLogprobs:
      algorithm.recomputeOldLogprobs === undefined || algorithm.recomputeOldLogprobs === "auto"
        ? "auto"
        : bool(algorithm.recomputeOldLogprobs, "algorithm.recomputeOldLogprobs", true),
  };
  if (algorithm.rolloutCorrection !== undefined) {
    const field = "algorithm.rolloutCorrection";
    const given = obj(algorithm.rolloutCorrection, field) as RolloutCorrectionConfig;
    try {
      resolvedAlgorithm.rolloutCorrection = resolveRolloutCorrection(given, field);
    } catch (error) {
      const message = (error as Error).message;
      const at = message.indexOf(": ");
      throw new ConfigError(message.slice(0, at), message.slice(at + 2));
    }
    if (resolvedAlgorithm.rolloutCorrection.bypassMode && algorithm.recomputeOldLogprobs === true) {
      throw new ConfigError(
        `${field}.bypassMode`,
        "uses the rollout logprobs as old logprobs; algorithm.recomputeOldLogprobs: true contradicts it",
      );
    }
    if (!resolvedAlgorithm.rolloutCorrection.bypassMode && algorithm.recomputeOldLogprobs === false) {
      throw new ConfigError(
        field,
        "importance weights and rejection compare recomputed old logprobs with the rollout's; algorithm.recomputeOldLogprobs is false",
      );
    }
  }
  if (algorithm.klReward !== undefined) {
    const k = obj(algorithm.klReward, "algorithm.klReward");
    known(k, "algorithm.klReward", ["estimator", "coefficient", "adaptive"]);
    const out: NonNullable<ResolvedConfig["algorithm"]["klReward"]> = {
      estimator: oneOf(k.estimator, "algorithm.klReward.estimator", KL_ESTIMATORS),
      coefficient: num(k.coefficient, "algorithm.klReward.coefficient", (v) => v >= 0, "≥ 0"),
    };
    if (k.adaptive !== undefined) {
      const a = obj(k.adaptive, "algorithm.klReward.adaptive");
      known(a, "algorithm.klReward.adaptive", ["targetKl", "horizonResponses"]);
      out.adaptive = {
        targetKl: num(a.targetKl, "algorithm.klReward.adaptive.targetKl", (v) => v > 0, "> 0"),
        horizonResponses: num(
          a.horizonResponses,
          "algorithm.klReward.adaptive.horizonResponses",
          (v) => v > 0,
          "> 0",
        ),
      };
    }
    resolvedAlgorithm.klReward = out;
  }
  if (algorithm.dynamicSampling !== undefined) {
    const d = obj(algorithm.dynamicSampling, "algorithm.dynamicSampling");
    known(d, "algorithm.dynamicSampling", ["metric", "maxGenerationRounds"]);
    // 0 (verl's max_num_gen_batches=0), null (Infinity after a JSON round trip) and Infinity: no bound.
    const given = d.maxGenerationRounds;
    const rounds = given === 0 || given === null ? Number.POSITIVE_INFINITY : given;
    if (!(rounds === Number.POSITIVE_INFINITY || (Number.isSafeInteger(rounds) && (rounds as number) >= 1))) {
      throw new ConfigError(
        "algorithm.dynamicSampling.maxGenerationRounds",
        `${show(given)} must be an integer ≥ 1, or 0 / Infinity for no bound`,
      );
    }
    if (samplesPerPrompt < 2) {
      throw new ConfigError(
        "rollout.samplesPerPrompt",
        "dynamic sampling filters groups by spread: needs ≥ 2 samples per prompt",
      );
    }
    resolvedAlgorithm.dynamicSampling = {
      metric: oneOf(d.metric, "algorithm.dynamicSampling.metric", ["score", "acc"] as const, "score"),
      maxGenerationRounds: rounds as number,
    };
  }
  if (algorithm.overlong !== undefined) {
    const o = obj(algorithm.overlong, "algorithm.overlong");
    known(o, "algorithm.overlong", ["bufferTokens", "penaltyFactor"]);
    resolvedAlgorithm.overlong = {
      bufferTokens: num(
        o.bufferTokens,
        "algorithm.overlong.bufferTokens",
        (v) => Number.isInteger(v) && v > 0 && v <= maxResponseTokens,
        `an integer in 1..rollout.maxResponseTokens (${maxResponseTokens})`,
      ),
      penaltyFactor: num(o.penaltyFactor, "algorithm.overlong.penaltyFactor", (v) => v >= 0, "≥ 0"),
    };
  }

  const optimizer = obj(c.optimizer, "optimizer");
  known(optimizer, "optimizer", ["lr", "beta1", "beta2", "eps", "weightDecay", "schedule", "maxGradNorm"]);
  const unit = (v: number) => v >= 0 && v < 1;
  const resolvedOptimizer: ResolvedConfig["optimizer"] = {
    lr: num(optimizer.lr, "optimizer.lr", (v) => v > 0, "> 0"),
    weightDecay: num(optimizer.weightDecay, "optimizer.weightDecay", (v) => v >= 0, "≥ 0", 0.01),
    maxGradNorm: num(optimizer.maxGradNorm, "optimizer.maxGradNorm", (v) => v > 0, "> 0", 1),
  };
  if (optimizer.beta1 !== undefined)
    resolvedOptimizer.beta1 = num(optimizer.beta1, "optimizer.beta1", unit, "in [0, 1)");
  if (optimizer.beta2 !== undefined)
    resolvedOptimizer.beta2 = num(optimizer.beta2, "optimizer.beta2", unit, "in [0, 1)");
  if (optimizer.eps !== undefined)
    resolvedOptimizer.eps = num(optimizer.eps, "optimizer.eps", (v) => v > 0, "> 0");
  const totalSteps = int(c.totalSteps, "totalSteps", 1, 100);
  if (optimizer.schedule !== undefined) {
    const s = obj(optimizer.schedule, "optimizer.schedule");
    known(s, "optimizer.schedule", ["kind", "warmupSteps", "totalSteps", "minLrRatio", "numCycles"]);
    const kind = oneOf(s.kind, "optimizer.schedule.kind", [
      "constant",
      "constant-with-warmup",
      "warmup-cosine",
    ] as const);
    const schedule: Omit<LrSchedule, "lr"> = { kind } as Omit<LrSchedule, "lr">;
    const sched = schedule as unknown as Record<string, number | string>;
    if (s.warmupSteps !== undefined)
      sched.warmupSteps = int(s.warmupSteps, "optimizer.schedule.warmupSteps", 0);
    sched.totalSteps = int(
      s.totalSteps,
      "optimizer.schedule.totalSteps",
      1,
      totalSteps * miniBatchesPerStep * int(c.epochsPerStep, "epochsPerStep", 1, 1),
    );
    if (s.numCycles !== undefined)
      sched.numCycles = num(s.numCycles, "optimizer.schedule.numCycles", (v) => v > 0, "> 0");
    if (s.minLrRatio !== undefined)
      sched.minLrRatio = num(
        s.minLrRatio,
        "optimizer.schedule.minLrRatio",
        (v) => v >= 0 && v <= 1,
        "in [0, 1]",
      );
    resolvedOptimizer.schedule = schedule;
  }

  const reward = c.reward === undefined ? {} : obj(c.reward, "reward");
  known(reward, "reward", ["fn", "workers", "timeoutMs"]);
  let fn: RewardFnRef | undefined;
  if (reward.fn !== undefined) {
    const f = obj(reward.fn, "reward.fn");
    if (typeof f.module !== "string" || f.module === "")
      throw new ConfigError("reward.fn.module", `${show(f.module)} must be a module path or URL`);
    if (typeof f.exportName !== "string" || f.exportName === "")
      throw new ConfigError("reward.fn.exportName", `${show(f.exportName)} must name an export`);
    fn = { module: f.module, exportName: f.exportName };
  }
  const checkpoint = c.checkpoint === undefined ? {} : obj(c.checkpoint, "checkpoint");
  known(checkpoint, "checkpoint", ["everySteps", "keep"]);

  const resolved: ResolvedConfig = {
    name,
    runDir: c.runDir ?? defaultRunDir(name),
    seed: int(c.seed, "seed", 0, 0),
    model: {
      path: model.path,
      dtype,
      ...(shape ? { shape } : {}),
      ...(model.freezeVisionTower ? { freezeVisionTower: true } : {}),
    },
    data: {
      train: train as string[],
      val: val as string[],
      maxPromptTokens,
      shuffle: bool(data.shuffle, "data.shuffle", true),
      chatTemplate: bool(data.chatTemplate, "data.chatTemplate", true),
    },
    validation,
    promptsPerStep,
    rollout: {
      samplesPerPrompt,
      maxResponseTokens,
      temperature: num(
        rollout.temperature,
        "rollout.temperature",
        (v) => v > 0,
        "> 0 (RL samples; greedy rollouts give no spread)",
        1,
      ),
      topP: num(rollout.topP, "rollout.topP", (v) => v > 0 && v <= 1, "in (0, 1]", 1),
      topK: int(rollout.topK, "rollout.topK", 0, 0),
      routingReplay: oneOf(
        rollout.routingReplay,
        "rollout.routingReplay",
        ["off", "record", "replay"] as const,
        "off",
      ),
      reshard: resolveReshard(rollout.reshard),
    },
    miniBatchesPerStep,
    epochsPerStep: int(c.epochsPerStep, "epochsPerStep", 1, 1),
    tokensPerMicroBatch,
    recompute,
    offload,
    algorithm: resolvedAlgorithm,
    optimizer: resolvedOptimizer,
    reward: {
      ...(fn ? { fn } : {}),
      workers: int(reward.workers, "reward.workers", 1, 4),
      timeoutMs: int(reward.timeoutMs, "reward.timeoutMs", 1, 30_000),
    },
    totalSteps,
    checkpoint: {
      everySteps: int(checkpoint.everySteps, "checkpoint.everySteps", 0, 0),
      keep: int(checkpoint.keep, "checkpoint.keep", 1, 2),
    },
    parallel: resolveParallel(c.parallel, shape),
  };
  const rolloutLayout = resolveRolloutParallel(rollout.parallel, resolved.parallel, shape);
  if (rolloutLayout) resolved.rollout.parallel = rolloutLayout;
  if (resolved.offload.params && !rolloutLayout) {
    throw new ConfigError(
      "offload.params",
      "the rollout generates with the training weights in place: give it a layout of its own (rollout.parallel) to offload the actor's parameters during the rollout",
    );
  }
  if (c.peakFlopsPerDevice !== undefined) {
    resolved.peakFlopsPerDevice = num(c.peakFlopsPerDevice, "peakFlopsPerDevice", (v) => v > 0, "> 0");
  }
  // Every data-parallel rank trains on its share of each mini-batch (verl divides the mini-batch
  // by the data-parallel size the same way).
  const perMiniBatch = responses / miniBatchesPerStep;
  if (perMiniBatch % resolved.parallel.data !== 0) {
    throw new ConfigError(
      "miniBatchesPerStep",
      `${miniBatchesPerStep} mini-batches of ${perMiniBatch} responses do not split over ${resolved.parallel.data} data-parallel ranks`,
    );
  }
  if (c.critic !== undefined && advantage !== "gae") {
    throw new ConfigError(
      "critic",
      `a value model is used by algorithm.advantage "gae" only, found ${show(advantage)}`,
    );
  }
  if (advantage === "gae") {
    const k = c.critic === undefined ? {} : obj(c.critic, "critic");
    known(k, "critic", [
      "path",
      "lr",
      "weightDecay",
      "maxGradNorm",
      "cliprangeValue",
      "aggMode",
      "warmupSteps",
    ]);
    if (k.path !== undefined && (typeof k.path !== "string" || k.path === "")) {
      throw new ConfigError("critic.path", `${show(k.path)} must be the path of an HF model folder`);
    }
    resolved.critic = {
      path: (k.path as string | undefined) ?? model.path,
      lr: num(k.lr, "critic.lr", (v) => v > 0, "> 0", 1e-5),
      weightDecay: num(k.weightDecay, "critic.weightDecay", (v) => v >= 0, "≥ 0", 0.01),
      maxGradNorm: num(k.maxGradNorm, "critic.maxGradNorm", (v) => v > 0, "> 0", 1),
      cliprangeValue: num(k.cliprangeValue, "critic.cliprangeValue", (v) => v >= 0, "≥ 0", 0.5),
      aggMode: oneOf(k.aggMode, "critic.aggMode", AGG_MODES, resolved.algorithm.loss.aggMode ?? "token-mean"),
      warmupSteps: int(k.warmupSteps, "critic.warmupSteps", 0, 0),
    };
  }
  if (resolved.algorithm.klReward && resolved.algorithm.loss.kl) {
    throw new ConfigError(
      "algorithm.klReward",
      "KL in the reward and as a loss at once; verl uses one or the other",
    );
  }
  return resolved;
}

/** True when the run needs a frozen reference model (KL in the reward or as a loss). */
export function needsReference(config: ResolvedConfig): boolean {
  return config.algorithm.klReward !== undefined || config.algorithm.loss.kl !== undefined;
}
