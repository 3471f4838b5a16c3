// Row gathers of the MoE dispatch and combine without atomics or fp32 copies of the rows. ATen's
// way (index_select, then `.to(float) * weights` and a sum over the top-k; index_select's backward
// an index_add_ of bf16 rows) writes the [tokens, top_k, hidden] pairs in fp32 twice and adds rows
// with atomics; these read each row once, accumulate in fp32 registers and round once, in a fixed
// order, so every token's output and gradient are deterministic. On CUDA these are kernels
// (gather.cu); elsewhere `gather_available` is false and callers keep the ATen expressions.
#pragma once

#include <ATen/ATen.h>

namespace tiller::kernels {

// Whether the gather kernels take rows like `x` (CUDA, 2-D contiguous, float/bf16/fp16).
bool gather_available(const at::Tensor& x);

// out[t] = Σ_j scale[t, j] · src[index[t, j]] over j in order, in fp32, rounded once to src's dtype.
// src [rows, H] contiguous, index [T, K] int64, scale [T, K] fp32 or undefined (all ones) -> [T, H].
at::Tensor gather_sum(const at::Tensor& src, const at::Tensor& index, const at::Tensor& scale);

// out[t, j] = Σ_h a[t, h] · src[index[t, j], h] in fp32. a [T, H], src [rows, H], index [T, K] -> [T, K] fp32.
at::Tensor gather_dot(const at::Tensor& a, const at::Tensor& src, const at::Tensor& index);

}  // namespace tiller::kernels
