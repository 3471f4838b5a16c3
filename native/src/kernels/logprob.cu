// CUDA kernels of kernels/logprob.h: one block per row, one pass over the row's logits each.
// Forward keeps an online (max, sum e^(z-max), sum e^(z-max) z) per thread and merges them across
// the block, giving logsumexp, the target's logprob and the entropy (lse - E[z]) without writing
// any [rows, vocab] intermediate. Backward writes d/dlogits in the logits' dtype directly.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>

#include "kernels/logprob.h"

namespace tiller::kernels {
namespace {

constexpr int kThreads = 512;

struct Online {
  float m, s, t;  // running max, sum of e^(z - m), sum of e^(z - m) * z
};

__device__ __forceinline__ Online merge(const Online& a, const Online& b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  const float ea = expf(a.m - m);
  const float eb = expf(b.m - m);
  return {m, a.s * ea + b.s * eb, a.t * ea + b.t * eb};
}

__device__ __forceinline__ Online block_reduce(Online v) {
  __shared__ Online warps[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    Online o{__shfl_xor_sync(0xffffffff, v.m, offset), __shfl_xor_sync(0xffffffff, v.s, offset),
             __shfl_xor_sync(0xffffffff, v.t, offset)};
    v = merge(v, o);
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warps[lane] : Online{-INFINITY, 0.f, 0.f};
    for (int offset = 16; offset > 0; offset >>= 1) {
      Online o{__shfl_xor_sync(0xffffffff, v.m, offset), __shfl_xor_sync(0xffffffff, v.s, offset),
               __shfl_xor_sync(0xffffffff, v.t, offset)};
      v = merge(v, o);
    }
  }
  return v;  // valid in thread 0
}

template <typename T>
__global__ void logprob_rows_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets, int64_t vocab,
                                    float inv_t, float* __restrict__ logprob, float* __restrict__ entropy,
                                    float* __restrict__ lse) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  Online acc{-INFINITY, 0.f, 0.f};
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float z = static_cast<float>(x[j]) * inv_t;
    if (z > acc.m) {
      const float scale = expf(acc.m - z);  // 0 on the first element (acc.m = -inf)
      acc.s = acc.s * scale + 1.f;
      acc.t = acc.t * scale + z;
      acc.m = z;
    } else {
      const float e = expf(z - acc.m);
      acc.s += e;
      acc.t += e * z;
    }
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) {
    const float l = acc.m + logf(acc.s);
    lse[row] = l;
    entropy[row] = l - acc.t / acc.s;
    logprob[row] = static_cast<float>(x[targets[row]]) * inv_t - l;
  }
}

template <typename T>
__global__ void logprob_rows_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                             int64_t vocab, float inv_t, const float* __restrict__ lse,
                                             const float* __restrict__ entropy,
                                             const float* __restrict__ grad_logprob,
                                             const float* __restrict__ grad_entropy, T* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* g = out + row * vocab;
  const float l = lse[row];
  const float h = entropy[row];
  const float gl = grad_logprob[row];
  const float ge = grad_entropy ? grad_entropy[row] : 0.f;
  const int64_t target = targets[row];
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float lp = static_cast<float>(x[j]) * inv_t - l;
    const float p = expf(lp);
    float grad = -p * (gl + ge * (lp + h));
    if (j == target) grad += gl;
    g[j] = static_cast<T>(grad * inv_t);
  }
}

}  // namespace

RowStats logprob_rows_cuda(const at::Tensor& logits_in, const at::Tensor& targets_in, double temperature) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto targets = targets_in.to(at::kLong).contiguous();
  const auto rows = logits.size(0);
  const auto vocab = logits.size(1);
  const auto opts = logits.options().dtype(at::kFloat);
  RowStats out{at::empty({rows}, opts), at::empty({rows}, opts), at::empty({rows}, opts)};
  if (rows == 0) return out;
  const float inv_t = static_cast<float>(1.0 / temperature);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "logprob_rows", [&] {
    logprob_rows_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), vocab, inv_t, out.logprob.data_ptr<float>(),
        out.entropy.data_ptr<float>(), out.lse.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor logprob_rows_backward_cuda(const at::Tensor& logits_in, const at::Tensor& targets_in, double temperature,
                                      const RowStats& stats, const at::Tensor& grad_logprob,
                                      const at::Tensor& grad_entropy) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto targets = targets_in.to(at::kLong).contiguous();
  const auto rows = logits.size(0);
  const auto vocab = logits.size(1);
  auto out = at::empty_like(logits);
  if (rows == 0) return out;
  const auto gl = grad_logprob.to(at::kFloat).contiguous();
  const auto ge = grad_entropy.defined() ? grad_entropy.to(at::kFloat).contiguous() : at::Tensor();
  const auto lse = stats.lse.contiguous();
  const auto entropy = stats.entropy.contiguous();
  const float inv_t = static_cast<float>(1.0 / temperature);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "logprob_rows_backward", [&] {
    logprob_rows_backward_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), vocab, inv_t, lse.data_ptr<float>(),
        entropy.data_ptr<float>(), gl.data_ptr<float>(), ge.defined() ? ge.data_ptr<float>() : nullptr,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace tiller::kernels
