// Critic handles for PPO with a value model: an HF causal-LM backbone (any registered family) whose
// final hidden states feed a scalar head, `score` (weight [1, hidden], bias [1], as transformers'
// ...ForTokenClassification with num_labels = 1). Values per predicted token, the clipped value
// loss with accumulated gradients (train/losses.h), AdamW steps, save/load of the folder (the
// backbone's tensors plus score.*) and of the optimizer. Long calls run as async work holding the
// critic's mutex.
#include <ATen/CPUGeneratorImpl.h>

#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "addon/common.h"
#include "train/session.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "addon/train_args.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "train/grad_clip.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace tiller::addon {
namespace {

constexpr napi_type_tag kCriticTag = {0x2c41d7e95a3b4c18ULL, 0x9f06b8a1e4d27c53ULL};

struct CriticSlot {
  std::mutex mutex;
  std::unique_ptr<models::CausalLM> backbone;
  io::Json config;
  at::Tensor head_weight, head_bias;  // [1, hidden], [1] in the backbone's dtype and device
  models::NamedTensors params;         // the backbone's parameters, then score.weight, score.bias
  std::unique_ptr<train::AdamW> optimizer;
  train::LrSchedule schedule;
  double max_grad_norm = std::numeric_limits<double>::infinity();
  int64_t updates = 0;
  bool grads_pending = false;
};

struct CriticHandle {
  std::shared_ptr<CriticSlot> slot;
};

std::shared_ptr<CriticSlot> critic_of(const Napi::Value& value) {
  if (!value.IsExternal() || !value.As<Napi::External<CriticHandle>>().CheckTypeTag(&kCriticTag)) {
    throw std::invalid_argument("critic: not a critic handle");
  }
  auto* handle = value.As<Napi::External<CriticHandle>>().Data();
  if (!handle->slot) throw std::invalid_argument("critic: this critic was disposed");
  return handle->slot;
}

using train::GradScope;  // parameters require grad only while a backward runs

// Int32Array tokens -> [n] int64 host tensor; cuSeqlens checked (every sequence has >= 2 tokens).
at::Tensor tokens_from_js(const Napi::Value& value) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw std::invalid_argument("tokens: expected an Int32Array");
  }
  auto array = value.As<Napi::TypedArray>();
  return tensor_from_typed_array(array, at::kInt, {static_cast<int64_t>(array.ElementLength())}).to(at::kLong);
}

std::vector<int64_t> cu_from_js(const Napi::Value& value, int64_t tokens) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw std::invalid_argument("cuSeqlens: expected an Int32Array");
  }
  auto array = value.As<Napi::TypedArray>();
  const auto t = tensor_from_typed_array(array, at::kInt, {static_cast<int64_t>(array.ElementLength())}).to(at::kLong);
  std::vector<int64_t> cu(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  if (cu.size() < 2 || cu.front() != 0 || cu.back() != tokens) {
    throw std::invalid_argument("cuSeqlens: must start at 0 and end at the token count " + std::to_string(tokens));
  }
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] - cu[i - 1] < 2) {
      throw std::invalid_argument("cuSeqlens: sequence " + std::to_string(i - 1) + " has fewer than 2 tokens");
    }
  }
  return cu;
}

// The value of each predicted token: the head on the hidden state of the position before it, as
// verl's critic reads values[:, -response_length - 1 : -1]. tokens [N] -> [N - sequences] fp32.
at::Tensor forward_values(CriticSlot& slot, const at::Tensor& tokens_cpu, const std::vector<int64_t>& cu) {
  auto& model = *slot.backbone;
  const auto tokens = tokens_cpu.to(model.device());
  const auto hidden = model.forward(models::pack_batch(tokens, cu));  // [N, hidden]
  std::vector<int64_t> rows;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    for (int64_t j = cu[i]; j + 1 < cu[i + 1]; ++j) rows.push_back(j);
  }
  const auto picked = hidden.index_select(0, at::tensor(rows, at::kLong).to(model.device())).to(at::kFloat);
  return at::addmm(slot.head_bias.to(at::kFloat), picked, slot.head_weight.to(at::kFloat).t()).squeeze(1);
}

class CriticWork : public PromiseWork {
 public:
  CriticWork(Napi::Env env, const char* name, std::shared_ptr<CriticSlot> slot)
      : PromiseWork(env, name), slot_(std::move(slot)) {}

 protected:
  virtual void RunLocked(CriticSlot& slot) = 0;

