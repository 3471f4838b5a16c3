// Dense projections shared by the model families: a linear map with an optional bias and the
// SwiGLU feed-forward (down(silu(gate(x)) * up(x))).
#pragma once

#include <torch/torch.h>

namespace tiller::layers {

// x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out]
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// silu(gate) * up, one fused kernel on CUDA (kernels/fused.h), the ATen expression elsewhere.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

// h: [rows, 2 · width], gate columns then up columns -> silu(gate) * up [rows, width]; fused on CUDA.
at::Tensor silu_mul_halves(const at::Tensor& h);

// x: [tokens, hidden], gate/up: [inter, hidden], down: [hidden, inter] -> [tokens, hidden]
at::Tensor swiglu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, const at::Tensor& down);

}  // namespace tiller::layers
