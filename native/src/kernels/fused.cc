// kernels/fused.h in a build without CUDA: nothing is available, callers keep their ATen path.
#include "kernels/fused.h"

#include <stdexcept>

#ifndef TILLER_CUDA
namespace tiller::kernels {
namespace {
[[noreturn]] void no_cuda() { throw std::logic_error("kernels/fused: this build has no CUDA"); }
}  // namespace

bool fused_available(const at::Tensor&) { return false; }
std::pair<at::Tensor, at::Tensor> rope_pair_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&) {
  no_cuda();
}
at::Tensor rope_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
at::Tensor silu_mul_forward(const at::Tensor&, const at::Tensor&) { no_cuda(); }
std::pair<at::Tensor, at::Tensor> silu_mul_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  no_cuda();
}
at::Tensor silu_mul_halves_forward(const at::Tensor&) { no_cuda(); }
at::Tensor silu_mul_halves_backward(const at::Tensor&, const at::Tensor&) { no_cuda(); }
}  // namespace tiller::kernels
#endif
