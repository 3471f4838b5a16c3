// CUDA kernels of kernels/decode.h and kernels/sample.h.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "kernels/decode.h"
#include "kernels/sample.h"

namespace tiller::kernels {
namespace {

constexpr int kWarps = 4;             // per attention block
constexpr int kUnroll = 4;            // keys a warp has in flight
constexpr int64_t kMinSplitKeys = 128;  // a split of a row's keys is never shorter

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffff, x, offset);
  return x;
}

// E consecutive elements of T (E * sizeof(T) bytes: 4 or 8) loaded as one vector, to fp32.
template <typename T, int E>
__device__ __forceinline__ void load_row(const T* __restrict__ p, float (&out)[E]) {
  constexpr int kBytes = E * sizeof(T);
  using Vec = typename std::conditional<kBytes == 8, uint2, uint32_t>::type;
  const Vec raw = *reinterpret_cast<const Vec*>(p);
  const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int e = 0; e < E; ++e) out[e] = static_cast<float>(x[e]);
}

// One block per (row, KV head, split). Lane l of each warp holds elements [l·E, l·E + E) of every
// vector; warp w takes keys s0 + w, s0 + w + kWarps, ... kUnroll at a time. Scores are in log2
// units (q pre-scaled by scale · log2 e). With one split the block writes the output; else it
// writes its (max, sum, unnormalised output) per query head for decode_combine_kernel.
template <typename T, int E, int G>
__global__ void __launch_bounds__(kWarps * 32) decode_attention_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const int* __restrict__ key_starts,
    const int* __restrict__ keys_used, int heads, int kv_heads, int group, int window, int split_keys,
    float scale_log2, T* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_ml) {
  constexpr int D = E * 32;
  const int row = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int used = keys_used[row];
  const int lo = window > 0 ? max(0, used - window) : 0;
  const int s0 = lo + split * split_keys;
  const int s1 = min(used, s0 + split_keys);
  const int64_t base = key_starts[row];

  float qv[G][E], acc[G][E], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[g][e] = 0.f;
    if (g < group) {
      load_row<T, E>(q + (static_cast<int64_t>(row) * heads + h * group + g) * D + lane * E, qv[g]);
#pragma unroll
      for (int e = 0; e < E; ++e) qv[g][e] *= scale_log2;
    }
  }
  const int64_t stride = static_cast<int64_t>(kv_heads) * D;  // between consecutive cache rows
  const T* kh = k + (base * kv_heads + h) * D + lane * E;
  const T* vh = v + (base * kv_heads + h) * D + lane * E;
  for (int j0 = s0 + warp; j0 < s1; j0 += kWarps * kUnroll) {
    float kf[kUnroll][E], vf[kUnroll][E];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kWarps;
      if (j < s1) {
        load_row<T, E>(kh + j * stride, kf[u]);
        load_row<T, E>(vh + j * stride, vf[u]);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) kf[u][e] = vf[u][e] = 0.f;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (g >= group) continue;
      float s[kUnroll];
      float m_new = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) dot = fmaf(qv[g][e], kf[u][e], dot);
        s[u] = warp_sum(dot);
        if (j0 + u * kWarps < s1) m_new = fmaxf(m_new, s[u]);
      }
      const float corr = exp2f(m[g] - m_new);  // 0 while m[g] is -inf
      l[g] *= corr;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] *= corr;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j0 + u * kWarps >= s1) continue;
        const float p = exp2f(s[u] - m_new);
        l[g] += p;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[g][e] = fmaf(p, vf[u][e], acc[g][e]);
      }
      m[g] = m_new;
    }
  }
  // Merge the warps: each writes its state, then thread t combines element t % D of head t / D.
  __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];
  __shared__ float sm_acc[kWarps][G][D];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < E; ++e) sm_acc[warp][g][lane * E + e] = acc[g][e];
  }
  __syncthreads();
  for (int t = threadIdx.x; t < group * D; t += blockDim.x) {
    const int g = t / D, d = t % D;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, sm_m[w][g]);
    float ll = 0.f, a = 0.f;
    if (mm != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float c = exp2f(sm_m[w][g] - mm);
        ll += sm_l[w][g] * c;
        a += sm_acc[w][g][d] * c;
      }
    }
    const int64_t head = static_cast<int64_t>(row) * heads + h * group + g;
    if (splits == 1) {
      out[head * D + d] = static_cast<T>(ll > 0.f ? a / ll : 0.f);
    } else {
      part_out[(head * splits + split) * D + d] = a;
      if (d == 0) {
        part_ml[(head * splits + split) * 2] = mm;
        part_ml[(head * splits + split) * 2 + 1] = ll;
      }
    }
  }
}

