// kernels/decode.h and kernels/sample.h in a build without CUDA: nothing is available, callers keep
// their ATen path.
#include <stdexcept>

#include "kernels/decode.h"
#include "kernels/sample.h"

#ifndef TILLER_CUDA
namespace tiller::kernels {

bool decode_attention_available(const at::Tensor&, int64_t) { return false; }
at::Tensor decode_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, int64_t, double, int64_t) {
  throw std::logic_error("kernels/decode: this build has no CUDA");
}
bool write_kv_rows(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return false;
}
bool decode_norm_available(const at::Tensor&) { return false; }
bool qk_norm_rope_available(const at::Tensor&, int64_t) { return false; }
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor&, const at::Tensor&, const at::Tensor&, double) {
  throw std::logic_error("kernels/decode: this build has no CUDA");
}
std::pair<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, double, const at::Tensor&, const at::Tensor&) {
  throw std::logic_error("kernels/decode: this build has no CUDA");
}
bool sample_kernel_available(const at::Tensor&) { return false; }
at::Tensor sample_rows_cuda(const at::Tensor&, const at::Tensor&, double) {
  throw std::logic_error("kernels/sample: this build has no CUDA");
}

}  // namespace tiller::kernels
#endif
