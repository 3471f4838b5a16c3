// The machine types the planner knows: memory, bf16 compute, HBM and interconnect bandwidth per GPU.
// Datasheet figures, except memory, which is what nvidia-smi reports as the total (what CUDA can hand out).

export interface GpuType {
  name: string;
  /** Device memory per GPU, bytes (nvidia-smi's total). */
  memoryBytes: number;
  /** Dense bf16 matmul peak per GPU, FLOP/s (datasheet, without sparsity). */
  bf16FlopsPerSecond: number;
  /** HBM bandwidth per GPU, bytes/s (datasheet). */
  hbmBytesPerSecond: number;
  /** NVLink bandwidth per GPU and direction, bytes/s (datasheet total ÷ 2). */
  nvlinkBytesPerSecond: number;
  /** Network bandwidth per GPU and direction between nodes, bytes/s. */
  networkBytesPerSecond: number;
  /** Host ↔ device bandwidth per GPU and direction (offload), bytes/s. */
  pcieBytesPerSecond: number;
  gpusPerNode: number;
  /** Host memory per node, bytes; absent: host memory is reported but not checked. */
  hostMemoryBytesPerNode?: number;
  /** Where the figures come from. */
  source: string;
}

const MiB = 2 ** 20;
// One 400 Gb/s NIC per GPU (HGX nodes as the cloud providers build them); PCIe Gen5 x16 (64 GB/s).
const network400G = 50e9;
const pcieGen5 = 64e9;

export const gpuTypes: Record<string, GpuType> = {
  "H20-96GB": {
    name: "H20-96GB",
    memoryBytes: 97871 * MiB,
    bf16FlopsPerSecond: 148e12,
    hbmBytesPerSecond: 4.0e12,
    nvlinkBytesPerSecond: 450e9,
    networkBytesPerSecond: network400G,
    pcieBytesPerSecond: pcieGen5,
    gpusPerNode: 8,
    source:
      "NVIDIA H20 datasheet (148 TFLOP/s bf16 dense, 4.0 TB/s, NVLink 900 GB/s); nvidia-smi 97,871 MiB; 400 Gb/s per GPU between nodes (assumed)",
  },
  "H100-80GB": {
    name: "H100-80GB",
    memoryBytes: 81559 * MiB,
    bf16FlopsPerSecond: 989e12,
    hbmBytesPerSecond: 3.35e12,
    nvlinkBytesPerSecond: 450e9,
    networkBytesPerSecond: network400G,
    pcieBytesPerSecond: pcieGen5,
    gpusPerNode: 8,
    source:
      "NVIDIA H100 SXM datasheet (989 TFLOP/s bf16 dense, 3.35 TB/s, NVLink 900 GB/s); nvidia-smi 81,559 MiB; 400 Gb/s per GPU between nodes (assumed)",
  },
  "H200-141GB": {
    name: "H200-141GB",
    memoryBytes: 143771 * MiB,
    bf16FlopsPerSecond: 989e12,
    hbmBytesPerSecond: 4.8e12,
    nvlinkBytesPerSecond: 450e9,
    networkBytesPerSecond: network400G,
    pcieBytesPerSecond: pcieGen5,
    gpusPerNode: 8,
    source:
      "NVIDIA H200 SXM datasheet (989 TFLOP/s bf16 dense, 4.8 TB/s, NVLink 900 GB/s); nvidia-smi 143,771 MiB; 400 Gb/s per GPU between nodes (assumed)",
  },
  "A100-80GB": {
    name: "A100-80GB",
    memoryBytes: 81920 * MiB,
    bf16FlopsPerSecond: 312e12,
    hbmBytesPerSecond: 2.039e12,
    nvlinkBytesPerSecond: 300e9,
    networkBytesPerSecond: 25e9,
    pcieBytesPerSecond: 32e9,
    gpusPerNode: 8,
    source:
      "NVIDIA A100 SXM 80GB datasheet (312 TFLOP/s bf16 dense, 2.0 TB/s, NVLink 600 GB/s); 81,920 MiB; 200 Gb/s per GPU between nodes (assumed)",
  },
  B200: {
    name: "B200",
    memoryBytes: 183359 * MiB,
    bf16FlopsPerSecond: 2250e12,
    hbmBytesPerSecond: 8.0e12,
    nvlinkBytesPerSecond: 900e9,
    networkBytesPerSecond: network400G,
    pcieBytesPerSecond: pcieGen5,
    gpusPerNode: 8,
    source:
      "NVIDIA HGX B200 datasheet (2.25 PFLOP/s bf16 dense, 8 TB/s, NVLink 1.8 TB/s); nvidia-smi 183,359 MiB; 400 Gb/s per GPU between nodes (assumed)",
  },
};

const customFields = [
  "memoryBytes",
  "bf16FlopsPerSecond",
  "hbmBytesPerSecond",
  "nvlinkBytesPerSecond",
  "networkBytesPerSecond",
  "pcieBytesPerSecond",
  "gpusPerNode",
] as const;

/**
 * A GPU type by name (one of gpuTypes), or a custom entry: every number of GpuType given
 * (`{name: "custom", memoryBytes, bf16FlopsPerSecond, ...}`), or a known name with some fields changed
 * (`{name: "H100-80GB", networkBytesPerSecond: 25e9}`).
 */
export function resolveGpu(value: unknown, field = "gpu"): GpuType {
  if (typeof value === "string") {
    const known = gpuTypes[value];
    if (!known) {
      throw new RangeError(
        `${field}: ${JSON.stringify(value)} is not a known GPU type; known: ${Object.keys(gpuTypes).join(", ")}, or an object with ${customFields.join(", ")}`,
      );
    }
    return known;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError(
      `${field}: ${JSON.stringify(value)}; expected a GPU type name (${Object.keys(gpuTypes).join(", ")}) or an object`,
    );
  }
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) {
    if (![...customFields, "name", "hostMemoryBytesPerNode", "source"].includes(key)) {
      throw new TypeError(
        `${field}.${key}: unknown; allowed: name, ${customFields.join(", ")}, hostMemoryBytesPerNode, source`,
      );
    }
  }
  const name = v.name ?? "custom";
  if (typeof name !== "string" || name === "") throw new TypeError(`${field}.name: expected a string`);
  const base = gpuTypes[name];
  const out: Record<string, unknown> = {
    ...(base ?? {}),
    name,
    source: v.source ?? base?.source ?? "custom",
  };
  for (const key of [...customFields, "hostMemoryBytesPerNode"] as const) {
    const x = v[key] ?? base?.[key];
    if (x === undefined) {
      if (key === "hostMemoryBytesPerNode") continue;
      throw new RangeError(
        `${field}.${key}: missing; a custom GPU type gives ${customFields.join(", ")} (or names a known type to start from)`,
      );
    }
    if (typeof x !== "number" || !Number.isFinite(x) || x <= 0) {
      throw new RangeError(`${field}.${key}: ${JSON.stringify(x)} must be a positive number`);
    }
    if (key === "gpusPerNode" && !Number.isSafeInteger(x)) {
      throw new RangeError(`${field}.gpusPerNode: ${x} must be an integer`);
    }
    out[key] = x;
  }
  return out as unknown as GpuType;
}
