// CUDA kernels of kernels/fused.h. A thread rotates four pairs of a row (rope) or handles one
// 16-byte vector (SwiGLU) where the shapes and pointers allow, else one pair or element.
// The forwards replay ATen's roundings: each product and sum is computed in fp32 with explicit
// round-to-nearest operations and rounded to the storage type where the ATen expression stores it.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <tuple>

#include "kernels/fused.h"

namespace tiller::kernels {
namespace {

constexpr int kThreads = 256;

// A float rounded to T and back: what ATen stores between two operations.
template <typename T>
__device__ __forceinline__ float stored(float x) {
  return static_cast<float>(static_cast<T>(x));
}

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// Rope over the rows of q [T, Hq, D] then k [T, Hk, D]: each thread rotates `W` consecutive pairs
// (j .. j + W - 1 with their partners j + D/2 ..) of one row. Forward (Backward = false):
//   out1 = x1 c1 - x2 s1, out2 = x2 c2 + x1 s2, each product and the sum stored as ATen stores them;
// backward: d x1 = g1 c1 + g2 s2, d x2 = g2 c2 - g1 s1 (the transpose), in fp32, rounded once.
template <typename T, int W, bool Backward>
__global__ void rope_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ cos,
                            const T* __restrict__ sin, T* __restrict__ q_out, T* __restrict__ k_out, int tokens,
                            int q_heads, int k_heads, int half) {
  const int per_row = half / W;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int q_rows = tokens * q_heads;
  if (t >= (q_rows + tokens * k_heads) * per_row) return;
  int row = t / per_row;
  const int j = (t - row * per_row) * W;
  const T* x = q;
  T* out = q_out;
  int heads = q_heads;
  if (row >= q_rows) {
    row -= q_rows;
    x = k;
    out = k_out;
    heads = k_heads;
  }
  const int token = row / heads;
  const int d = 2 * half;
  const T* xr = x + static_cast<int64_t>(row) * d;
  const T* c = cos + static_cast<int64_t>(token) * d;
  const T* s = sin + static_cast<int64_t>(token) * d;
  T* o = out + static_cast<int64_t>(row) * d;
  struct alignas(sizeof(T) * W) Chunk { T v[W]; };
  const Chunk x1 = *reinterpret_cast<const Chunk*>(xr + j), x2 = *reinterpret_cast<const Chunk*>(xr + j + half);
  const Chunk c1 = *reinterpret_cast<const Chunk*>(c + j), c2 = *reinterpret_cast<const Chunk*>(c + j + half);
  const Chunk s1 = *reinterpret_cast<const Chunk*>(s + j), s2 = *reinterpret_cast<const Chunk*>(s + j + half);
  Chunk o1, o2;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const float a = static_cast<float>(x1.v[i]), b = static_cast<float>(x2.v[i]);
    if constexpr (Backward) {
      o1.v[i] = static_cast<T>(a * static_cast<float>(c1.v[i]) + b * static_cast<float>(s2.v[i]));
      o2.v[i] = static_cast<T>(b * static_cast<float>(c2.v[i]) - a * static_cast<float>(s1.v[i]));
    } else {
      const float a1 = stored<T>(__fmul_rn(a, static_cast<float>(c1.v[i])));
      const float b1 = stored<T>(__fmul_rn(-b, static_cast<float>(s1.v[i])));
      const float a2 = stored<T>(__fmul_rn(b, static_cast<float>(c2.v[i])));
      const float b2 = stored<T>(__fmul_rn(a, static_cast<float>(s2.v[i])));
      o1.v[i] = static_cast<T>(__fadd_rn(a1, b1));
      o2.v[i] = static_cast<T>(__fadd_rn(a2, b2));
    }
  }
  *reinterpret_cast<Chunk*>(o + j) = o1;
  *reinterpret_cast<Chunk*>(o + j + half) = o2;
}

// Each thread handles `W` consecutive elements (one 16-byte vector where aligned) of a [rows,
// width] result whose gate and up inputs (and their gradients) sit in rows `ld` elements apart:
// separate tensors (one row: width = ld = n) or the two halves of one [rows, 2 · width] tensor.
template <typename T, int W>
__global__ void silu_mul_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up, int64_t ld,
                                        T* __restrict__ out, int64_t n, int64_t width) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  if (first >= n) return;
  const int64_t row = first / width;
  const int64_t in = row * ld + (first - row * width);
  struct alignas(sizeof(T) * W) Chunk { T v[W]; };
  const Chunk g = *reinterpret_cast<const Chunk*>(gate + in), u = *reinterpret_cast<const Chunk*>(up + in);
  Chunk o;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const float x = static_cast<float>(g.v[i]);
    // ATen's silu: x / (1 + exp(-x)) in fp32, stored; then the product with up, stored.
    const float silu = stored<T>(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))));
    o.v[i] = static_cast<T>(__fmul_rn(silu, static_cast<float>(u.v[i])));
  }
  *reinterpret_cast<Chunk*>(out + first) = o;
}

