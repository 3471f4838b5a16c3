// Causal attention over packed variable-length sequences, with grouped-query heads of any ratio,
// optionally reading and appending to a per-sequence KV cache.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace tiller::layers {

// One layer's cache: slot s holds one sequence's keys and values at positions 0..max_len-1.
struct KvView {
  at::Tensor k, v;  // [slots, max_len, kv_heads, head_dim]
};

// Where each packed sequence's new tokens go in the cache: sequence i writes slot slots[i] at
// positions offsets[i] .. offsets[i] + n_i - 1 and attends to everything before them too.
struct CacheSpans {
  std::vector<int64_t> slots;
  std::vector<int64_t> offsets;
};

// q: [tokens, heads, head_dim], k, v: [tokens, kv_heads, head_dim]; heads % kv_heads == 0.
// cu_seqlens: [sequences + 1] on the host. Each sequence attends causally to itself only.
// Returns [tokens, heads, head_dim]. CUDA with bf16/fp16 runs flash attention varlen in one call;
// otherwise one SDPA call per sequence.
at::Tensor causal_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, double scale);

// As above, but first writes k, v into `cache` at `spans`, then attends over each sequence's cached
// prefix plus its new tokens. Used by generation (prefill and decode).
at::Tensor cached_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, const KvView& cache,
                                   const CacheSpans& spans, double scale);

}  // namespace tiller::layers
