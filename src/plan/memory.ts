// Memory per rank by category. Static memory (parameters, gradients, optimizer state) is counted
// from the tensor shapes exactly as the engine holds it: each rank's slices (tensor_parallel.cc's
// shard_range), gradients in the parameters' dtype, and the ZeRO-1 AdamW of parallel/zero.cc — per
// (expert?, weight decay?) group one flat buffer padded to a multiple of the group's data size,
// this rank's 1/d shard of fp32 masters, exp_avg and exp_avg_sq, and an fp32 mask of the elements
// counted in the global norm. Activations, the logprob chunk and the KV cache are estimates from
// the layer shapes (formulas beside each).
import { cpuLayerBytesPerToken } from "./cpu-activations.js";
import type { RolloutLayout, TrainLayout } from "./layout.js";
import { type ModelSpec, numel, type PlanTensor, type TensorKind } from "./model.js";

export type Dtype = "bfloat16" | "float16" | "float32";
export const dtypeBytes = (d: Dtype): number => (d === "float32" ? 4 : 2);

/** Elements of `t` one rank holds under `tensor` ranks (heads fewer than ranks: one head each), experts over expert × expertTensor. */
export function localElements(t: PlanTensor, tensor: number, expert: number, expertTensor: number): number {
  const n = numel(t.shape);
  switch (t.split) {
    case "replicated":
      return n;
    case "expert":
      return n / expert / expertTensor;
    default: {
      if (tensor === 1) return n;
      const units = t.heads ?? t.shape[t.split === "row" ? 1 : 0] ?? 1;
      return units >= tensor ? n / tensor : n / units;
    }
  }
}

/** The tensors a stage holds: its layers, the embedding and vision tower on the first, final norm and head on the last. */
export function stageTensors(spec: ModelSpec, layout: TrainLayout, stage: number): PlanTensor[] {
  const [begin, end] = layout.stages[stage] as [number, number];
  const last = stage === layout.stages.length - 1;
  const out = spec.tensors.filter(
    (t) =>
      (t.layer >= begin && t.layer < end) || (t.layer < 0 && stage === 0) || (t.layer >= spec.layers && last),
  );
  // Tied embeddings under pipeline parallelism: the last stage keeps its own copy for the head (Megatron's shared embedding).
  if (spec.tied && last && stage > 0) {
    const embed = spec.tensors.find((t) => t.name === "model.embed_tokens.weight");
    if (embed) out.push({ ...embed, name: "lm_head.weight (tied copy)" });
  }
  return out;
}

export interface OptimizerMemory {
  /** fp32 masters of this rank's shard (the engine keeps them for fp32 parameters too once sharded). */
  masters: number;
  /** exp_avg + exp_avg_sq. */
  moments: number;
  /** parallel/zero.cc's `counted`: fp32, one per shard element (0 on one rank). */
  normMask: number;
  /** Elements of this rank's shard of the dense (data × context) and the expert (expert-data) groups, padding included. */
  shardElements: { dense: number; expert: number };
  /** Per ZeRO group: elements before padding, padded, and the ranks it is sharded over. */
  groups: { expert: boolean; decays: boolean; elements: number; padded: number; ranks: number }[];
}

export interface StaticMemory {
  /** Trained parameters by kind: elements and bytes (the parameters' dtype). */
  parameterElements: Record<TensorKind, number>;
  parameters: Record<TensorKind, number>;
  /** Not trained: fp32 buffers and a frozen vision tower (parameters' dtype). */
  buffers: number;
  /** One per trained parameter element, in the parameters' dtype (accumulated between optimizer steps). */
  gradients: number;
  optimizer: OptimizerMemory;
  /**
   * Held only during the optimizer step (estimate from zero.cc's order of work): the fp32
   * reduce-scattered shards of every group plus the largest group's flat fp32 gradient buffer.
   */
  optimizerStepTransient: number;
}

export interface StaticOptions {
  dtype: Dtype;
  /** The engine's weight-decay rule: every parameter decays (default), or not biases and 1-D tensors. */
  noDecay: "none" | "biases-and-norms";
  freezeVision: boolean;
  /** True when the run has more than one rank (the engine then shards the optimizer, else plain AdamW). */
  multiRank: boolean;
}

