// Checks of the engine's own kernels against their ATen references, on a device: random inputs,
// both paths, the largest differences back (tests/gpu/kernels.test.ts).
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>
#include <tuple>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "kernels/decode.h"
#include "kernels/fused.h"
#include "kernels/gather.h"
#include "kernels/sample.h"
#include "kernels/logprob.h"
#include "layers/attention.h"
#include "layers/mlp.h"
#include "layers/moe.h"
#include "layers/rope.h"

namespace tiller::addon {
namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

double max_abs(const at::Tensor& t) { return t.to(at::kDouble).abs().max().item<double>(); }

// {diff: max |got[i] - want[i]| over all i, scale: max |want[i]|}
std::pair<double, double> diff_and_scale(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& want) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, max_abs_diff(got[i], want[i]));
    scale = std::max(scale, max_abs(want[i]));
  }
  return {diff, scale};
}

// A check's arguments: the device and dtype first, then numbers.
at::Device device_arg(const Napi::CallbackInfo& info) { return parse_device(info[0].As<Napi::String>().Utf8Value()); }
at::ScalarType dtype_arg(const Napi::CallbackInfo& info) { return dtype_from_name(info[1].As<Napi::String>().Utf8Value()); }
int64_t int_arg(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int64Value(); }

// kernelCheckLogprobRows(device, dtype, rows, vocab, temperature, seed) ->
//   {logprob, entropy, lse, gradLogits, gradLogitsNoEntropy: max |kernel - reference|, gradScale: max |reference grad|,
//    exact: {kernel, reference: {logprob, entropy, gradLogits: max |that - fp64 values|}}}
Napi::Value KernelCheckLogprobRows(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto dtype = dtype_arg(info);
    const auto rows = int_arg(info, 2);
    const auto vocab = int_arg(info, 3);
    const auto temperature = info[4].As<Napi::Number>().DoubleValue();
    at::manual_seed(int_arg(info, 5));
    const auto logits = (at::randn({rows, vocab}, at::TensorOptions().dtype(at::kFloat)) * 3).to(device, dtype);
    const auto targets = at::randint(vocab, {rows}, at::TensorOptions().dtype(at::kLong)).to(device);
    const auto grad_logprob = at::randn({rows}, at::TensorOptions().dtype(at::kFloat)).to(device);
    const auto grad_entropy = at::randn({rows}, at::TensorOptions().dtype(at::kFloat)).to(device);
    const auto ours = kernels::logprob_rows(logits, targets, temperature);
    const auto ref = kernels::logprob_rows_reference(logits, targets, temperature);
    const auto g = kernels::logprob_rows_backward(logits, targets, temperature, ours, grad_logprob, grad_entropy);
    const auto g_ref =
        kernels::logprob_rows_backward_reference(logits, targets, temperature, ref, grad_logprob, grad_entropy);
    const auto g0 = kernels::logprob_rows_backward(logits, targets, temperature, ours, grad_logprob, at::Tensor());
    const auto g0_ref =
        kernels::logprob_rows_backward_reference(logits, targets, temperature, ref, grad_logprob, at::Tensor());
    auto out = Napi::Object::New(env);
    out["logprob"] = max_abs_diff(ours.logprob, ref.logprob);
    out["entropy"] = max_abs_diff(ours.entropy, ref.entropy);
    out["lse"] = max_abs_diff(ours.lse, ref.lse);
    out["gradLogits"] = max_abs_diff(g, g_ref);
    out["gradLogitsNoEntropy"] = max_abs_diff(g0, g0_ref);
    out["gradScale"] = g_ref.to(at::kDouble).abs().max().item<double>();
    // Both against the exact values (fp64 from the same logits): which of the two is closer.
    const auto z = logits.to(at::kDouble) / temperature;
    const auto log_p = at::log_softmax(z, -1);
    const auto p = log_p.exp();
    const auto entropy = -(p * log_p).sum(-1);
    const auto logprob = log_p.gather(1, targets.unsqueeze(1)).squeeze(1);
    auto g_exact = -p * (grad_logprob.to(at::kDouble).unsqueeze(1) +
                         grad_entropy.to(at::kDouble).unsqueeze(1) * (log_p + entropy.unsqueeze(1)));
    g_exact.scatter_add_(1, targets.unsqueeze(1), grad_logprob.to(at::kDouble).unsqueeze(1));
    g_exact = g_exact / temperature;
    auto exact = Napi::Object::New(env);
    for (const auto& [name, stats, grad] : {std::tuple{"kernel", &ours, &g}, std::tuple{"reference", &ref, &g_ref}}) {
      auto o = Napi::Object::New(env);
      o["logprob"] = max_abs_diff(stats->logprob, logprob);
      o["entropy"] = max_abs_diff(stats->entropy, entropy);
      o["gradLogits"] = max_abs_diff(*grad, g_exact);
      exact[name] = o;
    }
    out["exact"] = exact;
    return out;
  });
}

