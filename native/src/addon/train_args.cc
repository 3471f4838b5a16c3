#include "addon/train_args.h"

#include "addon/tensor.h"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <unordered_set>

namespace tiller::addon {

std::string string_field(const Napi::Object& o, const char* key, const std::string& field) {
  auto v = o.Get(key);
  if (!v.IsString()) throw std::invalid_argument(field + "." + key + ": expected a string");
  return v.As<Napi::String>().Utf8Value();
}

double number_field(const Napi::Object& o, const char* key, const std::string& field, double fallback) {
  auto v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw std::invalid_argument(field + "." + key + ": expected a number");
  return v.As<Napi::Number>().DoubleValue();
}

train::AdamWConfig adamw_config_from_js(const Napi::Object& c, const std::string& field) {
  train::AdamWConfig config{};
  config.lr = number_field(c, "lr", field, -1);
  config.beta1 = number_field(c, "beta1", field, config.beta1);
  config.beta2 = number_field(c, "beta2", field, config.beta2);
  config.eps = number_field(c, "eps", field, config.eps);
  config.weight_decay = number_field(c, "weightDecay", field, config.weight_decay);
  auto no_decay = c.Get("noDecay");
  if (no_decay.IsString() && no_decay.As<Napi::String>().Utf8Value() == "biases-and-norms") {
    config.decays = train::decays_unless_bias_or_norm;
  } else if (no_decay.IsArray()) {
    auto names = std::make_shared<std::unordered_set<std::string>>();
    auto array = no_decay.As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Napi::Value n = array[i];
      if (!n.IsString()) throw std::invalid_argument(field + ".noDecay[" + std::to_string(i) + "]: expected a name");
      names->insert(n.As<Napi::String>().Utf8Value());
    }
    config.decays = [names](const std::string& name, const at::Tensor&) { return names->count(name) == 0; };
  } else if (!no_decay.IsUndefined()) {
    throw std::invalid_argument(field + ".noDecay: expected \"biases-and-norms\" or an array of parameter names");
  }
  return config;
}

train::LrSchedule schedule_from_js(const Napi::Object& o, const std::string& field, double lr) {
  train::LrSchedule s;
  const auto kind = string_field(o, "kind", field);
  if (kind == "constant") s.kind = train::ScheduleKind::kConstant;
  else if (kind == "constant-with-warmup") s.kind = train::ScheduleKind::kConstantWithWarmup;
  else if (kind == "warmup-cosine") s.kind = train::ScheduleKind::kWarmupCosine;
  else throw std::invalid_argument(field + ".kind: '" + kind + "'; allowed: constant, constant-with-warmup, warmup-cosine");
  s.lr = lr;
  s.warmup_steps = static_cast<int64_t>(number_field(o, "warmupSteps", field, 0));
  s.total_steps = static_cast<int64_t>(number_field(o, "totalSteps", field, 0));
  s.min_lr_ratio = number_field(o, "minLrRatio", field, 0);
  s.num_cycles = number_field(o, "numCycles", field, 0.5);
  train::validate(s);
  return s;
}

train::PolicyLossConfig policy_loss_config_from_js(const Napi::Object& o, const std::string& field) {
  train::PolicyLossConfig config;
  if (!o.Get("lossMode").IsUndefined()) {
    config.mode = train::policy_loss_mode_from_name(string_field(o, "lossMode", field));
  }
  config.clip_ratio_low = number_field(o, "clipRatioLow", field, config.clip_ratio_low);
  config.clip_ratio_high = number_field(o, "clipRatioHigh", field, config.clip_ratio_high);
  config.clip_ratio_c = number_field(o, "clipRatioC", field, config.clip_ratio_c);
  if (!o.Get("aggMode").IsUndefined()) config.agg_mode = train::loss_agg_mode_from_name(string_field(o, "aggMode", field));
  config.loss_scale_factor = number_field(o, "lossScaleFactor", field, config.loss_scale_factor);
  config.entropy_coeff = number_field(o, "entropyCoeff", field, config.entropy_coeff);
  config.tau_pos = number_field(o, "tauPos", field, config.tau_pos);
  config.tau_neg = number_field(o, "tauNeg", field, config.tau_neg);
  config.clip_cov_ratio = number_field(o, "clipCovRatio", field, config.clip_cov_ratio);
  config.clip_cov_lb = number_field(o, "clipCovLb", field, config.clip_cov_lb);
  config.clip_cov_ub = number_field(o, "clipCovUb", field, config.clip_cov_ub);
  config.kl_cov_ratio = number_field(o, "klCovRatio", field, config.kl_cov_ratio);
  config.ppo_kl_coef = number_field(o, "ppoKlCoef", field, config.ppo_kl_coef);
  const auto seed = number_field(o, "seed", field, 0);
  if (!(seed >= 0 && seed <= 9007199254740991.0 && seed == static_cast<double>(static_cast<uint64_t>(seed)))) {
    throw std::invalid_argument(field + ".seed: must be an integer in [0, 2^53)");
  }
  config.seed = static_cast<uint64_t>(seed);
  const auto kl = o.Get("kl");
  if (!kl.IsUndefined()) {
    if (!kl.IsObject()) throw std::invalid_argument(field + ".kl: expected {type, coeff}");
    const auto k = kl.As<Napi::Object>();
    config.kl = train::kl_penalty_from_name(string_field(k, "type", field + ".kl"), &config.kl_straight_through);
    config.kl_coeff = number_field(k, "coeff", field + ".kl", config.kl_coeff);
  }
  return config;
}

Napi::Object policy_metrics_to_js(Napi::Env env, const train::PolicyLossMetrics& m) {
  auto out = Napi::Object::New(env);
  out["pgLoss"] = m.pg_loss;
  if (m.has_pg_clipfrac) out["pgClipfrac"] = m.pg_clipfrac;
  if (m.has_pg_clipfrac_lower) out["pgClipfracLower"] = m.pg_clipfrac_lower;
  if (m.has_ppo_kl) out["ppoKl"] = m.ppo_kl;
  out["entropy"] = m.entropy;
  out["klLoss"] = m.kl_loss;
  return out;
}

at::Tensor float_tokens_field(const Napi::Object& o, const char* key, const std::string& field, int64_t tokens,
                              bool required) {
  const auto v = o.Get(key);
  if (v.IsUndefined() && !required) return {};
  const auto name = field + "." + key;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw std::invalid_argument(name + ": expected a Float32Array");
  }
  const auto array = v.As<Napi::TypedArray>();
  if (static_cast<int64_t>(array.ElementLength()) != tokens) {
    throw std::invalid_argument(name + ": has " + std::to_string(array.ElementLength()) + " entries, expected " +
                                std::to_string(tokens));
  }
  return tensor_from_typed_array(array, at::kFloat, {tokens}).clone();
}

}  // namespace tiller::addon