template <typename T, int W>
__global__ void silu_mul_backward_kernel(const T* __restrict__ grad, const T* __restrict__ gate,
                                         const T* __restrict__ up, T* __restrict__ d_gate, T* __restrict__ d_up,
                                         int64_t ld, int64_t n, int64_t width) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  if (first >= n) return;
  const int64_t row = first / width;
  const int64_t in = row * ld + (first - row * width);
  struct alignas(sizeof(T) * W) Chunk { T v[W]; };
  const Chunk gr = *reinterpret_cast<const Chunk*>(grad + first), g = *reinterpret_cast<const Chunk*>(gate + in),
              u = *reinterpret_cast<const Chunk*>(up + in);
  Chunk dg, du;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const float x = static_cast<float>(g.v[i]), d = static_cast<float>(gr.v[i]);
    const float sig = 1.0f / (1.0f + expf(-x));
    du.v[i] = static_cast<T>(d * x * sig);
    dg.v[i] = static_cast<T>(d * static_cast<float>(u.v[i]) * sig * (1.0f + x * (1.0f - sig)));
  }
  *reinterpret_cast<Chunk*>(d_gate + in) = dg;
  *reinterpret_cast<Chunk*>(d_up + in) = du;
}

void check_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "rope: x must be contiguous [tokens, heads, D]");
  TORCH_CHECK(x.size(2) % 2 == 0, "rope: head size must be even");
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == x.size(0) && cos.size(1) == x.size(2) && cos.is_contiguous() &&
                  sin.sizes() == cos.sizes() && sin.is_contiguous(),
              "rope: cos/sin must be contiguous [tokens, D]");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "rope: cos/sin must have the input's dtype");
}

