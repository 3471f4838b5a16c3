// Weight files from TS: safetensors read/write and HF checkpoint folders, over addon/io.cc.
// The binding declarations mirror the native calls; the functions below check arguments first.
import { addon, type NativeDtype, type NativeTypedArray } from "./binding.js";
import { checkDtype, checkPositiveInt, checkTensor, type HostTensor } from "./engine.js";

/** float8 tensors (DeepSeek-V3 checkpoints) travel as raw bytes in a Uint8Array. */
export type IoDtype = NativeDtype | "float8_e4m3fn" | "float8_e5m2";

export interface NativeNamedTensor {
  name: string;
  dtype: IoDtype;
  shape: number[];
  data: NativeTypedArray;
}

export interface NativeIoAddon {
  /** addon/io.cc JsonRoundTrip(string text, int indent): io::Json::parse(text).dump(indent) */
  jsonRoundTrip(text: string, indent: number): string;
  /** addon/io.cc CheckpointInspect(string dir): io::open_checkpoint; config is compact JSON */
  checkpointInspect(dir: string): Promise<{
    config: string;
    files: string[];
    tensors: { name: string; dtype: IoDtype; shape: number[] }[];
  }>;
  /** addon/io.cc SafetensorsRead(string path): io::read_safetensors, tensors in file order */
  safetensorsRead(path: string): Promise<{ metadata: Record<string, string>; tensors: NativeNamedTensor[] }>;
  /** addon/io.cc SafetensorsWrite(string path, tensors, {string: string} metadata) */
  safetensorsWrite(
    path: string,
    tensors: NativeNamedTensor[],
    metadata: Record<string, string>,
  ): Promise<{ bytes: number }>;
  /** addon/io.cc CheckpointResave(string src, string dst, int64 maxShardBytes) */
  checkpointResave(srcDir: string, dstDir: string, maxShardBytes: number): Promise<{ files: string[] }>;
}

function io(): NativeIoAddon {
  return addon() as unknown as NativeIoAddon;
}

function checkString(value: unknown, field: string): string {
  if (typeof value !== "string" || value.length === 0) {
    throw new TypeError(`${field}: ${JSON.stringify(value)} must be a non-empty string`);
  }
  return value;
}

/** Parses with the native JSON parser and serialises again (indent < 0: compact). For tests. */
export function jsonRoundTrip(text: string, indent = -1): string {
  if (typeof text !== "string") throw new TypeError(`text: expected a string, found ${typeof text}`);
  if (!Number.isInteger(indent)) throw new TypeError(`indent: ${JSON.stringify(indent)} must be an integer`);
  return io().jsonRoundTrip(text, indent);
}

export interface CheckpointSummary {
  config: Record<string, unknown>;
  /** Full paths of the safetensors files read, in shard order. */
  files: string[];
  /** Sorted by name. */
  tensors: { name: string; dtype: IoDtype; shape: number[] }[];
}

/** Opens a HF model folder natively and lists its config, files and tensors. */
export async function inspectCheckpoint(dir: string): Promise<CheckpointSummary> {
  const out = await io().checkpointInspect(checkString(dir, "dir"));
  return { ...out, config: JSON.parse(out.config) as Record<string, unknown> };
}

export interface StoredTensor {
  name: string;
  dtype: IoDtype;
  shape: number[];
  data: NativeTypedArray;
}

/** Reads a safetensors file; the data arrays are views of the mapped file (no copy). */
export async function readSafetensors(
  path: string,
): Promise<{ metadata: Record<string, string>; tensors: StoredTensor[] }> {
  return io().safetensorsRead(checkString(path, "path"));
}

const float8 = new Set<string>(["float8_e4m3fn", "float8_e5m2"]);

function checkStoredTensor(tensor: StoredTensor, field: string): StoredTensor {
  if (tensor === null || typeof tensor !== "object")
    throw new TypeError(`${field}: expected {name, dtype, shape, data}`);
  checkString(tensor.name, `${field}.name`);
  if (tensor.name === "__metadata__")
    throw new RangeError(`${field}.name: "__metadata__" is reserved by the format`);
  if (float8.has(tensor.dtype)) {
    // One byte an element, carried as raw bytes.
    checkTensor({ data: tensor.data, dtype: "uint8", shape: tensor.shape }, field);
  } else {
    checkDtype(tensor.dtype, `${field}.dtype`);
    checkTensor(tensor as HostTensor, field);
  }
  return tensor;
}

/** Writes a safetensors file atomically (HF layout); the arrays must not change until it resolves. */
export async function writeSafetensors(
  path: string,
  tensors: StoredTensor[],
  metadata: Record<string, string> = {},
): Promise<{ bytes: number }> {
  checkString(path, "path");
  if (!Array.isArray(tensors))
    throw new TypeError("tensors: expected an array of {name, dtype, shape, data}");
  const seen = new Set<string>();
  tensors.forEach((t, i) => {
    checkStoredTensor(t, `tensors[${i}]`);
    if (seen.has(t.name)) throw new RangeError(`tensors[${i}].name: "${t.name}" is given twice`);
    seen.add(t.name);
  });
  if (metadata === null || typeof metadata !== "object")
    throw new TypeError("metadata: expected {string: string}");
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== "string")
      throw new TypeError(`metadata.${key}: ${JSON.stringify(value)} must be a string`);
  }
  return io().safetensorsWrite(path, tensors, metadata);
}

/**
 * Opens a HF model folder and saves it again with tiller's writer: config.json plus
 * model.safetensors, or shards of at most maxShardBytes (default 5 GB, as HF) with an index.
 */
export async function resaveCheckpoint(
  srcDir: string,
  dstDir: string,
  options: { maxShardBytes?: number } = {},
): Promise<{ files: string[] }> {
  const maxShardBytes = checkPositiveInt(options.maxShardBytes ?? 5_000_000_000, "maxShardBytes");
  return io().checkpointResave(checkString(srcDir, "srcDir"), checkString(dstDir, "dstDir"), maxShardBytes);
}
