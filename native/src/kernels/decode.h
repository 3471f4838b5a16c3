// The CUDA decoder's per-step kernels (rollout/cuda_decoder): attention of one new query per row
// over that row's slot of the KV cache, and the write of the new keys and values into it. Both take
// only device tensors of fixed shape, so a decode step that uses them can be captured in a graph.
//
// Attention: flash attention's varlen forward runs a decode step at about 1.5 TB/s on an H200 (its
// 128-query tiles hold one query each and walk the keys 64 at a time, one tile after another). Here
// a block takes one (row, KV head, split of the keys): its four warps read each key's K and V row
// once (a lane holds head_dim / 32 elements) for every query head of the GQA group, with an online
// softmax in fp32; the warps, then the splits, merge their (max, sum, output) as flash does.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace tiller::kernels {

// Whether decode_attention takes q [rows, heads, head_dim] against a cache [.., kv_heads, head_dim]:
// CUDA, bf16/fp16, head_dim 64 or 128, at most 16 query heads per KV head, this build has CUDA.
bool decode_attention_available(const at::Tensor& q, int64_t kv_heads);

// q: [rows, heads, D]; k, v: [cache_rows, kv_heads, D] (contiguous); row b attends to cache rows
// key_starts[b] + i for i in [max(0, keys_used[b] - window), keys_used[b]) (window 0: all);
// key_starts, keys_used: int32 on the device. max_keys bounds keys_used (fixes the grid). Returns
// softmax(scale · q kᵀ) v: [rows, heads, D] in q's dtype; a row with no keys gives zeros.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_starts,
                            const at::Tensor& keys_used, int64_t max_keys, double scale, int64_t window);

// k, v: [tokens, kv_heads, D] written to rows `rows` ([tokens] int64) of the caches [cache_rows,
// kv_heads, D]: one launch for both (index_copy_ takes one each). False (nothing written) when the
// tensors are not CUDA ones of matching dtypes with 16-byte rows: the caller copies them itself.
bool write_kv_rows(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& rows);

// The decode step's normalisations: ATen's rms_norm takes about 7 µs a call for a decode step's
// few rows (four calls per layer) and the residual add another launch; here the input norm, the
// add with the post-attention norm, and the q/k norms with rope are one short launch each.
// Computed in fp32 and rounded once: not bit-identical to at::rms_norm, so only decode steps use
// them (prefill and training keep ATen's, and the one-token rollout-vs-training equality holds).

// Whether the two kernels below take rows like `x` (CUDA, bf16/fp16/fp32, this build has CUDA).
bool decode_norm_available(const at::Tensor& x);

// x, residual (undefined: none): [rows, D]; weight [D]. Returns {x + residual rounded to x's dtype
// (x itself without a residual), rms_norm of that · weight}. A block per row holding it in
// registers when rows are 16-byte aligned and D ≤ 8192 (bf16); ATen's expressions otherwise.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                               double eps);

// Whether qk_norm_rope takes heads of `head_dim` elements (64, 128 or 256) for rows like `x`.
bool qk_norm_rope_available(const at::Tensor& x, int64_t head_dim);

// q [rows, Hq, D], k [rows, Hk, D] (each head's D elements contiguous, rows at any stride, as the
// column views of the fused q/k/v GEMM are): each head row RMS-normalised with q_norm / k_norm
// (undefined: no norm, as Qwen2 and Llama have) and rounded, then rotated by HF's rotate-half rope
// with cos/sin [rows, D] in q's dtype, rounded once. D 64, 128 or 256. -> contiguous {q, k}.
std::pair<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_norm,
                                               const at::Tensor& k_norm, double eps, const at::Tensor& cos,
                                               const at::Tensor& sin);

}  // namespace tiller::kernels