// One block per (row, query head): the splits' states merged into the output.
template <typename T>
__global__ void decode_combine_kernel(const float* __restrict__ part_out, const float* __restrict__ part_ml, int splits,
                                      int dim, T* __restrict__ out) {
  const int64_t head = blockIdx.x;
  const float* ml = part_ml + head * splits * 2;
  float mm = -INFINITY;
  for (int s = 0; s < splits; ++s) mm = fmaxf(mm, ml[2 * s]);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float ll = 0.f, a = 0.f;
    if (mm != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float c = exp2f(ml[2 * s] - mm);
        ll += ml[2 * s + 1] * c;
        a += part_out[(head * splits + s) * dim + d] * c;
      }
    }
    out[head * dim + d] = static_cast<T>(ll > 0.f ? a / ll : 0.f);
  }
}

template <typename T, int E>
void launch_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_starts,
                   const at::Tensor& keys_used, int64_t splits, int split_keys, int group, int window,
                   float scale_log2, at::Tensor& out, cudaStream_t stream) {
  const auto rows = q.size(0), heads = q.size(1), kv_heads = k.size(1);
  at::Tensor part_out, part_ml;
  if (splits > 1) {
    part_out = at::empty({rows * heads * splits, E * 32}, q.options().dtype(at::kFloat));
    part_ml = at::empty({rows * heads * splits, 2}, q.options().dtype(at::kFloat));
  }
  const dim3 grid(rows, kv_heads, splits);
  const auto go = [&](auto g_tag) {
    constexpr int G = decltype(g_tag)::value;
    decode_attention_kernel<T, E, G><<<grid, kWarps * 32, 0, stream>>>(
        q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), key_starts.data_ptr<int>(), keys_used.data_ptr<int>(),
        heads, kv_heads, group, window, split_keys, scale_log2, out.data_ptr<T>(),
        splits > 1 ? part_out.data_ptr<float>() : nullptr, splits > 1 ? part_ml.data_ptr<float>() : nullptr);
  };
  if (group <= 1) go(std::integral_constant<int, 1>{});
  else if (group <= 2) go(std::integral_constant<int, 2>{});
  else if (group <= 4) go(std::integral_constant<int, 4>{});
  else if (group <= 8) go(std::integral_constant<int, 8>{});
  else go(std::integral_constant<int, 16>{});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) {
    decode_combine_kernel<T><<<rows * heads, E * 32, 0, stream>>>(part_out.data_ptr<float>(), part_ml.data_ptr<float>(),
                                                               static_cast<int>(splits), E * 32, out.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Thread t copies 16-byte vector t of the new rows (keys first, then values) into the cache; the
// source rows are k_ld / v_ld vectors apart.
__global__ void write_kv_rows_kernel(const uint4* __restrict__ k, const uint4* __restrict__ v,
                                     uint4* __restrict__ k_cache, uint4* __restrict__ v_cache,
                                     const int64_t* __restrict__ rows, int64_t tokens, int64_t per_token,
                                     int64_t k_ld, int64_t v_ld) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = tokens * per_token;
  if (t >= 2 * n) return;
  const bool is_v = t >= n;
  const int64_t i = is_v ? t - n : t;
  const int64_t token = i / per_token, j = i % per_token;
  const int64_t dst = rows[token] * per_token + j;
  if (is_v) v_cache[dst] = v[token * v_ld + j];
  else k_cache[dst] = k[token * k_ld + j];
}

// Sampling, one block of kSampleThreads per row (kernels/sample.h): pass 1 the max of z = x / T,
// pass 2 each warp's sum of e^(z - max) over its contiguous segment (float64), then thread 0 finds
// the segment holding u · total and that warp rescans it 32 keys at a time with a prefix sum.
constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;

__global__ void __launch_bounds__(kSampleThreads) sample_rows_kernel(const float* __restrict__ logits,
                                                                    const double* __restrict__ uniforms,
                                                                    int64_t vocab, float inv_t,
                                                                    int64_t* __restrict__ tokens) {
  const int64_t row = blockIdx.x;
  const float* x = logits + row * vocab;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __shared__ float sm_max[kSampleWarps];
  __shared__ double sm_sum[kSampleWarps];
  __shared__ int sm_warp;
  __shared__ double sm_before, sm_target;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < vocab; j += kSampleThreads) mx = fmaxf(mx, x[j] * inv_t);
  for (int offset = 16; offset > 0; offset >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, offset));
  if (lane == 0) sm_max[warp] = mx;
  __syncthreads();
  mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < kSampleWarps; ++w) mx = fmaxf(mx, sm_max[w]);
  // Segments of whole 32-element steps, so the rescan below reads aligned, coalesced steps.
  const int64_t segment = ((vocab + kSampleWarps - 1) / kSampleWarps + 31) / 32 * 32;
  const int64_t begin = min(vocab, warp * segment), end = min(vocab, begin + segment);
  double s = 0;
  for (int64_t j = begin + lane; j < end; j += 32) s += static_cast<double>(exp2f((x[j] * inv_t - mx) * 1.4426950408889634f));
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffff, s, offset);
  if (lane == 0) sm_sum[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kSampleWarps; ++w) total += sm_sum[w];
    const double target = uniforms[row] * total;
    double before = 0;
    int chosen = -1, last = -1;
    for (int w = 0; w < kSampleWarps; ++w) {
      if (sm_sum[w] > 0) {
        last = w;
        if (chosen < 0 && before + sm_sum[w] > target) {
          chosen = w;
          break;
        }
      }
      before += sm_sum[w];
    }
    if (chosen < 0) {  // rounding at the very end of the distribution: its last segment with mass
      chosen = last;
      before = 0;
      for (int w = 0; w < chosen; ++w) before += sm_sum[w];
    }
    sm_warp = chosen;
    sm_before = before;
    sm_target = target;
  }
  __syncthreads();
  if (warp != sm_warp) return;
  double run = sm_before;
  const double target = sm_target;
  int64_t found = -1, last_with_mass = begin;
  for (int64_t step = begin; step < end && found < 0; step += 32) {
    const int64_t j = step + lane;
    const double e = j < end ? static_cast<double>(exp2f((x[j] * inv_t - mx) * 1.4426950408889634f)) : 0.0;
    double inclusive = e;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const double up = __shfl_up_sync(0xffffffff, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    const unsigned hit = __ballot_sync(0xffffffff, e > 0 && run + inclusive > target);
    const unsigned mass = __ballot_sync(0xffffffff, e > 0);
    if (hit) found = step + __ffs(hit) - 1;
    if (mass) last_with_mass = step + 31 - __clz(mass);
    run += __shfl_sync(0xffffffff, inclusive, 31);
  }
  if (lane == 0) tokens[row] = found >= 0 ? found : last_with_mass;
}

}  // namespace

