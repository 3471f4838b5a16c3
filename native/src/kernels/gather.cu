// CUDA kernels of kernels/gather.h. gather_sum: a block of threads per output row (and column
// range), each thread one 16-byte vector of columns where the shapes and pointers allow, else one
// element, summing its K source rows in order. gather_dot: a warp per (row, j) pair.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/gather.h"

namespace tiller::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T, int W>
struct alignas(sizeof(T) * W) Chunk {
  T v[W];
};

template <typename T, int W>
__global__ void gather_sum_kernel(const T* __restrict__ src, const int64_t* __restrict__ index,
                                  const float* __restrict__ scale, T* __restrict__ out, int k, int64_t h) {
  const int64_t row = blockIdx.x;
  const int64_t col = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * W;
  if (col >= h) return;
  float acc[W];
#pragma unroll
  for (int i = 0; i < W; ++i) acc[i] = 0.f;
  for (int j = 0; j < k; ++j) {
    const int64_t from = index[row * k + j];
    const float s = scale ? scale[row * k + j] : 1.f;
    const auto v = *reinterpret_cast<const Chunk<T, W>*>(src + from * h + col);
#pragma unroll
    for (int i = 0; i < W; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(s, static_cast<float>(v.v[i])));
  }
  Chunk<T, W> o;
#pragma unroll
  for (int i = 0; i < W; ++i) o.v[i] = static_cast<T>(acc[i]);
  *reinterpret_cast<Chunk<T, W>*>(out + row * h + col) = o;
}

template <typename T, int W>
__global__ void gather_dot_kernel(const T* __restrict__ a, const T* __restrict__ src, const int64_t* __restrict__ index,
                                  float* __restrict__ out, int64_t pairs, int k, int64_t h) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (pair >= pairs) return;
  const int lane = threadIdx.x % 32;
  const T* ar = a + (pair / k) * h;
  const T* sr = src + index[pair] * h;
  float acc = 0.f;
  for (int64_t col = static_cast<int64_t>(lane) * W; col < h; col += 32 * W) {
    const auto x = *reinterpret_cast<const Chunk<T, W>*>(ar + col);
    const auto y = *reinterpret_cast<const Chunk<T, W>*>(sr + col);
#pragma unroll
    for (int i = 0; i < W; ++i) acc = fmaf(static_cast<float>(x.v[i]), static_cast<float>(y.v[i]), acc);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) out[pair] = acc;
}

// Columns per thread: a 16-byte vector when every row starts 16-byte aligned, else 1.
template <typename T>
bool vectorizable(int64_t h, std::initializer_list<const void*> pointers) {
  constexpr int w = 16 / sizeof(T);
  if (h % w != 0) return false;
  for (const auto* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

void check_rows(const char* what, const at::Tensor& src, const at::Tensor& index) {
  if (!gather_available(src) || index.dim() != 2 || index.scalar_type() != at::kLong || !index.is_cuda()) {
    throw std::invalid_argument(std::string("kernels/") + what +
                                ": expects CUDA 2-D contiguous rows and a [T, K] int64 index on the same device");
  }
}

}  // namespace

bool gather_available(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && x.dim() == 2 && x.is_contiguous() && (t == at::kBFloat16 || t == at::kHalf || t == at::kFloat);
}

at::Tensor gather_sum(const at::Tensor& src, const at::Tensor& index_in, const at::Tensor& scale_in) {
  check_rows("gather_sum", src, index_in);
  const c10::cuda::CUDAGuard guard(src.device());
  const auto index = index_in.contiguous();
  const auto scale = scale_in.defined() ? scale_in.to(at::kFloat).contiguous() : at::Tensor();
  if (scale.defined() && scale.sizes() != index.sizes()) throw std::invalid_argument("kernels/gather_sum: scale and index differ in shape");
  const int64_t rows = index.size(0), k = index.size(1), h = src.size(1);
  auto out = at::empty({rows, h}, src.options());
  if (rows == 0 || h == 0) return out;
  if (k == 0) return out.zero_();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "gather_sum", [&] {
    const auto* s = src.data_ptr<scalar_t>();
    auto* o = out.data_ptr<scalar_t>();
    const auto* sc = scale.defined() ? scale.data_ptr<float>() : nullptr;
    constexpr int w = 16 / sizeof(scalar_t);
    if (vectorizable<scalar_t>(h, {s, o})) {
      const dim3 grid(rows, (h / w + kThreads - 1) / kThreads);
      gather_sum_kernel<scalar_t, w><<<grid, kThreads, 0, stream>>>(s, index.data_ptr<int64_t>(), sc, o, k, h);
    } else {
      const dim3 grid(rows, (h + kThreads - 1) / kThreads);
      gather_sum_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(s, index.data_ptr<int64_t>(), sc, o, k, h);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gather_dot(const at::Tensor& a_in, const at::Tensor& src, const at::Tensor& index_in) {
  check_rows("gather_dot", src, index_in);
  const c10::cuda::CUDAGuard guard(src.device());
  const auto a = a_in.to(src.scalar_type()).contiguous();
  const auto index = index_in.contiguous();
  if (a.dim() != 2 || a.size(0) != index.size(0) || a.size(1) != src.size(1)) {
    throw std::invalid_argument("kernels/gather_dot: a must be [T, H] with T = index rows and H = src columns");
  }
  const int64_t pairs = index.numel(), k = index.size(1), h = src.size(1);
  auto out = at::empty({index.size(0), k}, src.options().dtype(at::kFloat));
  if (pairs == 0) return out;
  if (h == 0) return out.zero_();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int warps = kThreads / 32;
  const auto blocks = static_cast<unsigned>((pairs + warps - 1) / warps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "gather_dot", [&] {
    const auto* x = a.data_ptr<scalar_t>();
    const auto* s = src.data_ptr<scalar_t>();
    constexpr int w = 16 / sizeof(scalar_t);
    if (vectorizable<scalar_t>(h, {x, s})) {
      gather_dot_kernel<scalar_t, w><<<blocks, kThreads, 0, stream>>>(x, s, index.data_ptr<int64_t>(),
                                                                      out.data_ptr<float>(), pairs, k, h);
    } else {
      gather_dot_kernel<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(x, s, index.data_ptr<int64_t>(),
                                                                      out.data_ptr<float>(), pairs, k, h);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace tiller::kernels
