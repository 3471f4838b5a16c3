// Models on the native engine: the mechanical declarations of addon/model.cc, then the idiomatic
// `Model` class that checks every argument (errors name the field) before calling in.
import { addon, type NativeDtype, type NativeTypedArray } from "./binding.js";
import { Mesh, type NativeMeshHandle } from "./dist.js";
import { checkDevice, checkDtype, checkTensor, type HostTensor } from "./engine.js";
import {
  checkCounts,
  checkOptionalInputs,
  checkPolicyLossConfig,
  checkTokenArray,
  type GlobalCounts,
  type PolicyLossConfig,
  type PolicyLossMetrics,
} from "./policy-loss.js";
import { type AdamWConfig, type LrSchedule, lrAt } from "./train.js";

/** An opaque model handle; addon/model.cc tags it and refuses any other object. */
export type NativeModelHandle = { readonly __tillerModel: unique symbol };

export type TokenIds = Int32Array | BigInt64Array;

export interface NamedHostTensor extends HostTensor {
  name: string;
}

/**
 * The images of a packed batch, for vision-language models (Qwen2.5-VL): transformers' pixel_values
 * and image_grid_thw. Images are listed in the order their placeholder tokens appear in the batch
 * (sequence by sequence); a sequence without images takes none. `preprocessImages` makes them.
 */
export interface ImageInputs {
  /** [patches, channels × temporalPatch × patch × patch], row-major, every image's patches in turn. */
  pixels: Float32Array;
  /** [images × 3]: (t, h, w) of each image in patches (t = 1 for an image). */
  grids: Int32Array;
}

export interface NativeGenerateOptions {
  maxNewTokens: number;
  /** One limit per prompt (overrides maxNewTokens) or absent. */
  maxNewTokensEach?: number[];
  temperature: number;
  topK: number;
  topP: number;
  stopTokenIds: number[];
  seed: number;
  sequenceOffset: number;
  recordExperts: boolean;
  images?: ImageInputs;
}

export interface Generation {
  /** Generated ids only (the prompt excluded), stop token included when it ended the sequence. */
  tokens: Int32Array;
  /** log_softmax(logits / temperature) at each generated token (temperature 1 when greedy). */
  logprobs: Float32Array;
  finishReason: "stop" | "length";
  /**
   * With `recordExperts` on an MoE model: the experts each token was routed to,
   * [prompt + generated tokens, moe.layers, moe.topK] row-major. The last generated token was
   * sampled but never fed back through the model, so its row is -1 (replay routes it normally).
   * Empty when nothing was generated (maxNewTokens 0) or the model has no MoE layers. Concatenated
   * in the order of the packed sequences, these are the `routedExperts` that replay this routing.
   */
  experts?: Int32Array;
}

/** The routing of an MoE model: expert-id arrays are [tokens, layers, topK], row-major. */
export interface MoeShape {
  /** Layers whose feed-forward is a mixture of experts (0 for a dense model). */
  layers: number;
  /** Routed experts per MoE layer (shared experts not counted). */
  experts: number;
  /** Experts each token is routed to. */
  topK: number;
}

/** The native side of Model.routerStats(): sums since the last call. */
export interface NativeRouterStats {
  tokens: number;
  /** Per MoE layer: tokens routed to each expert (a token counts once per chosen expert). */
  tokensPerExpert: Int32Array[];
  /** Per MoE layer: the router entropy (nats) summed over tokens. */
  entropySum: Float64Array;
}

export interface RouterLayerStats {
  /** Tokens routed to each expert; they sum to tokens × topK. */
  tokensPerExpert: Int32Array;
  /** max / mean of tokensPerExpert: 1 when perfectly even, `experts / topK` at worst. */
  loadImbalance: number;
  /**
   * Mean per-token entropy (nats) of the router's distribution over experts: the softmax
   * probabilities (Qwen3-MoE, Mixtral), or the sigmoid scores divided by their sum (DeepSeek-V3).
   */
  entropy: number;
  /** Token-expert assignments that were not computed: always 0, routing is dropless. */
  droppedTokens: number;
}

/**
 * One MoE layer's statistics from its sums over `tokens` tokens: tokens per expert, the router
 * entropy summed over tokens, topK experts per token (dropless: what falls short was dropped).
 */
export function routerLayerStats(
  tokensPerExpert: Int32Array,
  entropySum: number,
  tokens: number,
  topK: number,
): RouterLayerStats {
  let max = 0;
  let sum = 0;
  for (const c of tokensPerExpert) {
    max = Math.max(max, c);
    sum += c;
  }
  const mean = sum / Math.max(tokensPerExpert.length, 1);
  return {
    tokensPerExpert,
    loadImbalance: mean > 0 ? max / mean : 0,
    entropy: tokens > 0 ? entropySum / tokens : 0,
    droppedTokens: tokens * topK - sum,
  };
}

export interface RouterStats {
  /** Tokens seen by the forwards summed here. */
  tokens: number;
  /** One entry per MoE layer, in layer order (empty for a dense model or before any forward). */
  layers: RouterLayerStats[];
}

export interface TrainStepResult {
  /** This micro-batch's share: sum(mask · −logprob) / tokenNormaliser. Summed over micro-batches: the loss. */
  loss: number;
  /** Tokens the mask counted in this micro-batch. */
  tokens: number;
}

/** Per predicted token (tokens − sequences entries each), as logprobs() returns them. */
export interface PolicyStepInputs {
  /**
   * Logprobs under the policy that sampled (or the actor before this mini-batch's updates). Left
   * out: on-policy, the old policy is the current one (old = this forward's logprobs, detached: a
   * ratio of exactly 1), and the result carries those logprobs and their entropy.
   */
  oldLogprobs?: Float32Array;
  advantages: Float32Array;
  /** 1 for response tokens that count, 0 for prompt tokens and padding. */
  mask: Float32Array;
  /** Under the reference policy; required when config.kl.type is not none. */
  refLogprobs?: Float32Array;
  /** Rollout-correction importance weights multiplying each token's policy loss. */
  rolloutIsWeights?: Float32Array;
}