 private:
  void Run() final {
    std::lock_guard<std::mutex> lock(slot_->mutex);
    RunLocked(*slot_);
  }
  std::shared_ptr<CriticSlot> slot_;
};

Napi::Value wrap(Napi::Env env, std::shared_ptr<CriticSlot> slot) {
  auto handle = Napi::External<CriticHandle>::New(env, new CriticHandle{std::move(slot)},
                                                  [](Napi::Env, CriticHandle* h) { delete h; });
  handle.TypeTag(&kCriticTag);
  return handle;
}

// Backbone from the folder (an actor's or a saved critic's); the head from score.* when the folder
// has them, else weight ~ N(0, initializer_range²) from `seed` and bias 0, as transformers initialises it.
class LoadWork final : public PromiseWork {
 public:
  LoadWork(Napi::Env env, std::string dir, at::Device device, at::ScalarType dtype, uint64_t seed)
      : PromiseWork(env, "tiller.criticLoad"), dir_(std::move(dir)), device_(device), dtype_(dtype), seed_(seed) {}

 protected:
  void Run() override {
    auto checkpoint = io::open_checkpoint(dir_);
    slot_ = std::make_shared<CriticSlot>();
    slot_->config = checkpoint.config;
    models::WeightMap weights;
    at::Tensor weight, bias;
    for (const auto& [name, t] : checkpoint.tensors) {
      if (name == "score.weight") weight = t;
      else if (name == "score.bias") bias = t;
      else weights[name] = t;
    }
    const models::HfConfig hf(checkpoint.config);
    slot_->backbone = models::build_model(hf, weights, models::BuildOptions(device_, dtype_));
    const auto hidden = hf.required_int("hidden_size");
    const auto options = at::TensorOptions().dtype(dtype_).device(device_);
    if (weight.defined() != bias.defined()) throw std::runtime_error("the folder has only one of score.weight, score.bias");
    if (weight.defined()) {
      if (weight.sizes() != at::IntArrayRef({1, hidden}) || bias.sizes() != at::IntArrayRef({1})) {
        throw std::runtime_error("score.weight must be [1, " + std::to_string(hidden) + "] and score.bias [1]");
      }
      slot_->head_weight = weight.to(options).clone();
      slot_->head_bias = bias.to(options).clone();
    } else {
      auto generator = at::make_generator<at::CPUGeneratorImpl>(seed_);
      const auto init_std = hf.number_or("initializer_range", 0.02);
      slot_->head_weight = at::normal(0.0, init_std, {1, hidden}, generator, at::TensorOptions().dtype(at::kFloat)).to(options);
      slot_->head_bias = at::zeros({1}, options);
    }
    slot_->params = slot_->backbone->named_parameters();
    slot_->params.emplace_back("score.weight", slot_->head_weight);
    slot_->params.emplace_back("score.bias", slot_->head_bias);
  }
  Napi::Value Result(Napi::Env env) override { return wrap(env, std::move(slot_)); }
  std::string ErrorPrefix() const override { return "critic.load(" + dir_ + "): "; }

 private:
  std::string dir_;
  at::Device device_;
  at::ScalarType dtype_;
  uint64_t seed_;
  std::shared_ptr<CriticSlot> slot_;
};

class ValuesWork final : public CriticWork {
 public:
  ValuesWork(Napi::Env env, std::shared_ptr<CriticSlot> slot, at::Tensor tokens, std::vector<int64_t> cu)
      : CriticWork(env, "tiller.criticValues", std::move(slot)), tokens_(std::move(tokens)), cu_(std::move(cu)) {}

  void RunLocked(CriticSlot& slot) override {
    at::NoGradGuard no_grad;
    values_ = forward_values(slot, tokens_, cu_).to(at::kCPU).contiguous();
  }
  Napi::Value Result(Napi::Env env) override { return typed_array_from_tensor(env, values_); }

 private:
  at::Tensor tokens_;
  std::vector<int64_t> cu_;
  at::Tensor values_;
};

// One micro-batch of the value loss: forward, loss over the mini-batch's counts, backward.
class StepWork final : public CriticWork {
 public:
  StepWork(Napi::Env env, std::shared_ptr<CriticSlot> slot, at::Tensor tokens, std::vector<int64_t> cu,
           train::ValueLossInputs inputs, train::ValueLossConfig config)
      : CriticWork(env, "tiller.criticStep", std::move(slot)), tokens_(std::move(tokens)), cu_(std::move(cu)),
        inputs_(std::move(inputs)), config_(config) {}