// Rope of q (and k, when defined) into q_out (k_out): 4 pairs per thread where the head size and
// every pointer allow, else 1.
template <bool Backward>
void launch_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& q_out,
                 at::Tensor& k_out) {
  const auto half = q.size(2) / 2;
  const auto tokens = q.size(0);
  const auto k_heads = k.defined() ? k.size(1) : 0;
  const auto rows = tokens * (q.size(1) + k_heads);
  TORCH_CHECK(rows * q.size(2) < (int64_t{1} << 31), "rope: more than 2^31 elements");
  if (rows == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rope", [&] {
    using T = scalar_t;
    const T* k_in = k.defined() ? k.data_ptr<T>() : nullptr;
    T* k_to = k.defined() ? k_out.data_ptr<T>() : nullptr;
    const auto aligned = [&](const T* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0; };
    const bool wide = half % 4 == 0 && aligned(q.data_ptr<T>()) && aligned(k_in) && aligned(cos.data_ptr<T>()) &&
                      aligned(sin.data_ptr<T>()) && aligned(q_out.data_ptr<T>()) && aligned(k_to);
    const int w = wide ? 4 : 1;
    const auto threads = rows * (half / w);
    const auto blocks = static_cast<unsigned>(blocks_for(threads));
    const auto args = std::make_tuple(q.data_ptr<T>(), k_in, cos.data_ptr<T>(), sin.data_ptr<T>(), q_out.data_ptr<T>(), k_to,
                                      static_cast<int>(tokens), static_cast<int>(q.size(1)), static_cast<int>(k_heads),
                                      static_cast<int>(half));
    std::apply([&](auto... a) {
      if (wide) rope_kernel<T, 4, Backward><<<blocks, kThreads, 0, stream>>>(a...);
      else rope_kernel<T, 1, Backward><<<blocks, kThreads, 0, stream>>>(a...);
    }, args);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// silu(gate) · up into out (n elements, rows of `width`), gate/up rows `ld` apart; 16-byte
// vectors where the widths and every pointer allow.
template <typename T>
void silu_mul_launch(const T* gate, const T* up, int64_t ld, T* out, int64_t n, int64_t width) {
  if (n == 0) return;
  constexpr int kWide = 16 / sizeof(T);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (width % kWide == 0 && ld % kWide == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
    silu_mul_forward_kernel<T, kWide><<<blocks_for(n / kWide), kThreads, 0, stream>>>(gate, up, ld, out, n, width);
  } else {
    silu_mul_forward_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(gate, up, ld, out, n, width);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The gradients of silu_mul_launch's inputs, written with the inputs' layout.
template <typename T>
void silu_mul_backward_launch(const T* grad, const T* gate, const T* up, T* d_gate, T* d_up, int64_t ld, int64_t n,
                              int64_t width) {
  if (n == 0) return;
  constexpr int kWide = 16 / sizeof(T);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (width % kWide == 0 && ld % kWide == 0 && aligned16(grad) && aligned16(gate) && aligned16(up) &&
      aligned16(d_gate) && aligned16(d_up)) {
    silu_mul_backward_kernel<T, kWide><<<blocks_for(n / kWide), kThreads, 0, stream>>>(grad, gate, up, d_gate, d_up, ld,
                                                                                        n, width);
  } else {
    silu_mul_backward_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(grad, gate, up, d_gate, d_up, ld, n, width);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool fused_available(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && (t == at::kBFloat16 || t == at::kHalf || t == at::kFloat);
}

std::pair<at::Tensor, at::Tensor> rope_pair_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                    const at::Tensor& sin) {
  check_rope(q, cos, sin);
  check_rope(k, cos, sin);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && k.size(2) == q.size(2), "rope: q and k differ in dtype or head size");
  const c10::cuda::CUDAGuard guard(q.device());
  auto q_out = at::empty_like(q), k_out = at::empty_like(k);
  launch_rope<false>(q, k, cos, sin, q_out, k_out);
  return {q_out, k_out};
}

at::Tensor rope_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  const auto g = grad.contiguous();
  check_rope(g, cos, sin);
  const c10::cuda::CUDAGuard guard(g.device());
  auto out = at::empty_like(g);
  at::Tensor none;
  launch_rope<true>(g, at::Tensor(), cos, sin, out, none);
  return out;
}

at::Tensor silu_mul_forward(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(), "silu_mul: gate and up differ");
  const auto g = gate.contiguous(), u = up.contiguous();
  const c10::cuda::CUDAGuard guard(g.device());
  auto out = at::empty_like(g);
  const auto n = g.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "silu_mul", [&] {
    silu_mul_launch(g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), n, out.data_ptr<scalar_t>(), n, n);
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> silu_mul_backward(const at::Tensor& grad, const at::Tensor& gate,
                                                    const at::Tensor& up) {
  const auto gr = grad.contiguous(), g = gate.contiguous(), u = up.contiguous();
  const c10::cuda::CUDAGuard guard(g.device());
  auto d_gate = at::empty_like(g), d_up = at::empty_like(u);
  const auto n = g.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "silu_mul_backward", [&] {
    silu_mul_backward_launch(gr.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                             d_gate.data_ptr<scalar_t>(), d_up.data_ptr<scalar_t>(), n, n, n);
  });
  return {d_gate, d_up};
}

at::Tensor silu_mul_halves_forward(const at::Tensor& h) {
  TORCH_CHECK(h.dim() == 2 && h.size(1) % 2 == 0, "silu_mul_halves: h must be [rows, 2 * width]");
  const auto x = h.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const auto width = x.size(1) / 2;
  auto out = at::empty({x.size(0), width}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_mul_halves", [&] {
    const auto* base = x.data_ptr<scalar_t>();
    silu_mul_launch(base, base + width, 2 * width, out.data_ptr<scalar_t>(), out.numel(), width);
  });
  return out;
}

at::Tensor silu_mul_halves_backward(const at::Tensor& grad, const at::Tensor& h) {
  const auto x = h.contiguous(), g = grad.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const auto width = x.size(1) / 2;
  TORCH_CHECK(g.dim() == 2 && g.size(0) == x.size(0) && g.size(1) == width, "silu_mul_halves_backward: grad shape");
  auto d_h = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_mul_halves_backward", [&] {
    const auto* base = x.data_ptr<scalar_t>();
    auto* d = d_h.data_ptr<scalar_t>();
    silu_mul_backward_launch(g.data_ptr<scalar_t>(), base, base + width, d, d + width, 2 * width, g.numel(), width);
  });
  return d_h;
}

}  // namespace tiller::kernels
