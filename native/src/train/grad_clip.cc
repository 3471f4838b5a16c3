#include "train/grad_clip.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace tiller::train {

ClipResult clip_grad_norm(const NamedTensors& params, double max_norm) {
  TORCH_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& [name, param] : params) {
    if (param.grad().defined()) grads.push_back(param.grad());
  }
  if (grads.empty()) return {0.0, true};
  // Per-tensor norms in fp32 even for bf16 gradients (a bf16 sum of squares loses the small
  // ones), then the norm of the norms: [n] -> scalar.
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) norms.push_back(at::linalg_vector_norm(g, 2, std::nullopt, false, at::kFloat));
  const auto total = at::linalg_vector_norm(at::stack(norms), 2);
  const double norm = total.item<double>();
  if (!std::isfinite(norm)) return {norm, false};
  // Always multiply (by 1 when under the limit), as torch does, so both give the same bits.
  const auto coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
  at::_foreach_mul_(grads, coef);
  return {norm, true};
}

}  // namespace tiller::train