// Bits of `a` that differ from `b` (same shape and dtype): how many elements.
int64_t mismatches(const at::Tensor& a, const at::Tensor& b) { return a.ne(b).sum().item<int64_t>(); }

// Input gradients of `f` at `inputs` (each a fresh leaf) for the output gradients `grads`.
std::vector<at::Tensor> gradients(const std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>& f,
                                  const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& grads) {
  std::vector<at::Tensor> leaves;
  for (const auto& x : inputs) leaves.push_back(x.detach().requires_grad_(true));
  const auto outs = f(leaves);
  torch::autograd::backward(outs, grads);
  std::vector<at::Tensor> out;
  for (const auto& l : leaves) out.push_back(l.grad());
  return out;
}

using TensorFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

// One fused kernel against its ATen expression at `inputs`: {mismatches (elements of the outputs
// whose bits differ), elements, gradDiff (max |input gradient difference|), gradScale (max
// |reference input gradient|)} for the output gradients `grads`.
Napi::Object compare_fused(Napi::Env env, const TensorFn& fused, const TensorFn& reference,
                           const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& grads) {
  const auto outs = fused(inputs), ref_outs = reference(inputs);
  int64_t differ = 0, elements = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    differ += mismatches(outs[i], ref_outs[i]);
    elements += outs[i].numel();
  }
  const auto [diff, scale] = diff_and_scale(gradients(fused, inputs, grads), gradients(reference, inputs, grads));
  auto o = Napi::Object::New(env);
  o["mismatches"] = static_cast<double>(differ);
  o["elements"] = static_cast<double>(elements);
  o["gradDiff"] = diff;
  o["gradScale"] = scale;
  return o;
}

// kernelCheckFused(device, dtype, tokens, seed) -> {available, rope, siluMul, siluMulHalves: each
//   {mismatches, elements, gradDiff, gradScale}}: the fused kernels (layers/rope apply_rope_pair,
//   layers/mlp silu_mul and silu_mul_halves) against the ATen expressions they replace; the
//   forwards must match bit for bit.
Napi::Value KernelCheckFused(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto dtype = dtype_arg(info);
    const auto tokens = int_arg(info, 2);
    at::manual_seed(int_arg(info, 3));
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const auto make = [&](std::vector<int64_t> shape, double scale) { return (at::randn(shape, opts) * scale).to(device, dtype); };
    // Rope: Qwen3-like heads, angles of real positions (large ones included).
    const int64_t heads = 16, kv_heads = 8, dim = 128;
    const auto q = make({tokens, heads, dim}, 2), k = make({tokens, kv_heads, dim}, 2);
    const auto positions = at::randint(32768, {tokens}, at::TensorOptions().dtype(at::kLong)).to(device);
    layers::RopeConfig rope_config;
    rope_config.rotary_dim = dim;
    rope_config.theta = 1e6;
    auto table = layers::rope_table_from(layers::rope_frequencies(rope_config, 0), positions);
    table.cos = table.cos.to(dtype);
    table.sin = table.sin.to(dtype);
    const TensorFn rope_fused = [&](const std::vector<at::Tensor>& x) {
      const auto [a, b] = layers::apply_rope_pair(x[0], x[1], table);
      return std::vector<at::Tensor>{a, b};
    };
    const TensorFn rope_ref = [&](const std::vector<at::Tensor>& x) {
      return std::vector<at::Tensor>{layers::apply_rope(x[0], table), layers::apply_rope(x[1], table)};
    };
    // SwiGLU's product at a Qwen3-0.6B width, and the MoE experts' form: gate and up as the two
    // halves of one [tokens, 2 · inter] tensor.
    const int64_t inter = 3072;
    const TensorFn silu_fused = [](const std::vector<at::Tensor>& x) {
      return std::vector<at::Tensor>{layers::silu_mul(x[0], x[1])};
    };
    const TensorFn silu_ref = [](const std::vector<at::Tensor>& x) {
      return std::vector<at::Tensor>{at::silu(x[0]) * x[1]};
    };
    const TensorFn halves_fused = [](const std::vector<at::Tensor>& x) {
      return std::vector<at::Tensor>{layers::silu_mul_halves(x[0])};
    };
    const TensorFn halves_ref = [inter](const std::vector<at::Tensor>& x) {
      return std::vector<at::Tensor>{at::silu(x[0].slice(1, 0, inter)) * x[0].slice(1, inter)};
    };
    auto out = Napi::Object::New(env);
    out["available"] = kernels::fused_available(q);
    out["rope"] = compare_fused(env, rope_fused, rope_ref, {q, k},
                                {make({tokens, heads, dim}, 1), make({tokens, kv_heads, dim}, 1)});
    out["siluMul"] = compare_fused(env, silu_fused, silu_ref, {make({tokens, inter}, 3), make({tokens, inter}, 1)},
                                   {make({tokens, inter}, 1)});
    out["siluMulHalves"] = compare_fused(env, halves_fused, halves_ref, {make({tokens, 2 * inter}, 3)},
                                         {make({tokens, inter}, 1)});
    return out;
  });
}

