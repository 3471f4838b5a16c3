// Fused element-wise work of the decoder layer (rotary embedding of q and k, SwiGLU's silu(gate) ·
// up), each one kernel instead of the five to ten ATen launches of the expression it replaces. The
// forwards round every intermediate to the tensor dtype exactly where ATen's expression rounds, so
// a forward with them is bit-identical to one without (rollout and training logprobs stay equal,
// HF parity does not move); the backwards compute each gradient in fp32 and round once. On CUDA
// these are kernels (fused.cu); elsewhere `fused_available` is false and callers keep the ATen path.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace tiller::kernels {

// Whether the fused kernels take tensors like `x` (CUDA, float/bf16/fp16, this build has CUDA).
bool fused_available(const at::Tensor& x);

// HF's rotate-half rope of q [T, Hq, D] and k [T, Hk, D] (contiguous) with cos/sin [T, D] in q's
// dtype: x·cos + rotate_half(x)·sin, rounded as ATen rounds `x * cos + cat(-x2, x1) * sin`.
std::pair<at::Tensor, at::Tensor> rope_pair_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                    const at::Tensor& sin);
// The gradient of either input from the gradient of its output (the inverse rotation).
at::Tensor rope_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up for gate/up of one shape (contiguous), rounded as ATen rounds `silu(gate) * up`.
at::Tensor silu_mul_forward(const at::Tensor& gate, const at::Tensor& up);
// {d gate, d up} from the output's gradient.
std::pair<at::Tensor, at::Tensor> silu_mul_backward(const at::Tensor& grad, const at::Tensor& gate,
                                                    const at::Tensor& up);

// The same over the two halves of h [rows, 2 · width] (gate columns, then up columns), as the MoE
// experts' fused gate/up projection gives them: -> [rows, width]; the backward gives d h.
at::Tensor silu_mul_halves_forward(const at::Tensor& h);
at::Tensor silu_mul_halves_backward(const at::Tensor& grad, const at::Tensor& h);

}  // namespace tiller::kernels
