// The training face of the engine: an AdamW optimizer over named parameter tensors, gradient
// clipping and learning-rate schedules. Arguments are checked here, naming the field, before
// the native call (binding.ts, addon/train.cc).
import {
  addon,
  type NativeAdamWConfig,
  type NativeLrSchedule,
  type NativeNamedTensor,
  type NativeOptimizerHandle,
} from "./binding.js";
import { checkDevice, checkTensor, type HostTensor } from "./engine.js";

/** A tensor with its parameter name (HF names, e.g. "model.layers.0.mlp.up_proj.weight"). */
export interface NamedTensor extends HostTensor {
  name: string;
}

export type AdamWConfig = NativeAdamWConfig;
export type LrSchedule = NativeLrSchedule;

const paramDtypes = ["float32", "bfloat16", "float16"];

function checkNumber(value: unknown, field: string, ok: (v: number) => boolean, range: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || !ok(value)) {
    const shown = typeof value === "number" ? String(value) : JSON.stringify(value);
    throw new RangeError(`${field}: ${shown} must be a number ${range}`);
  }
  return value;
}

function checkNonNegativeInt(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw new RangeError(`${field}: ${JSON.stringify(value)} must be a non-negative integer`);
  }
  return value;
}

function checkNamedTensors(tensors: unknown, field: string, floatOnly: boolean): NativeNamedTensor[] {
  if (!Array.isArray(tensors))
    throw new TypeError(`${field}: expected an array of {name, dtype, shape, data}`);
  const seen = new Set<string>();
  return tensors.map((t: NamedTensor, i) => {
    const at = `${field}[${i}]`;
    if (t === null || typeof t !== "object")
      throw new TypeError(`${at}: expected {name, dtype, shape, data}`);
    if (typeof t.name !== "string" || t.name === "")
      throw new TypeError(`${at}.name: expected a non-empty string`);
    if (seen.has(t.name)) throw new RangeError(`${at}.name: "${t.name}" appears twice`);
    seen.add(t.name);
    checkTensor(t, at);
    if (floatOnly && !paramDtypes.includes(t.dtype)) {
      throw new TypeError(`${at}.dtype: ${t.dtype}; allowed: ${paramDtypes.join(", ")}`);
    }
    return { name: t.name, dtype: t.dtype, shape: t.shape, data: t.data };
  });
}

function checkConfig(config: AdamWConfig): AdamWConfig {
  if (config === null || typeof config !== "object") throw new TypeError("config: expected {lr, ...}");
  const out: AdamWConfig = { lr: checkNumber(config.lr, "config.lr", (v) => v >= 0, ">= 0") };
  const unit = (v: number) => v >= 0 && v < 1;
  if (config.beta1 !== undefined) out.beta1 = checkNumber(config.beta1, "config.beta1", unit, "in [0, 1)");
  if (config.beta2 !== undefined) out.beta2 = checkNumber(config.beta2, "config.beta2", unit, "in [0, 1)");
  if (config.eps !== undefined) out.eps = checkNumber(config.eps, "config.eps", (v) => v >= 0, ">= 0");
  if (config.weightDecay !== undefined) {
    out.weightDecay = checkNumber(config.weightDecay, "config.weightDecay", (v) => v >= 0, ">= 0");
  }
  const noDecay = config.noDecay;
  if (noDecay !== undefined) {
    const names = Array.isArray(noDecay) && noDecay.every((n) => typeof n === "string");
    if (noDecay !== "biases-and-norms" && !names) {
      throw new TypeError(
        `config.noDecay: ${JSON.stringify(noDecay)}; allowed: "biases-and-norms" or parameter names`,
      );
    }
    out.noDecay = noDecay;
  }
  return out;
}

/**
 * AdamW (libtorch's fused kernel) with fp32 master weights for bf16/fp16 parameters.
 * State names: "step/<p>", "master/<p>" (non-fp32 parameters only), "exp_avg/<p>", "exp_avg_sq/<p>".
 */
export class Optimizer {
  #handle: NativeOptimizerHandle | undefined;
  readonly config: AdamWConfig;

  private constructor(handle: NativeOptimizerHandle, config: AdamWConfig) {
    this.#handle = handle;
    this.config = config;
  }

  /** Copies `params` to `device` as standalone parameters and builds AdamW over them. */
  static create(params: NamedTensor[], config: AdamWConfig, device = "cpu"): Optimizer {
    const checked = checkNamedTensors(params, "params", true);
    if (checked.length === 0) throw new RangeError("params: at least one parameter is needed");
    const c = checkConfig(config);
    return new Optimizer(addon().optimizerCreate(checked, c, checkDevice(device)), c);
  }