bool decode_attention_available(const at::Tensor& q, int64_t kv_heads) {
  if (!q.is_cuda() || (q.scalar_type() != at::kBFloat16 && q.scalar_type() != at::kHalf) || q.dim() != 3) return false;
  const auto d = q.size(2);
  return (d == 64 || d == 128) && kv_heads > 0 && q.size(1) % kv_heads == 0 && q.size(1) / kv_heads <= 16;
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_starts,
                            const at::Tensor& keys_used, int64_t max_keys, double scale, int64_t window) {
  TORCH_CHECK(decode_attention_available(q_in, k.size(1)), "decode_attention: unsupported q ", q_in.sizes(), " ",
              q_in.scalar_type());
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous() && k.sizes() == v.sizes() && k.size(2) == q_in.size(2),
              "decode_attention: k and v must be contiguous [rows, kv_heads, head_dim] like q's head_dim");
  TORCH_CHECK(key_starts.scalar_type() == at::kInt && keys_used.scalar_type() == at::kInt,
              "decode_attention: key_starts and keys_used must be int32");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const auto q = q_in.contiguous();
  auto out = at::empty_like(q);
  if (q.size(0) == 0) return out;
  // Splits of the keys when rows × KV heads alone would not give every SM eight blocks (two waves
  // of four): a small batch of long rows reads its cache from all SMs too.
  const auto visible = std::max<int64_t>(1, window > 0 ? std::min<int64_t>(window, max_keys) : max_keys);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto wanted = (8 * sms + q.size(0) * k.size(1) - 1) / (q.size(0) * k.size(1));
  const auto splits = std::clamp<int64_t>(wanted, 1, (visible + kMinSplitKeys - 1) / kMinSplitKeys);
  const auto split_keys = static_cast<int>((visible + splits - 1) / splits);
  const int group = static_cast<int>(q.size(1) / k.size(1));
  const float scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto keys_used_c = keys_used.contiguous(), key_starts_c = key_starts.contiguous();
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    const auto go = [&](auto e_tag) {
      launch_decode<T, decltype(e_tag)::value>(q, k, v, key_starts_c, keys_used_c, splits, split_keys, group,
                                               static_cast<int>(window), scale_log2, out, stream);
    };
    if (q.size(2) == 64) go(std::integral_constant<int, 2>{});
    else go(std::integral_constant<int, 4>{});
  };
  if (q.scalar_type() == at::kBFloat16) launch(at::BFloat16{});
  else launch(at::Half{});
  return out;
}

