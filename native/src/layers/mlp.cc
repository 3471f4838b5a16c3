#include "layers/mlp.h"

#include <torch/csrc/autograd/custom_function.h>

#include "kernels/fused.h"

namespace tiller::layers {
namespace {

// silu(gate) * up as one kernel (kernels/fused.h); saves gate and up, where ATen's expression also
// keeps silu(gate).
struct SiluMul : torch::autograd::Function<SiluMul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return kernels::silu_mul_forward(gate, up);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [d_gate, d_up] = kernels::silu_mul_backward(grads[0], saved[0], saved[1]);
    return {d_gate, d_up};
  }
};

// The same over the two halves of one [rows, 2 · width] tensor; saves it.
struct SiluMulHalves : torch::autograd::Function<SiluMulHalves> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h) {
    ctx->save_for_backward({h});
    return kernels::silu_mul_halves_forward(h);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {kernels::silu_mul_halves_backward(grads[0], ctx->get_saved_variables()[0])};
  }
};

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::addmm(bias, x, weight.t()) : at::matmul(x, weight.t());
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  return kernels::fused_available(gate) ? SiluMul::apply(gate, up) : at::silu(gate) * up;
}

at::Tensor silu_mul_halves(const at::Tensor& h) {
  if (kernels::fused_available(h) && h.dim() == 2) return SiluMulHalves::apply(h);
  const auto width = h.size(-1) / 2;
  return silu_mul(h.slice(-1, 0, width), h.slice(-1, width));
}

at::Tensor swiglu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, const at::Tensor& down) {
  return at::matmul(silu_mul(at::matmul(x, gate.t()), at::matmul(x, up.t())), down.t());
}

}  // namespace tiller::layers