export interface PolicyStepResult extends TrainStepResult {
  /** This micro-batch's share: pgLoss − entropyCoeff · entropy + kl.coeff · klLoss. */
  loss: number;
  metrics: PolicyLossMetrics;
  /** Without perToken.oldLogprobs: this forward's logprobs and entropy, [tokens - sequences] each. */
  logprobs?: Float32Array;
  entropy?: Float32Array;
}

/** Activation recomputation in training forwards (Model.setTraining). */
export interface RecomputeOptions {
  granularity: "none" | "full" | "selective";
  /** Decoder layers from the first that recompute (default all). */
  layers?: number;
}

export interface TrainingOptions {
  lr?: number;
  maxGradNorm?: number;
  recompute?: RecomputeOptions;
}

/** What Model.reshardFrom moved on this rank. */
export interface ReshardStats {
  tensors: number;
  /** To and from the other ranks. */
  bytesSent: number;
  bytesReceived: number;
  /** Regions this rank already held, copied in place. */
  bytesCopied: number;
  buckets: number;
  /** Received regions checked against their sender's checksum (options.verify; else 0). */
  verified: number;
  seconds: number;
}

/** Model.memory(): bytes this rank holds. */
export interface MemoryBytes {
  parameters: number;
  gradients: number;
  /** Optimizer state on the device (0 while offloaded) and on the host (while offloaded). */
  optimizer: number;
  optimizerHost: number;
  /** The parameters while offloaded (offloadParameters; then parameters is 0). */
  parametersHost: number;
  buffers: number;
  /** The KV cache of the last generate call (on CUDA the decoder keeps it between calls). */
  kvCache: number;
  /**
   * The device allocator's bytes now, at the peak since the last read (which resets it), and
   * reserved: CUDA's caching allocator, or on CPU the engine's count of every live CPU tensor of
   * the process (reserved = allocated).
   */
  device?: { allocated: number; peak: number; reserved: number };
}

/** One micro-batch of Model.policySteps. */
export interface PolicyMicroBatch {
  tokens: TokenIds;
  cuSeqlens: TokenIds;
  perToken: PolicyStepInputs;
  routedExperts?: Int32Array;
  images?: ImageInputs;
}

/** What one policySteps call ran, as this rank measured it. */
export interface ScheduleStats {
  /** Pipeline stages (1 without pipeline parallelism). */
  stages: number;
  microBatches: number;
  /** The whole schedule, forward and backward of every micro-batch. */
  seconds: number;
  /** Of which in point-to-point transfers with the neighbouring stages (the bubble included). */
  waitSeconds: number;
  /** Activations and their gradients sent to the neighbouring stages. */
  bytesSent: number;
}

export interface PolicyStepsResult {
  /** Per micro-batch, in order (on a pipeline, the last stage's; zeros on the others). */
  results: PolicyStepResult[];
  schedule: ScheduleStats;
}

export interface OptimizerStepResult {
  /** Global L2 norm of the accumulated gradients before clipping. */
  gradNorm: number;
  /** The rate of this step from the schedule. */
  lr: number;
  /** Updates applied so far (a skipped step does not count and does not advance the schedule). */
  step: number;
  /** True when the norm was not finite: parameters unchanged, gradients dropped. */
  skipped: boolean;
}

export interface OptimizerOptions extends AdamWConfig {
  /** The schedule scales `lr`, the peak rate; absent: constant. */
  schedule?: Omit<LrSchedule, "lr">;
  /** Clip the global gradient norm to this; absent: no clipping (the norm is still reported). */
  maxGradNorm?: number;
}

