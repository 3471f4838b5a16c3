// The lm-head of a CPU generation step: logits [n, vocab] = rows [n, hidden] · weight[vocab, hidden]ᵀ
// in fp32 for the few rows a step samples from (one per running sequence).
//
// For so few rows the product is a stream over the weight (151,936 × 512 fp32: 311 MB a step for
// Qwen3's vocabulary), and MKL's sgemm of that shape reads it at 5-6 GB/s on 2 cores against the
// 30 GB/s a plain sum over it reaches. This reads each weight row once per 4 rows of `rows` (the
// second and later groups of 4 from L2), 16 lanes at a time.
#pragma once

#include <ATen/ATen.h>

namespace tiller::rollout {

// Whether cpu_logits takes these: CPU fp32 tensors, rows [n, hidden] with n <= kCpuLogitsMaxRows,
// weight [vocab, hidden] contiguous.
constexpr int64_t kCpuLogitsMaxRows = 256;
bool cpu_logits_apply(const at::Tensor& rows, const at::Tensor& weight);

// rows · weightᵀ: [n, vocab] fp32, contiguous. The sums run in another order than sgemm's (fp32
// lanes, then across them): the same to rounding.
at::Tensor cpu_logits(const at::Tensor& rows, const at::Tensor& weight);

}  // namespace tiller::rollout
