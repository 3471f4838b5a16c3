#include "kernels/logprob.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu_vector.h"

namespace tiller::kernels {
namespace {

// The CPU kernels: per row, one pass for the max and one for sum e^(z-m) and sum e^(z-m)(z-m)
// (giving lse and the entropy), or one pass for the gradient, instead of the reference's ten
// tensor-wide passes. Inner loops work on kLanes values at once; on x86-64 each such function is
// built for AVX-512, AVX2 and the baseline and picked at load time (the project is built for the
// baseline).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define TILLER_CPU_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define TILLER_CPU_CLONES
#endif
using cpu::Floats;
using cpu::Ints;
using cpu::kLanes;
using cpu::load;
using cpu::store;

TILLER_VEC Floats splat(float x) { return Floats{} + x; }
// mask ? a : b, lane by lane (mask lanes all ones or all zeros, as comparisons give).
TILLER_VEC Floats select(Ints mask, Floats a, Floats b) { return (Floats)((mask & (Ints)a) | (~mask & (Ints)b)); }
TILLER_VEC Floats vmax(Floats a, Floats b) { return select(a > b, a, b); }
TILLER_VEC Floats vmin(Floats a, Floats b) { return select(a < b, a, b); }
TILLER_VEC float sum_lanes(Floats v) {
  float s = 0;
  for (int64_t j = 0; j < kLanes; j++) s += v[j];
  return s;
}

// e^x in fp32 for x <= ~88 (0 below -87.3, where e^x leaves the normal range): x = k ln2 + r with
// |r| <= ln2/2, e^r by its Taylor series to r^7 (relative error < 2e-8, under fp32 rounding), 2^k
// built in the exponent bits.
TILLER_VEC Floats exp_fp32(Floats x) {
  const Floats clamped = vmin(vmax(x, splat(-87.3f)), splat(88.0f));
  const Floats round = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const Floats k = (clamped * 1.44269504088896341f + round) - round;
  const Floats r = (clamped - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  Floats p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Ints bits = (__builtin_convertvector(k, Ints) + 127) << 23;
  return select(x < -87.3f, splat(0.0f), p * (Floats)bits);
}

// One value through the same arithmetic, for the tails of rows.
TILLER_VEC float exp_fp32(float x) {
  Floats v = splat(x);
  return exp_fp32(v)[0];
}

TILLER_CPU_CLONES float row_max(const float* __restrict__ x, int64_t n) {
  Floats acc = splat(-INFINITY);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = vmax(acc, load(x + i));
  float m = -INFINITY;
  for (; i < n; i++) m = std::max(m, x[i]);
  for (int64_t j = 0; j < kLanes; j++) m = std::max(m, acc[j]);
  return m;
}

// sum_j e^(d_j) and sum_j e^(d_j) d_j with d_j = x_j * inv_t - shift; fp32 lanes over blocks of
// 1024 values, fp64 across blocks.
struct ExpSums {
  double s = 0, t = 0;
};

TILLER_CPU_CLONES ExpSums row_exp_sums(const float* __restrict__ x, int64_t n, float inv_t, float shift) {
  ExpSums out;
  constexpr int64_t kBlock = 1024;
  for (int64_t a = 0; a < n; a += kBlock) {
    const int64_t b = std::min(n, a + kBlock);
    Floats s{}, t{};
    int64_t i = a;
    for (; i + kLanes <= b; i += kLanes) {
      const Floats d = load(x + i) * inv_t - shift;
      const Floats e = exp_fp32(d);
      s += e;
      t += e * d;
    }
    for (; i < b; i++) {
      const float d = x[i] * inv_t - shift;
      const float e = exp_fp32(d);
      out.s += e;
      out.t += static_cast<double>(e) * d;
    }
    out.s += sum_lanes(s);
    out.t += sum_lanes(t);
  }
  return out;
}

// g_j = (-p_j (gl + ge (lp_j + h))) * inv_t with lp_j = x_j * inv_t - lse, p_j = e^lp_j.
// g may be x itself: each value is read before its gradient is written.
TILLER_CPU_CLONES void row_grad(const float* x, int64_t n, float inv_t, float lse, float h, float gl, float ge,
                                float* g) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Floats lp = load(x + i) * inv_t - lse;
    store(g + i, -exp_fp32(lp) * (gl + ge * (lp + h)) * inv_t);
  }
  for (; i < n; i++) {
    const float lp = x[i] * inv_t - lse;
    g[i] = -exp_fp32(lp) * (gl + ge * (lp + h)) * inv_t;
  }
}

bool cpu_fast_path(const at::Tensor& logits) {
  return logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.size(1) > 0;
}

RowStats logprob_rows_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in, double temperature) {
  const auto logits = logits_in.contiguous();
  const auto targets = targets_in.to(at::kLong).contiguous();
  const auto rows = logits.size(0), vocab = logits.size(1);
  const auto options = logits.options().dtype(at::kFloat);
  RowStats out{at::empty({rows}, options), at::empty({rows}, options), at::empty({rows}, options)};
  const float inv_t = static_cast<float>(1.0 / temperature);
  const float* x = logits.data_ptr<float>();
  const int64_t* target = targets.data_ptr<int64_t>();
  float *logprob = out.logprob.data_ptr<float>(), *entropy = out.entropy.data_ptr<float>(),
        *lse = out.lse.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float* row = x + r * vocab;
      // inv_t > 0 keeps the order: the max of z is the max of x, scaled.
      const float m = row_max(row, vocab) * inv_t;
      const auto sums = row_exp_sums(row, vocab, inv_t, m);
      const double log_s = std::log(sums.s);
      lse[r] = static_cast<float>(m + log_s);
      entropy[r] = static_cast<float>(log_s - sums.t / sums.s);
      logprob[r] = row[target[r]] * inv_t - lse[r];
    }
  });
  return out;
}