  void RunLocked(CriticSlot& slot) override {
    GradScope scope(slot.params);
    auto in = inputs_;
    in.vpreds = forward_values(slot, tokens_, cu_);
    std::vector<int64_t> predicted(cu_.size());
    for (size_t s = 0; s < cu_.size(); ++s) predicted[s] = cu_[s] - static_cast<int64_t>(s);
    in.cu_seqlens = at::tensor(predicted, at::kLong);
    const auto result = train::value_loss(config_, in);
    slot.grads_pending = true;
    result.loss.backward();
    result_ = result;
  }
  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["vfLoss"] = result_.vf_loss;
    out["vfClipfrac"] = result_.vf_clipfrac;
    out["vpredMean"] = result_.vpred_mean;
    return out;
  }

 private:
  at::Tensor tokens_;
  std::vector<int64_t> cu_;
  train::ValueLossInputs inputs_;
  train::ValueLossConfig config_;
  train::ValueLossResult result_;
};

class OptimizerStepWork final : public CriticWork {
 public:
  explicit OptimizerStepWork(Napi::Env env, std::shared_ptr<CriticSlot> slot)
      : CriticWork(env, "tiller.criticOptimizerStep", std::move(slot)) {}

  void RunLocked(CriticSlot& slot) override {
    if (!slot.optimizer) throw std::invalid_argument("critic: no optimizer; call initOptimizer first");
    const auto clip = train::clip_grad_norm(slot.params, slot.max_grad_norm);
    grad_norm_ = clip.norm;
    lr_ = train::lr_at(slot.schedule, slot.updates);
    skipped_ = !clip.finite;
    if (!skipped_) {
      slot.optimizer->step(lr_);
      ++slot.updates;
    }
    slot.optimizer->zero_grad();
    slot.grads_pending = false;
    step_ = slot.updates;
  }
  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["gradNorm"] = grad_norm_;
    out["lr"] = lr_;
    out["step"] = static_cast<double>(step_);
    out["skipped"] = skipped_;
    return out;
  }

 private:
  double grad_norm_ = 0, lr_ = 0;
  int64_t step_ = 0;
  bool skipped_ = false;
};

// The backbone's checkpoint tensors and score.*, with config.json, as an HF folder.
class SaveWork final : public CriticWork {
 public:
  SaveWork(Napi::Env env, std::shared_ptr<CriticSlot> slot, std::string dir)
      : CriticWork(env, "tiller.criticSave", std::move(slot)), dir_(std::move(dir)) {}

  void RunLocked(CriticSlot& slot) override {
    models::NamedTensors tensors;
    for (const auto& [name, p] : slot.backbone->checkpoint_tensors()) {
      tensors.emplace_back(name, p.detach().to(at::kCPU).contiguous());
    }
    tensors.emplace_back("score.weight", slot.head_weight.detach().to(at::kCPU).contiguous());
    tensors.emplace_back("score.bias", slot.head_bias.detach().to(at::kCPU).contiguous());
    io::save_checkpoint(dir_, slot.config, tensors);
  }
  std::string ErrorPrefix() const override { return "critic.save(" + dir_ + "): "; }

 private:
  std::string dir_;
};

class OptimizerFileWork final : public CriticWork {
 public:
  OptimizerFileWork(Napi::Env env, std::shared_ptr<CriticSlot> slot, std::string file, bool save)
      : CriticWork(env, "tiller.criticOptimizerFile", std::move(slot)), file_(std::move(file)), save_(save) {}

  void RunLocked(CriticSlot& slot) override {
    if (!slot.optimizer) throw std::invalid_argument("critic: no optimizer; call initOptimizer first");
    if (save_) {
      if (slot.grads_pending) throw std::invalid_argument("critic: gradients are pending; call optimizerStep first");
      io::write_safetensors(file_, slot.optimizer->state(), {{"updates", std::to_string(slot.updates)}});
      return;
    }
    auto file = io::read_safetensors(file_);
    const auto updates = file.metadata.find("updates");
    if (updates == file.metadata.end()) throw std::runtime_error("no \"updates\" in the metadata: not an optimizer state");
    slot.optimizer->load_state(file.tensors);
    slot.updates = std::stoll(updates->second);
    slot.optimizer->zero_grad();
    slot.grads_pending = false;
  }
  std::string ErrorPrefix() const override {
    return std::string(save_ ? "critic.saveOptimizer(" : "critic.loadOptimizer(") + file_ + "): ";
  }

 private:
  std::string file_;
  bool save_;
};