bool write_kv_rows(const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& rows) {
  // Rows at any stride (the fused q/k/v GEMM's column views): each row's heads must be contiguous.
  const auto rows_ok = [](const at::Tensor& t) {
    return t.dim() == 3 && t.stride(2) == 1 && t.stride(1) == t.size(2) && (t.stride(0) * t.element_size()) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  };
  const auto k = rows_ok(k_in) ? k_in : k_in.contiguous(), v = rows_ok(v_in) ? v_in : v_in.contiguous();
  const auto row_bytes = k.size(1) * k.size(2) * k.element_size();
  const bool vectors = k.is_cuda() && k.sizes() == v.sizes() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                       k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type() &&
                       row_bytes % 16 == 0 && k_cache.size(-1) == k.size(2) && v_cache.size(-1) == v.size(2) &&
                       rows.scalar_type() == at::kLong;
  if (!vectors) return false;
  const c10::cuda::CUDAGuard guard(k.device());
  const auto tokens = k.size(0);
  if (tokens == 0) return true;
  const int64_t per_token = row_bytes / 16;
  const int64_t threads = 256, n = 2 * tokens * per_token;
  write_kv_rows_kernel<<<(n + threads - 1) / threads, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint4*>(k.data_ptr()), reinterpret_cast<const uint4*>(v.data_ptr()),
      reinterpret_cast<uint4*>(k_cache.data_ptr()), reinterpret_cast<uint4*>(v_cache.data_ptr()),
      rows.contiguous().data_ptr<int64_t>(), tokens, per_token, k.stride(0) * k.element_size() / 16,
      v.stride(0) * v.element_size() / 16);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}


namespace {

template <typename T>
struct alignas(16) Chunk16 {
  T v[16 / sizeof(T)];
};

// A block of kNormThreads per row: x (+ residual, rounded as ATen's add rounds) -> the sum and its
// RMS norm · weight. Thread t holds the 16-byte vectors t, t + kNormThreads, ... (C of them) in
// registers, so each element is read once; a decode step's rows are few, so every load counts.
constexpr int kNormThreads = 128;

template <typename T, int C, bool Residual>
__global__ void add_rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ weight,
                                    T* __restrict__ sum_out, T* __restrict__ norm_out, int d, int64_t x_ld,
                                    int64_t r_ld, float eps) {
  constexpr int W = 16 / sizeof(T);
  using Vec = Chunk16<T>;
  const int64_t row = blockIdx.x;
  const int vectors = d / W;
  float v[C][W];
  float squares = 0.f;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int i = threadIdx.x + c * kNormThreads;
    if (i >= vectors) continue;
    const Vec a = reinterpret_cast<const Vec*>(x + row * x_ld)[i];
    Vec sum;
    if constexpr (Residual) {
      const Vec b = reinterpret_cast<const Vec*>(residual + row * r_ld)[i];
#pragma unroll
      for (int e = 0; e < W; ++e) sum.v[e] = static_cast<T>(static_cast<float>(a.v[e]) + static_cast<float>(b.v[e]));
      reinterpret_cast<Vec*>(sum_out + row * d)[i] = sum;
    } else {
      sum = a;
    }
#pragma unroll
    for (int e = 0; e < W; ++e) {
      v[c][e] = static_cast<float>(sum.v[e]);
      squares += v[c][e] * v[c][e];
    }
  }
  __shared__ float partial[kNormThreads / 32];
  squares = warp_sum(squares);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = squares;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; ++w) total += partial[w];
  const float r = rsqrtf(total / static_cast<float>(d) + eps);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int i = threadIdx.x + c * kNormThreads;
    if (i >= vectors) continue;
    const Vec w = reinterpret_cast<const Vec*>(weight)[i];
    Vec o;
#pragma unroll
    for (int e = 0; e < W; ++e) o.v[e] = static_cast<T>(v[c][e] * r * static_cast<float>(w.v[e]));
    reinterpret_cast<Vec*>(norm_out + row * d)[i] = o;
  }
}