export interface NativeModelAddon {
  /** addon/model.cc ModelCreate(string configJson, {name,dtype,shape,data}[] tensors, string device, string dtype) */
  modelCreate(
    configJson: string,
    tensors: { name: string; dtype: NativeDtype; shape: number[]; data: NativeTypedArray }[],
    device: string,
    dtype: NativeDtype,
    freezeVision?: boolean,
  ): NativeModelHandle;
  /** addon/model.cc LoadWork: async, ModelLoad(string dir, string device, string dtype) */
  modelLoad(
    dir: string,
    device: string,
    dtype: NativeDtype,
    mesh?: NativeMeshHandle,
    sequenceParallel?: boolean,
    freezeVision?: boolean,
  ): Promise<NativeModelHandle>;
  /** addon/model.cc GatherWork: async, whole parameters or gradients (collective on a mesh) */
  modelGather(handle: NativeModelHandle, what: "parameters" | "gradients"): Promise<NamedHostTensor[]>;
  /** addon/model.cc SaveWork: async, ModelSave(handle, string dir, int64 maxShardBytes) */
  modelSave(handle: NativeModelHandle, dir: string, maxShardBytes: number): Promise<void>;
  /** addon/model.cc TrainStepWork: async, masked NLL / tokenNormaliser, gradients accumulate */
  modelTrainStep(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    lossMask: Float32Array,
    tokenNormaliser: number,
    temperature: number,
    chunkTokens: number,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ): Promise<TrainStepResult>;
  /** addon/model.cc PolicyStepWork: async, RL policy loss over the mini-batch's counts, gradients accumulate */
  modelPolicyStep(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    perToken: PolicyStepInputs,
    counts: GlobalCounts,
    config: PolicyLossConfig,
    temperature: number,
    chunkTokens: number,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ): Promise<PolicyStepResult>;
  /** addon/model.cc PolicyStepWork (batched): every micro-batch of a mini-batch, 1F1B on a pipeline */
  modelPolicySteps(
    handle: NativeModelHandle,
    microBatches: PolicyMicroBatch[],
    counts: GlobalCounts,
    config: PolicyLossConfig,
    temperature: number,
    chunkTokens: number,
  ): Promise<PolicyStepsResult>;
  /** addon/model.cc ModelOptimizerInit(handle, options) */
  modelOptimizerInit(handle: NativeModelHandle, options: OptimizerOptions): void;
  /** addon/model.cc OptimizerStepWork: async clip, schedule, AdamW, zero grads */
  modelOptimizerStep(handle: NativeModelHandle): Promise<OptimizerStepResult>;
  /** addon/model.cc ModelProfileNext(handle, path): the next call runs under the Kineto profiler */
  modelProfileNext(handle: NativeModelHandle, path: string): void;
  /** addon/model.cc ModelSetTraining(handle, {lr?, maxGradNorm?}) */
  modelSetTraining(handle: NativeModelHandle, options: TrainingOptions): void;
  /** addon/model.cc ModelMemory: bytes by kind; on CUDA the allocator's (peak reset by the read) */
  modelMemory(handle: NativeModelHandle, resetPeak: boolean): MemoryBytes;
  /** addon/model.cc ReshardWork: `to`'s parameters from `from`'s weights, in `to`'s layout */
  modelReshard(
    from: NativeModelHandle,
    to: NativeModelHandle,
    bucketBytes: number,
    verify: boolean,
  ): Promise<ReshardStats>;
  /** addon/model.cc OffloadWork: the optimizer state to host memory / back */
  modelOffload(
    handle: NativeModelHandle,
    what: "optimizer" | "parameters",
  ): Promise<{ bytes: number; seconds: number }>;
  modelOnload(
    handle: NativeModelHandle,
    what: "optimizer" | "parameters",
  ): Promise<{ bytes: number; seconds: number }>;
  /** addon/model.cc SaveOptimizerWork: async, the optimizer state to one safetensors file (atomic) */
  modelSaveOptimizer(handle: NativeModelHandle, file: string): Promise<void>;
  /** addon/model.cc LoadOptimizerWork: async, a file modelSaveOptimizer wrote, into the optimizer */
  modelLoadOptimizer(handle: NativeModelHandle, file: string): Promise<void>;
  /** addon/model.cc ModelDispose(handle) */
  modelDispose(handle: NativeModelHandle): void;
  /** addon/model.cc LogprobsWork: async */
  modelLogprobs(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    temperature: number,
    chunkTokens: number,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ): Promise<{ logprobs: Float32Array; entropy: Float32Array }>;
  /** addon/model.cc ActivationsWork: async, the residual stream at one layer, fp32 */
  modelActivations(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    layer: number,
    images?: ImageInputs,
  ): Promise<{ values: Float32Array; shape: [number, number] }>;
  /** addon/model.cc LossBackwardWork: async, loss = sum(weights * -logprob) */
  modelLossBackward(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    weights: Float32Array,
    temperature: number,
    chunkTokens: number,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ): Promise<{ loss: number; gradients: NamedHostTensor[] }>;
  /** addon/model.cc GenerateWork: async */
  modelGenerate(
    handle: NativeModelHandle,
    prompts: TokenIds[],
    options: NativeGenerateOptions,
  ): Promise<Generation[]>;
  /** addon/model.cc ModelParameters(handle): host copies of the parameters, then the buffers */
  modelParameters(handle: NativeModelHandle): NamedHostTensor[];
  /** addon/model.cc ModelGradients(handle): host copies */
  modelGradients(handle: NativeModelHandle): NamedHostTensor[];
  /** addon/model.cc ModelMoeShape(handle) */
  modelMoeShape(handle: NativeModelHandle): MoeShape;
  /** addon/model.cc ModelRouterStats(handle): sums since the last call, then reset */
  modelRouterStats(handle: NativeModelHandle): NativeRouterStats;
  /** addon/model.cc SupportedArchitectures() */
  supportedArchitectures(): string[];
}

function native(): NativeModelAddon {
  return addon() as unknown as NativeModelAddon;
}

export function supportedArchitectures(): string[] {
  return native().supportedArchitectures();
}

function checkIds(ids: unknown, field: string): TokenIds {
  if (!(ids instanceof Int32Array || ids instanceof BigInt64Array)) {
    throw new TypeError(`${field}: expected an Int32Array or BigInt64Array`);
  }
  return ids;
}

/** cuSeqlens: [sequences + 1], from 0 to tokens.length, every sequence at least 2 tokens long. */
/** Checks a packed batch; `prefix` goes before the field names in messages ("microBatches[2]."). */
export function checkPacked(tokens: unknown, cuSeqlens: unknown, prefix = ""): [TokenIds, TokenIds] {
  const t = checkIds(tokens, `${prefix}tokens`);
  const cu = checkIds(cuSeqlens, `${prefix}cuSeqlens`);
  const values = Array.from(cu as ArrayLike<number | bigint>, Number);
  if (values.length < 2 || values[0] !== 0 || values[values.length - 1] !== t.length) {
    throw new RangeError(
      `${prefix}cuSeqlens: must run from 0 to tokens.length (${t.length}), found [${values.join(", ")}]`,
    );
  }
  for (let i = 1; i < values.length; i++) {
    if ((values[i] ?? 0) - (values[i - 1] ?? 0) < 2) {
      throw new RangeError(`${prefix}cuSeqlens: sequence ${i - 1} has fewer than 2 tokens`);
    }
  }
  return [t, cu];
}

function checkTemperature(value: unknown, field: string, allowZero: boolean): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new RangeError(
      `${field}: ${JSON.stringify(value)} must be a ${allowZero ? "non-negative" : "positive"} number`,
    );
  }
  return value;
}

/** "model.embed_tokens" → 0, "model.layers.N" → N + 1, "model.norm" → -1; numbers as they are. */
export function layerIndex(layer: string | number): number {
  if (typeof layer === "number") {
    if (!Number.isInteger(layer) || layer < -1)
      throw new RangeError(`layer: ${layer} must be an integer ≥ -1`);
    return layer;
  }
  if (layer === "model.embed_tokens") return 0;
  if (layer === "model.norm") return -1;
  const m = /^model\.layers\.(\d+)$/.exec(layer);
  if (m) return Number(m[1]) + 1;
  throw new RangeError(
    `layer: ${JSON.stringify(layer)}; allowed: "model.embed_tokens", "model.layers.N", "model.norm", or an index`,
  );
}

