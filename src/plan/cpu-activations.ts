// The activation model of the engine's CPU kernels (plan config `device: "cpu"`), counted from what
// their autograd saves for backward and checked against the CPU allocator's peak at every layout of
// tests/plan/measured.test.ts. Where it differs from the CUDA model (memory.ts): ATen's rms_norm is
// a composite on the CPU, so each norm also keeps x·rstd (for its weight's gradient) and the fp32
// rstd; the CPU flash attention keeps an fp32 log-sum-exp per head; there is no fused SwiGLU or
// rope; the logprob pass keeps the micro-batch's logits whole for its backward (up to 2 GiB); and
// the tensors around the lm-head (the final norm, the lm-head's input rows, the gradient of those
// rows) and at pipeline boundaries, small at GPU sizes, are counted because small CPU models are
// what runs there. As the plan's micro-batch is sequences at the longest length, the attention is
// one bucket of equal lengths; a real batch of mixed lengths runs padded buckets, which keep the
// same tensors at each bucket's longest length and one more copy of the attention output.
import type { TrainLayout } from "./layout.js";
import type { Dtype } from "./memory.js";
import type { ModelSpec } from "./model.js";

const fp32 = 4;
const int64 = 8;
// memory.ts's dtypeBytes (not imported: memory.ts imports this file).
const dtypeBytes = (d: Dtype): number => (d === "float32" ? 4 : 2);
/** layers/logprob.cc kKeepLogitsBytesCpu: above this the CPU recomputes the logits chunk by chunk in backward. */
export const cpuKeepLogitsBytes = 2 * 2 ** 30;

function widths(spec: ModelSpec, layout: TrainLayout) {
  const t = layout.tensor;
  const sp = layout.sequenceParallel && t > 1;
  return { t, sp, hs: sp ? spec.hidden / t : spec.hidden, rstd: (sp ? 1 / t : 1) * fp32 };
}

/**
 * Bytes one rank saves per token of a micro-batch in decoder layer `layer` on the CPU (no
 * recomputation), tokens already cut by context parallelism:
 * - each norm: its input and x·rstd (hidden-sized, a token shard under SP), fp32 rstd, and its
 *   output where a matmul keeps it (whole under SP, where it is gathered first);
 * - GQA: q and k after rope (Qwen3: also the q/k-norm inputs and x·rstd, fp32 rstd per head), v,
 *   the attention output (which o_proj reads in place when the micro-batch is one bucket of equal
 *   lengths, as the plan's batch is), fp32 log-sum-exp per head;
 * - SwiGLU: gate, SiLU, up and their product (intermediate split by the tensor ranks);
 * - MoE (experts in a loop): fp32 router probabilities and top-k weights, int64 routing indices,
 *   per routed row its copy, the expert's gate-up output, SiLU and product, and the combine's fp32
 *   copy of the expert outputs; a rank's share of the routed rows is its tokens × topK (even
 *   routing), 1 / tensor of them under tensor parallelism.
 */
export function cpuLayerBytesPerToken(
  spec: ModelSpec,
  layout: TrainLayout,
  layer: number,
  dtype: Dtype,
): number {
  const b = dtypeBytes(dtype);
  const { t, sp, hs, rstd } = widths(spec, layout);
  const a = spec.attention;
  // The attention's input norm; its output is what q/k/v's matmuls keep (gathered whole under SP).
  let elements = 2 * hs + (sp ? spec.hidden : hs);
  let stats = rstd;
  if (a.kind === "gqa") {
    const q = a.heads / t;
    const kv = a.kvHeads >= t ? a.kvHeads / t : 1;
    elements += (a.qkNorm ? 3 : 1) * (q + kv) * a.headDim + kv * a.headDim + q * a.headDim;
    stats += (a.qkNorm ? (q + kv) * fp32 : 0) + q * fp32;
  } else {
    // MLA: the query latent's norm (input, x·rstd, output) and the key-value latent's (its input
    // a view of the compressed projection, rotary key included); per head the queries and the keys
    // after rope, the values zero-padded to the key width and the output likewise (the CPU flash
    // kernel needs one head size), the output's copy at the value width that o_proj reads; fp32
    // rstd of each norm and log-sum-exp per head.
    const heads = a.heads / t;
    const qk = a.qkNopeDim + a.qkRopeDim;
    elements += 3 * a.qLoraRank + 3 * a.kvLoraRank + a.qkRopeDim + heads * (4 * qk + a.vDim);
    stats += ((a.qLoraRank > 0 ? 1 : 0) + 1) * fp32 + heads * fp32;
  }
  const moe = spec.moe?.layers.includes(layer) ? spec.moe : undefined;
  if (moe) {
    // The post-attention norm (input, x·rstd), the router's input (this rank's token share).
    const share = t > 1 ? 1 / t : 1;
    elements += 2 * hs + spec.hidden * share;
    stats += rstd;
    const k = moe.topK * share;
    elements += k * (spec.hidden + (4 * moe.intermediate) / layout.expertTensor);
    // int64: the router's choice, the rows' source tokens, the combine's order; under expert
    // parallelism also the arrived rows' order by expert and back.
    const indices = layout.expert > 1 ? 5 : 3;
    stats += share * (moe.experts + 2 * moe.topK + 1) * fp32 + k * (spec.hidden * fp32 + indices * int64);
    if (moe.sharedIntermediate > 0) elements += (4 * moe.sharedIntermediate) / t;
  } else {
    elements += 2 * hs + (sp ? spec.hidden : hs) + (4 * spec.intermediate) / t;
    stats += rstd;
  }
  return elements * b + stats;
}