// criticLoad(dir, device, dtype, seed) -> Promise<handle>
Napi::Value CriticLoad(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto seed = info[3].As<Napi::Number>().DoubleValue();
    if (!(seed >= 0) || seed != static_cast<double>(static_cast<uint64_t>(seed))) {
      throw std::invalid_argument("seed: must be an integer >= 0");
    }
    return queue_work<LoadWork>(env, info[0].As<Napi::String>().Utf8Value(),
                                parse_device(info[1].As<Napi::String>().Utf8Value()),
                                dtype_from_name(info[2].As<Napi::String>().Utf8Value()), static_cast<uint64_t>(seed));
  });
}

// criticValues(handle, tokens: Int32Array, cuSeqlens: Int32Array) -> Promise<Float32Array [tokens - sequences]>
Napi::Value CriticValues(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = critic_of(info[0]);
    auto tokens = tokens_from_js(info[1]);
    auto cu = cu_from_js(info[2], tokens.numel());
    return queue_work<ValuesWork>(env, slot, tokens, cu);
  });
}

// criticStep(handle, tokens, cuSeqlens, perToken: {values, returns, mask: Float32Array [tokens - sequences]},
//            counts: {tokens, sequences}, config: {cliprangeValue?, aggMode?, lossScaleFactor?})
//   -> Promise<{vfLoss, vfClipfrac, vpredMean}>
Napi::Value CriticStep(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = critic_of(info[0]);
    auto tokens = tokens_from_js(info[1]);
    auto cu = cu_from_js(info[2], tokens.numel());
    if (!info[3].IsObject() || !info[4].IsObject() || !info[5].IsObject()) {
      throw std::invalid_argument("criticStep: perToken, counts and config must be objects");
    }
    const auto predicted = tokens.numel() - static_cast<int64_t>(cu.size()) + 1;
    const auto per_token = info[3].As<Napi::Object>();
    train::ValueLossInputs in;
    in.values = float_tokens_field(per_token, "values", "perToken", predicted, true);
    in.returns = float_tokens_field(per_token, "returns", "perToken", predicted, true);
    in.mask = float_tokens_field(per_token, "mask", "perToken", predicted, true);
    const auto counts = info[4].As<Napi::Object>();
    in.global_tokens = number_field(counts, "tokens", "counts", 1);
    in.global_sequences = number_field(counts, "sequences", "counts", 1);
    const auto c = info[5].As<Napi::Object>();
    train::ValueLossConfig config;
    config.cliprange_value = number_field(c, "cliprangeValue", "config", config.cliprange_value);
    if (!c.Get("aggMode").IsUndefined()) config.agg_mode = train::loss_agg_mode_from_name(string_field(c, "aggMode", "config"));
    config.loss_scale_factor = number_field(c, "lossScaleFactor", "config", config.loss_scale_factor);
    if (!(config.cliprange_value >= 0)) throw std::invalid_argument("config.cliprangeValue: must be >= 0");
    if (!(config.loss_scale_factor > 0)) throw std::invalid_argument("config.lossScaleFactor: must be > 0");
    return queue_work<StepWork>(env, slot, tokens, cu, std::move(in), config);
  });
}

// criticOptimizerInit(handle, options): as modelOptimizerInit, over the backbone and the head.
Napi::Value CriticOptimizerInit(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = critic_of(info[0]);
    if (!info[1].IsObject()) throw std::invalid_argument("options: expected an object");
    auto o = info[1].As<Napi::Object>();
    auto config = adamw_config_from_js(o, "options");
    if (!o.Get("schedule").IsObject()) throw std::invalid_argument("options.schedule: expected an object");
    auto schedule = schedule_from_js(o.Get("schedule").As<Napi::Object>(), "options.schedule", config.lr);
    const auto max_norm = number_field(o, "maxGradNorm", "options", std::numeric_limits<double>::infinity());
    if (!(max_norm > 0)) throw std::invalid_argument("options.maxGradNorm: must be > 0");
    std::lock_guard<std::mutex> lock(slot->mutex);
    slot->optimizer = std::make_unique<train::AdamW>(slot->params, std::move(config));
    slot->schedule = schedule;
    slot->max_grad_norm = max_norm;
    slot->updates = 0;
    return env.Undefined();
  });
}

// criticOptimizerStep(handle) -> Promise<{gradNorm, lr, step, skipped}>
Napi::Value CriticOptimizerStep(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value { return queue_work<OptimizerStepWork>(env, critic_of(info[0])); });
}