/**
 * routedExperts: undefined, or an Int32Array of [tokens, moe.layers, moe.topK] expert ids in which
 * each row (one token, one layer) holds topK distinct ids in 0..experts-1, or is all -1.
 */
function checkRoutedExperts(value: unknown, moe: MoeShape, tokens: number): Int32Array | undefined {
  if (value === undefined) return undefined;
  if (moe.layers === 0) throw new TypeError("routedExperts: this model has no MoE layers");
  if (!(value instanceof Int32Array)) throw new TypeError("routedExperts: expected an Int32Array");
  const expected = tokens * moe.layers * moe.topK;
  if (value.length !== expected) {
    throw new RangeError(
      `routedExperts: has ${value.length} entries, expected ${expected} (tokens × moe layers × topK = ${tokens} × ${moe.layers} × ${moe.topK})`,
    );
  }
  const { layers, experts, topK } = moe;
  for (let row = 0; row < value.length; row += topK) {
    const none = value[row] === -1;
    let ok = true;
    for (let j = 0; j < topK && ok; j++) {
      const id = value[row + j] ?? -1;
      ok = none ? id === -1 : id >= 0 && id < experts;
      for (let i = 0; i < j && ok && !none; i++) ok = value[row + i] !== id;
    }
    if (!ok) {
      const ids = Array.from(value.subarray(row, row + topK)).join(", ");
      throw new RangeError(
        `routedExperts: token ${Math.floor(row / (layers * topK))}, MoE layer ${(row / topK) % layers} has [${ids}]; expected ${topK} distinct ids in 0..${experts - 1}, or all -1`,
      );
    }
  }
  return value;
}

function checkChunk(value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`chunkTokens: ${JSON.stringify(value)} must be a positive integer`);
  }
  return value;
}

/**
 * images: undefined, or {pixels: Float32Array, grids: Int32Array} with (t, h, w) ≥ 1 per image and
 * the pixels a whole number of values per patch. The engine checks them against the model's
 * vision config and the placeholder tokens.
 */
export function checkImages(value: unknown, field = "images"): ImageInputs | undefined {
  if (value === undefined) return undefined;
  if (value === null || typeof value !== "object") {
    throw new TypeError(`${field}: expected {pixels: Float32Array, grids: Int32Array}`);
  }
  const { pixels, grids } = value as Partial<ImageInputs>;
  if (!(pixels instanceof Float32Array)) throw new TypeError(`${field}.pixels: expected a Float32Array`);
  if (!(grids instanceof Int32Array) || grids.length % 3 !== 0) {
    throw new TypeError(`${field}.grids: expected an Int32Array of (t, h, w) per image`);
  }
  let patches = 0;
  for (let i = 0; i < grids.length; i += 3) {
    const [t, h, w] = [grids[i] ?? 0, grids[i + 1] ?? 0, grids[i + 2] ?? 0];
    if (t < 1 || h < 1 || w < 1) {
      throw new RangeError(`${field}.grids: image ${i / 3} is ${t} × ${h} × ${w}; each must be ≥ 1`);
    }
    patches += t * h * w;
  }
  if (patches === 0 ? pixels.length !== 0 : pixels.length % patches !== 0) {
    throw new RangeError(
      `${field}.pixels: ${pixels.length} values do not divide into the grids' ${patches} patches`,
    );
  }
  return { pixels, grids };
}

export interface GenerateOptions {
  /** New tokens per prompt at most: one number for all (default 16), or one per prompt. */
  maxNewTokens?: number | number[];
  /** 0 (default) is greedy. */
  temperature?: number;
  /** 0 (default) keeps all tokens. */
  topK?: number;
  /** 1 (default) keeps all tokens. */
  topP?: number;
  stopTokenIds?: number[];
  seed?: number;
  /**
   * Sampling is batch-invariant: prompt i draws its tokens as sequence `sequenceOffset + i` of the
   * seed, whatever else is in the call. A data-parallel rank given prompts [k, k + n) of a batch
   * passes k and samples exactly what one rank given the whole batch samples. Default 0.
   */
  sequenceOffset?: number;
  /** MoE models: return each token's experts in Generation.experts (default false). */
  recordExperts?: boolean;
  /** Vision-language models: the prompts' images, in prompt order (see ImageInputs). */
  images?: ImageInputs;
}

export interface ModelCreateOptions {
  device?: string;
  dtype?: NativeDtype;
  /**
   * Vision-language models: the vision tower is loaded and saved but not trained (its tensors are
   * listed with the buffers: no gradients, no optimizer state). Default false.
   */
  freezeVision?: boolean;
}

export interface ModelLoadOptions extends ModelCreateOptions {
  /**
   * A multi-rank run's mesh: every rank of it loads the same folder, each reading only its slices
   * (tensor-parallel shards; whole tensors elsewhere). Every later call is then collective: all
   * ranks make the same calls in the same order. The mesh's sequenceParallel is used.
   */
  mesh?: Mesh;
}

export function checkPlacement(options: ModelCreateOptions): [string, NativeDtype] {
  const device = checkDevice(options.device ?? "cpu");
  const dtype = checkDtype(options.dtype ?? "float32");
  if (!["float32", "float16", "bfloat16", "float64"].includes(dtype)) {
    throw new TypeError(`dtype: a model needs a floating dtype, found ${dtype}`);
  }
  return [device, dtype];
}

function checkFreeze(value: unknown): boolean {
  if (value !== undefined && typeof value !== "boolean") {
    throw new TypeError(`freezeVision: ${JSON.stringify(value)} must be a boolean`);
  }
  return value ?? false;
}

