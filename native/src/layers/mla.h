// Multi-head latent attention (DeepSeek-V2/V3, Moonlight): keys and values are decompressed per
// head from a small shared latent (kv_lora_rank) plus one shared rope key (qk_rope_head_dim);
// queries come from the hidden state directly or through their own low-rank bottleneck. The
// generation cache holds only the latent (in KvView::k, [slots, len, 1, kv_lora_rank]) and the
// roped shared key (in KvView::v, [slots, len, 1, qk_rope_head_dim]): per token
// kv_lora_rank + qk_rope_head_dim numbers instead of 2 · heads · head_dim. Each step expands the
// cached prefix through kv_b_proj, as HF does (the absorbed form that skips the expansion would be
// the faster decode and is not written yet).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "layers/attention.h"
#include "layers/rope.h"

namespace tiller::layers {

struct MlaConfig {
  int64_t heads = 0;
  int64_t q_lora_rank = 0;  // 0: queries straight from the hidden state (q_proj)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_dim = 0, qk_rope_dim = 0, v_dim = 0;
  bool interleaved_rope = true;  // rope_interleave
  double scale = 0;              // softmax scale: (qk_nope_dim + qk_rope_dim)^-1/2, YaRN-adjusted
};

// HF names under model.layers.{i}.self_attn. Biases (attention_bias) may be undefined.
struct MlaWeights {
  at::Tensor q;  // q_proj [heads * (nope + rope), hidden]: only without q_lora_rank
  // q_a_proj [q_rank, hidden] (+ bias), q_a_layernorm [q_rank], q_b_proj [heads * (nope + rope), q_rank]
  at::Tensor q_a, q_a_bias, q_a_norm, q_b;
  // kv_a_proj_with_mqa [kv_rank + rope, hidden] (+ bias), kv_a_layernorm [kv_rank],
  // kv_b_proj [heads * (nope + v), kv_rank]
  at::Tensor kv_a, kv_a_bias, kv_a_norm, kv_b;
  at::Tensor o, o_bias;  // o_proj [hidden, heads * v] (+ bias)
};

// x: [tokens, hidden], rope: the table of qk_rope_dim rows per token -> the attention of every
// head before o_proj, [tokens, heads * v_head_dim] (the caller applies o_proj). Without `cache`,
// each sequence of cu_seqlens attends causally to itself; with it, each sequence's latent and rope
// key are appended at `spans` and its queries attend over the whole cached prefix.
// Under tensor parallelism c.heads is this rank's heads and q_b/q_proj/kv_b hold their rows
// (column-parallel by heads; o_proj is row-parallel); the down-projections, their norms and the
// latent cache are replicated on every tensor rank.
at::Tensor mla_heads(const at::Tensor& x, const MlaWeights& w, const MlaConfig& c, const RopeTable& rope,
                     const std::vector<int64_t>& cu_seqlens, const KvView* cache, const CacheSpans& spans);

}  // namespace tiller::layers
