#include "layers/mlp.h"

#include <torch/csrc/autograd/custom_function.h>

#include <optional>

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

// The rows of parts together when each starts where the previous one ends in one storage, else -1.
int64_t adjacent_row_count(const std::vector<at::Tensor>& parts) {
  if (parts.empty() || !parts[0].defined()) return -1;
  const auto& first = parts[0];
  int64_t rows = 0;
  const char* next = nullptr;
  for (const auto& p : parts) {
    if (!p.defined() || !p.has_storage() || !p.is_contiguous() || p.dim() != first.dim() || p.dim() < 1 ||
        p.scalar_type() != first.scalar_type() || p.device() != first.device() ||
        !p.storage().is_alias_of(first.storage()) || p.sizes().slice(1) != first.sizes().slice(1)) {
      return -1;
    }
    const auto* begin = static_cast<const char*>(p.data_ptr());
    if (next && begin != next) return -1;
    rows += p.size(0);
    next = begin + p.nbytes();
  }
  return rows;
}

// x [tokens, in] times the adjacent weights w0..w2 (w2 may be undefined) as one GEMM, plus the
// adjacent biases when b0 is defined. `split`: one output per weight (column views of the one
// result), else the whole [tokens, sum rows]. Backward: the output gradients side by side, then
// one GEMM for the input's gradient and one for all the weights' (each weight's is a row view).
struct FusedLinear : torch::autograd::Function<FusedLinear> {
  using Optional = std::optional<at::Tensor>;
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& w0, const at::Tensor& w1, const Optional& w2_in,
                                                const Optional& b0_in, const Optional& b1_in, const Optional& b2_in,
                                                bool split) {
    // Autograd functions take absent tensors as empty optionals, never as undefined tensors.
    const auto w2 = w2_in.value_or(at::Tensor()), b0 = b0_in.value_or(at::Tensor());
    const auto b1 = b1_in.value_or(at::Tensor()), b2 = b2_in.value_or(at::Tensor());
    const auto parts = defined_parts(w0, w1, w2);
    const auto weight = adjacent_rows(parts);
    const auto bias = b0.defined() ? adjacent_rows(defined_parts(b0, b1, b2)) : at::Tensor();
    ctx->save_for_backward({x, w0, w1, w2});
    ctx->saved_data["split"] = split;
    ctx->saved_data["bias"] = b0.defined();
    auto y = bias.defined() ? at::addmm(bias, x, weight.t()) : at::mm(x, weight.t());
    if (!split) return {y};
    return y.split_with_sizes(row_counts(parts), 1);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto parts = defined_parts(saved[1], saved[2], saved[3]);
    const auto weight = adjacent_rows(parts);
    at::Tensor g;
    if (!ctx->saved_data["split"].toBool()) {
      g = grads[0];
    } else {
      std::vector<at::Tensor> pieces;
      for (size_t i = 0; i < parts.size(); ++i) {
        pieces.push_back(grads[i].defined() ? grads[i] : at::zeros({x.size(0), parts[i].size(0)}, x.options()));
      }
      g = at::cat(pieces, 1);
    }
    const auto dx = ctx->needs_input_grad(0) ? at::mm(g, weight) : at::Tensor();
    const auto dw = ctx->needs_input_grad(1) ? at::mm(g.t(), x) : at::Tensor();
    const auto db = ctx->saved_data["bias"].toBool() ? g.sum(0) : at::Tensor();
    torch::autograd::variable_list out(8);
    out[0] = dx;
    int64_t row = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const auto rows = parts[i].size(0);
      if (dw.defined()) out[1 + i] = dw.narrow(0, row, rows);
      if (db.defined()) out[4 + i] = db.narrow(0, row, rows);
      row += rows;
    }
    return out;
  }

  static std::vector<at::Tensor> defined_parts(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
    return c.defined() ? std::vector<at::Tensor>{a, b, c} : std::vector<at::Tensor>{a, b};
  }
  static std::vector<int64_t> row_counts(const std::vector<at::Tensor>& parts) {
    std::vector<int64_t> rows;
    for (const auto& p : parts) rows.push_back(p.size(0));
    return rows;
  }
};

// The fused GEMM over 2 or 3 adjacent weights; empty when they (or their biases) are not adjacent.
std::vector<at::Tensor> fused_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                     const std::vector<at::Tensor>& biases, bool split) {
  if (x.dim() != 2 || weights.size() < 2 || weights.size() > 3 || adjacent_row_count(weights) < 0) return {};
  const bool with_bias = !biases.empty() && biases[0].defined();
  if (with_bias && (biases.size() != weights.size() || adjacent_row_count(biases) < 0)) return {};
  const auto part = [](const std::vector<at::Tensor>& v, size_t i) {
    return i < v.size() && v[i].defined() ? std::optional<at::Tensor>(v[i]) : std::nullopt;
  };
  const auto b = with_bias ? biases : std::vector<at::Tensor>{};
  return FusedLinear::apply(x, weights[0], weights[1], part(weights, 2), part(b, 0), part(b, 1), part(b, 2), split);
}

}  // namespace

at::Tensor adjacent_rows(const std::vector<at::Tensor>& parts) {
  const auto rows = adjacent_row_count(parts);
  if (rows < 0) return {};
  auto sizes = parts[0].sizes().vec();
  sizes[0] = rows;
  std::vector<int64_t> strides(sizes.size(), 1);
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * sizes[d + 1];
  // Grad mode off: the view is a way of reading the parameters, not a step of the graph.
  at::NoGradGuard no_grad;
  return parts[0].as_strided(sizes, strides);
}

std::vector<at::Tensor> linear_parts(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                     const std::vector<at::Tensor>& biases) {
  auto fused = fused_linear(x, weights, biases, /*split=*/true);
  if (!fused.empty()) return fused;
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < weights.size(); ++i) out.push_back(linear(x, weights[i], i < biases.size() ? biases[i] : at::Tensor()));
  return out;
}

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
  // Adjacent gate and up rows: one GEMM gives [gate | up] side by side, as the experts' gate_up_proj.
  const auto both = fused_linear(x, {gate, up}, {}, /*split=*/false);
  if (!both.empty()) return at::matmul(silu_mul_halves(both[0]), down.t());
  return at::matmul(silu_mul(at::matmul(x, gate.t()), at::matmul(x, up.t())), down.t());
}

}  // namespace tiller::layers
