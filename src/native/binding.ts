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
