// The one FLOP model: what the planner's step-time estimate and the engine's perf/mfu/actor count.
// A token's forward is 2 FLOPs per multiply-add of every matmul it passes through: attention and
// dense projections, the shared experts, the topK routed experts it is sent to (not all of them),
// the router and the lm head; the embedding lookup and norms count nothing. Attention adds
// QKᵀ and AV over all s² query-key pairs of each sequence (verl's and Megatron's convention: the
// causal half is not subtracted). Training is forward + backward = 3 × forward (a full
// recompute runs one more forward, which MFU leaves out as Megatron does).
import { type ModelSpec, numel } from "./model.js";

/** Forward matmul FLOPs per token, attention scores excluded (vision tower excluded: language model only). */
export function forwardFlopsPerToken(spec: ModelSpec): number {
  const routed = spec.moe ? spec.moe.topK / spec.moe.experts : 1;
  let macs = 0;
  for (const t of spec.tensors) {
    if (!t.matmul || t.kind === "vision") continue;
    macs += numel(t.shape) * (t.kind === "expert" ? routed : 1);
  }
  return 2 * macs;
}

/** Query-key and value dimensions per head that the attention scores multiply. */
function attentionDims(spec: ModelSpec): { heads: number; qk: number; v: number } {
  const a = spec.attention;
  return a.kind === "gqa"
    ? { heads: a.heads, qk: a.headDim, v: a.headDim }
    : { heads: a.heads, qk: a.qkNopeDim + a.qkRopeDim, v: a.vDim };
}

/** Forward FLOPs of the attention scores (QKᵀ, then AV) of one sequence of `tokens` tokens, all layers. */
export function attentionForwardFlops(spec: ModelSpec, tokens: number): number {
  const { heads, qk, v } = attentionDims(spec);
  return 2 * tokens * tokens * heads * (qk + v) * spec.layers;
}

/** Forward FLOPs of sequences of the given lengths (tokens each, prompt + response). */
export function forwardFlops(spec: ModelSpec, sequenceTokens: ArrayLike<number>): number {
  const perToken = forwardFlopsPerToken(spec);
  let flops = 0;
  for (let i = 0; i < sequenceTokens.length; i++) {
    const s = sequenceTokens[i] as number;
    flops += perToken * s + attentionForwardFlops(spec, s);
  }
  return flops;
}

/** Model FLOPs of one training pass (forward + backward) over the sequences: 3 × forward. */
export function trainingFlops(spec: ModelSpec, sequenceTokens: ArrayLike<number>): number {
  return 3 * forwardFlops(spec, sequenceTokens);
}
