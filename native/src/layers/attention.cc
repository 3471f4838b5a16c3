#include "layers/attention.h"

#include <algorithm>

#include "kernels/decode.h"

namespace tiller::layers {
namespace {

bool use_flash(const at::Tensor& q) {
  return q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf);
}

// Flash attention's local window for HF's sliding_window: keys at query - window + 1 .. query.
std::optional<int64_t> window_left(int64_t window) { return window > 0 ? std::optional<int64_t>(window - 1) : std::nullopt; }
std::optional<int64_t> window_right(int64_t window) { return window > 0 ? std::optional<int64_t>(0) : std::nullopt; }

// x: [..., d] zero-padded to [..., width] (a no-op when d == width).
at::Tensor pad_last(const at::Tensor& x, int64_t width) {
  return x.size(-1) == width ? x : at::constant_pad_nd(x, {0, width - x.size(-1)});
}

}  // namespace

at::Tensor attend_causal_suffix(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                int64_t window) {
  const auto n = q.size(0), m = k.size(0);
  const auto qh = q.transpose(0, 1).unsqueeze(0);  // [1, heads, n, D]
  const auto kh = k.transpose(0, 1).unsqueeze(0);  // [1, kv_heads, m, D]
  const auto vh = v.transpose(0, 1).unsqueeze(0);
  std::optional<at::Tensor> mask;
  bool is_causal = false;
  const bool windowed = window > 0 && window < m;
  if (n == m && !windowed) {
    is_causal = true;
  } else if (n > 1 || windowed) {
    // Bottom-right aligned causal mask (SDPA's is_causal aligns top-left), cut to the window.
    const auto opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    const auto query_pos = at::arange(m - n, m, opts).unsqueeze(1);
    const auto key_pos = at::arange(m, opts).unsqueeze(0);
    auto visible = key_pos <= query_pos;  // [n, m]
    if (windowed) visible = visible.logical_and(key_pos > query_pos - window);
    mask = visible;
  }
  const auto out = at::scaled_dot_product_attention(qh, kh, vh, mask, 0.0, is_causal, scale,
                                                    /*enable_gqa=*/q.size(1) != k.size(1));
  return out.squeeze(0).transpose(0, 1);  // [n, heads, Dv]
}