// kernelCheckFusedLinear(device, dtype, tokens, seed) -> {adjacent, clonesAdjacent, qkv, swiglu:
//   {outDiff, outScale, gradDiff, gradScale}}: layers::linear_parts over q/k/v (with biases) and
//   layers::swiglu over gate/up stored back to back in one storage (one GEMM each) against the
//   same weights as separate tensors (a GEMM each); `adjacent` says the first were recognised,
//   `clonesAdjacent` that the separate copies were not.
Napi::Value KernelCheckFusedLinear(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto dtype = dtype_arg(info);
    const auto tokens = int_arg(info, 2);
    at::manual_seed(int_arg(info, 3));
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const int64_t hidden = 96, q_rows = 128, kv_rows = 32, inter = 160;
    const auto make = [&](std::vector<int64_t> shape) {
      return (at::randn(shape, f32) / std::sqrt(static_cast<double>(hidden))).to(device, dtype);
    };
    // Views of one storage, as the dense decoder packs them.
    const auto pack = [](const std::vector<at::Tensor>& parts) {
      const auto whole = at::cat(parts, 0);
      std::vector<at::Tensor> views;
      int64_t row = 0;
      for (const auto& p : parts) {
        views.push_back(whole.narrow(0, row, p.size(0)).detach());
        row += p.size(0);
      }
      return views;
    };
    const auto clones = [](const std::vector<at::Tensor>& parts) {
      std::vector<at::Tensor> out;
      for (const auto& p : parts) out.push_back(p.clone());
      return out;
    };
    const auto qkv_w = pack({make({q_rows, hidden}), make({kv_rows, hidden}), make({kv_rows, hidden})});
    const auto qkv_b = pack({make({q_rows}), make({kv_rows}), make({kv_rows})});
    const auto mlp_w = pack({make({inter, hidden}), make({inter, hidden})});
    const auto down = make({hidden, inter});
    const auto x = make({tokens, hidden}) * std::sqrt(static_cast<double>(hidden));
    const auto qkv = [](const std::vector<at::Tensor>& in) {
      return layers::linear_parts(in[0], {in[1], in[2], in[3]}, {in[4], in[5], in[6]});
    };
    const auto mlp = [&down](const std::vector<at::Tensor>& in) {
      return std::vector<at::Tensor>{layers::swiglu(in[0], in[1], in[2], down)};
    };
    const auto compare = [&](const TensorFn& f, const std::vector<at::Tensor>& packed,
                             const std::vector<at::Tensor>& separate) {
      const auto a = f(packed), b = f(separate);
      std::vector<at::Tensor> grads;
      for (const auto& o : b) grads.push_back(at::randn_like(o));
      const auto [out_diff, out_scale] = diff_and_scale(a, b);
      const auto [grad_diff, grad_scale] = diff_and_scale(gradients(f, packed, grads), gradients(f, separate, grads));
      auto o = Napi::Object::New(env);
      o["outDiff"] = out_diff;
      o["outScale"] = out_scale;
      o["gradDiff"] = grad_diff;
      o["gradScale"] = grad_scale;
      return o;
    };
    std::vector<at::Tensor> qkv_packed{x}, qkv_separate{x};
    for (const auto* list : {&qkv_w, &qkv_b}) {
      for (const auto& t : *list) qkv_packed.push_back(t);
      for (const auto& t : clones(*list)) qkv_separate.push_back(t);
    }
    std::vector<at::Tensor> mlp_packed{x, mlp_w[0], mlp_w[1]}, mlp_separate{x, mlp_w[0].clone(), mlp_w[1].clone()};
    auto out = Napi::Object::New(env);
    out["adjacent"] = layers::adjacent_rows(qkv_w).defined() && layers::adjacent_rows(qkv_b).defined() &&
                      layers::adjacent_rows(mlp_w).defined();
    out["clonesAdjacent"] = layers::adjacent_rows(clones(qkv_w)).defined();
    out["qkv"] = compare(qkv, qkv_packed, qkv_separate);
    out["swiglu"] = compare(mlp, mlp_packed, mlp_separate);
    return out;
  });
}

