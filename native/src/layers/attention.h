// Causal attention over packed variable-length sequences, with grouped-query heads of any ratio,
// an optional sliding window, optionally reading and appending to a per-sequence KV cache.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "parallel/context_parallel.h"

namespace tiller::layers {

// One layer's cache: slot s holds one sequence's keys and values at positions 0..max_len-1.
// (MLA keeps its compressed latent in k and its shared rope key in v: see layers/mla.h.)
struct KvView {
  at::Tensor k, v;  // [slots, max_len, kv_heads, head_dim] (v: value_dim)
};

// Where each packed sequence's new tokens go in the cache: sequence i writes slot slots[i] at
// positions offsets[i] .. offsets[i] + n_i - 1 and attends to everything before them too.
struct CacheSpans {
  std::vector<int64_t> slots;
  std::vector<int64_t> offsets;
};

// q, k: [tokens, heads or kv_heads, head_dim], v: [tokens, kv_heads, value_dim]; heads % kv_heads == 0.
// cu_seqlens: [sequences + 1] on the host. Each sequence attends causally to itself only; with
// window > 0 a query sees only the keys of the last `window` positions, itself included (HF's
// sliding_window). Returns [tokens, heads, value_dim]. CUDA with bf16/fp16 runs flash attention
// varlen in one call; otherwise one masked SDPA call per bucket of sequences of similar length.
at::Tensor causal_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, double scale, int64_t window = 0);

// As above, but first writes k, v into `cache` at `spans`, then attends over each sequence's cached
// prefix plus its new tokens. Used by generation (prefill and decode).
at::Tensor cached_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, const KvView& cache,
                                   const CacheSpans& spans, double scale, int64_t window = 0);

// Bidirectional attention within each packed segment (vision encoders): q, k, v: [tokens, heads, D],
// cu_seqlens: [segments + 1] on the host. -> [tokens, heads, D]. CUDA with bf16/fp16 runs flash
// attention varlen in one call; otherwise one SDPA call per segment.
at::Tensor segment_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& cu_seqlens, double scale);

// The two halves of cached_causal_attention, for layers that cache something other than per-head
// K/V (MLA). Writes each packed sequence's new rows of k and v ([tokens, ...] matching the cache's
// trailing dims) into its slot and returns per sequence the slot's rows 0 .. offset + n - 1 (views).
std::vector<KvView> append_to_cache(const at::Tensor& k, const at::Tensor& v, const std::vector<int64_t>& cu_seqlens,
                                    const KvView& cache, const CacheSpans& spans);

// One sequence's new queries against its keys: q: [n, heads, D], k: [m, kv_heads, D],
// v: [m, kv_heads, Dv], m >= n; query j sits at key position m - n + j. -> [n, heads, Dv]
at::Tensor attend_causal_suffix(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                int64_t window = 0);

// Context parallelism (parallel/context_parallel.h): q: [local rows, heads, D], k, v: [local rows,
// kv_heads, D(v)] -> [local rows, heads, Dv]: K and V gathered over the context group, each local
// chunk's queries against its sequence's keys up to the chunk's end.
at::Tensor context_parallel_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const parallel::ContextShards& shards, double scale, int64_t window = 0);

// Generation on CUDA with a slot cache: every layer's cache is [slots, max_len, kv_heads, head_dim]
// seen as rows [slots * max_len, kv_heads, head_dim]. Only device tensors, so a decode step can be
// captured in a CUDA graph.
struct SlotCacheIndex {
  at::Tensor write_rows;  // [tokens] int64: the cache row of each new token (slot * max_len + position)
  bool decode = false;    // false: prefill (attend within the packed new tokens); true: one token per row
  // decode only: row b attends to cache rows key_starts[b] .. key_starts[b] + keys_used[b] - 1
  at::Tensor cu_q;        // [rows + 1] int32: 0, 1, ..., rows
  at::Tensor key_starts;  // [rows + 1] int32: slot * max_len (the last entry is not read)
  at::Tensor keys_used;   // [rows] int32: position + 1
  int64_t max_len = 0;
};

// k, v: [tokens, kv_heads, head_dim] written to cache rows `rows` ([tokens] int64).
void write_slot_cache(const at::Tensor& k, const at::Tensor& v, const KvView& cache, const at::Tensor& rows);

// q: [rows, heads, head_dim] (one new token per row) -> [rows, heads, head_dim], reading only the
// used part of each row's slot (flash attention varlen with seqused_k). CUDA, bf16/fp16 only.
at::Tensor slot_decode_attention(const at::Tensor& q, const KvView& cache, const SlotCacheIndex& index, double scale,
                                 int64_t window = 0);

}  // namespace tiller::layers
