// The CPU kernels' 16-lane float vectors (GCC's vector extension), shared by kernels/logprob and
// rollout/cpu_logits: each function that inlines them lowers them to the registers of its build or
// clone (one zmm, two ymm or four xmm). The helpers are always inlined and have internal linkage,
// so no call between objects relies on the vectors' ABI (hence -Wpsabi off).
#pragma once

#include <cstdint>
#include <cstring>

#define TILLER_VEC inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace tiller::kernels::cpu {
namespace {  // internal to each including file, as above

constexpr int64_t kLanes = 16;

typedef float Floats __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));

TILLER_VEC Floats load(const float* p) {
  Floats v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TILLER_VEC void store(float* p, Floats v) { std::memcpy(p, &v, sizeof(v)); }

}  // namespace
}  // namespace tiller::kernels::cpu