// kernelCheckMoeCombine(device, dtype, tokens, hidden, experts, topK, seed) ->
//   {available, out, gradX, gradWeights: max |that - fp64|, outScale, gradXScale, gradWeightsScale:
//    max |fp64 value|, repeatMismatches: elements of the output and gradients that differ between
//    two identical runs}: layers::dispatch_combine with experts that scale x·W by 1 + expert/experts
//   (so a row combined into the wrong token or with the wrong weight shows), against the same
//   mixture computed directly in fp64 on the host.
Napi::Value KernelCheckMoeCombine(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto dtype = dtype_arg(info);
    const auto tokens = int_arg(info, 2);
    const auto hidden = int_arg(info, 3);
    const auto experts = int_arg(info, 4);
    const auto top_k = int_arg(info, 5);
    at::manual_seed(int_arg(info, 6));
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const auto x = at::randn({tokens, hidden}, f32).to(device, dtype);
    const auto w = (at::randn({hidden, hidden}, f32) / std::sqrt(static_cast<double>(hidden))).to(device, dtype);
    const auto chosen = std::get<1>(at::rand({tokens, experts}, f32).topk(top_k, 1)).to(device);  // distinct per token
    const auto weights = at::softmax(at::randn({tokens, top_k}, f32), 1).to(device);
    const auto grad = at::randn({tokens, hidden}, f32).to(device, dtype);
    const auto scale_of = [experts](const at::Tensor& e) { return 1.0 + e.to(at::kDouble) / static_cast<double>(experts); };
    const auto run = [&](const at::Tensor& rows, const at::Tensor& ends) {
      const auto row_ids = at::arange(rows.size(0), ends.options());
      const auto expert = at::searchsorted(ends, row_ids, /*out_int32=*/false, /*right=*/true);
      return at::matmul(rows, w) * scale_of(expert).to(rows.scalar_type()).unsqueeze(1);
    };
    const auto once = [&]() {
      at::Tensor leaf_x = x.detach().requires_grad_(true), leaf_w = weights.detach().requires_grad_(true);
      const auto out = layers::dispatch_combine(leaf_x, chosen, leaf_w, experts, nullptr, run);
      out.backward(grad);
      return std::vector<at::Tensor>{out.detach(), leaf_x.grad(), leaf_w.grad()};
    };
    const auto first = once(), second = once();
    // fp64 on the host from the same (rounded) inputs.
    at::Tensor xd = x.to(at::kCPU, at::kDouble).requires_grad_(true);
    at::Tensor wd = weights.to(at::kCPU, at::kDouble).requires_grad_(true);
    const auto per_pair = at::matmul(xd, w.to(at::kCPU, at::kDouble)).unsqueeze(1) *
                          scale_of(chosen.to(at::kCPU)).unsqueeze(2);  // [tokens, top_k, hidden]
    const auto ref = (per_pair * wd.unsqueeze(2)).sum(1);
    ref.backward(grad.to(at::kCPU, at::kDouble));
    auto out = Napi::Object::New(env);
    out["available"] = kernels::gather_available(x);
    out["out"] = max_abs_diff(first[0].cpu(), ref.detach());
    out["gradX"] = max_abs_diff(first[1].cpu(), xd.grad());
    out["gradWeights"] = max_abs_diff(first[2].cpu(), wd.grad());
    out["outScale"] = max_abs(ref.detach());
    out["gradXScale"] = max_abs(xd.grad());
    out["gradWeightsScale"] = max_abs(wd.grad());
    int64_t differ = 0;
    for (size_t i = 0; i < first.size(); ++i) differ += mismatches(first[i], second[i]);
    out["repeatMismatches"] = static_cast<double>(differ);
    return out;
  });
}

