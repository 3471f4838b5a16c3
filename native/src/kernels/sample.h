// Inverse-CDF sampling from softmax(logits / temperature) on the device, one block per row: the
// whole of rollout/sampler's temperature path (no top-k, no top-p) in one launch instead of the
// dozen [rows, vocab] passes of its ATen expression (log-softmax, a float64 softmax, its cumulative
// sum, a search). Each row is read in three passes (max, per-warp sums of e^(z - max) in float64,
// one warp's rescan to the draw) and nothing of size vocab is written. A row depends on its own
// logits and draw alone, so sampling stays batch-invariant.
#pragma once

#include <ATen/ATen.h>

namespace tiller::kernels {

// Whether sample_rows_cuda takes `logits` (CUDA float32, this build has CUDA).
bool sample_kernel_available(const at::Tensor& logits);

// logits: [rows, vocab] float32 on CUDA; uniforms: [rows] float64 in [0, 1) (any device). Returns
// [rows] int64: the first token whose cumulative mass exceeds u · total, never a token of zero mass.
at::Tensor sample_rows_cuda(const at::Tensor& logits, const at::Tensor& uniforms, double temperature);

}  // namespace tiller::kernels
