#include "layers/rope.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <torch/csrc/autograd/custom_function.h>

#include "kernels/fused.h"

namespace tiller::layers {
namespace {

// base^(2i/dim) for i < dim/2, computed in float32 the way HF does.
at::Tensor power_ladder(double base, int64_t dim) {
  const auto exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(base, exponents);
}

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

RopeFrequencies yarn_frequencies(const RopeConfig& c) {
  const auto dim = c.rotary_dim;
  const double factor = c.factor;
  RopeFrequencies out;
  if (c.attention_factor) {
    out.attention_scaling = *c.attention_factor;
  } else if (c.mscale && c.mscale_all_dim && *c.mscale != 0 && *c.mscale_all_dim != 0) {
    out.attention_scaling = yarn_mscale(factor, *c.mscale) / yarn_mscale(factor, *c.mscale_all_dim);
  } else {
    out.attention_scaling = yarn_mscale(factor, 1.0);
  }
  // The dimension whose wavelength makes `rotations` turns over the original context.
  const auto correction_dim = [&](double rotations) {
    return dim * std::log(c.original_max_position_embeddings / (rotations * 2 * M_PI)) / (2 * std::log(c.theta));
  };
  double low = correction_dim(c.beta_fast), high = correction_dim(c.beta_slow);
  if (c.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const auto pos_freqs = power_ladder(c.theta, dim);
  const auto extrapolation = 1.0 / pos_freqs;
  const auto interpolation = 1.0 / (factor * pos_freqs);
  const auto ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  const auto extrapolation_weight = 1 - ramp;
  out.inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight;
  return out;
}

at::Tensor llama3_frequencies(const RopeConfig& c) {
  const auto inv_freq = 1.0 / power_ladder(c.theta, c.rotary_dim);
  const double old_context = static_cast<double>(c.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / c.low_freq_factor;
  const double high_freq_wavelen = old_context / c.high_freq_factor;
  const auto wavelen = 2 * M_PI / inv_freq;
  // Long wavelengths are divided by factor, short ones kept, the band between blended smoothly.
  const auto scaled = at::where(wavelen > low_freq_wavelen, inv_freq / c.factor, inv_freq);
  const auto smooth = (old_context / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
  const auto smoothed = (1 - smooth) * scaled / c.factor + smooth * scaled;
  const auto medium = at::logical_not(wavelen < high_freq_wavelen).logical_and(at::logical_not(wavelen > low_freq_wavelen));
  return at::where(medium, smoothed, scaled);
}

}  // namespace

RopeType rope_type_from_name(const std::string& name) {
  if (name == "default") return RopeType::Default;
  if (name == "linear") return RopeType::Linear;
  if (name == "dynamic") return RopeType::Dynamic;
  if (name == "yarn") return RopeType::Yarn;
  if (name == "llama3") return RopeType::Llama3;
  throw std::invalid_argument("rope_type: '" + name + "' is not supported; supported: default, linear, dynamic, yarn, llama3");
}

RopeFrequencies rope_frequencies(const RopeConfig& c, int64_t context_length) {
  const auto dim = c.rotary_dim;
  switch (c.type) {
    case RopeType::Default: return {1.0 / power_ladder(c.theta, dim), 1.0};
    case RopeType::Linear: return {1.0 / power_ladder(c.theta, dim) / c.factor, 1.0};
    case RopeType::Dynamic: {
      const double max_pos = static_cast<double>(c.max_position_embeddings);
      const double seq_len = std::max(static_cast<double>(context_length), max_pos);
      const double base = c.theta * std::pow(c.factor * seq_len / max_pos - (c.factor - 1),
                                             static_cast<double>(dim) / static_cast<double>(dim - 2));
      return {1.0 / power_ladder(base, dim), 1.0};
    }
    case RopeType::Yarn: return yarn_frequencies(c);
    case RopeType::Llama3: return {llama3_frequencies(c), 1.0};
  }
  throw std::logic_error("rope: unhandled type");
}

RopeTable rope_table_from(const RopeFrequencies& freqs, const at::Tensor& positions) {
  // positions: [n] -> angles [n, rotary_dim], the half-table repeated as HF's cat(freqs, freqs)
  const auto half = positions.to(at::kFloat).unsqueeze(1) * freqs.inv_freq.to(positions.device()).unsqueeze(0);
  const auto angles = at::cat({half, half}, -1);
  return {angles.cos() * freqs.attention_scaling, angles.sin() * freqs.attention_scaling};
}

RopeTable mrope_table(const RopeFrequencies& freqs, const at::Tensor& positions, const std::vector<int64_t>& sections) {
  // positions: [3, n]; each frequency's column comes from the row its section names.
  const auto inv_freq = freqs.inv_freq.to(positions.device());
  const auto half = inv_freq.size(0);
  std::vector<int64_t> row_of;
  for (size_t s = 0; s < sections.size(); ++s) row_of.insert(row_of.end(), sections[s], static_cast<int64_t>(s % 3));
  if (static_cast<int64_t>(row_of.size()) != half) {
    throw std::invalid_argument("mrope_section: sums to " + std::to_string(row_of.size()) + ", expected rotary_dim / 2 = " +
                                std::to_string(half));
  }
  const auto rows = at::tensor(row_of, at::kLong).to(positions.device());
  const auto picked = positions.index_select(0, rows).t().to(at::kFloat);  // [n, half]: each column's position
  const auto angles_half = picked * inv_freq.unsqueeze(0);
  const auto angles = at::cat({angles_half, angles_half}, -1);
  return {angles.cos() * freqs.attention_scaling, angles.sin() * freqs.attention_scaling};
}

RopeTable rope_table(const RopeConfig& config, const at::Tensor& positions, const std::vector<int64_t>& cu_seqlens,
                     const std::vector<int64_t>& context_lengths) {
  if (config.type != RopeType::Dynamic) return rope_table_from(rope_frequencies(config, 0), positions);
  std::vector<at::Tensor> cos, sin;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const auto part = rope_table_from(rope_frequencies(config, context_lengths.at(i)),
                                      positions.slice(0, cu_seqlens[i], cu_seqlens[i + 1]));
    cos.push_back(part.cos);
    sin.push_back(part.sin);
  }
  return {at::cat(cos), at::cat(sin)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTable& table) {
  const auto half = x.size(-1) / 2;
  const auto cos = table.cos.to(x.scalar_type()).unsqueeze(1);  // [tokens, 1, rotary_dim]
  const auto sin = table.sin.to(x.scalar_type()).unsqueeze(1);
  const auto rotated = at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

namespace {

// The fused rope as an autograd function: saves only the tables (shared by every layer).
struct RopePair : torch::autograd::Function<RopePair> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    auto [q_out, k_out] = kernels::rope_pair_forward(q, k, cos, sin);
    return {q_out, k_out};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto back = [&](const at::Tensor& g) { return g.defined() ? kernels::rope_backward(g, saved[0], saved[1]) : g; };
    return {back(grads[0]), back(grads[1]), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> apply_rope_pair(const at::Tensor& q, const at::Tensor& k, const RopeTable& table) {
  const auto fits = [&](const at::Tensor& x) {
    return x.dim() == 3 && x.is_contiguous() && table.cos.dim() == 2 && table.cos.size(0) == x.size(0) &&
           table.cos.size(1) == x.size(2) && table.cos.scalar_type() == x.scalar_type() &&
           table.sin.scalar_type() == x.scalar_type();
  };
  if (kernels::fused_available(q) && fits(q) && fits(k)) {
    const auto out = RopePair::apply(q, k, table.cos.contiguous(), table.sin.contiguous());
    return {out[0], out[1]};
  }
  return {apply_rope(q, table), apply_rope(k, table)};
}

at::Tensor apply_rope_interleaved(const at::Tensor& x, const RopeTable& table) {
  const auto half = x.size(-1) / 2;
  // The table repeats its half-width angles; each pair uses one of them.
  const auto cos = table.cos.slice(-1, 0, half).to(x.scalar_type()).unsqueeze(1);  // [tokens, 1, D/2]
  const auto sin = table.sin.slice(-1, 0, half).to(x.scalar_type()).unsqueeze(1);
  const auto even = x.slice(-1, 0, x.size(-1), 2), odd = x.slice(-1, 1, x.size(-1), 2);
  return at::cat({even * cos - odd * sin, odd * cos + even * sin}, -1);
}

}  // namespace tiller::layers