at::Tensor causal_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, double scale, int64_t window) {
  if (use_flash(q)) {
    int64_t max_len = 0;
    for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) max_len = std::max(max_len, cu_seqlens[i + 1] - cu_seqlens[i]);
    const auto cu = at::tensor(cu_seqlens, at::kInt).to(q.device());
    // Flash needs one head size for q, k and v: zero columns change neither the scores nor the
    // kept part of the output (MLA's values are narrower than its keys).
    const auto width = std::max(q.size(-1), v.size(-1));
    // Flash attention handles grouped heads natively (heads a multiple of kv_heads).
    const auto out = std::get<0>(at::_flash_attention_forward(
        pad_last(q, width), pad_last(k, width), pad_last(v, width), cu, cu, max_len, max_len, 0.0, /*is_causal=*/true,
        /*return_debug_mask=*/false, scale, window_left(window), window_right(window)));
    return out.size(-1) == v.size(-1) ? out : out.slice(-1, 0, v.size(-1));
  }
  if (!q.is_cuda() && q.size(-1) != v.size(-1)) {
    // MLA's values are narrower than its keys. The CPU flash kernel needs one head size for q, k
    // and v, else SDPA takes its math path, which saves every score ([heads, length, length] per
    // sequence); zero columns change neither the scores nor the kept part of the output.
    const auto width = std::max(q.size(-1), v.size(-1));
    return causal_varlen_attention(pad_last(q, width), pad_last(k, width), pad_last(v, width), cu_seqlens, scale,
                                   window)
        .slice(-1, 0, v.size(-1));
  }
  const auto sequences = static_cast<int64_t>(cu_seqlens.size()) - 1;
  if (sequences <= 1) {
    return sequences == 1 ? attend_causal_suffix(q, k, v, scale, window) : at::empty({0, q.size(1), v.size(-1)}, q.options());
  }
  // Sequences of similar length run as one padded, masked SDPA call each bucket: on the CPU the
  // per-call cost dominates many short sequences (an RL batch is hundreds of them). Buckets keep
  // the padded work within 1.5× the exact work, so one long sequence does not pad the short ones.
  std::vector<int64_t> order(static_cast<size_t>(sequences));
  for (int64_t i = 0; i < sequences; ++i) order[static_cast<size_t>(i)] = i;
  const auto length = [&](int64_t i) { return cu_seqlens[static_cast<size_t>(i) + 1] - cu_seqlens[static_cast<size_t>(i)]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return length(x) < length(y); });
  auto out = at::empty({q.size(0), q.size(1), v.size(-1)}, q.options());
  for (size_t start = 0; start < order.size();) {
    size_t end = start + 1;
    double exact = static_cast<double>(length(order[start])) * static_cast<double>(length(order[start]));
    while (end < order.size()) {
      const double l = static_cast<double>(length(order[end]));
      const double padded = static_cast<double>(end - start + 1) * l * l;
      if (padded > 1.5 * (exact + l * l)) break;
      exact += l * l;
      ++end;
    }
    const auto count = static_cast<int64_t>(end - start);
    if (count == 1) {
      const auto i = order[start];
      const auto a = cu_seqlens[static_cast<size_t>(i)], b = cu_seqlens[static_cast<size_t>(i) + 1];
      out.slice(0, a, b).copy_(attend_causal_suffix(q.slice(0, a, b), k.slice(0, a, b), v.slice(0, a, b), scale, window));
      start = end;
      continue;
    }
    const auto max_len = length(order[end - 1]);
    if (!q.is_cuda() && length(order[start]) == max_len && (window <= 0 || window >= max_len)) {
      // Sequences of one length: plain causal attention, no mask and nothing padded (an RL batch of
      // one prompt length and fixed-length answers is one such bucket). Consecutive in the packed
      // batch they are a view of it; otherwise their rows are gathered.
      bool consecutive = true;
      for (int64_t j = 1; j < count; ++j) consecutive = consecutive && order[start + static_cast<size_t>(j)] == order[start] + j;
      const auto first = cu_seqlens[static_cast<size_t>(order[start])];
      at::Tensor index;
      if (!consecutive) {
        std::vector<int64_t> rows;
        rows.reserve(static_cast<size_t>(count * max_len));
        for (int64_t j = 0; j < count; ++j) {
          const auto a = cu_seqlens[static_cast<size_t>(order[start + static_cast<size_t>(j)])];
          for (int64_t t = 0; t < max_len; ++t) rows.push_back(a + t);
        }
        index = at::tensor(rows, at::kLong).to(q.device());
      }
      const auto batch = [&](const at::Tensor& x) {  // [rows, heads, D] -> [count, heads, max_len, D]
        const auto picked = consecutive ? x.narrow(0, first, count * max_len) : x.index_select(0, index);
        return picked.view({count, max_len, x.size(1), x.size(2)}).transpose(1, 2);
      };
      const auto attended = at::scaled_dot_product_attention(batch(q), batch(k), batch(v), {}, 0.0, /*is_causal=*/true,
                                                             scale, /*enable_gqa=*/q.size(1) != k.size(1));
      // The CPU kernel's output is [count, max_len, heads, Dv] in memory: this is a view of it.
      const auto flat = attended.transpose(1, 2).reshape({count * max_len, q.size(1), v.size(-1)});
      // One bucket of the whole batch: the view is the result. The attention saves its output for
      // backward and the o_proj its input, so a copy here would be kept twice.
      if (consecutive && count * max_len == q.size(0)) return flat;
      out = consecutive ? out.slice_scatter(flat, 0, first, first + count * max_len) : out.index_copy(0, index, flat);
      start = end;
      continue;
    }
    // rows[b, t]: the packed row of token t of the bucket's sequence b (row 0 where t is padding).
    std::vector<int64_t> rows(static_cast<size_t>(count * max_len), 0), valid_rows;
    std::vector<uint8_t> valid(static_cast<size_t>(count * max_len), 0);
    for (int64_t j = 0; j < count; ++j) {
      const auto i = order[start + static_cast<size_t>(j)];
      const auto a = cu_seqlens[static_cast<size_t>(i)];
      for (int64_t t = 0; t < length(i); ++t) {
        rows[static_cast<size_t>(j * max_len + t)] = a + t;
        valid[static_cast<size_t>(j * max_len + t)] = 1;
        valid_rows.push_back(a + t);
      }
    }
    const auto device = q.device();
    const auto index = at::tensor(rows, at::kLong).to(device);
    const auto keep = at::tensor(std::vector<int64_t>(valid.begin(), valid.end()), at::kLong).to(device).to(at::kBool);
    const auto batch = [&](const at::Tensor& x) {  // [rows, heads, D] -> [count, heads, max_len, D]
      return x.index_select(0, index).view({count, max_len, x.size(1), x.size(2)}).transpose(1, 2);
    };
    at::Tensor attended;
    if (!q.is_cuda() && (window <= 0 || window >= max_len)) {
      // Each sequence's padding follows its tokens, so plain causal attention already hides every
      // padded key from the kept queries (and every query sees key 0). No mask: the CPU kernel
      // would save it for backward as fp32 [count, 1, max_len, max_len], 4 B per score.
      attended = at::scaled_dot_product_attention(batch(q), batch(k), batch(v), {}, 0.0, /*is_causal=*/true, scale,
                                                  /*enable_gqa=*/q.size(1) != k.size(1));
    } else {
      // Causal within each sequence, no padded key; a padded query sees key 0 (so no row is all
      // -inf: no NaN to reach the kept rows' gradients) and is dropped below.
      const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
      const auto query_pos = at::arange(max_len, opts).view({1, max_len, 1});
      const auto key_pos = at::arange(max_len, opts).view({1, 1, max_len});
      const auto key_valid = keep.view({count, 1, max_len});
      auto visible = (key_pos <= query_pos).logical_and(key_valid);
      if (window > 0) visible = visible.logical_and(key_pos > query_pos - window);
      visible = visible.logical_or(key_pos.eq(0).logical_and(keep.view({count, max_len, 1}).logical_not()));
      attended = at::scaled_dot_product_attention(batch(q), batch(k), batch(v), visible.unsqueeze(1), 0.0,
                                                  /*is_causal=*/false, scale, /*enable_gqa=*/q.size(1) != k.size(1));
    }
    // [count, heads, max_len, Dv] -> the kept rows, back to their packed places.
    const auto flat = attended.transpose(1, 2).reshape({count * max_len, q.size(1), v.size(-1)});
    const auto kept = flat.index_select(0, keep.nonzero().squeeze(1));
    out = out.index_copy(0, at::tensor(valid_rows, at::kLong).to(device), kept);
    start = end;
  }
  return out;
}