// kernelCheckDecodeNorm(device, dtype, rows, seed) -> {available, addSum: elements of x + residual
//   that differ from ATen's add, norm, qkNormRope, rope: {diff: max |kernel - ATen expression|,
//   scale: max |ATen value|}, stridedKvWriteMismatches}: the decode step's norm kernels against
//   the expressions the training forward runs (at::rms_norm, apply_rope_pair), on q/k/v as column
//   views of one [rows, q + k + v] GEMM output, as the decoder has them; and the KV write from
//   those strided views against index_copy_.
Napi::Value KernelCheckDecodeNorm(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto dtype = dtype_arg(info);
    const auto rows = int_arg(info, 2);
    at::manual_seed(int_arg(info, 3));
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const int64_t hidden = 1024, heads = 16, kv_heads = 8, dim = 128;
    const double eps = 1e-6;
    const auto make = [&](std::vector<int64_t> shape, double scale, double shift = 0) {
      return (at::randn(shape, f32) * scale + shift).to(device, dtype);
    };
    const auto x = make({rows, hidden}, 1), residual = make({rows, hidden}, 1), w = make({hidden}, 0.1, 1);
    const auto [sum, norm] = kernels::add_rms_norm(x, residual, w, eps);
    const auto ref_sum = x + residual;
    const auto ref_norm = at::rms_norm(ref_sum, {hidden}, w, eps);
    const auto qkv = make({rows, (heads + 2 * kv_heads) * dim}, 2);
    const auto q = qkv.narrow(1, 0, heads * dim).view({rows, heads, dim});
    const auto k = qkv.narrow(1, heads * dim, kv_heads * dim).view({rows, kv_heads, dim});
    const auto v = qkv.narrow(1, (heads + kv_heads) * dim, kv_heads * dim).view({rows, kv_heads, dim});
    const auto q_norm = make({dim}, 0.1, 1), k_norm = make({dim}, 0.1, 1);
    const auto positions = at::randint(32768, {rows}, at::TensorOptions().dtype(at::kLong)).to(device);
    layers::RopeConfig rope_config;
    rope_config.rotary_dim = dim;
    rope_config.theta = 1e6;
    auto table = layers::rope_table_from(layers::rope_frequencies(rope_config, 0), positions);
    table.cos = table.cos.to(dtype);
    table.sin = table.sin.to(dtype);
    const auto [qn, kn] = kernels::qk_norm_rope(q, k, q_norm, k_norm, eps, table.cos, table.sin);
    const auto [ref_q, ref_k] = layers::apply_rope_pair(at::rms_norm(q, {dim}, q_norm, eps), at::rms_norm(k, {dim}, k_norm, eps), table);
    const auto [qr, kr] = kernels::qk_norm_rope(q, k, at::Tensor(), at::Tensor(), eps, table.cos, table.sin);
    const auto [rope_q, rope_k] = layers::apply_rope_pair(q.contiguous(), k.contiguous(), table);
    const auto part = [&](const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& want) {
      const auto [diff, scale] = diff_and_scale(got, want);
      auto o = Napi::Object::New(env);
      o["diff"] = diff;
      o["scale"] = scale;
      return o;
    };
    // The KV write from the strided views (kernel, or index_copy_ where it is not available).
    const auto cache_rows = rows + 5;
    const auto slots = at::randperm(cache_rows, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, rows).to(device);
    auto k_cache = at::zeros({cache_rows, kv_heads, dim}, qkv.options()), v_cache = at::zeros_like(k_cache);
    auto k_ref = at::zeros_like(k_cache), v_ref = at::zeros_like(k_cache);
    if (!kernels::write_kv_rows(k, v, k_cache, v_cache, slots)) {
      k_cache.index_copy_(0, slots, k);
      v_cache.index_copy_(0, slots, v);
    }
    k_ref.index_copy_(0, slots, k);
    v_ref.index_copy_(0, slots, v);
    auto out = Napi::Object::New(env);
    out["available"] = kernels::decode_norm_available(x);
    out["addSum"] = static_cast<double>(mismatches(sum, ref_sum));
    out["norm"] = part({norm}, {ref_norm});
    out["qkNormRope"] = part({qn, kn}, {ref_q, ref_k});
    out["rope"] = part({qr, kr}, {rope_q, rope_k});
    out["stridedKvWriteMismatches"] = static_cast<double>(mismatches(k_cache, k_ref) + mismatches(v_cache, v_ref));
    return out;
  });
}

