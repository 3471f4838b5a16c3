// policyLoss: the engine's RL policy loss on per-token tensors given directly (no model), with its
// gradients w.r.t. logprobs and entropy, for checking the loss against a reference. Cheap, so
// synchronous.
#include <string>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "addon/train_args.h"
#include "train/policy_loss.h"

namespace tiller::addon {
namespace {

// policyLoss(inputs: {logprobs, oldLogprobs, advantages, mask, entropy?, refLogprobs?, rolloutIsWeights?: Float32Array [T],
//            cuSeqlens: Int32Array [S + 1]}, counts: {tokens, sequences}, config)
//   -> {loss, metrics, gradLogprobs: Float32Array [T], gradEntropy: Float32Array [T] | undefined}
Napi::Value PolicyLoss(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject() || !info[1].IsObject() || !info[2].IsObject()) {
      throw std::invalid_argument("policyLoss(inputs, counts, config): expected three objects");
    }
    const auto o = info[0].As<Napi::Object>();
    const auto lp = o.Get("logprobs");
    if (!lp.IsTypedArray()) throw std::invalid_argument("inputs.logprobs: expected a Float32Array");
    const auto tokens = static_cast<int64_t>(lp.As<Napi::TypedArray>().ElementLength());
    train::PolicyLossInputs in;
    in.logprobs = float_tokens_field(o, "logprobs", "inputs", tokens, true).requires_grad_(true);
    in.old_logprobs = float_tokens_field(o, "oldLogprobs", "inputs", tokens, true);
    in.advantages = float_tokens_field(o, "advantages", "inputs", tokens, true);
    in.mask = float_tokens_field(o, "mask", "inputs", tokens, true);
    in.entropy = float_tokens_field(o, "entropy", "inputs", tokens, false);
    if (in.entropy.defined()) in.entropy.requires_grad_(true);
    in.ref_logprobs = float_tokens_field(o, "refLogprobs", "inputs", tokens, false);
    in.rollout_is_weights = float_tokens_field(o, "rolloutIsWeights", "inputs", tokens, false);
    const auto cu = o.Get("cuSeqlens");
    if (!cu.IsTypedArray() || cu.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
      throw std::invalid_argument("inputs.cuSeqlens: expected an Int32Array");
    }
    const auto cu_array = cu.As<Napi::TypedArray>();
    in.cu_seqlens = tensor_from_typed_array(cu_array, at::kInt, {static_cast<int64_t>(cu_array.ElementLength())})
                        .to(at::kLong);
    const auto counts = info[1].As<Napi::Object>();
    in.global_tokens = number_field(counts, "tokens", "counts", 1);
    in.global_sequences = number_field(counts, "sequences", "counts", 1);
    const auto config = policy_loss_config_from_js(info[2].As<Napi::Object>(), "config");

    const auto result = train::policy_loss(config, in);
    result.loss.backward();
    auto out = Napi::Object::New(env);
    out["loss"] = result.loss.item<double>();
    out["metrics"] = policy_metrics_to_js(env, result.metrics);
    const auto grad_or_zero = [](const at::Tensor& t) { return t.grad().defined() ? t.grad() : at::zeros_like(t); };
    out["gradLogprobs"] = typed_array_from_tensor(env, grad_or_zero(in.logprobs).contiguous());
    if (in.entropy.defined()) out["gradEntropy"] = typed_array_from_tensor(env, grad_or_zero(in.entropy).contiguous());
    return out;
  });
}

void register_policy_loss(Napi::Env env, Napi::Object exports) {
  exports["policyLoss"] = Napi::Function::New(env, PolicyLoss, "policyLoss");
}

const Registrar registrar(register_policy_loss);

}  // namespace
}  // namespace tiller::addon
