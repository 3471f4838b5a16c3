#include "layers/logprob.h"

#include <torch/autograd.h>

namespace tiller::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ChunkStats {
  at::Tensor log_probs;  // [n, vocab] float32, of logits / temperature
  at::Tensor logprob;    // [n]
  at::Tensor entropy;    // [n]
};

// h: [n, hidden] -> the chunk's normalised distribution, its target logprob and entropy.
ChunkStats chunk_stats(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets, double temperature) {
  const auto logits = at::matmul(h, w.t()).to(at::kFloat) / temperature;  // [n, vocab]
  auto log_probs = at::log_softmax(logits, -1);
  auto logprob = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
  auto entropy = -(log_probs.exp() * log_probs).sum(-1);
  return {std::move(log_probs), std::move(logprob), std::move(entropy)};
}

struct ChunkedLogprobFunction : public torch::autograd::Function<ChunkedLogprobFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& lm_head,
                               const at::Tensor& targets, double temperature, int64_t chunk) {
    ctx->save_for_backward({hidden, lm_head, targets});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    const auto tokens = hidden.size(0);
    auto logprob = at::empty({tokens}, hidden.options().dtype(at::kFloat));
    auto entropy = at::empty({tokens}, hidden.options().dtype(at::kFloat));
    for (int64_t a = 0; a < tokens; a += chunk) {
      const auto b = std::min(tokens, a + chunk);
      const auto s = chunk_stats(hidden.slice(0, a, b), lm_head, targets.slice(0, a, b), temperature);
      logprob.slice(0, a, b).copy_(s.logprob);
      entropy.slice(0, a, b).copy_(s.entropy);
    }
    return {logprob, entropy};
  }

  // With z = logits / T, p = softmax(z), H = -sum p log p:
  //   d logprob / dz = onehot(target) - p,   dH / dz = -p * (log p + H),   d/dlogits = d/dz / T.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const auto& lm_head = saved[1];
    const auto& targets = saved[2];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto tokens = hidden.size(0);
    const auto grad_logprob = grads[0].defined() ? grads[0] : at::zeros({tokens}, hidden.options().dtype(at::kFloat));
    const auto grad_entropy = grads[1].defined() ? grads[1] : at::zeros({tokens}, hidden.options().dtype(at::kFloat));
    auto grad_hidden = at::empty_like(hidden);
    auto grad_lm_head = at::zeros(lm_head.sizes(), lm_head.options().dtype(at::kFloat));
    for (int64_t a = 0; a < tokens; a += chunk) {
      const auto b = std::min(tokens, a + chunk);
      const auto h = hidden.slice(0, a, b);
      const auto s = chunk_stats(h, lm_head, targets.slice(0, a, b), temperature);
      const auto p = s.log_probs.exp();
      auto grad_z = -p * (grad_logprob.slice(0, a, b).unsqueeze(1) +
                          grad_entropy.slice(0, a, b).unsqueeze(1) * (s.log_probs + s.entropy.unsqueeze(1)));
      grad_z.scatter_add_(1, targets.slice(0, a, b).unsqueeze(1), grad_logprob.slice(0, a, b).unsqueeze(1));
      const auto grad_logits = (grad_z / temperature).to(hidden.scalar_type());  // [n, vocab]
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
