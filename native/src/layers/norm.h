// RMSNorm: statistics in float32, output in the input dtype (bf16 results can differ from HF's
// two-rounding formula by one unit in the last place).
#pragma once

#include <torch/torch.h>

namespace tiller::layers {

// x: [..., dim], weight: [dim] -> [..., dim] in x's dtype
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace tiller::layers
