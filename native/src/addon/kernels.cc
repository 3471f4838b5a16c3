// Checks of the engine's own kernels against their ATen references, on a device: random inputs,
// both paths, the largest differences back (tests/gpu/kernels.test.ts).
#include <algorithm>
#include <tuple>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "kernels/logprob.h"

namespace tiller::addon {
namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// kernelCheckLogprobRows(device, dtype, rows, vocab, temperature, seed) ->
//   {logprob, entropy, lse, gradLogits, gradLogitsNoEntropy: max |kernel - reference|, gradScale: max |reference grad|,
//    exact: {kernel, reference: {logprob, entropy, gradLogits: max |that - fp64 values|}}}
Napi::Value KernelCheckLogprobRows(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = parse_device(info[0].As<Napi::String>().Utf8Value());
    const auto dtype = dtype_from_name(info[1].As<Napi::String>().Utf8Value());
    const auto rows = info[2].As<Napi::Number>().Int64Value();
    const auto vocab = info[3].As<Napi::Number>().Int64Value();
    const auto temperature = info[4].As<Napi::Number>().DoubleValue();
    at::manual_seed(info[5].As<Napi::Number>().Int64Value());
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

void register_kernels(Napi::Env env, Napi::Object exports) {
  exports["kernelCheckLogprobRows"] = Napi::Function::New(env, KernelCheckLogprobRows, "kernelCheckLogprobRows");
}

const Registrar registrar(register_kernels);

}  // namespace
}  // namespace tiller::addon