/** A model on the native engine. Call dispose() when done (also `using`). */
export class Model {
  #handle: NativeModelHandle | undefined;
  #moe: MoeShape | undefined;

  private constructor(handle: NativeModelHandle) {
    this.#handle = handle;
  }

  /**
   * config: the parsed HF config.json (its `architectures[0]` picks the family);
   * tensors: every HF tensor by name, in any float dtype (copied; the arrays may be reused).
   */
  static create(
    config: Record<string, unknown>,
    tensors: NamedHostTensor[],
    options: ModelCreateOptions = {},
  ): Model {
    if (config === null || typeof config !== "object" || Array.isArray(config)) {
      throw new TypeError("config: expected the parsed config.json object");
    }
    const architecture = (config.architectures as unknown[] | undefined)?.[0];
    const supported = supportedArchitectures();
    if (typeof architecture !== "string" || !supported.includes(architecture)) {
      throw new TypeError(
        `config.architectures[0]: ${JSON.stringify(architecture)} is not supported; supported: ${supported.join(", ")}`,
      );
    }
    if (!Array.isArray(tensors))
      throw new TypeError("tensors: expected an array of {name, dtype, shape, data}");
    tensors.forEach((t, i) => {
      checkTensor(t, `tensors[${i}]`);
      if (typeof t.name !== "string" || t.name === "")
        throw new TypeError(`tensors[${i}].name: expected a tensor name`);
    });
    const [device, dtype] = checkPlacement(options);
    return new Model(
      native().modelCreate(JSON.stringify(config), tensors, device, dtype, checkFreeze(options.freezeVision)),
    );
  }

  /**
   * Loads an HF model folder (config.json plus model.safetensors or an index and shards). Stored
   * bf16/fp16/fp32 tensors are cast to `dtype`. Rejects naming the folder and the problem.
   */
  static async load(dir: string, options: ModelLoadOptions = {}): Promise<Model> {
    if (typeof dir !== "string" || dir === "") throw new TypeError("dir: expected a folder path");
    const [device, dtype] = checkPlacement(options);
    const mesh = options.mesh;
    if (mesh !== undefined && !(mesh instanceof Mesh)) throw new TypeError("mesh: expected a Mesh");
    return new Model(
      await native().modelLoad(
        dir,
        device,
        dtype,
        mesh?.nativeHandle,
        mesh?.info.layout.sequenceParallel ?? false,
        checkFreeze(options.freezeVision),
      ),
    );
  }

  /**
   * The whole tensors (tensor-parallel slices gathered) by HF name: the parameters then buffers,
   * or the gradients accumulated since the last optimizer step, completed over the tensor group
   * and summed over the data group, as the optimizer sees them. Collective on a mesh.
   */
  async gather(what: "parameters" | "gradients"): Promise<NamedHostTensor[]> {
    if (what !== "parameters" && what !== "gradients") {
      throw new RangeError(`what: ${JSON.stringify(what)}; allowed: "parameters", "gradients"`);
    }
    return native().modelGather(this.handle, what);
  }

  /**
   * Writes an HF folder: config.json (as loaded, dtype updated to the parameters') and
   * safetensors with HF names, sharded above maxShardBytes; tied models omit lm_head.weight.
   */
  async save(dir: string, maxShardBytes = 5_000_000_000): Promise<void> {
    if (typeof dir !== "string" || dir === "") throw new TypeError("dir: expected a folder path");
    if (!Number.isSafeInteger(maxShardBytes) || maxShardBytes <= 0) {
      throw new RangeError(`maxShardBytes: ${JSON.stringify(maxShardBytes)} must be a positive integer`);
    }
    await native().modelSave(this.handle, dir, maxShardBytes);
  }

  /**
   * One micro-batch of masked NLL: forward, loss = sum(lossMask · −logprob) / tokenNormaliser,
   * backward. Gradients accumulate until optimizerStep(). lossMask has one entry per predicted
   * token (tokens − sequences, as logprobs()); tokenNormaliser: the tokens counted in the whole
   * mini-batch (all micro-batches), so that summed gradients are the mini-batch's.
   */
  async trainStep(
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    lossMask: Float32Array,
    tokenNormaliser: number,
    temperature = 1,
    chunkTokens = 1024,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ): Promise<TrainStepResult> {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    const predicted = t.length - (cu.length - 1);
    if (!(lossMask instanceof Float32Array) || lossMask.length !== predicted) {
      throw new RangeError(`lossMask: expected a Float32Array of ${predicted} entries (tokens - sequences)`);
    }
    if (typeof tokenNormaliser !== "number" || !Number.isFinite(tokenNormaliser) || tokenNormaliser <= 0) {
      throw new RangeError(`tokenNormaliser: ${JSON.stringify(tokenNormaliser)} must be a positive number`);
    }
    return native().modelTrainStep(
      this.handle,
      t,
      cu,
      lossMask,
      tokenNormaliser,
      checkTemperature(temperature, "temperature", false),
      checkChunk(chunkTokens),
      checkRoutedExperts(routedExperts, this.moe, t.length),
      checkImages(images),
    );
  }

