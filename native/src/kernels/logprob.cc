#include "kernels/logprob.h"

namespace tiller::kernels {

RowStats logprob_rows_reference(const at::Tensor& logits, const at::Tensor& targets, double temperature) {
  const auto z = logits.to(at::kFloat) / temperature;
  auto log_probs = at::log_softmax(z, -1);
  auto logprob = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
  auto entropy = -(log_probs.exp() * log_probs).sum(-1);
  auto lse = at::logsumexp(z, -1);
  return {std::move(logprob), std::move(entropy), std::move(lse)};
}

// With z = logits / T, p = softmax(z), H = -sum p log p:
//   d logprob / dz = onehot(target) - p,   dH / dz = -p * (log p + H),   d/dlogits = d/dz / T.
at::Tensor logprob_rows_backward_reference(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                           const RowStats& stats, const at::Tensor& grad_logprob,
                                           const at::Tensor& grad_entropy) {
  const auto log_probs = logits.to(at::kFloat) / temperature - stats.lse.unsqueeze(1);
  const auto p = log_probs.exp();
  auto weight = grad_logprob.unsqueeze(1).expand_as(p);
  if (grad_entropy.defined()) {
    weight = weight + grad_entropy.unsqueeze(1) * (log_probs + stats.entropy.unsqueeze(1));
  }
  auto grad_z = -p * weight;
  grad_z.scatter_add_(1, targets.unsqueeze(1), grad_logprob.unsqueeze(1));
  return (grad_z / temperature).to(logits.scalar_type());
}

RowStats logprob_rows(const at::Tensor& logits, const at::Tensor& targets, double temperature) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "logprob_rows: logits [rows, vocab] and targets [rows]");
#ifdef TILLER_CUDA
  if (logits.is_cuda()) return logprob_rows_cuda(logits, targets, temperature);
#endif
  return logprob_rows_reference(logits, targets, temperature);
}

at::Tensor logprob_rows_backward(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                 const RowStats& stats, const at::Tensor& grad_logprob,
                                 const at::Tensor& grad_entropy) {
#ifdef TILLER_CUDA
  if (logits.is_cuda()) {
    return logprob_rows_backward_cuda(logits, targets, temperature, stats, grad_logprob, grad_entropy);
  }
#endif
  return logprob_rows_backward_reference(logits, targets, temperature, stats, grad_logprob, grad_entropy);
}

}  // namespace tiller::kernels
