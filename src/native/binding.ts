// The mechanical binding: one declaration per native function, its C++ side named beside it.
// Nothing here checks arguments; src/native/engine.ts does that before calling in.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export type NativeDtype =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int8"
  | "uint8"
  | "int16"
  | "int32"
  | "int64"
  | "bool";

export type NativeTypedArray =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Int32Array
  | BigInt64Array;

export interface NativeDeviceInfo {
  device: string;
  name: string;
  bf16: boolean;
  totalMemoryBytes?: number;
  computeCapability?: string;
  multiprocessors?: number;
}

export interface NativeEngineInfo {
  torchVersion: string;
  cudaCompiled: boolean;
  cudaAvailable: boolean;
  cpuThreads: number;
  devices: NativeDeviceInfo[];
}

export interface NativeRoundTrip {
  data: NativeTypedArray;
  shape: number[];
  dtype: NativeDtype;
  sum: number;
  aliased: boolean;
}

/** A tensor with its parameter name, as the train calls pass them. */
export interface NativeNamedTensor {
  name: string;
  dtype: NativeDtype;
  shape: number[];
  data: NativeTypedArray;
}

/** An opaque, type-tagged optimizer handle (addon/train.cc OptimizerBox). */
export type NativeOptimizerHandle = { readonly __brand: "tiller.optimizer" };

export interface NativeAdamWConfig {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  noDecay?: "biases-and-norms" | string[];
}

export interface NativeLrSchedule {
  kind: "constant" | "constant-with-warmup" | "warmup-cosine";
  lr: number;
  warmupSteps?: number;
  totalSteps?: number;
  minLrRatio?: number;
  numCycles?: number;
}

export interface NativeAddon {
  /** addon/engine.cc EngineInfo() */
  engineInfo(): NativeEngineInfo;
  /** addon/engine.cc TensorRoundTrip(TypedArray data, string dtype, int64[] shape, string device) */
  tensorRoundTrip(
    data: NativeTypedArray,
    dtype: NativeDtype,
    shape: number[],
    device: string,
  ): NativeRoundTrip;
  /** addon/engine.cc MatmulProbe: async work, [m,k] x [k,n] repeated `iterations` times */
  matmulProbe(
    device: string,
    dtype: NativeDtype,
    m: number,
    n: number,
    k: number,
    iterations: number,
  ): Promise<{ seconds: number; flop: number; tflops: number }>;
  /** addon/train.cc OptimizerCreate(NamedTensor[] params, AdamWConfig config, string device) */
  optimizerCreate(
    params: NativeNamedTensor[],
    config: NativeAdamWConfig,
    device: string,
  ): NativeOptimizerHandle;
  /** addon/train.cc OptimizerSetGrads(handle, NamedTensor[] grads) */
  optimizerSetGrads(handle: NativeOptimizerHandle, grads: NativeNamedTensor[]): void;
  /** addon/train.cc OptimizerStep: async AdamW::step(lr) */
  optimizerStep(handle: NativeOptimizerHandle, lr: number): Promise<void>;
  /** addon/train.cc OptimizerZeroGrad: AdamW::zero_grad() */
  optimizerZeroGrad(handle: NativeOptimizerHandle): void;
  /** addon/train.cc OptimizerParams: copies of AdamW::params() */
  optimizerParams(handle: NativeOptimizerHandle): NativeNamedTensor[];
  /** addon/train.cc OptimizerGrads: copies of the defined gradients */
  optimizerGrads(handle: NativeOptimizerHandle): NativeNamedTensor[];
  /** addon/train.cc OptimizerState: copies of AdamW::state() */
  optimizerState(handle: NativeOptimizerHandle): NativeNamedTensor[];
  /** addon/train.cc OptimizerLoadState: AdamW::load_state(state) */
  optimizerLoadState(handle: NativeOptimizerHandle, state: NativeNamedTensor[]): void;
  /** addon/train.cc OptimizerOffload: async AdamW::offload_to_cpu() */
  optimizerOffload(handle: NativeOptimizerHandle): Promise<void>;
  /** addon/train.cc OptimizerReload: async AdamW::reload() */
  optimizerReload(handle: NativeOptimizerHandle): Promise<void>;
  /** addon/train.cc OptimizerOffloaded: AdamW::offloaded() */
  optimizerOffloaded(handle: NativeOptimizerHandle): boolean;
  /** addon/train.cc OptimizerDispose: frees the optimizer; the handle is dead afterwards */
  optimizerDispose(handle: NativeOptimizerHandle): void;
  /** addon/train.cc OptimizerClipGradNorm: train::clip_grad_norm(params, maxNorm) */
  optimizerClipGradNorm(handle: NativeOptimizerHandle, maxNorm: number): { norm: number; finite: boolean };
  /** addon/train.cc LrAt: train::lr_at(schedule, step) */
  lrAt(schedule: NativeLrSchedule, step: number): number;
  /** addon/train.cc TrainTestLinearNll: test model, logits = x·W, masked NLL, backward */
  trainTestLinearNll(
    handle: NativeOptimizerHandle,
    weightName: string,
    x: { dtype: NativeDtype; shape: number[]; data: NativeTypedArray },
    targets: { dtype: NativeDtype; shape: number[]; data: NativeTypedArray },
    mask: { dtype: NativeDtype; shape: number[]; data: NativeTypedArray },
    tokenNormaliser: number,
  ): number;
}

/** The repository root, found from this file's place in dist/src/native/. */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** Where the addon is looked for: $TILLER_ADDON, else native/build/tiller.node. */
export function addonPath(): string {
  return process.env.TILLER_ADDON ?? join(repoRoot, "native", "build", "tiller.node");
}

let cached: NativeAddon | undefined;

/** Loads the addon once; throws an error that says how to build it when it is missing. */
export function addon(): NativeAddon {
  if (cached) return cached;
  const path = addonPath();
  if (!existsSync(path)) {
    throw new Error(`the native addon is not built (looked for ${path}); run \`npm run native\` to build it`);
  }
  cached = createRequire(import.meta.url)(path) as NativeAddon;
  return cached;
}
