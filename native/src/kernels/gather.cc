// kernels/gather.h in a build without CUDA: nothing is available, callers keep their ATen path.
#include "kernels/gather.h"

#include <stdexcept>

#ifndef TILLER_CUDA
namespace tiller::kernels {

bool gather_available(const at::Tensor&) { return false; }
at::Tensor gather_sum(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::logic_error("kernels/gather: this build has no CUDA");
}
at::Tensor gather_dot(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::logic_error("kernels/gather: this build has no CUDA");
}

}  // namespace tiller::kernels
#endif