// criticSave(handle, dir) -> Promise<void>
Napi::Value CriticSave(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<SaveWork>(env, critic_of(info[0]), info[1].As<Napi::String>().Utf8Value());
  });
}

// criticSaveOptimizer(handle, file) / criticLoadOptimizer(handle, file) -> Promise<void>
Napi::Value CriticSaveOptimizer(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<OptimizerFileWork>(env, critic_of(info[0]), info[1].As<Napi::String>().Utf8Value(), true);
  });
}
Napi::Value CriticLoadOptimizer(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<OptimizerFileWork>(env, critic_of(info[0]), info[1].As<Napi::String>().Utf8Value(), false);
  });
}

// criticDispose(handle): frees the critic once no call holds it.
Napi::Value CriticDispose(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsExternal() || !info[0].As<Napi::External<CriticHandle>>().CheckTypeTag(&kCriticTag)) {
      throw std::invalid_argument("critic: not a critic handle");
    }
    info[0].As<Napi::External<CriticHandle>>().Data()->slot.reset();
    return env.Undefined();
  });
}

// valueLoss(inputs: {vpreds, values, returns, mask: Float32Array [T], cuSeqlens: Int32Array [S + 1]},
//           counts: {tokens, sequences}, config) -> {loss, vfClipfrac, vpredMean, gradVpreds: Float32Array [T]}:
// the value loss on given tensors (no model), with its gradient, for checking it. Synchronous.
Napi::Value ValueLoss(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject() || !info[1].IsObject() || !info[2].IsObject()) {
      throw std::invalid_argument("valueLoss(inputs, counts, config): expected three objects");
    }
    const auto o = info[0].As<Napi::Object>();
    const auto vp = o.Get("vpreds");
    if (!vp.IsTypedArray()) throw std::invalid_argument("inputs.vpreds: expected a Float32Array");
    const auto tokens = static_cast<int64_t>(vp.As<Napi::TypedArray>().ElementLength());
    train::ValueLossInputs in;
    in.vpreds = float_tokens_field(o, "vpreds", "inputs", tokens, true).requires_grad_(true);
    in.values = float_tokens_field(o, "values", "inputs", tokens, true);
    in.returns = float_tokens_field(o, "returns", "inputs", tokens, true);
    in.mask = float_tokens_field(o, "mask", "inputs", tokens, true);
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
    const auto c = info[2].As<Napi::Object>();
    train::ValueLossConfig config;
    config.cliprange_value = number_field(c, "cliprangeValue", "config", config.cliprange_value);
    if (!c.Get("aggMode").IsUndefined()) config.agg_mode = train::loss_agg_mode_from_name(string_field(c, "aggMode", "config"));
    config.loss_scale_factor = number_field(c, "lossScaleFactor", "config", config.loss_scale_factor);
    const auto result = train::value_loss(config, in);
    result.loss.backward();
    auto out = Napi::Object::New(env);
    out["loss"] = result.vf_loss;
    out["vfClipfrac"] = result.vf_clipfrac;
    out["vpredMean"] = result.vpred_mean;
    const auto grad = in.vpreds.grad().defined() ? in.vpreds.grad() : at::zeros_like(in.vpreds);
    out["gradVpreds"] = typed_array_from_tensor(env, grad.contiguous());
    return out;
  });
}

void register_critic(Napi::Env env, Napi::Object exports) {
  exports["valueLoss"] = Napi::Function::New(env, ValueLoss, "valueLoss");
  exports["criticLoad"] = Napi::Function::New(env, CriticLoad, "criticLoad");
  exports["criticValues"] = Napi::Function::New(env, CriticValues, "criticValues");
  exports["criticStep"] = Napi::Function::New(env, CriticStep, "criticStep");
  exports["criticOptimizerInit"] = Napi::Function::New(env, CriticOptimizerInit, "criticOptimizerInit");
  exports["criticOptimizerStep"] = Napi::Function::New(env, CriticOptimizerStep, "criticOptimizerStep");
  exports["criticSave"] = Napi::Function::New(env, CriticSave, "criticSave");
  exports["criticSaveOptimizer"] = Napi::Function::New(env, CriticSaveOptimizer, "criticSaveOptimizer");
  exports["criticLoadOptimizer"] = Napi::Function::New(env, CriticLoadOptimizer, "criticLoadOptimizer");
  exports["criticDispose"] = Napi::Function::New(env, CriticDispose, "criticDispose");
}

const Registrar registrar(register_critic);

}  // namespace
}  // namespace tiller::addon
