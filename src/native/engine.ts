// The idiomatic TS face of the engine: argument checks with errors that name the field, then the
// native call. Tensors cross the boundary as typed arrays plus a dtype and a shape.
import { addon, type NativeDtype, type NativeEngineInfo, type NativeTypedArray } from "./binding.js";

export type Dtype = NativeDtype;
export type EngineInfo = NativeEngineInfo;

/** A host tensor: flat typed array, its dtype and its shape (row-major). */
export interface HostTensor {
  data: NativeTypedArray;
  dtype: Dtype;
  shape: number[];
}

/** The typed-array class each dtype travels in. bf16/fp16 travel as raw 16-bit words. */
export const typedArrayFor = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
} as const satisfies Record<Dtype, unknown>;

export const dtypes = Object.keys(typedArrayFor) as Dtype[];

export function engineInfo(): EngineInfo {
  return addon().engineInfo();
}

export function checkDtype(dtype: unknown, field = "dtype"): Dtype {
  if (typeof dtype !== "string" || !(dtype in typedArrayFor)) {
    throw new TypeError(`${field}: ${JSON.stringify(dtype)} is not a dtype; allowed: ${dtypes.join(", ")}`);
  }
  return dtype as Dtype;
}

const devicePattern = /^(cpu|cuda(:\d+)?)$/;

export function checkDevice(device: unknown, field = "device"): string {
  if (typeof device !== "string" || !devicePattern.test(device)) {
    throw new TypeError(`${field}: ${JSON.stringify(device)} is not a device; allowed: cpu, cuda, cuda:N`);
  }
  return device;
}

export function checkPositiveInt(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new RangeError(`${field}: ${JSON.stringify(value)} must be a positive integer`);
  }
  return value;
}

export function checkTensor(tensor: HostTensor, field = "tensor"): HostTensor {
  if (tensor === null || typeof tensor !== "object")
    throw new TypeError(`${field}: expected {data, dtype, shape}`);
  const dtype = checkDtype(tensor.dtype, `${field}.dtype`);
  const kind = typedArrayFor[dtype];
  if (!(tensor.data instanceof kind)) {
    const found = (tensor.data as object | undefined)?.constructor?.name ?? typeof tensor.data;
    throw new TypeError(`${field}.data: dtype ${dtype} travels in a ${kind.name}, found ${found}`);
  }
  if (!Array.isArray(tensor.shape)) throw new TypeError(`${field}.shape: expected an array of integers`);
  tensor.shape.forEach((d, i) => {
    if (!Number.isInteger(d) || d < 0) {
      throw new RangeError(`${field}.shape[${i}]: ${JSON.stringify(d)} must be a non-negative integer`);
    }
  });
  const numel = tensor.shape.reduce((a, b) => a * b, 1);
  if (numel !== tensor.data.length) {
    throw new RangeError(
      `${field}.shape: [${tensor.shape.join(", ")}] holds ${numel} elements, but data has ${tensor.data.length}`,
    );
  }
  return tensor;
}

export interface RoundTrip extends HostTensor {
  /** Sum of the elements, computed by libtorch on the device (float64). */
  sum: number;
  /** True when the result shares memory with the input (CPU: no copy either way). */
  aliased: boolean;
}

/** typed array → libtorch tensor on `device` → typed array. */
export function roundTrip(tensor: HostTensor, device = "cpu"): RoundTrip {
  const t = checkTensor(tensor);
  return addon().tensorRoundTrip(t.data, t.dtype, t.shape, checkDevice(device)) as RoundTrip;
}

export interface MatmulProbeOptions {
  device?: string;
  dtype?: Dtype;
  m?: number;
  n?: number;
  k?: number;
  iterations?: number;
}

/** Times repeated [m,k]×[k,n] matmuls off the JS thread; returns the measured rate. */
export async function matmulProbe(options: MatmulProbeOptions = {}) {
  const device = checkDevice(options.device ?? "cpu");
  const dtype = checkDtype(options.dtype ?? "float32");
  if (!["float32", "float64", "float16", "bfloat16"].includes(dtype)) {
    throw new TypeError(`dtype: matmulProbe needs a floating dtype, found ${dtype}`);
  }
  const m = checkPositiveInt(options.m ?? 1024, "m");
  const n = checkPositiveInt(options.n ?? 1024, "n");
  const k = checkPositiveInt(options.k ?? 1024, "k");
  const iterations = checkPositiveInt(options.iterations ?? 10, "iterations");
  return addon().matmulProbe(device, dtype, m, n, k, iterations);
}