// A warp per (row, head) of q then k: lane l holds elements [l·E, l·E + E) of the head's D = 32·E;
// the rotate-half partner of an element sits E·16 further (or back), in lane l ^ 16.
template <typename T, int E, bool Norm>
__global__ void qk_norm_rope_kernel(const T* __restrict__ q, const T* __restrict__ k, int64_t q_ld, int64_t k_ld,
                                    const T* __restrict__ q_norm, const T* __restrict__ k_norm,
                                    const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ q_out,
                                    T* __restrict__ k_out, int rows, int q_heads, int k_heads, float eps) {
  constexpr int D = 32 * E;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int per_row = q_heads + k_heads;
  if (item >= static_cast<int64_t>(rows) * per_row) return;
  const int lane = threadIdx.x % 32;
  const int row = static_cast<int>(item / per_row);
  int head = static_cast<int>(item % per_row);
  const bool is_q = head < q_heads;
  if (!is_q) head -= q_heads;
  const T* src = (is_q ? q + row * q_ld : k + row * k_ld) + static_cast<int64_t>(head) * D + lane * E;
  T* dst = (is_q ? q_out + (static_cast<int64_t>(row) * q_heads + head) * D
                 : k_out + (static_cast<int64_t>(row) * k_heads + head) * D) + lane * E;
  float v[E];
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] = static_cast<float>(src[e]);
  if constexpr (Norm) {
    float squares = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) squares += v[e] * v[e];
    const float r = rsqrtf(warp_sum(squares) / static_cast<float>(D) + eps);
    const T* w = (is_q ? q_norm : k_norm) + lane * E;
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = static_cast<float>(static_cast<T>(v[e] * r * static_cast<float>(w[e])));
  }
  const T* c = cos + static_cast<int64_t>(row) * D + lane * E;
  const T* s = sin + static_cast<int64_t>(row) * D + lane * E;
  const bool first_half = lane < 16;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float partner = __shfl_xor_sync(0xffffffffu, v[e], 16);
    const float rotated = first_half ? -partner : partner;
    dst[e] = static_cast<T>(v[e] * static_cast<float>(c[e]) + rotated * static_cast<float>(s[e]));
  }
}

}  // namespace

bool decode_norm_available(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && (t == at::kBFloat16 || t == at::kHalf || t == at::kFloat);
}

