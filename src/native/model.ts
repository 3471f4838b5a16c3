// Models on the native engine: the mechanical declarations of addon/model.cc, then the idiomatic
// `Model` class that checks every argument (errors name the field) before calling in.
import { addon, type NativeDtype, type NativeTypedArray } from "./binding.js";
import { checkDevice, checkDtype, checkTensor, type HostTensor } from "./engine.js";

/** An opaque model handle; addon/model.cc tags it and refuses any other object. */
export type NativeModelHandle = { readonly __tillerModel: unique symbol };

export type TokenIds = Int32Array | BigInt64Array;

export interface NamedHostTensor extends HostTensor {
  name: string;
}

export interface NativeGenerateOptions {
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  stopTokenIds: number[];
  seed: number;
}

export interface Generation {
  /** Generated ids only (the prompt excluded), stop token included when it ended the sequence. */
  tokens: Int32Array;
  /** log_softmax(logits / temperature) at each generated token (temperature 1 when greedy). */
  logprobs: Float32Array;
  finishReason: "stop" | "length";
}

export interface NativeModelAddon {
  /** addon/model.cc ModelCreate(object hfConfig, {name,dtype,shape,data}[] tensors, string device, string dtype) */
  modelCreate(
    config: Record<string, unknown>,
    tensors: { name: string; dtype: NativeDtype; shape: number[]; data: NativeTypedArray }[],
    device: string,
    dtype: NativeDtype,
  ): NativeModelHandle;
  /** addon/model.cc ModelDispose(handle) */
  modelDispose(handle: NativeModelHandle): void;
  /** addon/model.cc LogprobsWork: async */
  modelLogprobs(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    temperature: number,
    chunkTokens: number,
  ): Promise<{ logprobs: Float32Array; entropy: Float32Array }>;
  /** addon/model.cc LossBackwardWork: async, loss = sum(weights * -logprob) */
  modelLossBackward(
    handle: NativeModelHandle,
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    weights: Float32Array,
    temperature: number,
    chunkTokens: number,
  ): Promise<{ loss: number; gradients: NamedHostTensor[] }>;
  /** addon/model.cc GenerateWork: async */
  modelGenerate(
    handle: NativeModelHandle,
    prompts: TokenIds[],
    options: NativeGenerateOptions,
  ): Promise<Generation[]>;
  /** addon/model.cc ModelParameters(handle): host copies */
  modelParameters(handle: NativeModelHandle): NamedHostTensor[];
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
function checkPacked(tokens: unknown, cuSeqlens: unknown): [TokenIds, TokenIds] {
  const t = checkIds(tokens, "tokens");
  const cu = checkIds(cuSeqlens, "cuSeqlens");
  const values = Array.from(cu as ArrayLike<number | bigint>, Number);
  if (values.length < 2 || values[0] !== 0 || values[values.length - 1] !== t.length) {
    throw new RangeError(
      `cuSeqlens: must run from 0 to tokens.length (${t.length}), found [${values.join(", ")}]`,
    );
  }
  for (let i = 1; i < values.length; i++) {
    if ((values[i] ?? 0) - (values[i - 1] ?? 0) < 2) {
      throw new RangeError(`cuSeqlens: sequence ${i - 1} has fewer than 2 tokens`);
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

function checkChunk(value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`chunkTokens: ${JSON.stringify(value)} must be a positive integer`);
  }
  return value;
}

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  /** 0 (default) keeps all tokens. */
  topK?: number;
  /** 1 (default) keeps all tokens. */
  topP?: number;
  stopTokenIds?: number[];
  seed?: number;
}

export interface ModelCreateOptions {
  device?: string;
  dtype?: NativeDtype;
}

/** A model on the native engine. Call dispose() when done (also `using`). */
export class Model {
  #handle: NativeModelHandle | undefined;

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
    const device = checkDevice(options.device ?? "cpu");
    const dtype = checkDtype(options.dtype ?? "float32");
    if (!["float32", "float16", "bfloat16", "float64"].includes(dtype)) {
      throw new TypeError(`dtype: a model needs a floating dtype, found ${dtype}`);
    }
    return new Model(native().modelCreate(config, tensors, device, dtype));
  }

  get handle(): NativeModelHandle {
    if (!this.#handle) throw new Error("model: this model was disposed");
    return this.#handle;
  }

  /**
   * Log-probability of tokens 1..n-1 of each packed sequence, and the entropy of each prediction.
   * chunkTokens: how many tokens' [vocab] logits exist at once.
   */
  logprobs(tokens: TokenIds, cuSeqlens: TokenIds, temperature = 1, chunkTokens = 1024) {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    return native().modelLogprobs(
      this.handle,
      t,
      cu,
      checkTemperature(temperature, "temperature", false),
      checkChunk(chunkTokens),
    );
  }

  /** Gradients of sum(weights * -logprob) by parameter name; weights as many as logprobs. */
  lossBackward(
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    weights: Float32Array,
    temperature = 1,
    chunkTokens = 1024,
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
    const stopTokenIds = options.stopTokenIds ?? [];
    if (!Array.isArray(stopTokenIds)) throw new TypeError("stopTokenIds: expected an array of token ids");
    stopTokenIds.forEach((id, i) => {
      count(id, `stopTokenIds[${i}]`, 0);
    });
    return native().modelGenerate(this.handle, prompts, {
      maxNewTokens: count(options.maxNewTokens ?? 16, "maxNewTokens", 0),
      temperature: checkTemperature(options.temperature ?? 0, "temperature", true),
      topK: count(options.topK ?? 0, "topK", 0),
      topP,
      stopTokenIds,
      seed: count(options.seed ?? 0, "seed", 0),
    });
  }

  /** Host copies of every parameter, by HF name. */
  parameters(): NamedHostTensor[] {
    return native().modelParameters(this.handle);
  }

  dispose(): void {
    if (this.#handle) native().modelDispose(this.#handle);
    this.#handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