// Into `grad` ([rows, vocab] fp32, contiguous; may be `logits_in` itself).
at::Tensor logprob_rows_backward_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in, double temperature,
                                     const RowStats& stats, const at::Tensor& grad_logprob_in,
                                     const at::Tensor& grad_entropy_in, at::Tensor grad) {
  const auto logits = logits_in.contiguous();
  const auto targets = targets_in.to(at::kLong).contiguous();
  const auto lse_t = stats.lse.to(at::kFloat).contiguous();
  const auto gl_t = grad_logprob_in.to(at::kFloat).contiguous();
  const bool has_entropy = grad_entropy_in.defined();
  const auto h_t = has_entropy ? stats.entropy.to(at::kFloat).contiguous() : at::Tensor();
  const auto ge_t = has_entropy ? grad_entropy_in.to(at::kFloat).contiguous() : at::Tensor();
  const auto rows = logits.size(0), vocab = logits.size(1);
  const float inv_t = static_cast<float>(1.0 / temperature);
  const float* x = logits.data_ptr<float>();
  const int64_t* target = targets.data_ptr<int64_t>();
  const float *lse = lse_t.data_ptr<float>(), *gl = gl_t.data_ptr<float>();
  const float* h = has_entropy ? h_t.data_ptr<float>() : nullptr;
  const float* ge = has_entropy ? ge_t.data_ptr<float>() : nullptr;
  float* g = grad.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      row_grad(x + r * vocab, vocab, inv_t, lse[r], has_entropy ? h[r] : 0.f, gl[r], has_entropy ? ge[r] : 0.f,
               g + r * vocab);
      g[r * vocab + target[r]] += gl[r] * inv_t;
    }
  });
  return grad;
}

}  // namespace

RowStats logprob_rows_reference(const at::Tensor& logits, const at::Tensor& targets, double temperature) {
  const auto z = logits.to(at::kFloat) / temperature;
  auto log_probs = at::log_softmax(z, -1);
  auto logprob = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
  auto entropy = -(log_probs.exp() * log_probs).sum(-1);
  auto lse = at::logsumexp(z, -1);
  return {std::move(logprob), std::move(entropy), std::move(lse)};
}

// With z = logits / T, p = softmax(z), H = -sum p log p:
//   d logprob / dz = onehot(target) - p,   dH / dz = -p * (log p + H),   d/dlogits = d/dz / T.
at::Tensor logprob_rows_backward_reference(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                           const RowStats& stats, const at::Tensor& grad_logprob,
                                           const at::Tensor& grad_entropy) {
  const auto log_probs = logits.to(at::kFloat) / temperature - stats.lse.unsqueeze(1);
  const auto p = log_probs.exp();
  auto weight = grad_logprob.unsqueeze(1).expand_as(p);
  if (grad_entropy.defined()) {
    weight = weight + grad_entropy.unsqueeze(1) * (log_probs + stats.entropy.unsqueeze(1));
  }
  auto grad_z = -p * weight;
  grad_z.scatter_add_(1, targets.unsqueeze(1), grad_logprob.unsqueeze(1));
  return (grad_z / temperature).to(logits.scalar_type());
}

RowStats logprob_rows(const at::Tensor& logits, const at::Tensor& targets, double temperature) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "logprob_rows: logits [rows, vocab] and targets [rows]");
#ifdef TILLER_CUDA
  if (logits.is_cuda()) return logprob_rows_cuda(logits, targets, temperature);
#endif
  if (cpu_fast_path(logits)) return logprob_rows_cpu(logits, targets, temperature);
  return logprob_rows_reference(logits, targets, temperature);
}

at::Tensor logprob_rows_backward(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                 const RowStats& stats, const at::Tensor& grad_logprob,
                                 const at::Tensor& grad_entropy) {
#ifdef TILLER_CUDA
  if (logits.is_cuda()) {
    return logprob_rows_backward_cuda(logits, targets, temperature, stats, grad_logprob, grad_entropy);
  }
#endif
  if (cpu_fast_path(logits)) {
    return logprob_rows_backward_cpu(logits, targets, temperature, stats, grad_logprob, grad_entropy,
                                     at::empty({logits.size(0), logits.size(1)}, logits.options()));
  }
  return logprob_rows_backward_reference(logits, targets, temperature, stats, grad_logprob, grad_entropy);
}

at::Tensor logprob_rows_backward_(at::Tensor& logits, const at::Tensor& targets, double temperature,
                                  const RowStats& stats, const at::Tensor& grad_logprob, const at::Tensor& grad_entropy) {
  if (cpu_fast_path(logits) && logits.is_contiguous()) {
    return logprob_rows_backward_cpu(logits, targets, temperature, stats, grad_logprob, grad_entropy, logits);
  }
  return logits.copy_(logprob_rows_backward(logits, targets, temperature, stats, grad_logprob, grad_entropy));
}

}  // namespace tiller::kernels
