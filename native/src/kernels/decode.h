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

}  // namespace tiller::kernels