const zeroKinds = (): Record<TensorKind, number> => ({ embedding: 0, dense: 0, expert: 0, vision: 0 });
export const sumKinds = (r: Record<TensorKind, number>): number =>
  r.embedding + r.dense + r.expert + r.vision;

/** Static memory of one rank of `stage` (every rank of a stage holds the same amounts). */
export function stageStatic(
  spec: ModelSpec,
  layout: TrainLayout,
  stage: number,
  o: StaticOptions,
): StaticMemory {
  const b = dtypeBytes(o.dtype);
  const parameterElements = zeroKinds();
  let bufferBytes = 0;
  const groups = new Map<string, { expert: boolean; decays: boolean; elements: number }>();
  for (const t of stageTensors(spec, layout, stage)) {
    const n = localElements(t, layout.tensor, layout.expert, layout.expertTensor);
    if (t.buffer) {
      bufferBytes += n * 4;
      continue;
    }
    if (t.kind === "vision" && o.freezeVision) {
      bufferBytes += n * b;
      continue;
    }
    parameterElements[t.kind] += n;
    const expert = t.split === "expert";
    const decays = o.noDecay === "none" || t.decays;
    const key = `${expert}/${decays}`;
    const g = groups.get(key) ?? { expert, decays, elements: 0 };
    g.elements += n;
    groups.set(key, g);
  }
  const trained = sumKinds(parameterElements);
  const parameters = zeroKinds();
  for (const k of Object.keys(parameters) as TensorKind[]) parameters[k] = parameterElements[k] * b;
  const optimizer: OptimizerMemory = {
    masters: 0,
    moments: 0,
    normMask: 0,
    shardElements: { dense: 0, expert: 0 },
    groups: [],
  };
  let transient = 0;
  if (o.multiRank) {
    let largestFlat = 0;
    let shards = 0;
    for (const g of groups.values()) {
      const ranks = g.expert ? layout.expertData : layout.data * layout.context;
      const padded = Math.ceil(g.elements / ranks) * ranks;
      const shard = padded / ranks;
      optimizer.groups.push({ ...g, padded, ranks });
      optimizer.shardElements[g.expert ? "expert" : "dense"] += shard;
      shards += shard;
      largestFlat = Math.max(largestFlat, padded);
    }
    optimizer.masters = 4 * shards;
    optimizer.moments = 8 * shards;
    optimizer.normMask = 4 * shards;
    transient = 4 * shards + 4 * largestFlat;
  } else {
    // train::AdamW: moments per element, fp32 masters only for non-fp32 parameters.
    optimizer.moments = 8 * trained;
    optimizer.masters = o.dtype === "float32" ? 0 : 4 * trained;
    for (const g of groups.values()) {
      optimizer.groups.push({ ...g, padded: g.elements, ranks: 1 });
      optimizer.shardElements[g.expert ? "expert" : "dense"] += g.elements;
    }
  }
  return {
    parameterElements,
    parameters,
    buffers: bufferBytes,
    gradients: trained * b,
    optimizer,
    optimizerStepTransient: transient,
  };
}

export const optimizerBytes = (o: OptimizerMemory): number => o.masters + o.moments + o.normMask;

/** Bytes of the rollout's copy of the weights on one rollout rank (all layers, sliced by rollout tensor ranks). */
export function rolloutWeightBytes(spec: ModelSpec, layout: RolloutLayout, dtype: Dtype): number {
  let n = 0;
  for (const t of spec.tensors) {
    n += t.buffer ? 0 : localElements(t, layout.tensor, t.split === "expert" ? layout.tensor : 1, 1);
  }
  const buffers = spec.tensors.filter((t) => t.buffer).reduce((s, t) => s + numel(t.shape) * 4, 0);
  return n * dtypeBytes(dtype) + buffers;
}

