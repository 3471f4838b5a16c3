// Global-norm gradient clipping over all parameters' gradients, as torch.nn.utils.clip_grad_norm_.
#pragma once

#include "train/optimizer.h"

namespace tiller::train {

struct ClipResult {
  double norm;  // the L2 norm of all gradients together, before clipping (fp32 accumulation)
  bool finite;  // false for inf/NaN: the gradients are left as they are and the caller skips the step
};

// Scales every gradient by min(1, max_norm / (norm + 1e-6)) in place. Parameters without a
// gradient are ignored. Reads the norm back to the host (one device sync) to report it.
ClipResult clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace tiller::train
