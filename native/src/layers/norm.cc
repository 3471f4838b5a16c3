#include "layers/norm.h"

namespace tiller::layers {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto x32 = x.to(at::kFloat);
  const auto inv_rms = at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * (x32 * inv_rms).to(x.scalar_type());
}

}  // namespace tiller::layers