bool qk_norm_rope_available(const at::Tensor& x, int64_t head_dim) {
  return decode_norm_available(x) && (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight_in,
                                               double eps) {
  const bool add = residual.defined();
  if (!decode_norm_available(x) || x.dim() != 2 || weight_in.numel() != x.size(1) ||
      (add && (residual.sizes() != x.sizes() || residual.scalar_type() != x.scalar_type()))) {
    throw std::invalid_argument("kernels/add_rms_norm: expects CUDA [rows, D] rows and a [D] weight");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const auto weight = weight_in.to(x.scalar_type()).contiguous();
  const int rows = static_cast<int>(x.size(0)), d = static_cast<int>(x.size(1));
  const int w = 16 / static_cast<int>(x.element_size());
  const auto aligned = [](const at::Tensor& t) {
    return t.stride(1) == 1 && (t.stride(0) * t.element_size()) % 16 == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  };
  const int chunks = (d / w + kNormThreads - 1) / kNormThreads;
  if (d % w != 0 || chunks > 8 || !aligned(x) || (add && !aligned(residual))) {
    // Rows the vector kernel does not take: ATen's expressions.
    const auto sum = add ? x + residual : x;
    return {sum, at::rms_norm(sum, {d}, weight, eps)};
  }
  auto sum = add ? at::empty(x.sizes(), x.options()) : x;
  auto norm = at::empty(x.sizes(), x.options());
  if (rows == 0) return {sum, norm};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
    const auto* xp = x.data_ptr<scalar_t>();
    const auto* rp = add ? residual.data_ptr<scalar_t>() : nullptr;
    const auto* wp = weight.data_ptr<scalar_t>();
    auto* sp = add ? sum.data_ptr<scalar_t>() : nullptr;
    auto* np = norm.data_ptr<scalar_t>();
    const auto r_ld = add ? residual.stride(0) : 0;
    const auto launch = [&](auto c_tag) {
      constexpr int C = decltype(c_tag)::value;
      if (add) {
        add_rms_norm_kernel<scalar_t, C, true><<<rows, kNormThreads, 0, stream>>>(xp, rp, wp, sp, np, d, x.stride(0), r_ld,
                                                                                static_cast<float>(eps));
      } else {
        add_rms_norm_kernel<scalar_t, C, false><<<rows, kNormThreads, 0, stream>>>(xp, rp, wp, sp, np, d, x.stride(0), r_ld,
                                                                                 static_cast<float>(eps));
      }
    };
    if (chunks <= 1) launch(std::integral_constant<int, 1>{});
    else if (chunks <= 2) launch(std::integral_constant<int, 2>{});
    else if (chunks <= 4) launch(std::integral_constant<int, 4>{});
    else launch(std::integral_constant<int, 8>{});
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sum, norm};
}

std::pair<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_norm_in,
                                               const at::Tensor& k_norm_in, double eps, const at::Tensor& cos_in,
                                               const at::Tensor& sin_in) {
  const auto d = q.dim() == 3 ? q.size(2) : 0;
  const auto heads_ok = [d](const at::Tensor& x) { return x.dim() == 3 && x.size(2) == d && x.stride(2) == 1 && x.stride(1) == d; };
  const bool norm = q_norm_in.defined();
  if (!qk_norm_rope_available(q, d) || !heads_ok(q) || !heads_ok(k) ||
      k.size(0) != q.size(0) || k.scalar_type() != q.scalar_type() || cos_in.dim() != 2 || cos_in.size(0) != q.size(0) ||
      cos_in.size(1) != d || (norm && (q_norm_in.numel() != d || !k_norm_in.defined() || k_norm_in.numel() != d))) {
    throw std::invalid_argument("kernels/qk_norm_rope: expects CUDA q [rows, Hq, D], k [rows, Hk, D] with contiguous heads, "
                                "D 64/128/256, cos/sin [rows, D] and [D] norm weights");
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dtype = q.scalar_type();
  const auto cos = cos_in.to(dtype).contiguous(), sin = sin_in.to(dtype).contiguous();
  const auto qw = norm ? q_norm_in.to(dtype).contiguous() : at::Tensor();
  const auto kw = norm ? k_norm_in.to(dtype).contiguous() : at::Tensor();
  const int rows = static_cast<int>(q.size(0)), hq = static_cast<int>(q.size(1)), hk = static_cast<int>(k.size(1));
  auto q_out = at::empty(q.sizes(), q.options());
  auto k_out = at::empty(k.sizes(), k.options());
  if (rows == 0) return {q_out, k_out};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t items = static_cast<int64_t>(rows) * (hq + hk);
  const auto blocks = static_cast<unsigned>((items + kNormThreads / 32 - 1) / (kNormThreads / 32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "qk_norm_rope", [&] {
    const auto launch = [&](auto e_tag, auto norm_tag) {
      constexpr int E = decltype(e_tag)::value;
      constexpr bool N = decltype(norm_tag)::value;
      qk_norm_rope_kernel<scalar_t, E, N><<<blocks, kNormThreads, 0, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), q.stride(0), k.stride(0),
          N ? qw.data_ptr<scalar_t>() : nullptr, N ? kw.data_ptr<scalar_t>() : nullptr, cos.data_ptr<scalar_t>(),
          sin.data_ptr<scalar_t>(), q_out.data_ptr<scalar_t>(), k_out.data_ptr<scalar_t>(), rows, hq, hk,
          static_cast<float>(eps));
    };
    const auto with_norm = [&](auto e_tag) {
      if (norm) launch(e_tag, std::true_type{});
      else launch(e_tag, std::false_type{});
    };
    if (d == 64) with_norm(std::integral_constant<int, 2>{});
    else if (d == 128) with_norm(std::integral_constant<int, 4>{});
    else with_norm(std::integral_constant<int, 8>{});
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q_out, k_out};
}

bool sample_kernel_available(const at::Tensor& logits) {
  return logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.size(1) > 0;
}

at::Tensor sample_rows_cuda(const at::Tensor& logits_in, const at::Tensor& uniforms, double temperature) {
  TORCH_CHECK(sample_kernel_available(logits_in), "sample_rows_cuda: logits must be [rows, vocab] float32 on CUDA");
  TORCH_CHECK(temperature > 0, "sample_rows_cuda: temperature must be > 0");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto rows = logits.size(0);
  auto tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  if (rows == 0) return tokens;
  const auto u = uniforms.to(logits.device(), at::kDouble).contiguous();
  sample_rows_kernel<<<rows, kSampleThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      logits.data_ptr<float>(), u.data_ptr<double>(), logits.size(1), static_cast<float>(1.0 / temperature),
      tokens.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return tokens;
}

}  // namespace tiller::kernels
