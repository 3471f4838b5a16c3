// RMSNorm as HF computes it: statistics in float32, the weight applied in the input dtype.
#pragma once

#include <torch/torch.h>

namespace tiller::layers {

// x: [..., dim], weight: [dim] -> [..., dim] in x's dtype
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace tiller::layers