// kernelCheckDecode(device, dtype, rows, heads, kvHeads, headDim, maxLen, window, seed) ->
//   {available, kernel, flash: max |that - fp64 attention|, scale: max |fp64 attention|,
//    kvWriteMismatches: elements of the cache that differ from index_copy_'s}: the decode kernel
//   and flash attention's varlen forward (what slot_decode_attention ran before it) on one random
//   slot cache, each row with a random number of used keys (the first row all of them).
Napi::Value KernelCheckDecode(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto dtype = dtype_arg(info);
    const auto rows = int_arg(info, 2);
    const auto heads = int_arg(info, 3);
    const auto kv_heads = int_arg(info, 4);
    const auto dim = int_arg(info, 5);
    const auto max_len = int_arg(info, 6);
    const auto window = int_arg(info, 7);
    at::manual_seed(int_arg(info, 8));
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const auto q = at::randn({rows, heads, dim}, f32).to(device, dtype);
    const layers::KvView cache{at::randn({rows, max_len, kv_heads, dim}, f32).to(device, dtype),
                               at::randn({rows, max_len, kv_heads, dim}, f32).to(device, dtype)};
    // Row b uses slot rows - 1 - b (slots out of order), its first `used` positions.
    auto used = at::randint(1, max_len + 1, {rows}, at::TensorOptions().dtype(at::kInt));
    used[0].fill_(max_len);
    const auto slots = at::arange(rows - 1, -1, -1, at::TensorOptions().dtype(at::kInt));
    layers::SlotCacheIndex index;
    index.decode = true;
    index.max_len = max_len;
    index.cu_q = at::arange(rows + 1, at::TensorOptions().dtype(at::kInt)).to(device);
    index.key_starts = at::cat({slots * static_cast<int>(max_len), at::zeros({1}, slots.options())}).to(device);
    index.keys_used = used.to(device);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    auto out = Napi::Object::New(env);
    out["available"] = kernels::decode_attention_available(q, kv_heads);
    const auto k_rows = cache.k.view({-1, kv_heads, dim}), v_rows = cache.v.view({-1, kv_heads, dim});
    const auto ours = kernels::decode_attention(q, k_rows, v_rows, index.key_starts, index.keys_used, max_len, scale, window);
    const auto flash = std::get<0>(at::_flash_attention_forward(
        q, k_rows, v_rows, index.cu_q, index.key_starts, 1, max_len, 0.0, false, false, scale,
        window > 0 ? std::optional<int64_t>(window - 1) : std::nullopt,
        window > 0 ? std::optional<int64_t>(0) : std::nullopt, index.keys_used));
    // fp64 reference, row by row.
    std::vector<at::Tensor> exact;
    const auto qd = q.to(at::kDouble).cpu(), kd = cache.k.to(at::kDouble).cpu(), vd = cache.v.to(at::kDouble).cpu();
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t n = used[b].item<int>(), lo = window > 0 ? std::max<int64_t>(0, n - window) : 0;
      const auto slot = slots[b].item<int>();
      const auto keys = kd[slot].slice(0, lo, n).repeat_interleave(heads / kv_heads, 1);    // [n', heads, D]
      const auto values = vd[slot].slice(0, lo, n).repeat_interleave(heads / kv_heads, 1);
      const auto scores = at::einsum("hd,nhd->hn", {qd[b], keys}) * scale;
      exact.push_back(at::einsum("hn,nhd->hd", {at::softmax(scores, -1), values}));
    }
    const auto reference = at::stack(exact).to(device);
    out["kernel"] = max_abs_diff(ours, reference);
    out["flash"] = max_abs_diff(flash, reference);
    out["scale"] = reference.abs().max().item<double>();
    // The KV write: new rows for every slot at position used - 1, against index_copy_.
    const auto new_k = at::randn({rows, kv_heads, dim}, f32).to(device, dtype);
    const auto new_v = at::randn({rows, kv_heads, dim}, f32).to(device, dtype);
    const auto write_rows = (slots.to(at::kLong) * max_len + used.to(at::kLong) - 1).to(device);
    const layers::KvView copy{cache.k.clone(), cache.v.clone()};
    const bool wrote = kernels::write_kv_rows(new_k, new_v, cache.k, cache.v, write_rows);
    copy.k.view({-1, kv_heads, dim}).index_copy_(0, write_rows, new_k);
    copy.v.view({-1, kv_heads, dim}).index_copy_(0, write_rows, new_v);
    out["kvWritten"] = wrote;
    out["kvWriteMismatches"] = static_cast<double>(mismatches(cache.k, copy.k) + mismatches(cache.v, copy.v));
    return out;
  });
}

