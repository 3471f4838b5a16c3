#include "rollout/cpu_logits.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "kernels/cpu_vector.h"

namespace tiller::rollout {
namespace {

// The entry points are built for AVX-512, for AVX2 + FMA and for the baseline, and picked by the
// CPU's features at run time (not target_clones("arch=…"): GCC dispatches those by CPU model, and
// an AMD EPYC with AVX-512 matches neither skylake-avx512 nor haswell, so it ran the baseline).
#if defined(__x86_64__) && defined(__GNUC__)
#define TILLER_X86 1
#define TILLER_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#define TILLER_AVX2 __attribute__((target("avx2,fma")))
#endif
using kernels::cpu::Floats;
using kernels::cpu::kLanes;
using kernels::cpu::load;

typedef float Floats8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Floats4 __attribute__((vector_size(4 * sizeof(float))));

// The sum of the 16 lanes as a tree of halves (not a chain of 16 dependent additions).
TILLER_VEC float sum_lanes(Floats v) {
  Floats8 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  const Floats8 s8 = lo + hi;
  Floats4 a, b;
  std::memcpy(&a, &s8, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof(a), sizeof(b));
  const Floats4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// out[r, v] = x[r] · w[v] for R rows of x and the weight rows [begin, end).
template <int R>
TILLER_VEC void dots(const float* __restrict__ w, int64_t begin, int64_t end, int64_t hidden,
                     const float* __restrict__ x, int64_t vocab, float* __restrict__ out) {
  for (int64_t v = begin; v < end; v++) {
    const float* wv = w + v * hidden;
    Floats acc[R] = {};
    int64_t k = 0;
    for (; k + kLanes <= hidden; k += kLanes) {
      const Floats a = load(wv + k);
      for (int r = 0; r < R; r++) acc[r] += a * load(x + r * hidden + k);
    }
    float tail[R] = {};
    for (; k < hidden; k++) {
      for (int r = 0; r < R; r++) tail[r] += wv[k] * x[r * hidden + k];
    }
    for (int r = 0; r < R; r++) out[r * vocab + v] = sum_lanes(acc[r]) + tail[r];
  }
}

using Dots = void (*)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*);

// The four row counts of one build: dots<4>, <3>, <2>, <1>.
#define TILLER_DOTS(prefix, attribute)                                                                    \
  template <int R>                                                                                      \
  attribute void prefix##_dots(const float* w, int64_t begin, int64_t end, int64_t hidden, const float* x, \
                               int64_t vocab, float* out) {                                             \
    dots<R>(w, begin, end, hidden, x, vocab, out);                                                       \
  }
TILLER_DOTS(base, )
#ifdef TILLER_X86
TILLER_DOTS(avx2, TILLER_AVX2)
TILLER_DOTS(avx512, TILLER_AVX512)
#endif
#undef TILLER_DOTS

// dots for 1..group rows (`of[r - 1]`), of the widest build this CPU runs: groups of 8 rows with
// AVX-512 (8 accumulators and the loads fit its 32 registers; the weight is read once for 8 rows),
// of 4 otherwise.
struct Picked {
  std::array<Dots, 8> of{};
  int64_t group = 4;
};

const Picked& pick_dots() {
  static const Picked picked = [] {
#ifdef TILLER_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
      return Picked{{avx512_dots<1>, avx512_dots<2>, avx512_dots<3>, avx512_dots<4>, avx512_dots<5>, avx512_dots<6>,
                     avx512_dots<7>, avx512_dots<8>},
                    8};
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Picked{{avx2_dots<1>, avx2_dots<2>, avx2_dots<3>, avx2_dots<4>}, 4};
    }
#endif
    return Picked{{base_dots<1>, base_dots<2>, base_dots<3>, base_dots<4>}, 4};
  }();
  return picked;
}

}  // namespace

bool cpu_logits_apply(const at::Tensor& rows, const at::Tensor& weight) {
  return rows.device().is_cpu() && weight.device().is_cpu() && rows.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat && rows.dim() == 2 && weight.dim() == 2 && weight.is_contiguous() &&
         rows.size(1) == weight.size(1) && rows.size(0) > 0 && rows.size(0) <= kCpuLogitsMaxRows &&
         weight.size(0) > 0 && !rows.requires_grad() && !weight.requires_grad();
}

at::Tensor cpu_logits(const at::Tensor& rows_in, const at::Tensor& weight) {
  TORCH_CHECK(cpu_logits_apply(rows_in, weight), "cpu_logits: CPU fp32 rows [n <= ", kCpuLogitsMaxRows,
              ", hidden] and a contiguous weight [vocab, hidden]");
  const auto rows = rows_in.contiguous();
  const auto n = rows.size(0), hidden = rows.size(1), vocab = weight.size(0);
  auto out = at::empty({n, vocab}, rows.options());
  const float* w = weight.data_ptr<float>();
  const float* x = rows.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const auto& dots = pick_dots();
  // Weight rows in blocks of about 128 KiB, so that the groups of rows after the first read the
  // block from L2; the blocks are shared among the threads.
  const int64_t block = std::max<int64_t>(1, (128 * 1024) / (hidden * static_cast<int64_t>(sizeof(float))));
  at::parallel_for(0, vocab, block, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; a += block) {
      const int64_t b = std::min(end, a + block);
      for (int64_t r = 0; r < n; r += dots.group) {
        const auto rows_here = std::min<int64_t>(dots.group, n - r);
        dots.of[static_cast<size_t>(rows_here - 1)](w, a, b, hidden, x + r * hidden, vocab, o + r * vocab);
      }
    }
  });
  return out;
}

}  // namespace tiller::rollout