/**
 * Bytes a CPU stage keeps per token of a micro-batch besides its layers: the rope tables (cos and
 * sin, every layer reads them), the token ids the embedding's backward reads (first stage), the
 * final norm's input, x·rstd and rstd and the lm-head's input rows (last stage, one row per
 * predicted token), or the stage's output until its gradient arrives, and that gradient (other
 * stages).
 */
export function cpuStageBytes(
  spec: ModelSpec,
  layout: TrainLayout,
  stage: number,
  dtype: Dtype,
  tokens: number,
  rows: number,
): number {
  const b = dtypeBytes(dtype);
  const { hs, rstd } = widths(spec, layout);
  const a = spec.attention;
  const rotary = a.kind === "gqa" ? a.headDim : a.qkRopeDim;
  let bytes = 2 * rotary * b * tokens;
  if (stage === 0) bytes += int64 * tokens;
  if (stage === layout.stages.length - 1) bytes += (2 * hs * b + rstd) * tokens + spec.hidden * b * rows;
  else bytes += 2 * hs * b * tokens;
  return bytes;
}

/**
 * The CPU logprob pass at its backward (last stage), beside the saved activations: the fp32 row
 * statistics and targets kept for backward, the gradient of the lm-head's input rows, and, chunk
 * by chunk, the logits and what is made from them — with one tensor rank all rows' logits kept
 * from the forward when they take at most 2 GiB (layers/logprob.cc; the kernel writes their
 * gradient in place), else a chunk's logits recomputed beside their gradient; under tensor
 * parallelism the vocabulary-parallel backward's chunk of logits with its fp32 scaled logits,
 * log-probabilities, probabilities, their negation and gradient (five fp32 chunks at once). Then
 * the larger of a chunk's input-row gradient and the lm-head's fp32 gradient product (with more
 * than one chunk, beside the fp32 sum it is added to: the update's later micro-batches keep
 * their gradient in place meanwhile).
 */
export function cpuLogprobBytes(
  spec: ModelSpec,
  layout: TrainLayout,
  dtype: Dtype,
  rows: number,
  chunkTokens: number,
): number {
  const b = dtypeBytes(dtype);
  const vocab = spec.vocab / layout.tensor;
  const chunk = Math.min(chunkTokens, rows);
  const lmHead = vocab * spec.hidden * fp32 * (rows > chunk ? 2 : 1);
  const product = Math.max(chunk * spec.hidden * b, lmHead);
  let chunks: number;
  if (layout.tensor === 1) {
    const whole = rows * vocab * b;
    chunks = (whole <= cpuKeepLogitsBytes ? whole : 2 * chunk * vocab * b) + product;
  } else {
    chunks = Math.max(chunk * vocab * (b + 4 * fp32), chunk * vocab * (b + fp32) + product);
  }
  const statistics = rows * (2 * fp32 + int64 + (layout.tensor > 1 ? 1 : 0));
  return chunks + statistics + rows * spec.hidden * b;
}

/**
 * The largest set of temporaries of one layer that coexists with all of a CPU stage's saved
 * activations, other than the logprob pass (which the plan counts on the last stage): the first
 * layer backward's (the last layer's SwiGLU: the gradients of its product and then of its SiLU and
 * up, two intermediate-sized tensors at once; a MoE layer: the gradients of the expert outputs and
 * their combine copy, fp32; on the last stage with the head's tensors freed and the gradient of the
 * layers' output beside them); under expert parallelism, the last MoE
 * layer's dispatch in the forward (the routed rows, what arrived, the experts' outputs, their
 * reordered copy and what came back: five routed-row copies), less what that stage saves after
 * it (the combine's fp32 copy, the head's tensors or the stage output and its gradient).
 */
export function cpuWorkingBytes(
  spec: ModelSpec,
  layout: TrainLayout,
  stage: number,
  dtype: Dtype,
  tokens: number,
  rows: number,
): number {
  const b = dtypeBytes(dtype);
  const { t, hs, rstd } = widths(spec, layout);
  const [begin, end] = layout.stages[stage] as [number, number];
  const last = stage === layout.stages.length - 1;
  const moe = spec.moe;
  const share = t > 1 ? 1 / t : 1;
  const isMoe = (l: number) => moe?.layers.includes(l) ?? false;
  // What the stage saves after its layers: the head's tensors (freed when its backward is done)
  // or the stage output and its gradient.
  const tail = last ? (2 * hs * b + rstd) * tokens + spec.hidden * b * rows : 2 * hs * b * tokens;
  let working = 0;
  if (end > begin) {
    const perToken =
      isMoe(end - 1) && moe ? 2 * moe.topK * share * spec.hidden * fp32 : (2 * spec.intermediate * b) / t;
    // On the last stage the head's tensors are gone by then, and the gradient of the layers' output is in flight.
    working = last ? (perToken + hs * b) * tokens - tail : perToken * tokens;
  }
  let lastMoe = -1;
  for (let l = begin; l < end; l++) if (isMoe(l)) lastMoe = l;
  if (moe && layout.expert > 1 && lastMoe >= 0) {
    const dispatch =
      5 * moe.topK * share * spec.hidden * b * tokens - moe.topK * share * spec.hidden * fp32 * tokens;
    working = Math.max(working, dispatch - tail);
  }
  return Math.max(0, working);
}