  /**
   * One micro-batch of the RL policy loss (verl's PPO/GRPO/DAPO clipped surrogate, entropy bonus,
   * KL penalty; see PolicyLossConfig): forward, loss, backward. Gradients accumulate until
   * optimizerStep(). counts are those of the whole mini-batch (all micro-batches, all ranks), so
   * that the summed gradients of the micro-batches are the mini-batch's whatever the split.
   * routedExperts (MoE): replay this routing instead of the router's choice, as in logprobs().
   * images (vision-language models): the batch's images, as in logprobs().
   */
  async policyStep(
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    perToken: PolicyStepInputs,
    counts: GlobalCounts,
    config: PolicyLossConfig = {},
    temperature = 1,
    chunkTokens = 1024,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ): Promise<PolicyStepResult> {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    const predicted = t.length - (cu.length - 1);
    if (perToken === null || typeof perToken !== "object") {
      throw new TypeError("perToken: expected {oldLogprobs?, advantages, mask, refLogprobs?}");
    }
    for (const key of ["advantages", "mask"] as const) {
      checkTokenArray(perToken[key], `perToken.${key}`, predicted, "tokens - sequences");
    }
    if (perToken.oldLogprobs !== undefined) {
      checkTokenArray(perToken.oldLogprobs, "perToken.oldLogprobs", predicted, "tokens - sequences");
    }
    checkPolicyLossConfig(config);
    checkOptionalInputs(config, perToken.refLogprobs, "perToken", predicted, "tokens - sequences");
    if (perToken.rolloutIsWeights !== undefined) {
      checkTokenArray(
        perToken.rolloutIsWeights,
        "perToken.rolloutIsWeights",
        predicted,
        "tokens - sequences",
      );
    }
    return native().modelPolicyStep(
      this.handle,
      t,
      cu,
      perToken,
      checkCounts(counts),
      config,
      checkTemperature(temperature, "temperature", false),
      checkChunk(chunkTokens),
      checkRoutedExperts(routedExperts, this.moe, t.length),
      checkImages(images),
    );
  }

  /**
   * Every micro-batch of a mini-batch through the RL policy loss in one call, as policyStep does
   * each: under pipeline parallelism the stages run them 1F1B (warm-up forwards, then one forward
   * and one backward at a time), which per-micro-batch calls cannot. Gradients accumulate until
   * optimizerStep().
   */
  async policySteps(
    microBatches: PolicyMicroBatch[],
    counts: GlobalCounts,
    config: PolicyLossConfig = {},
    temperature = 1,
    chunkTokens = 1024,
  ): Promise<PolicyStepsResult> {
    if (!Array.isArray(microBatches)) throw new TypeError("microBatches: expected an array");
    checkPolicyLossConfig(config);
    const checked = microBatches.map((mb, i): PolicyMicroBatch => {
      const at = `microBatches[${i}]`;
      if (mb === null || typeof mb !== "object")
        throw new TypeError(`${at}: expected {tokens, cuSeqlens, perToken}`);
      const [t, cu] = checkPacked(mb.tokens, mb.cuSeqlens, `${at}.`);
      const predicted = t.length - (cu.length - 1);
      const perToken = mb.perToken;
      if (perToken === null || typeof perToken !== "object") {
        throw new TypeError(`${at}.perToken: expected {oldLogprobs?, advantages, mask, refLogprobs?}`);
      }
      for (const key of ["advantages", "mask"] as const) {
        checkTokenArray(perToken[key], `${at}.perToken.${key}`, predicted, "tokens - sequences");
      }
      if (perToken.oldLogprobs !== undefined) {
        checkTokenArray(perToken.oldLogprobs, `${at}.perToken.oldLogprobs`, predicted, "tokens - sequences");
      }
      checkOptionalInputs(config, perToken.refLogprobs, `${at}.perToken`, predicted, "tokens - sequences");
      if (perToken.rolloutIsWeights !== undefined) {
        checkTokenArray(
          perToken.rolloutIsWeights,
          `${at}.perToken.rolloutIsWeights`,
          predicted,
          "tokens - sequences",
        );
      }
      const routedExperts = checkRoutedExperts(mb.routedExperts, this.moe, t.length);
      const images = checkImages(mb.images);
      return {
        tokens: t,
        cuSeqlens: cu,
        perToken,
        ...(routedExperts ? { routedExperts } : {}),
        ...(images ? { images } : {}),
      };
    });
    return native().modelPolicySteps(
      this.handle,
      checked,
      checkCounts(counts),
      config,
      checkTemperature(temperature, "temperature", false),
      checkChunk(chunkTokens),
    );
  }

