#include "layers/logprob.h"

#include <torch/autograd.h>

#include "kernels/logprob.h"

namespace tiller::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The chunk's logits, as the output projection gives them (the model's dtype).
at::Tensor chunk_logits(const at::Tensor& h, const at::Tensor& w) { return at::matmul(h, w.t()); }

struct ChunkedLogprobFunction : public torch::autograd::Function<ChunkedLogprobFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& lm_head,
                               const at::Tensor& targets, double temperature, int64_t chunk) {
    const auto tokens = hidden.size(0);
    auto logprob = at::empty({tokens}, hidden.options().dtype(at::kFloat));
    auto entropy = at::empty({tokens}, hidden.options().dtype(at::kFloat));
    auto lse = at::empty({tokens}, hidden.options().dtype(at::kFloat));
    for (int64_t a = 0; a < tokens; a += chunk) {
      const auto b = std::min(tokens, a + chunk);
      const auto s = kernels::logprob_rows(chunk_logits(hidden.slice(0, a, b), lm_head), targets.slice(0, a, b),
                                           temperature);
      logprob.slice(0, a, b).copy_(s.logprob);
      entropy.slice(0, a, b).copy_(s.entropy);
      lse.slice(0, a, b).copy_(s.lse);
    }
    // Logits are recomputed chunk by chunk in backward: [tokens, vocab] never exists at once.
    ctx->save_for_backward({hidden, lm_head, targets, lse, entropy});
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
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto tokens = hidden.size(0);
    const auto grad_logprob = grads[0].defined() ? grads[0] : at::zeros({tokens}, hidden.options().dtype(at::kFloat));
    // An entropy that no loss term used has no gradient: its pass over the logits is skipped.
    const auto& grad_entropy = grads[1];
    auto grad_hidden = at::empty_like(hidden);
    auto grad_lm_head = at::zeros(lm_head.sizes(), lm_head.options().dtype(at::kFloat));
    for (int64_t a = 0; a < tokens; a += chunk) {
      const auto b = std::min(tokens, a + chunk);
      const auto h = hidden.slice(0, a, b);
      const kernels::RowStats stats{at::Tensor(), entropy.slice(0, a, b), lse.slice(0, a, b)};
      const auto grad_logits = kernels::logprob_rows_backward(
          chunk_logits(h, lm_head), targets.slice(0, a, b), temperature, stats, grad_logprob.slice(0, a, b),
          grad_entropy.defined() ? grad_entropy.slice(0, a, b) : at::Tensor()).to(hidden.scalar_type());
      grad_hidden.slice(0, a, b).copy_(at::matmul(grad_logits, lm_head));
      grad_lm_head.add_(at::matmul(grad_logits.t(), h).to(at::kFloat));
    }
    return {grad_hidden, grad_lm_head.to(lm_head.scalar_type()), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

TokenLogprobs chunked_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& targets,
                               double temperature, int64_t chunk_tokens) {
  TORCH_CHECK(temperature > 0, "temperature: must be positive, got ", temperature);
  TORCH_CHECK(chunk_tokens > 0, "chunk_tokens: must be positive, got ", chunk_tokens);
  const auto out = ChunkedLogprobFunction::apply(hidden, lm_head, targets, temperature, chunk_tokens);
  return {out[0], out[1]};
}

}  // namespace tiller::layers