/**
 * KV cache bytes per token on one rollout rank, all layers: GQA keeps 2 × key-value heads × head
 * dim, its heads split over the tensor ranks (one head each when fewer heads than ranks); MLA keeps
 * the compressed latent and the rope key (kv_lora_rank + qk_rope_head_dim) whole on every rank.
 */
export function kvBytesPerToken(spec: ModelSpec, rolloutTensor: number, dtype: Dtype): number {
  const a = spec.attention;
  const b = dtypeBytes(dtype);
  if (a.kind === "mla") return (a.kvLoraRank + a.qkRopeDim) * b * spec.layers;
  const heads = a.kvHeads >= rolloutTensor ? a.kvHeads / rolloutTensor : 1;
  return 2 * heads * a.headDim * b * spec.layers;
}

export type Recompute = "none" | "full";

/** Whose kernels the activation model follows: the CUDA engine's (this file) or the CPU engine's (cpu-activations.ts). */
export type DeviceKind = "cuda" | "cpu";

/**
 * Estimated activation bytes one rank saves per token of a micro-batch for the backward, per decoder
 * layer: the tensors the engine's autograd keeps (Megatron's accounting, arXiv 2205.05198, with
 * flash attention: no s² scores, fitted to the engine by bench/memory.ts): per layer the two norm
 * inputs and the two normed matmul inputs, the queries and keys after rope, values and attention
 * output (flash attention), Qwen3's q/k-norm inputs, and for each SwiGLU the gate and up projections
 * and their product (the fused silu·mul kernel of kernels/fused.cu keeps no SiLU output). In the activation dtype, tokens already cut by context
 * parallelism. Sequence parallelism cuts the hidden-sized tensors by the tensor ranks; a full
 * recompute keeps only each layer's input. `device: "cpu"`: the CPU engine's kernels instead
 * (cpu-activations.ts).
 */
export function activationBytesPerToken(
  spec: ModelSpec,
  layout: TrainLayout,
  layer: number,
  dtype: Dtype,
  recompute: Recompute,
  device: DeviceKind = "cuda",
): number {
  const b = dtypeBytes(dtype);
  const t = layout.tensor;
  const hs = layout.sequenceParallel ? spec.hidden / t : spec.hidden;
  if (recompute === "full") return hs * b;
  if (device === "cpu") return cpuLayerBytesPerToken(spec, layout, layer, dtype);
  const a = spec.attention;
  let attention: number;
  if (a.kind === "gqa") {
    const kv = a.kvHeads >= t ? a.kvHeads / t : 1;
    attention = 2 * hs + ((2 * a.heads) / t + 2 * kv) * a.headDim;
    if (a.qkNorm) attention += (a.heads / t + kv) * a.headDim;
  } else {
    const qk = a.qkNopeDim + a.qkRopeDim;
    attention =
      2 * hs +
      2 * a.qLoraRank +
      2 * a.kvLoraRank +
      a.qkRopeDim +
      (2 * a.heads * qk + 2 * a.heads * a.vDim) / t;
  }
  const moe = spec.moe?.layers.includes(layer) ? spec.moe : undefined;
  let ffn: number;
  let fp32 = 0;
  if (moe) {
    // Router logits and probabilities in fp32; each token's topK copies through gate/up/act/down.
    fp32 = 2 * moe.experts * 4;
    const tokensShare = layout.sequenceParallel ? 1 / t : 1;
    ffn = 2 * hs + moe.topK * tokensShare * (spec.hidden + (3 * moe.intermediate) / layout.expertTensor);
    if (moe.sharedIntermediate > 0) ffn += (3 * moe.sharedIntermediate) / t;
  } else {
    ffn = 2 * hs + (3 * spec.intermediate) / t;
  }
  return (attention + ffn) * b + fp32;
}

/** The same for a whole layer run without saving (one layer's working set during recompute or a forward-only pass). */
export function layerWorkingBytesPerToken(
  spec: ModelSpec,
  layout: TrainLayout,
  layer: number,
  dtype: Dtype,
  device: DeviceKind = "cuda",
): number {
  return activationBytesPerToken(spec, layout, layer, dtype, "none", device);
}