  /** AdamW (fp32 masters) over this model's parameters, starting at step 0; replaces an earlier one. */
  initOptimizer(options: OptimizerOptions): void {
    if (options === null || typeof options !== "object")
      throw new TypeError("options: expected {lr, schedule, ...}");
    const positive = (v: unknown, field: string) => {
      if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
        throw new RangeError(`${field}: ${JSON.stringify(v)} must be a positive number`);
      }
    };
    const unit = (v: unknown, field: string) => {
      if (v !== undefined && (typeof v !== "number" || !(v >= 0 && v < 1))) {
        throw new RangeError(`${field}: ${JSON.stringify(v)} must be a number in [0, 1)`);
      }
    };
    positive(options.lr, "options.lr");
    unit(options.beta1, "options.beta1");
    unit(options.beta2, "options.beta2");
    if (options.eps !== undefined) positive(options.eps, "options.eps");
    if (
      options.weightDecay !== undefined &&
      !(typeof options.weightDecay === "number" && options.weightDecay >= 0)
    ) {
      throw new RangeError(
        `options.weightDecay: ${JSON.stringify(options.weightDecay)} must be a number >= 0`,
      );
    }
    const noDecay = options.noDecay;
    if (
      noDecay !== undefined &&
      noDecay !== "biases-and-norms" &&
      !(Array.isArray(noDecay) && noDecay.every((n) => typeof n === "string"))
    ) {
      throw new TypeError(
        `options.noDecay: ${JSON.stringify(noDecay)}; allowed: "biases-and-norms" or parameter names`,
      );
    }
    if (options.maxGradNorm !== undefined) positive(options.maxGradNorm, "options.maxGradNorm");
    const schedule = options.schedule ?? { kind: "constant" };
    if (schedule === null || typeof schedule !== "object") {
      throw new TypeError("options.schedule: expected {kind, warmupSteps?, totalSteps?, minLrRatio?}");
    }
    // lrAt checks the schedule's fields and names them; the prefix says where they live.
    try {
      lrAt({ ...schedule, lr: options.lr }, 0);
    } catch (error) {
      throw new RangeError(`options.${(error as Error).message}`);
    }
    native().modelOptimizerInit(this.handle, { ...options, schedule });
  }

  /** Clip, rate from the schedule, AdamW update, drop the gradients. */
  optimizerStep(): Promise<OptimizerStepResult> {
    return native().modelOptimizerStep(this.handle);
  }

  /**
   * Runs the next call on this model (trainStep, generate, …) under PyTorch's Kineto profiler and
   * writes a Chrome trace (chrome://tracing, Perfetto) to `path`: CPU ops and, on CUDA, kernels.
   */
  profileNext(path: string): void {
    if (typeof path !== "string" || path === "") throw new TypeError("path: expected a file path");
    native().modelProfileNext(this.handle, path);
  }

  /**
   * Changes the peak learning rate (the schedule keeps its shape and position) and/or the clip
   * norm, and/or activation recomputation: `recompute.granularity` "full" re-runs whole decoder
   * layers in backward (the forward keeps only each layer's input), "selective" the attention core
   * and the MoE experts; `layers` counts from the first layer (default all). Gradients are the same.
   */
  setTraining(options: TrainingOptions): void {
    for (const key of ["lr", "maxGradNorm"] as const) {
      const v = options[key];
      if (v !== undefined && !(typeof v === "number" && Number.isFinite(v) && v > 0)) {
        throw new RangeError(`options.${key}: ${JSON.stringify(v)} must be a positive number`);
      }
    }
    const r = options.recompute;
    if (r !== undefined) {
      if (r === null || typeof r !== "object")
        throw new TypeError("options.recompute: expected {granularity, layers?}");
      if (!["none", "full", "selective"].includes(r.granularity)) {
        throw new RangeError(
          `options.recompute.granularity: ${JSON.stringify(r.granularity)}; allowed: "none", "full", "selective"`,
        );
      }
      if (r.layers !== undefined && !(Number.isSafeInteger(r.layers) && r.layers >= 0)) {
        throw new RangeError(`options.recompute.layers: ${JSON.stringify(r.layers)} must be an integer ≥ 0`);
      }
    }
    native().modelSetTraining(this.handle, options);
  }

  /**
   * Bytes this rank holds by kind, counted from its tensors (parameters, gradients while they are
   * pending, optimizer state, buffers, the last generation's KV cache); also the device allocator's
   * current, peak and reserved bytes (CUDA's caching allocator; on CPU every live CPU tensor of the
   * process, counted by the engine). The peak runs from the previous call, which restarts it unless
   * `resetPeak` is false (a status read that must not disturb a measurement).
   */
  memory(options: { resetPeak?: boolean } = {}): MemoryBytes {
    return native().modelMemory(this.handle, options.resetPeak !== false);
  }

  /**
   * Sets this model's parameters to `source`'s weights: the same model held in another parallel
   * layout over the same ranks (training → rollout). Each rank keeps what it already holds and
   * receives every region it lacks once, from one of the ranks holding it, a bucket of tensors
   * (`bucketBytes`, default 256 MiB) at a time. `verify` (debugging): each received region is
   * checked against a checksum of its bits from its sender, and a mismatch throws naming the
   * tensor, the rows and the sender. Collective: every rank calls it.
   */
  reshardFrom(
    source: Model,
    options: { bucketBytes?: number; verify?: boolean } = {},
  ): Promise<ReshardStats> {
    const bucket = options.bucketBytes ?? 256 * 2 ** 20;
    if (!Number.isSafeInteger(bucket) || bucket < 1) {
      throw new RangeError(`options.bucketBytes: ${JSON.stringify(bucket)} must be an integer ≥ 1`);
    }
    if (!(source instanceof Model)) throw new TypeError("source: expected a Model");
    return native().modelReshard(source.handle, this.handle, bucket, options.verify === true);
  }

  /**
   * Moves the optimizer state (fp32 masters, moments) to host memory (pinned on CUDA), freeing the
   * device for rollout; onloadOptimizer() brings it back, and optimizerStep() does so by itself.
   * Saving and loading the state work in either place. The bytes moved (0 if already there).
   */
  offloadOptimizer(): Promise<{ bytes: number; seconds: number }> {
    return native().modelOffload(this.handle, "optimizer");
  }

  onloadOptimizer(): Promise<{ bytes: number; seconds: number }> {
    return native().modelOnload(this.handle, "optimizer");
  }

  /**
   * Moves this rank's parameters to host memory (pinned on CUDA) while the model is idle (training
   * weights during a rollout that holds its own copy): each storage is copied out and emptied, and
   * refilled in place by onloadParameters() — or by the next call that reads the weights, which
   * brings them back first. Refused while gradients are pending. The bytes moved (0 if already there).
   */
  offloadParameters(): Promise<{ bytes: number; seconds: number }> {
    return native().modelOffload(this.handle, "parameters");
  }

  onloadParameters(): Promise<{ bytes: number; seconds: number }> {
    return native().modelOnload(this.handle, "parameters");
  }

  /**
   * Writes the optimizer state (fp32 moments, step counters, fp32 masters of non-fp32 parameters,
   * the update count) to one safetensors file, atomically. With save() it is all a resume needs.
   */
  saveOptimizer(file: string): Promise<void> {
    if (typeof file !== "string" || file === "") throw new TypeError("file: expected a file path");
    return native().modelSaveOptimizer(this.handle, file);
  }

  /** Restores a saveOptimizer() file into the optimizer initOptimizer() made (same options). */
  loadOptimizer(file: string): Promise<void> {
    if (typeof file !== "string" || file === "") throw new TypeError("file: expected a file path");
    return native().modelLoadOptimizer(this.handle, file);
  }

  get handle(): NativeModelHandle {
    if (!this.#handle) throw new Error("model: this model was disposed");
    return this.#handle;
  }

  /**
   * Log-probability of tokens 1..n-1 of each packed sequence, and the entropy of each prediction.
   * chunkTokens: how many tokens' [vocab] logits exist at once. routedExperts (MoE models only):
   * [tokens, moe.layers, moe.topK] expert ids aligned with `tokens` (e.g. Generation.experts of
   * each sequence, concatenated), used instead of the router's choice; the weights still come from
   * the router at those experts, so gradients reach it (trainStep, policyStep, lossBackward take
   * the same argument). A row of -1 routes that token normally. images (vision-language models):
   * the images whose placeholder tokens the batch holds, in token order (ImageInputs); trainStep,
   * policyStep, lossBackward and activations take the same argument.
   */
  logprobs(
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    temperature = 1,
    chunkTokens = 1024,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ) {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    return native().modelLogprobs(
      this.handle,
      t,
      cu,
      checkTemperature(temperature, "temperature", false),
      checkChunk(chunkTokens),
      checkRoutedExperts(routedExperts, this.moe, t.length),
      checkImages(images),
    );
  }

  /**
   * The residual stream at one point of the forward, fp32 [tokens, hidden]: `layer` is
   * "model.embed_tokens" (or 0), "model.layers.N" (N + 1: after decoder layer N), or "model.norm"
   * (or -1: the final normed hidden states the head reads).
   */
  activations(tokens: TokenIds, cuSeqlens: TokenIds, layer: string | number, images?: ImageInputs) {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    return native().modelActivations(this.handle, t, cu, layerIndex(layer), checkImages(images));
  }

  /** Gradients of sum(weights * -logprob) by parameter name; weights as many as logprobs. */
  lossBackward(
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    weights: Float32Array,
    temperature = 1,
    chunkTokens = 1024,
    routedExperts?: Int32Array,
    images?: ImageInputs,
  ) {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    const sequences = cu.length - 1;
    if (!(weights instanceof Float32Array) || weights.length !== t.length - sequences) {
      throw new RangeError(
        `weights: expected a Float32Array of ${t.length - sequences} entries (tokens - sequences)`,
      );
    }
    return native().modelLossBackward(
      this.handle,
      t,
      cu,
      weights,
      checkTemperature(temperature, "temperature", false),
      checkChunk(chunkTokens),
      checkRoutedExperts(routedExperts, this.moe, t.length),
      checkImages(images),
    );
  }

  generate(prompts: TokenIds[], options: GenerateOptions = {}): Promise<Generation[]> {
    if (!Array.isArray(prompts))
      throw new TypeError("prompts: expected an array of Int32Array or BigInt64Array");
    prompts.forEach((p, i) => {
      if (checkIds(p, `prompts[${i}]`).length === 0) throw new RangeError(`prompts[${i}]: empty`);
    });
    const count = (v: unknown, field: string, min: number) => {
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
        throw new RangeError(`${field}: ${JSON.stringify(v)} must be an integer >= ${min}`);
      }
      return v;
    };
    const topP = options.topP ?? 1;
    if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
      throw new RangeError(`topP: ${JSON.stringify(topP)} must be in (0, 1]`);
    }
    const recordExperts = options.recordExperts ?? false;
    if (typeof recordExperts !== "boolean") {
      throw new TypeError(`recordExperts: ${JSON.stringify(recordExperts)} must be a boolean`);
    }
    const stopTokenIds = options.stopTokenIds ?? [];
    if (!Array.isArray(stopTokenIds)) throw new TypeError("stopTokenIds: expected an array of token ids");
    stopTokenIds.forEach((id, i) => {
      count(id, `stopTokenIds[${i}]`, 0);
    });
    const limits = options.maxNewTokens ?? 16;
    let maxNewTokensEach: number[] | undefined;
    if (Array.isArray(limits)) {
      if (limits.length !== prompts.length) {
        throw new RangeError(
          `maxNewTokens: ${limits.length} limits for ${prompts.length} prompts (one number, or one per prompt)`,
        );
      }
      maxNewTokensEach = limits.map((n, i) => count(n, `maxNewTokens[${i}]`, 0));
    }
    return native().modelGenerate(this.handle, prompts, {
      maxNewTokens: maxNewTokensEach ? Math.max(0, ...maxNewTokensEach) : count(limits, "maxNewTokens", 0),
      ...(maxNewTokensEach ? { maxNewTokensEach } : {}),
      temperature: checkTemperature(options.temperature ?? 0, "temperature", true),
      topK: count(options.topK ?? 0, "topK", 0),
      topP,
      stopTokenIds,
      seed: count(options.seed ?? 0, "seed", 0),
      sequenceOffset: count(options.sequenceOffset ?? 0, "sequenceOffset", 0),
      recordExperts,
      ...(options.images === undefined ? {} : { images: checkImages(options.images) }),
    });
  }

  /**
   * Host copies of every tensor of the model by HF name, as transformers holds them in memory (MoE
   * experts stacked): the parameters, then non-trained buffers (DeepSeek-V3's
   * e_score_correction_bias). Model.create accepts them back.
   */
  parameters(): NamedHostTensor[] {
    return native().modelParameters(this.handle);
  }

  /** The routing shape of an MoE model; layers 0 for a dense model. */
  get moe(): MoeShape {
    this.#moe ??= native().modelMoeShape(this.handle);
    return this.#moe;
  }

  /**
   * Router statistics of the forwards run by logprobs, trainStep, policyStep and lossBackward since
   * the last call (generation is not counted); reading resets them. Per MoE layer: tokens per expert,
   * load imbalance (max / mean), mean router entropy, dropped tokens (0: dropless).
   */
  routerStats(): RouterStats {
    const raw = native().modelRouterStats(this.handle);
    const layers = raw.tokensPerExpert.map((counts, l) =>
      routerLayerStats(counts, raw.entropySum[l] ?? 0, raw.tokens, this.moe.topK),
    );
    return { tokens: raw.tokens, layers };
  }

  /**
   * Host copies of the gradients accumulated since the last optimizerStep(), by HF name (zeros
   * where none); parameters only, no buffers.
   */
  gradients(): NamedHostTensor[] {
    return native().modelGradients(this.handle);
  }

  dispose(): void {
    if (this.#handle) native().modelDispose(this.#handle);
    this.#handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