// kernelCheckSample(device, rows, vocab, temperature, seed) -> {available, mismatches, zeroMassPicks,
//   lastPicks}: the sampling kernel's tokens against the fp64 inverse CDF (searchsorted over the
//   cumulative softmax) for the same uniforms; rows of random logits (half of them with most of the
//   vocabulary at -inf), uniforms spread over [0, 1) and some just under 1. zeroMassPicks: tokens
//   drawn at -inf; lastPicks: rows whose draw near 1 gave their last token with mass.
Napi::Value KernelCheckSample(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = device_arg(info);
    const auto rows = int_arg(info, 1);
    const auto vocab = int_arg(info, 2);
    const auto temperature = info[3].As<Napi::Number>().DoubleValue();
    at::manual_seed(int_arg(info, 4));
    auto logits = at::randn({rows, vocab}, at::TensorOptions().dtype(at::kFloat)) * 3;
    const auto masked = at::rand({rows, vocab}) < 0.9;
    masked.slice(0, 0, rows / 2).fill_(false);
    logits.masked_fill_(masked, -std::numeric_limits<float>::infinity());
    logits.select(1, 0).fill_(0);  // every row keeps a token with mass
    auto uniforms = at::rand({rows}, at::TensorOptions().dtype(at::kDouble));
    uniforms.slice(0, 0, rows / 8).fill_(1.0 - 1e-12);
    auto out = Napi::Object::New(env);
    const auto on_device = logits.to(device);
    out["available"] = kernels::sample_kernel_available(on_device);
    const auto tokens = kernels::sample_rows_cuda(on_device, uniforms, temperature).cpu();
    const auto cdf = at::softmax(logits.to(at::kDouble) / temperature, -1).cumsum(-1);
    const auto target = (uniforms * cdf.select(1, vocab - 1)).unsqueeze(1);
    const auto expected = at::searchsorted(cdf, target, false, true).squeeze(1).clamp_max(vocab - 1);
    const auto picked = logits.gather(1, tokens.unsqueeze(1)).squeeze(1);
    // The last token with mass of each row, for the draws just under 1.
    const auto with_mass = at::arange(vocab, at::TensorOptions().dtype(at::kLong)).unsqueeze(0) *
                           logits.isfinite().to(at::kLong);
    const auto last = std::get<0>(with_mass.max(1));
    out["mismatches"] = static_cast<double>(mismatches(tokens, expected));
    out["zeroMassPicks"] = static_cast<double>(picked.isinf().sum().item<int64_t>());
    out["lastPicks"] = static_cast<double>(tokens.slice(0, 0, rows / 8).eq(last.slice(0, 0, rows / 8)).sum().item<int64_t>());
    return out;
  });
}

void register_kernels(Napi::Env env, Napi::Object exports) {
  exports["kernelCheckDecode"] = Napi::Function::New(env, KernelCheckDecode, "kernelCheckDecode");
  exports["kernelCheckSample"] = Napi::Function::New(env, KernelCheckSample, "kernelCheckSample");
  exports["kernelCheckLogprobRows"] = Napi::Function::New(env, KernelCheckLogprobRows, "kernelCheckLogprobRows");
  exports["kernelCheckFused"] = Napi::Function::New(env, KernelCheckFused, "kernelCheckFused");
  exports["kernelCheckFusedLinear"] = Napi::Function::New(env, KernelCheckFusedLinear, "kernelCheckFusedLinear");
  exports["kernelCheckDecodeNorm"] = Napi::Function::New(env, KernelCheckDecodeNorm, "kernelCheckDecodeNorm");
  exports["kernelCheckMoeCombine"] = Napi::Function::New(env, KernelCheckMoeCombine, "kernelCheckMoeCombine");
}

const Registrar registrar(register_kernels);

}  // namespace
}  // namespace tiller::addon
