// A critic for PPO (addon/critic.cc): an HF causal-LM backbone with a scalar value head `score`,
// its values per predicted token, the clipped value loss with accumulated gradients, its own
// AdamW, and save/load of its folder and optimizer. Arguments are checked here, naming the field.
import { addon } from "./binding.js";
import {
  checkPacked,
  checkPlacement,
  type ModelCreateOptions,
  type OptimizerOptions,
  type TokenIds,
} from "./model.js";
import type { GlobalCounts, LossAggMode } from "./policy-loss.js";
import { checkCounts, checkTokenArray } from "./policy-loss.js";
import { lrAt } from "./train.js";

declare const criticBrand: unique symbol;
type NativeCriticHandle = { readonly [criticBrand]: true };

export interface ValueLossConfig {
  /** Values move at most this far from the scored ones (verl's critic.cliprange_value, default 0.5). */
  cliprangeValue?: number;
  /** As the policy loss (verl's critic.loss_agg_mode, default token-mean). */
  aggMode?: LossAggMode;
  lossScaleFactor?: number;
}

export interface ValueStepInputs {
  /** Values when the batch was scored (before this step's updates). */
  values: Float32Array;
  /** The targets: GAE returns. */
  returns: Float32Array;
  /** 1 for response tokens, 0 for prompt tokens. */
  mask: Float32Array;
}

/** This micro-batch's share: vfLoss (aggregated), vfClipfrac and vpredMean (token means). */
export interface ValueStepResult {
  vfLoss: number;
  vfClipfrac: number;
  vpredMean: number;
}

export interface ValueLossInputs extends ValueStepInputs {
  /** The values now (what the loss differentiates). */
  vpreds: Float32Array;
  /** [sequences + 1] boundaries of the sequences in the token arrays. */
  cuSeqlens: Int32Array;
}

interface NativeCriticAddon {
  /** addon/critic.cc ValueLoss(inputs, counts, config): synchronous */
  valueLoss(
    inputs: ValueLossInputs,
    counts: GlobalCounts,
    config: ValueLossConfig,
  ): { loss: number; vfClipfrac: number; vpredMean: number; gradVpreds: Float32Array };
  /** addon/critic.cc CriticLoad(dir, device, dtype, seed) */
  criticLoad(dir: string, device: string, dtype: string, seed: number): Promise<NativeCriticHandle>;
  /** addon/critic.cc ValuesWork */
  criticValues(handle: NativeCriticHandle, tokens: Int32Array, cuSeqlens: Int32Array): Promise<Float32Array>;
  /** addon/critic.cc StepWork */
  criticStep(
    handle: NativeCriticHandle,
    tokens: Int32Array,
    cuSeqlens: Int32Array,
    perToken: ValueStepInputs,
    counts: GlobalCounts,
    config: ValueLossConfig,
  ): Promise<ValueStepResult>;
  criticOptimizerInit(handle: NativeCriticHandle, options: OptimizerOptions): void;
  criticOptimizerStep(
    handle: NativeCriticHandle,
  ): Promise<{ gradNorm: number; lr: number; step: number; skipped: boolean }>;
  criticSave(handle: NativeCriticHandle, dir: string): Promise<void>;
  criticSaveOptimizer(handle: NativeCriticHandle, file: string): Promise<void>;
  criticLoadOptimizer(handle: NativeCriticHandle, file: string): Promise<void>;
  criticDispose(handle: NativeCriticHandle): void;
}

const native = () => addon() as unknown as NativeCriticAddon;

function int32(ids: TokenIds): Int32Array {
  return ids instanceof Int32Array ? ids : Int32Array.from(ids, Number);
}

/**
 * verl's compute_value_loss on given per-token arrays (no model): 0.5·agg(max((v − R)²,
 * (clip(v, v_old ± cliprangeValue) − R)²)) with the mini-batch counts, and d loss / d vpreds.
 */
export function valueLoss(inputs: ValueLossInputs, counts: GlobalCounts, config: ValueLossConfig = {}) {
  if (inputs === null || typeof inputs !== "object") throw new TypeError("inputs: expected an object");
  if (!(inputs.vpreds instanceof Float32Array)) throw new TypeError("inputs.vpreds: expected a Float32Array");
  const n = inputs.vpreds.length;
  for (const key of ["values", "returns", "mask"] as const) {
    checkTokenArray(inputs[key], `inputs.${key}`, n, "as many as vpreds");
  }
  const cu = inputs.cuSeqlens;
  if (!(cu instanceof Int32Array) || cu.length < 2 || cu[0] !== 0 || cu[cu.length - 1] !== n) {
    throw new RangeError(`inputs.cuSeqlens: expected an Int32Array running from 0 to ${n}`);
  }
  const c = config.cliprangeValue;
  if (c !== undefined && !(typeof c === "number" && c >= 0)) {
    throw new RangeError(`config.cliprangeValue: ${JSON.stringify(c)} must be a number ≥ 0`);
  }
  return native().valueLoss(inputs, checkCounts(counts), config);
}

