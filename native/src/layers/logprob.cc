#include "layers/logprob.h"

#include <torch/autograd.h>

#include <functional>
#include <utility>

#include "kernels/logprob.h"

namespace tiller::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// libtorch hands a backward zeros for an output no loss used (materialized gradients): the
// entropy's then costs a pass over every chunk's logits and, in the vocabulary-parallel backward,
// two more chunk-sized fp32 tensors. On the CPU the gradient stays undefined and that work is
// skipped (the backwards below check for it).
void skip_unused_output_grads(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden) {
  if (hidden.device().is_cpu()) ctx->set_materialize_grads(false);
}

// The chunk's logits, as the output projection gives them (the model's dtype).
at::Tensor chunk_logits(const at::Tensor& h, const at::Tensor& w) { return at::matmul(h, w.t()); }

// Row statistics over all tokens, `per_chunk(logits, a, b)` giving those of rows a..b-1 from their
// logits: [tokens x vocab] logits never exist at once, unless `keep` is defined: then it is that
// [tokens, vocab] tensor and each chunk's logits are written into its rows (for backward).
kernels::RowStats chunked_stats(const at::Tensor& hidden, const at::Tensor& lm_head, int64_t chunk,
                                const std::function<kernels::RowStats(const at::Tensor&, int64_t, int64_t)>& per_chunk,
                                const at::Tensor& keep = at::Tensor()) {
  const auto tokens = hidden.size(0);
  const auto options = hidden.options().dtype(at::kFloat);
  kernels::RowStats out{at::empty({tokens}, options), at::empty({tokens}, options), at::empty({tokens}, options)};
  for (int64_t a = 0; a < tokens; a += chunk) {
    const auto b = std::min(tokens, a + chunk);
    const auto h = hidden.slice(0, a, b);
    at::Tensor logits;
    if (keep.defined()) {
      logits = keep.slice(0, a, b);
      at::mm_out(logits, h, lm_head.t());
    } else {
      logits = chunk_logits(h, lm_head);
    }
    const auto s = per_chunk(logits, a, b);
    out.logprob.slice(0, a, b).copy_(s.logprob);
    out.entropy.slice(0, a, b).copy_(s.entropy);
    out.lse.slice(0, a, b).copy_(s.lse);
  }
  return out;
}

// On the CPU the forward's logits are kept for backward when all of them take at most this much:
// recomputing them is the costliest matmul of a small model's step (the lm-head at Qwen3's 152k
// vocabulary), and CPU memory is the plentiful kind. Larger batches recompute chunk by chunk.
constexpr int64_t kKeepLogitsBytesCpu = int64_t{2} << 30;

// Decided before the autograd function runs (inside it grad mode is off): only a forward that
// records a backward keeps anything.
bool keep_logits(const at::Tensor& hidden, const at::Tensor& lm_head) {
  if (!hidden.device().is_cpu() || !at::GradMode::is_enabled()) return false;
  if (!hidden.requires_grad() && !lm_head.requires_grad()) return false;
  return hidden.size(0) * lm_head.size(0) * lm_head.element_size() <= kKeepLogitsBytesCpu;
}

// Gradients of hidden and lm_head from `grad_logits(logits, a, b)`, the gradient of rows a..b-1's
// logits (in hidden's dtype), chunk by chunk; the logits are recomputed unless `kept` holds them.
std::pair<at::Tensor, at::Tensor> chunked_backward(
    const at::Tensor& hidden, const at::Tensor& lm_head, int64_t chunk,
    const std::function<at::Tensor(const at::Tensor&, int64_t, int64_t)>& grad_logits,
    const at::Tensor& kept = at::Tensor()) {
  const auto tokens = hidden.size(0);
  auto grad_hidden = at::empty_like(hidden);
  // The first chunk's product is the sum so far: no [vocab, hidden] zero fill.
  at::Tensor grad_lm_head;
  for (int64_t a = 0; a < tokens; a += chunk) {
    const auto b = std::min(tokens, a + chunk);
    const auto h = hidden.slice(0, a, b);
    const auto g = grad_logits(kept.defined() ? kept.slice(0, a, b) : chunk_logits(h, lm_head), a, b);
    grad_hidden.slice(0, a, b).copy_(at::matmul(g, lm_head));
    auto part = at::matmul(g.t(), h).to(at::kFloat);
    if (grad_lm_head.defined()) grad_lm_head.add_(part);
    else grad_lm_head = std::move(part);
  }
  if (!grad_lm_head.defined()) grad_lm_head = at::zeros(lm_head.sizes(), lm_head.options().dtype(at::kFloat));
  return {grad_hidden, grad_lm_head.to(lm_head.scalar_type())};
}

