#include "layers/attention.h"

#include <algorithm>

namespace tiller::layers {
namespace {

// q: [n, heads, D], k, v: [m, kv_heads, D]; query j sits at key position (m - n + j).
at::Tensor one_sequence(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const auto n = q.size(0), m = k.size(0);
  const auto qh = q.transpose(0, 1).unsqueeze(0);  // [1, heads, n, D]
  const auto kh = k.transpose(0, 1).unsqueeze(0);  // [1, kv_heads, m, D]
  const auto vh = v.transpose(0, 1).unsqueeze(0);
  std::optional<at::Tensor> mask;
  bool is_causal = false;
  if (n == m) {
    is_causal = true;
  } else if (n > 1) {
    // Bottom-right aligned causal mask: SDPA's is_causal aligns top-left.
    const auto opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    const auto query_pos = at::arange(m - n, m, opts).unsqueeze(1);
    mask = at::arange(m, opts).unsqueeze(0) <= query_pos;  // [n, m]
  }
  const auto out = at::scaled_dot_product_attention(qh, kh, vh, mask, 0.0, is_causal, scale,
                                                    /*enable_gqa=*/q.size(1) != k.size(1));
  return out.squeeze(0).transpose(0, 1);  // [n, heads, D]
}

bool use_flash(const at::Tensor& q) {
  return q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf);
}

}  // namespace

at::Tensor causal_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, double scale) {
  if (use_flash(q)) {
    int64_t max_len = 0;
    for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) max_len = std::max(max_len, cu_seqlens[i + 1] - cu_seqlens[i]);
    const auto cu = at::tensor(cu_seqlens, at::kInt).to(q.device());
    // Flash attention handles grouped heads natively (heads a multiple of kv_heads).
    return std::get<0>(at::_flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, /*is_causal=*/true,
                                                    /*return_debug_mask=*/false, scale));
  }
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const auto a = cu_seqlens[i], b = cu_seqlens[i + 1];
    outs.push_back(one_sequence(q.slice(0, a, b), k.slice(0, a, b), v.slice(0, a, b), scale));
  }
  return at::cat(outs);
}

at::Tensor cached_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, const KvView& cache,
                                   const CacheSpans& spans, double scale) {
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const auto a = cu_seqlens[i], b = cu_seqlens[i + 1];
    const auto slot = spans.slots[i], offset = spans.offsets[i], end = offset + (b - a);
    auto k_slot = cache.k[slot], v_slot = cache.v[slot];  // [max_len, kv_heads, D]
    k_slot.slice(0, offset, end).copy_(k.slice(0, a, b));
    v_slot.slice(0, offset, end).copy_(v.slice(0, a, b));
    outs.push_back(one_sequence(q.slice(0, a, b), k_slot.slice(0, 0, end), v_slot.slice(0, 0, end), scale));
  }
  return at::cat(outs);
}

void write_slot_cache(const at::Tensor& k, const at::Tensor& v, const KvView& cache, const at::Tensor& rows) {
  const auto kv_heads = cache.k.size(2), head_dim = cache.k.size(3);
  cache.k.view({-1, kv_heads, head_dim}).index_copy_(0, rows, k);
  cache.v.view({-1, kv_heads, head_dim}).index_copy_(0, rows, v);
}

at::Tensor slot_decode_attention(const at::Tensor& q, const KvView& cache, const SlotCacheIndex& index, double scale) {
  TORCH_CHECK(use_flash(q), "slot_decode_attention: needs bf16/fp16 on CUDA");
  const auto kv_heads = cache.k.size(2), head_dim = cache.k.size(3);
  const auto k = cache.k.view({-1, kv_heads, head_dim});
  const auto v = cache.v.view({-1, kv_heads, head_dim});
  // One query per row sees every used key of its slot, so no causal mask is needed.
  return std::get<0>(at::_flash_attention_forward(q, k, v, index.cu_q, index.key_starts, /*max_q=*/1, index.max_len,
                                                  0.0, /*is_causal=*/false, /*return_debug_mask=*/false, scale,
                                                  std::nullopt, std::nullopt, index.keys_used));
}

}  // namespace tiller::layers
