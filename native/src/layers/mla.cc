#include "layers/mla.h"

#include "layers/mlp.h"
#include "layers/norm.h"

namespace tiller::layers {
namespace {

// HF builds q_a_layernorm and kv_a_layernorm with RMSNorm's default epsilon, not rms_norm_eps.
constexpr double kLatentNormEps = 1e-6;

struct Expanded {
  at::Tensor k, v;  // [m, heads, nope + rope], [m, heads, v]
};

// latent: [m, kv_rank], k_rope: [m, rope] (already rotated) -> per-head keys and values
Expanded expand(const at::Tensor& latent, const at::Tensor& k_rope, const MlaWeights& w, const MlaConfig& c) {
  const auto m = latent.size(0);
  const auto kv = at::matmul(latent, w.kv_b.t()).view({m, c.heads, c.qk_nope_dim + c.v_dim});
  const auto k = at::cat({kv.slice(-1, 0, c.qk_nope_dim), k_rope.unsqueeze(1).expand({m, c.heads, c.qk_rope_dim})}, -1);
  return {k, kv.slice(-1, c.qk_nope_dim)};
}

}  // namespace

at::Tensor mla_heads(const at::Tensor& x, const MlaWeights& w, const MlaConfig& c, const RopeTable& rope,
                     const std::vector<int64_t>& cu_seqlens, const KvView* cache, const CacheSpans& spans) {
  const auto tokens = x.size(0);
  const auto rotate = [&](const at::Tensor& t) {
    return c.interleaved_rope ? apply_rope_interleaved(t, rope) : apply_rope(t, rope);
  };
  const auto q_flat = c.q_lora_rank > 0
                          ? at::matmul(rms_norm(linear(x, w.q_a, w.q_a_bias), w.q_a_norm, kLatentNormEps), w.q_b.t())
                          : at::matmul(x, w.q.t());
  const auto q_heads = q_flat.view({tokens, c.heads, c.qk_nope_dim + c.qk_rope_dim});
  const auto q = at::cat({q_heads.slice(-1, 0, c.qk_nope_dim), rotate(q_heads.slice(-1, c.qk_nope_dim))}, -1);

  const auto compressed = linear(x, w.kv_a, w.kv_a_bias);  // [tokens, kv_rank + rope]
  const auto latent = rms_norm(compressed.slice(-1, 0, c.kv_lora_rank), w.kv_a_norm, kLatentNormEps);
  const auto k_rope = rotate(compressed.slice(-1, c.kv_lora_rank).unsqueeze(1)).squeeze(1);  // [tokens, rope]

  at::Tensor out;  // [tokens, heads, v]
  if (!cache) {
    const auto kv = expand(latent, k_rope, w, c);
    out = causal_varlen_attention(q, kv.k, kv.v, cu_seqlens, c.scale);
  } else {
    const auto prefixes = append_to_cache(latent.unsqueeze(1), k_rope.unsqueeze(1), cu_seqlens, *cache, spans);
    std::vector<at::Tensor> outs;
    for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
      const auto kv = expand(prefixes[i].k.squeeze(1), prefixes[i].v.squeeze(1), w, c);
      outs.push_back(attend_causal_suffix(q.slice(0, cu_seqlens[i], cu_seqlens[i + 1]), kv.k, kv.v, c.scale));
    }
    out = at::cat(outs);
  }
  return out.reshape({tokens, c.heads * c.v_dim});
}

}  // namespace tiller::layers