struct ChunkedLogprobFunction : public torch::autograd::Function<ChunkedLogprobFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& lm_head,
                               const at::Tensor& targets, double temperature, int64_t chunk, bool keep) {
    const auto kept = keep
                          ? at::empty({hidden.size(0), lm_head.size(0)}, hidden.options().dtype(lm_head.dtype()))
                          : at::Tensor();
    const auto s = chunked_stats(
        hidden, lm_head, chunk,
        [&](const at::Tensor& logits, int64_t a, int64_t b) {
          return kernels::logprob_rows(logits, targets.slice(0, a, b), temperature);
        },
        kept);
    const auto &logprob = s.logprob, &entropy = s.entropy, &lse = s.lse;
    // Elsewhere the logits are recomputed chunk by chunk in backward: [tokens, vocab] never exists at once.
    ctx->save_for_backward({hidden, lm_head, targets, lse, entropy, kept});
    skip_unused_output_grads(ctx, hidden);
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->mark_non_differentiable({lse});
    return {logprob, entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const auto& lm_head = saved[1];
    const auto& targets = saved[2];
    const auto& lse = saved[3];
    const auto& entropy = saved[4];
    const auto& kept = saved[5];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto tokens = hidden.size(0);
    const auto grad_logprob = grads[0].defined() ? grads[0] : at::zeros({tokens}, hidden.options().dtype(at::kFloat));
    // An entropy that no loss term used has no gradient: its pass over the logits is skipped.
    const auto& grad_entropy = grads[1];
    const auto [grad_hidden, grad_lm_head] = chunked_backward(
        hidden, lm_head, chunk,
        [&](const at::Tensor& logits, int64_t a, int64_t b) {
          const kernels::RowStats stats{at::Tensor(), entropy.slice(0, a, b), lse.slice(0, a, b)};
          const auto g_lp = grad_logprob.slice(0, a, b);
          const auto g_h = grad_entropy.defined() ? grad_entropy.slice(0, a, b) : at::Tensor();
          if (kept.defined()) {
            // The kept logits are read for the last time here: their gradient overwrites them.
            auto rows = logits;
            return kernels::logprob_rows_backward_(rows, targets.slice(0, a, b), temperature, stats, g_lp, g_h)
                .to(hidden.scalar_type());
          }
          return kernels::logprob_rows_backward(logits, targets.slice(0, a, b), temperature, stats, g_lp, g_h)
              .to(hidden.scalar_type());
        },
        kept);
    return {grad_hidden, grad_lm_head, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Targets as indices into this shard's columns (0 where outside it) and whether they are inside.
struct LocalTargets {
  at::Tensor index, inside;  // [rows] int64, [rows] bool
};

LocalTargets local_targets(const at::Tensor& targets, int64_t start, int64_t rows) {
  const auto inside = targets.ge(start).logical_and(targets.lt(start + rows));
  return {(targets - start).masked_fill(inside.logical_not(), 0), inside};
}

// The whole vocabulary's statistics from each shard's: with lse_r, H_r the shard's logsumexp and
// entropy of its own softmax, E_r[z] = lse_r - H_r and the global
//   lse = log sum_r exp(lse_r),   E[z] = sum_r exp(lse_r - lse) E_r[z],   H = lse - E[z],
// and the target's z from the one shard that holds it.
kernels::RowStats merge_shards(const kernels::RowStats& local, const at::Tensor& inside, parallel::ProcessGroup& group) {
  auto top = local.lse.clone();
  group.all_reduce(top, parallel::ReduceOp::kMax);
  const auto weight = (local.lse - top).exp();
  auto sums = at::stack({weight, weight * (local.lse - local.entropy),
                         at::where(inside, local.logprob + local.lse, at::zeros_like(local.lse))})
                  .contiguous();  // [3, rows]
  group.all_reduce(sums, parallel::ReduceOp::kSum);
  const auto lse = top + sums[0].log();
  const auto expected = sums[1] / sums[0];
  return {sums[2] - lse, lse - expected, lse};
}

struct VocabParallelLogprobFunction : public torch::autograd::Function<VocabParallelLogprobFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& lm_head,
                               const at::Tensor& targets, double temperature, int64_t chunk, int64_t group_address,
                               int64_t vocab_start) {
    auto& group = *reinterpret_cast<parallel::ProcessGroup*>(group_address);
    const auto local = local_targets(targets, vocab_start, lm_head.size(0));
    const auto s = chunked_stats(hidden, lm_head, chunk, [&](const at::Tensor& logits, int64_t a, int64_t b) {
      const auto shard = kernels::logprob_rows(logits, local.index.slice(0, a, b), temperature);
      return merge_shards(shard, local.inside.slice(0, a, b), group);
    });
    const auto &logprob = s.logprob, &entropy = s.entropy, &lse = s.lse;
    ctx->save_for_backward({hidden, lm_head, local.index, local.inside, lse, entropy});
    skip_unused_output_grads(ctx, hidden);
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->mark_non_differentiable({lse});
    return {logprob, entropy};
  }

  // Per shard, with the global lse and H: d/dz = g_lp (onehot - p) - g_H p (log p + H), the
  // onehot only where the shard holds the target. No communication: hidden's gradient is this
  // shard's part, summed over the group by copy_to_group's backward.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const auto& lm_head = saved[1];
    const auto& index = saved[2];
    const auto& inside = saved[3];
    const auto& lse = saved[4];
    const auto& entropy = saved[5];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto tokens = hidden.size(0);
    const auto grad_logprob = grads[0].defined() ? grads[0] : at::zeros({tokens}, hidden.options().dtype(at::kFloat));
    const auto& grad_entropy = grads[1];
    const auto [grad_hidden, grad_lm_head] =
        chunked_backward(hidden, lm_head, chunk, [&](const at::Tensor& logits, int64_t a, int64_t b) {
          const auto g = grad_logprob.slice(0, a, b);
          const auto log_p = logits.to(at::kFloat) / temperature - lse.slice(0, a, b).unsqueeze(1);
          const auto p = log_p.exp();
          auto weight = g.unsqueeze(1).expand_as(p);
          if (grad_entropy.defined()) {
            weight = weight + grad_entropy.slice(0, a, b).unsqueeze(1) * (log_p + entropy.slice(0, a, b).unsqueeze(1));
          }
          auto grad_z = -p * weight;
          grad_z.scatter_add_(1, index.slice(0, a, b).unsqueeze(1),
                              (g * inside.slice(0, a, b).to(at::kFloat)).unsqueeze(1));
          return (grad_z / temperature).to(hidden.scalar_type());
        });
    return {grad_hidden, grad_lm_head, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

TokenLogprobs vocab_parallel_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& targets,
                                      double temperature, int64_t chunk_tokens, const VocabShard& shard) {
  TORCH_CHECK(temperature > 0, "temperature: must be positive, got ", temperature);
  TORCH_CHECK(chunk_tokens > 0, "chunk_tokens: must be positive, got ", chunk_tokens);
  TORCH_CHECK(shard.group != nullptr, "vocab_parallel_logprobs: no group");
  const auto out = VocabParallelLogprobFunction::apply(hidden, lm_head, targets, temperature, chunk_tokens,
                                                       reinterpret_cast<int64_t>(shard.group), shard.vocab_start);
  return {out[0], out[1]};
}

TokenLogprobs chunked_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& targets,
                               double temperature, int64_t chunk_tokens) {
  TORCH_CHECK(temperature > 0, "temperature: must be positive, got ", temperature);
  TORCH_CHECK(chunk_tokens > 0, "chunk_tokens: must be positive, got ", chunk_tokens);
  const auto out = ChunkedLogprobFunction::apply(hidden, lm_head, targets, temperature, chunk_tokens,
                                                 keep_logits(hidden, lm_head));
  return {out[0], out[1]};
}

}  // namespace tiller::layers
