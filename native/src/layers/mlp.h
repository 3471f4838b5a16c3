// Dense projections shared by the model families: a linear map with an optional bias and the
// SwiGLU feed-forward (down(silu(gate(x)) * up(x))).
#pragma once

#include <torch/torch.h>

namespace tiller::layers {

// x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out]
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// Weights whose rows lie back to back in one storage (models allocate q/k/v and gate/up so): one
// [sum of rows, in] view over them all, or an undefined tensor when they do not (offloaded and
// copied parameters still do; a checkpoint's separate tensors do not).
at::Tensor adjacent_rows(const std::vector<at::Tensor>& parts);

// x: [tokens, in] times each of 2 or 3 weights [rows_i, in] (+ bias_i) -> one [tokens, rows_i] per
// weight. One GEMM (and one per gradient) when the weights, and the biases if any, are adjacent
// rows; the outputs are then column views of one [tokens, sum rows] tensor. Separate GEMMs otherwise.
std::vector<at::Tensor> linear_parts(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                     const std::vector<at::Tensor>& biases);

// silu(gate) * up, one fused kernel on CUDA (kernels/fused.h), the ATen expression elsewhere.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

// h: [rows, 2 · width], gate columns then up columns -> silu(gate) * up [rows, width]; fused on CUDA.
at::Tensor silu_mul_halves(const at::Tensor& h);

// x: [tokens, hidden], gate/up: [inter, hidden], down: [hidden, inter] -> [tokens, hidden]
at::Tensor swiglu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, const at::Tensor& down);

}  // namespace tiller::layers