/** A value model. Call dispose() when done. */
export class Critic {
  #handle: NativeCriticHandle | undefined;

  private constructor(handle: NativeCriticHandle) {
    this.#handle = handle;
  }

  /**
   * The backbone from an HF folder (the actor's, or a saved critic's); the head from its score.*
   * tensors when present, else initialised from `seed` (weight ~ N(0, initializer_range²), bias 0).
   */
  static async load(dir: string, options: ModelCreateOptions & { seed?: number } = {}): Promise<Critic> {
    if (typeof dir !== "string" || dir === "") throw new TypeError("dir: expected a folder path");
    const [device, dtype] = checkPlacement(options);
    const seed = options.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed: ${seed} must be an integer ≥ 0`);
    return new Critic(await native().criticLoad(dir, device, dtype, seed));
  }

  get handle(): NativeCriticHandle {
    if (!this.#handle) throw new Error("critic: disposed");
    return this.#handle;
  }

  /** The value before each predicted token: [tokens − sequences], laid out as Model.logprobs. */
  async values(tokens: TokenIds, cuSeqlens: TokenIds): Promise<Float32Array> {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    return native().criticValues(this.handle, int32(t), int32(cu));
  }

  /** One micro-batch of the clipped value loss: forward, loss, backward (gradients accumulate). */
  async valueStep(
    tokens: TokenIds,
    cuSeqlens: TokenIds,
    perToken: ValueStepInputs,
    counts: GlobalCounts,
    config: ValueLossConfig = {},
  ): Promise<ValueStepResult> {
    const [t, cu] = checkPacked(tokens, cuSeqlens);
    const predicted = t.length - (cu.length - 1);
    if (perToken === null || typeof perToken !== "object") {
      throw new TypeError("perToken: expected {values, returns, mask}");
    }
    for (const key of ["values", "returns", "mask"] as const) {
      checkTokenArray(perToken[key], `perToken.${key}`, predicted, "tokens - sequences");
    }
    const c = config.cliprangeValue;
    if (c !== undefined && !(typeof c === "number" && c >= 0)) {
      throw new RangeError(`config.cliprangeValue: ${JSON.stringify(c)} must be a number ≥ 0`);
    }
    return native().criticStep(this.handle, int32(t), int32(cu), perToken, checkCounts(counts), config);
  }

  /** AdamW over the backbone and the head, from step 0. */
  initOptimizer(options: OptimizerOptions): void {
    if (options === null || typeof options !== "object") throw new TypeError("options: expected {lr, ...}");
    if (!(typeof options.lr === "number" && options.lr > 0 && Number.isFinite(options.lr))) {
      throw new RangeError(`options.lr: ${JSON.stringify(options.lr)} must be a positive number`);
    }
    if (options.maxGradNorm !== undefined && !(options.maxGradNorm > 0)) {
      throw new RangeError(`options.maxGradNorm: ${JSON.stringify(options.maxGradNorm)} must be > 0`);
    }
    const schedule = options.schedule ?? { kind: "constant" };
    try {
      lrAt({ ...schedule, lr: options.lr }, 0);
    } catch (error) {
      throw new RangeError(`options.${(error as Error).message}`);
    }
    native().criticOptimizerInit(this.handle, { ...options, schedule });
  }

  /** Clip, the schedule's rate, AdamW, drop the gradients. */
  optimizerStep(): Promise<{ gradNorm: number; lr: number; step: number; skipped: boolean }> {
    return native().criticOptimizerStep(this.handle);
  }

  /** An HF folder: config.json, the backbone's tensors and score.weight / score.bias. */
  save(dir: string): Promise<void> {
    return native().criticSave(this.handle, dir);
  }

  saveOptimizer(file: string): Promise<void> {
    return native().criticSaveOptimizer(this.handle, file);
  }

  loadOptimizer(file: string): Promise<void> {
    return native().criticLoadOptimizer(this.handle, file);
  }

  dispose(): void {
    if (this.#handle) native().criticDispose(this.#handle);
    this.#handle = undefined;
  }
}