at::Tensor segment_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& cu_seqlens, double scale) {
  if (use_flash(q)) {
    int64_t max_len = 0;
    for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) max_len = std::max(max_len, cu_seqlens[i + 1] - cu_seqlens[i]);
    const auto cu = at::tensor(cu_seqlens, at::kInt).to(q.device());
    return std::get<0>(at::_flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, /*is_causal=*/false,
                                                    /*return_debug_mask=*/false, scale));
  }
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const auto a = cu_seqlens[i], b = cu_seqlens[i + 1];
    const auto head_first = [&](const at::Tensor& x) { return x.slice(0, a, b).transpose(0, 1).unsqueeze(0); };
    const auto out = at::scaled_dot_product_attention(head_first(q), head_first(k), head_first(v), {}, 0.0,
                                                      /*is_causal=*/false, scale);
    outs.push_back(out.squeeze(0).transpose(0, 1));  // [n, heads, D]
  }
  return at::cat(outs);
}

std::vector<KvView> append_to_cache(const at::Tensor& k, const at::Tensor& v, const std::vector<int64_t>& cu_seqlens,
                                    const KvView& cache, const CacheSpans& spans) {
  std::vector<KvView> prefixes;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const auto a = cu_seqlens[i], b = cu_seqlens[i + 1];
    const auto slot = spans.slots[i], offset = spans.offsets[i], end = offset + (b - a);
    auto k_slot = cache.k[slot], v_slot = cache.v[slot];  // [max_len, ...]
    k_slot.slice(0, offset, end).copy_(k.slice(0, a, b));
    v_slot.slice(0, offset, end).copy_(v.slice(0, a, b));
    prefixes.push_back({k_slot.slice(0, 0, end), v_slot.slice(0, 0, end)});
  }
  return prefixes;
}