  get handle(): NativeOptimizerHandle {
    if (!this.#handle) throw new Error("optimizer: disposed; create a new one");
    return this.#handle;
  }

  /** Replaces the gradients of the named parameters (dtype and shape as the parameter's). */
  setGrads(grads: NamedTensor[]): void {
    addon().optimizerSetGrads(this.handle, checkNamedTensors(grads, "grads", true));
  }

  /** One AdamW update with rate `lr` (default config.lr), off the JS thread. */
  step(lr = this.config.lr): Promise<void> {
    try {
      return addon().optimizerStep(
        this.handle,
        checkNumber(lr, "lr", (v) => v >= 0, ">= 0"),
      );
    } catch (error) {
      return Promise.reject(error);
    }
  }

  zeroGrad(): void {
    addon().optimizerZeroGrad(this.handle);
  }

  /** Copies of the parameters, in the order given to create(). */
  params(): NamedTensor[] {
    return addon().optimizerParams(this.handle);
  }

  /** Copies of the gradients that are set. */
  grads(): NamedTensor[] {
    return addon().optimizerGrads(this.handle);
  }

  /** Copies of the fp32 optimizer state, for a checkpoint. */
  state(): NamedTensor[] {
    return addon().optimizerState(this.handle);
  }

  /** Restores a state(); every entry is required and shapes must match. */
  loadState(state: NamedTensor[]): void {
    addon().optimizerLoadState(this.handle, checkNamedTensors(state, "state", false));
  }

  /** Moves masters and moments to (pinned) host memory; step() refuses until reload(). */
  offload(): Promise<void> {
    return addon().optimizerOffload(this.handle);
  }

  reload(): Promise<void> {
    return addon().optimizerReload(this.handle);
  }

  get offloaded(): boolean {
    return addon().optimizerOffloaded(this.handle);
  }

  /** Scales all gradients to a global L2 norm of at most `maxNorm`; returns the norm before. */
  clipGradNorm(maxNorm: number): { norm: number; finite: boolean } {
    return addon().optimizerClipGradNorm(
      this.handle,
      checkNumber(maxNorm, "maxNorm", (v) => v > 0, "> 0"),
    );
  }

  /** Frees the native optimizer now; calling dispose twice is harmless. */
  dispose(): void {
    if (this.#handle) addon().optimizerDispose(this.#handle);
    this.#handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

const scheduleKinds = ["constant", "constant-with-warmup", "warmup-cosine"];

/** The rate of optimizer step `step` (from 0) under `schedule`, as verl's LambdaLR schedules. */
export function lrAt(schedule: LrSchedule, step: number): number {
  if (schedule === null || typeof schedule !== "object")
    throw new TypeError("schedule: expected {kind, lr, ...}");
  if (!scheduleKinds.includes(schedule.kind)) {
    throw new TypeError(
      `schedule.kind: ${JSON.stringify(schedule.kind)}; allowed: ${scheduleKinds.join(", ")}`,
    );
  }
  checkNumber(schedule.lr, "schedule.lr", (v) => v >= 0, ">= 0");
  if (schedule.warmupSteps !== undefined) checkNonNegativeInt(schedule.warmupSteps, "schedule.warmupSteps");
  if (schedule.kind === "warmup-cosine") {
    if (checkNonNegativeInt(schedule.totalSteps, "schedule.totalSteps") === 0) {
      throw new RangeError("schedule.totalSteps: must be > 0 for warmup-cosine");
    }
    if (schedule.minLrRatio !== undefined) {
      checkNumber(schedule.minLrRatio, "schedule.minLrRatio", (v) => v >= 0 && v <= 1, "in [0, 1]");
    }
  }
  return addon().lrAt(schedule, checkNonNegativeInt(step, "step"));
}

/**
 * Test model: logits = x·W (W the named [D, V] parameter), masked token NLL divided by
 * `tokenNormaliser`, backward accumulating into W's gradient. Returns the loss.
 */
export function linearNllForTest(
  optimizer: Optimizer,
  weightName: string,
  x: HostTensor,
  targets: HostTensor,
  mask: HostTensor,
  tokenNormaliser: number,
): number {
  return addon().trainTestLinearNll(
    optimizer.handle,
    weightName,
    checkTensor(x, "x"),
    checkTensor(targets, "targets"),
    checkTensor(mask, "mask"),
    checkNumber(tokenNormaliser, "tokenNormaliser", (v) => v >= 0, ">= 0"),
  );
}