at::Tensor cached_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, const KvView& cache,
                                   const CacheSpans& spans, double scale, int64_t window) {
  const auto sequences = static_cast<int64_t>(cu_seqlens.size()) - 1;
  if (sequences > 1 && q.size(0) == sequences) {
    // A decode step (one new token per sequence): one write into the cache and one SDPA call over
    // the slots' used prefixes, masked to each one's length (and window), instead of a call per
    // sequence. Every row sees at least its own key, so no row is all -inf.
    const auto device = q.device();
    const auto slots = at::tensor(spans.slots, at::kLong).to(device);
    const auto offsets = at::tensor(spans.offsets, at::kLong).to(device);
    cache.k.index_put_({slots, offsets}, k);
    cache.v.index_put_({slots, offsets}, v);
    const auto max_used = *std::max_element(spans.offsets.begin(), spans.offsets.end()) + 1;
    // Slots 0..B-1 in order (every sequence still running) are a view of the cache; otherwise
    // only the used prefix of each slot is gathered, not its whole length.
    bool in_order = true;
    for (int64_t i = 0; i < sequences; ++i) in_order = in_order && spans.slots[static_cast<size_t>(i)] == i;
    const auto used = [&](const at::Tensor& c) {  // [slots, max_len, kv, D] -> [B, kv, max_used, D]
      const auto prefix = c.narrow(1, 0, max_used);
      return (in_order ? prefix.narrow(0, 0, sequences) : prefix.index_select(0, slots)).transpose(1, 2);
    };
    const auto keys = used(cache.k), values = used(cache.v);
    // On the CPU, every sequence at the same position (prompts of one length, all still running)
    // and the window not cutting: each row sees every key, so no mask (the CPU kernel turns a
    // boolean mask into an fp32 one each call).
    const bool all_visible =
        !q.is_cuda() &&
        std::all_of(spans.offsets.begin(), spans.offsets.end(), [&](int64_t o) { return o + 1 == max_used; }) &&
        (window <= 0 || window >= max_used);
    std::optional<at::Tensor> mask;
    if (!all_visible) {
      const auto key_pos = at::arange(max_used, at::TensorOptions().dtype(at::kLong).device(device)).view({1, -1});
      const auto query_pos = offsets.view({-1, 1});
      auto visible = key_pos <= query_pos;
      if (window > 0) visible = visible.logical_and(key_pos > query_pos - window);
      mask = visible.view({sequences, 1, 1, max_used});
    }
    const auto out = at::scaled_dot_product_attention(q.unsqueeze(2), keys, values, mask, 0.0, /*is_causal=*/false,
                                                      scale, /*enable_gqa=*/q.size(1) != k.size(1));
    return out.squeeze(2);  // [B, heads, Dv]
  }
  const auto prefixes = append_to_cache(k, v, cu_seqlens, cache, spans);
  // A CPU prefill of fresh slots (nothing cached before): each prefix is the new keys alone, so
  // this is the training forward's attention, whose buckets run one SDPA call for many prompts.
  const bool fresh = std::all_of(spans.offsets.begin(), spans.offsets.end(), [](int64_t o) { return o == 0; });
  if (!q.is_cuda() && sequences > 1 && fresh) return causal_varlen_attention(q, k, v, cu_seqlens, scale, window);
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const auto& p = prefixes[i];
    outs.push_back(attend_causal_suffix(q.slice(0, cu_seqlens[i], cu_seqlens[i + 1]), p.k, p.v, scale, window));
  }
  return at::cat(outs);
}

void write_slot_cache(const at::Tensor& k, const at::Tensor& v, const KvView& cache, const at::Tensor& rows) {
  if (kernels::write_kv_rows(k, v, cache.k, cache.v, rows)) return;  // CUDA: one launch for both
  cache.k.view({-1, cache.k.size(2), cache.k.size(3)}).index_copy_(0, rows, k);
  cache.v.view({-1, cache.v.size(2), cache.v.size(3)}).index_copy_(0, rows, v);
}

at::Tensor slot_decode_attention(const at::Tensor& q, const KvView& cache, const SlotCacheIndex& index, double scale,
                                 int64_t window) {
  TORCH_CHECK(use_flash(q), "slot_decode_attention: needs bf16/fp16 on CUDA");
  const auto kv_heads = cache.k.size(2), head_dim = cache.k.size(3);
  const auto k = cache.k.view({-1, kv_heads, head_dim});
  const auto v = cache.v.view({-1, kv_heads, head_dim});
  // The engine's decode kernel where it applies (kernels/decode.h: every key read once per GQA
  // group); flash attention otherwise.
  if (kernels::decode_attention_available(q, kv_heads) && cache.v.size(3) == head_dim) {
    return kernels::decode_attention(q, k, v, index.key_starts, index.keys_used, index.max_len, scale, window);
  }
  // One query per row sees every used key of its slot (within the window), so no causal mask is
  // needed; flash aligns the query with the row's last used key.
  return std::get<0>(at::_flash_attention_forward(q, k, v, index.cu_q, index.key_starts, /*max_q=*/1, index.max_len,
                                                  0.0, /*is_causal=*/false, /*return_debug_mask=*/false, scale,
                                                  window_left(window), window_right(window), index.keys_used));
}

at::Tensor context_parallel_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const parallel::ContextShards& shards, double scale, int64_t window) {
  const auto keys = parallel::gather_context(k, shards), values = parallel::gather_context(v, shards);
  std::vector<at::Tensor> out;
  const int64_t pieces = 2 * static_cast<int64_t>(shards.size);
  for (size_t s = 0; s + 1 < shards.padded_cu.size(); ++s) {
    const auto c = shards.chunk[s];
    int64_t row = shards.local_cu[s];
    for (const int64_t piece : {static_cast<int64_t>(shards.rank), pieces - 1 - shards.rank}) {
      const auto end = (piece + 1) * c;  // the chunk's end within its padded sequence
      out.push_back(attend_causal_suffix(q.narrow(0, row, c), keys.narrow(0, shards.padded_cu[s], end),
                                         values.narrow(0, shards.padded_cu[s], end), scale, window));
      row += c;
    }
  }
  return at::cat(out, 0);
}

}  // namespace tiller::layers
