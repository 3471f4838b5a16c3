// Model handles: load from an HF folder (or create from a config and host tensors), save, logprobs,
// generation, parameters, training (micro-batch backward of masked NLL or the RL policy loss with
// accumulated gradients, AdamW steps), MoE routing replay and router statistics,
// and a weighted-NLL backward for parity tests. Long calls run as async work; each holds the
// model's own mutex so that calls on one model never overlap.
#include <chrono>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "addon/common.h"
#include "addon/mesh.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "addon/train_args.h"
#include "sync/reshard.h"
#include <torch/csrc/autograd/profiler_kineto.h>

#include <set>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "layers/logprob.h"
#include "models/registry.h"
#include "rollout/generate.h"
#include "train/grad_clip.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "train/policy_loss.h"
#include "train/schedule.h"
#include "train/session.h"

namespace tiller::addon {
namespace {

using models::CausalLM;

// Tags a JS handle as a model so that any other object passed in is refused.
constexpr napi_type_tag kModelTag = {0x7d1f3c2a9b4e4f61ULL, 0xa3c8e5d2b1f09e47ULL};

// The engine state of one model handle (train/session.h); the addon only converts and dispatches.
using ModelSlot = train::ModelSession;

// The JS handle owns a shared_ptr to the slot; running async work holds another, so dispose() while a
// call runs frees the model only when that call ends.
struct Handle {
  std::shared_ptr<ModelSlot> slot;
};

std::shared_ptr<ModelSlot> slot_of(const Napi::Value& value) {
  if (!value.IsExternal() || !value.As<Napi::External<Handle>>().CheckTypeTag(&kModelTag)) {
    throw std::invalid_argument("model: not a model handle");
  }
  auto* handle = value.As<Napi::External<Handle>>().Data();
  if (!handle->slot) throw std::invalid_argument("model: this model was disposed");
  return handle->slot;
}

// An Int32Array or BigInt64Array of ids, copied into an int64 tensor (the worker must not read JS memory).
at::Tensor ids_from_js(const Napi::Value& value, const char* field) {
  if (!value.IsTypedArray()) throw std::invalid_argument(std::string(field) + ": expected an Int32Array or BigInt64Array");
  auto array = value.As<Napi::TypedArray>();
  const auto n = static_cast<int64_t>(array.ElementLength());
  if (array.TypedArrayType() == napi_int32_array) return tensor_from_typed_array(array, at::kInt, {n}).to(at::kLong);
  if (array.TypedArrayType() == napi_bigint64_array) return tensor_from_typed_array(array, at::kLong, {n}).clone();
  throw std::invalid_argument(std::string(field) + ": expected an Int32Array or BigInt64Array");
}

std::vector<int64_t> cu_from_js(const Napi::Value& value, int64_t tokens) {
  const auto t = ids_from_js(value, "cuSeqlens");
  std::vector<int64_t> cu(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  if (cu.size() < 2 || cu.front() != 0 || cu.back() != tokens) {
    throw std::invalid_argument("cuSeqlens: must start at 0 and end at the token count " + std::to_string(tokens));
  }
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] - cu[i - 1] < 2) throw std::invalid_argument("cuSeqlens: sequence " + std::to_string(i - 1) + " has fewer than 2 tokens");
  }
  return cu;
}

// What every packed-batch call starts with: (handle, tokens, cuSeqlens) as info[0..2].
struct PackedArgs {
  std::shared_ptr<ModelSlot> slot;
  at::Tensor tokens;        // [tokens] int64, host copy
  std::vector<int64_t> cu;  // [sequences + 1]
};

PackedArgs packed_args(const Napi::CallbackInfo& info) {
  auto slot = slot_of(info[0]);
  auto tokens = ids_from_js(info[1], "tokens");
  auto cu = cu_from_js(info[2], tokens.numel());
  return {std::move(slot), std::move(tokens), std::move(cu)};
}

// A Float32Array copied into a [n] float tensor (the worker must not read JS memory).
at::Tensor floats_from_js(const Napi::Value& value) {
  auto array = value.As<Napi::TypedArray>();
  return tensor_from_typed_array(array, at::kFloat, {static_cast<int64_t>(array.ElementLength())}).clone();
}

Napi::Object host_tensor(Napi::Env env, const std::string& name, const at::Tensor& t) {
  auto out = Napi::Object::New(env);
  out["name"] = name;
  out["dtype"] = dtype_name(t.scalar_type());
  out["shape"] = shape_to_js(env, t.sizes());
  out["data"] = typed_array_from_tensor(env, t);
  return out;
}

// Base for the model's async calls: holds the slot (so dispose() cannot free it mid-call) and its
// mutex while the call runs.
class ModelWork : public PromiseWork {
 public:
  ModelWork(Napi::Env env, const char* name, std::shared_ptr<ModelSlot> slot)
      : PromiseWork(env, name), slot_(std::move(slot)) {}

 protected:
  virtual void RunLocked(ModelSlot& slot) = 0;
  // Works that handle offloaded parameters themselves (offload, onload, dispose).
  virtual bool skips_parameter_reload() const { return false; }

 private:
  void Run() final {
    std::lock_guard<std::mutex> lock(slot_->mutex);
    // Offloaded parameters come back before anything reads them (an offload call brings them
    // back only to send them away again: it checks first).
    if (!skips_parameter_reload()) train::ensure_parameters(*slot_);
    if (slot_->profile_path.empty()) {
      RunLocked(*slot_);
      return;
    }
    const auto path = std::move(slot_->profile_path);
    slot_->profile_path.clear();
    // Kineto's profiler is per thread: it is turned on here, on the thread the work runs on.
    namespace prof = torch::profiler::impl;
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    if (slot_->model->device().is_cuda()) activities.insert(prof::ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(prof::ProfilerConfig(prof::ProfilerState::KINETO), activities);
    torch::autograd::profiler::enableProfiler(prof::ProfilerConfig(prof::ProfilerState::KINETO), activities);
    try {
      RunLocked(*slot_);
      synchronize(slot_->model->device());
    } catch (...) {
      torch::autograd::profiler::disableProfiler();
      throw;
    }
    torch::autograd::profiler::disableProfiler()->save(path);
  }
  std::shared_ptr<ModelSlot> slot_;
};

// routedExperts: undefined, or an Int32Array of [tokens, moe_layers, top_k] expert ids where each
// row is all valid ids or all -1 (route normally) -> int64 host tensor, or undefined.
at::Tensor replay_from_js(const Napi::Value& value, const ModelSlot& slot, int64_t tokens) {
  if (value.IsUndefined() || value.IsNull()) return {};
  const auto moe = slot.model->moe_shape();
  if (moe.layers == 0) throw std::invalid_argument("routedExperts: this model has no MoE layers");
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw std::invalid_argument("routedExperts: expected an Int32Array");
  }
  auto array = value.As<Napi::TypedArray>();
  const auto expected = tokens * moe.layers * moe.top_k;
  if (static_cast<int64_t>(array.ElementLength()) != expected) {
    throw std::invalid_argument("routedExperts: has " + std::to_string(array.ElementLength()) + " entries, expected " +
                                std::to_string(expected) + " (tokens x moe layers x top_k = " + std::to_string(tokens) +
                                " x " + std::to_string(moe.layers) + " x " + std::to_string(moe.top_k) + ")");
  }
  const auto ids = tensor_from_typed_array(array, at::kInt, {tokens, moe.layers, moe.top_k}).to(at::kLong);
  const auto out_of_range = ids.lt(-1).logical_or(ids.ge(moe.experts)).any().item<bool>();
  const auto negative = ids.lt(0);
  const auto mixed = negative.any(-1).logical_and(negative.logical_not().any(-1)).any().item<bool>();
  if (out_of_range || mixed) {
    throw std::invalid_argument("routedExperts: every row must hold expert ids in 0.." + std::to_string(moe.experts - 1) +
                                ", or be all -1");
  }
  return ids;
}

// images: undefined, or {pixels: Float32Array [patches * patch_dim], grids: Int32Array [images * 3]}
// (transformers' pixel_values and image_grid_thw) -> host tensors, or null. The model checks the
// sizes against its vision config.
std::shared_ptr<const models::ImageInputs> images_from_js(const Napi::Value& value, const ModelSlot& slot) {
  if (value.IsUndefined() || value.IsNull()) return nullptr;
  if (!slot.model->accepts_images()) throw std::invalid_argument("images: this model takes no images");
  if (!value.IsObject()) throw std::invalid_argument("images: expected {pixels: Float32Array, grids: Int32Array}");
  const auto o = value.As<Napi::Object>();
  const auto pixels = o.Get("pixels"), grids = o.Get("grids");
  if (!pixels.IsTypedArray() || pixels.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw std::invalid_argument("images.pixels: expected a Float32Array");
  }
  if (!grids.IsTypedArray() || grids.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw std::invalid_argument("images.grids: expected an Int32Array of (t, h, w) per image");
  }
  auto out = std::make_shared<models::ImageInputs>();
  const auto g = grids.As<Napi::Int32Array>();
  if (g.ElementLength() % 3 != 0) throw std::invalid_argument("images.grids: needs 3 entries (t, h, w) per image");
  int64_t patches = 0;
  for (size_t i = 0; i < g.ElementLength(); i += 3) {
    if (g[i] < 1 || g[i + 1] < 1 || g[i + 2] < 1) throw std::invalid_argument("images.grids: entries must be >= 1");
    out->grids.insert(out->grids.end(), {g[i], g[i + 1], g[i + 2]});
    patches += static_cast<int64_t>(g[i]) * g[i + 1] * g[i + 2];
  }
  const auto p = pixels.As<Napi::TypedArray>();
  const auto values = static_cast<int64_t>(p.ElementLength());
  if (patches == 0 ? values != 0 : values % patches != 0) {
    throw std::invalid_argument("images.pixels: " + std::to_string(values) + " values do not divide into the grids' " +
                                std::to_string(patches) + " patches");
  }
  out->pixels = tensor_from_typed_array(p, at::kFloat, {patches, patches == 0 ? 0 : values / patches}).clone();
  return out;
}

using ImagesPtr = std::shared_ptr<const models::ImageInputs>;

using train::GradScope;
using train::next_token_rows;

using train::forward_logprobs;
class LogprobsWork final : public ModelWork {
 public:
  LogprobsWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, at::Tensor tokens, std::vector<int64_t> cu,
               double temperature, int64_t chunk, at::Tensor replay, ImagesPtr images)
      : ModelWork(env, "tiller.modelLogprobs", std::move(slot)), tokens_(std::move(tokens)), cu_(std::move(cu)),
        temperature_(temperature), chunk_(chunk), replay_(std::move(replay)), images_(std::move(images)) {}

  void RunLocked(ModelSlot& slot) override {
    at::NoGradGuard no_grad;
    const auto out = forward_logprobs(slot, tokens_, cu_, temperature_, chunk_, replay_, images_.get());
    logprob_ = out.logprob.to(at::kCPU).contiguous();
    entropy_ = out.entropy.to(at::kCPU).contiguous();
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["logprobs"] = typed_array_from_tensor(env, logprob_);
    out["entropy"] = typed_array_from_tensor(env, entropy_);
    return out;
  }

 private:
  at::Tensor tokens_;
  std::vector<int64_t> cu_;
  double temperature_;
  int64_t chunk_;
  at::Tensor replay_;
  ImagesPtr images_;
  at::Tensor logprob_, entropy_;
};

// The residual stream at one point of the forward: after the embedding (layer 0), after decoder
// layer l (layer l + 1), or the final normed hidden states (layer -1), as fp32 [tokens, hidden].
class ActivationsWork final : public ModelWork {
 public:
  ActivationsWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, at::Tensor tokens, std::vector<int64_t> cu,
                  int64_t layer, ImagesPtr images)
      : ModelWork(env, "tiller.modelActivations", std::move(slot)), tokens_(std::move(tokens)), cu_(std::move(cu)),
        layer_(layer), images_(std::move(images)) {}

  void RunLocked(ModelSlot& slot) override {
    at::NoGradGuard no_grad;
    auto& model = *slot.model;
    std::vector<at::Tensor> outputs;
    auto batch = models::pack_batch(tokens_.to(model.device()), cu_);
    batch.layer_outputs = &outputs;
    batch.images = images_.get();
    const auto final_hidden = model.forward(batch);
    const auto count = static_cast<int64_t>(outputs.size());
    if (layer_ < -1 || layer_ >= count) {
      throw std::invalid_argument("layer: " + std::to_string(layer_) + " is outside -1.." + std::to_string(count - 1) +
                                  " (0 embeddings, l + 1 after decoder layer l, -1 the final norm)");
    }
    const auto& chosen = layer_ == -1 ? final_hidden : outputs[static_cast<size_t>(layer_)];
    values_ = chosen.to(at::kCPU, at::kFloat).contiguous();
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["values"] = typed_array_from_tensor(env, values_);
    auto shape = Napi::Array::New(env, 2);
    shape[0u] = Napi::Number::New(env, static_cast<double>(values_.size(0)));
    shape[1u] = Napi::Number::New(env, static_cast<double>(values_.size(1)));
    out["shape"] = shape;
    return out;
  }

 private:
  at::Tensor tokens_;
  std::vector<int64_t> cu_;
  int64_t layer_;
  ImagesPtr images_;
  at::Tensor values_;
};

class LossBackwardWork final : public ModelWork {
 public:
  LossBackwardWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, at::Tensor tokens, std::vector<int64_t> cu,
                   at::Tensor weights, double temperature, int64_t chunk, at::Tensor replay, ImagesPtr images)
      : ModelWork(env, "tiller.modelLossBackward", std::move(slot)), tokens_(std::move(tokens)), cu_(std::move(cu)),
        weights_(std::move(weights)), temperature_(temperature), chunk_(chunk), replay_(std::move(replay)),
        images_(std::move(images)) {}

  void RunLocked(ModelSlot& slot) override {
    if (slot.grads_pending) {
      throw std::invalid_argument("model: trainStep gradients are pending; call optimizerStep before lossBackward");
    }
    if (slot.model->pipelined()) {
      throw std::invalid_argument("lossBackward: not under pipeline parallelism (use trainStep or policyStep)");
    }
    const auto& params = slot.model->named_parameters();
    GradScope scope(params);
    try {
      const auto out = forward_logprobs(slot, tokens_, cu_, temperature_, chunk_, replay_, images_.get());
      if (out.logprob.size(0) != weights_.size(0)) {
        throw std::invalid_argument("weights: has " + std::to_string(weights_.size(0)) + " entries, expected " +
                                    std::to_string(out.logprob.size(0)) + " (tokens minus sequences)");
      }
      const auto loss = -(weights_.to(out.logprob.device()) * out.logprob).sum();
      loss.backward();
      loss_ = loss.item<double>();
      for (const auto& [name, p] : params) {
        const auto g = p.grad().defined() ? p.grad() : at::zeros_like(p);
        grads_.emplace_back(name, g.to(at::kCPU).contiguous().clone());
      }
    } catch (...) {
      drop_grads(params);
      throw;
    }
    drop_grads(params);
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["loss"] = loss_;
    auto list = Napi::Array::New(env, grads_.size());
    for (size_t i = 0; i < grads_.size(); ++i) list[i] = host_tensor(env, grads_[i].first, grads_[i].second);
    out["gradients"] = list;
    return out;
  }

 private:
  static void drop_grads(const models::NamedTensors& params) {
    for (const auto& [_, p] : params) p.mutable_grad() = at::Tensor();
  }
  at::Tensor tokens_;
  std::vector<int64_t> cu_;
  at::Tensor weights_;
  double temperature_;
  int64_t chunk_;
  at::Tensor replay_;
  ImagesPtr images_;
  double loss_ = 0;
  models::NamedTensors grads_;
};

class GenerateWork final : public ModelWork {
 public:
  GenerateWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, std::vector<std::vector<int64_t>> prompts,
               rollout::GenerateOptions options, ImagesPtr images)
      : ModelWork(env, "tiller.modelGenerate", std::move(slot)), prompts_(std::move(prompts)), options_(std::move(options)),
        images_(std::move(images)) {}

  void RunLocked(ModelSlot& slot) override {
    options_.images = images_.get();
    options_.kv_cache_bytes = &slot.kv_cache_bytes;
    results_ = rollout::generate(*slot.model, prompts_, options_, &slot.decoder);
  }

  Napi::Value Result(Napi::Env env) override {
    auto list = Napi::Array::New(env, results_.size());
    for (size_t i = 0; i < results_.size(); ++i) {
      const auto& r = results_[i];
      auto item = Napi::Object::New(env);
      auto tokens = Napi::Int32Array::New(env, r.tokens.size());
      for (size_t j = 0; j < r.tokens.size(); ++j) tokens[j] = static_cast<int32_t>(r.tokens[j]);
      auto logprobs = Napi::Float32Array::New(env, r.logprobs.size());
      for (size_t j = 0; j < r.logprobs.size(); ++j) logprobs[j] = r.logprobs[j];
      item["tokens"] = tokens;
      item["logprobs"] = logprobs;
      item["finishReason"] = r.finish_reason;
      if (options_.record_experts) {
        auto experts = Napi::Int32Array::New(env, r.experts.size());
        std::copy(r.experts.begin(), r.experts.end(), experts.Data());
        item["experts"] = experts;
      }
      list[i] = item;
    }
    return list;
  }

 private:
  std::vector<std::vector<int64_t>> prompts_;
  rollout::GenerateOptions options_;
  ImagesPtr images_;
  std::vector<rollout::SequenceState> results_;
};

// One micro-batch: forward, masked NLL over the whole mini-batch's token count, backward. The
// gradients add to those of earlier micro-batches until modelOptimizerStep consumes them.
class TrainStepWork final : public ModelWork {
 public:
  TrainStepWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, at::Tensor tokens, std::vector<int64_t> cu,
                at::Tensor mask, double normaliser, double temperature, int64_t chunk, at::Tensor replay,
                ImagesPtr images)
      : ModelWork(env, "tiller.modelTrainStep", std::move(slot)), tokens_(std::move(tokens)), cu_(std::move(cu)),
        mask_(std::move(mask)), normaliser_(normaliser), temperature_(temperature), chunk_(chunk),
        replay_(std::move(replay)), images_(std::move(images)) {}

  void RunLocked(ModelSlot& slot) override {
    const auto predicted = tokens_.size(0) - static_cast<int64_t>(cu_.size()) + 1;
    if (mask_.size(0) != predicted) {
      throw std::invalid_argument("lossMask: has " + std::to_string(mask_.size(0)) + " entries, expected " +
                                  std::to_string(predicted) + " (tokens minus sequences)");
    }
    GradScope scope(slot.model->named_parameters());
    const train::MicroBatch mb{tokens_, cu_, replay_, images_.get()};
    train::train_micro_batches(slot, {mb}, temperature_, chunk_, [&](size_t, const layers::TokenLogprobs& out) {
      train::TokenLossInputs in;
      in.logprobs = out.logprob;                 // [tokens - sequences] fp32
      in.mask = mask_.to(out.logprob.device());  // [tokens - sequences]
      in.token_normaliser = normaliser_;
      auto loss = train::masked_token_nll(in);
      loss_ = loss.item<double>();
      return loss;
    });
    tokens_counted_ = mask_.sum().item<double>();
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["loss"] = loss_;
    out["tokens"] = tokens_counted_;
    return out;
  }

 private:
  at::Tensor tokens_;
  std::vector<int64_t> cu_;
  at::Tensor mask_;
  double normaliser_, temperature_;
  int64_t chunk_;
  at::Tensor replay_;
  ImagesPtr images_;
  double loss_ = 0, tokens_counted_ = 0;
};

// A micro-batch of the RL policy loss as the caller gave it.
struct PolicyMicroBatch {
  at::Tensor tokens;  // [tokens] int64, host
  std::vector<int64_t> cu;
  train::PolicyLossInputs inputs;  // per-token inputs (host) and the mini-batch's counts
  at::Tensor replay;
  ImagesPtr images;
};

// Micro-batches of the RL policy loss (train/policy_loss.h): forward, loss over the whole
// mini-batch's counts, backward, through train_micro_batches (1F1B under pipeline parallelism);
// gradients accumulate as for TrainStepWork. `batched`: the result lists every micro-batch and
// the schedule's measurements; otherwise it is the one micro-batch's.
class PolicyStepWork final : public ModelWork {
 public:
  PolicyStepWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, std::vector<PolicyMicroBatch> micro_batches,
                 train::PolicyLossConfig config, double temperature, int64_t chunk, bool batched)
      : ModelWork(env, batched ? "tiller.modelPolicySteps" : "tiller.modelPolicyStep", std::move(slot)),
        micro_batches_(std::move(micro_batches)), config_(config), temperature_(temperature), chunk_(chunk),
        batched_(batched) {}

  void RunLocked(ModelSlot& slot) override {
    GradScope scope(slot.model->named_parameters());
    std::vector<train::MicroBatch> list;
    for (const auto& mb : micro_batches_) list.push_back({mb.tokens, mb.cu, mb.replay, mb.images.get()});
    results_.assign(micro_batches_.size(), {});
    stats_ = train::train_micro_batches(slot, list, temperature_, chunk_, [&](size_t i, const layers::TokenLogprobs& out) {
      const auto& mb = micro_batches_[i];
      auto in = mb.inputs;
      const auto device = out.logprob.device();
      in.logprobs = out.logprob;  // [tokens - sequences] fp32
      in.entropy = out.entropy;
      for (auto* t : {&in.old_logprobs, &in.advantages, &in.mask, &in.ref_logprobs, &in.rollout_is_weights}) {
        if (t->defined()) *t = t->to(device);
      }
      // Sequence s predicts tokens cu[s] + 1 .. cu[s + 1] - 1, which sit at cu[s] - s .. cu[s + 1] - s - 1.
      std::vector<int64_t> predicted(mb.cu.size());
      for (size_t q = 0; q < mb.cu.size(); ++q) predicted[q] = mb.cu[q] - static_cast<int64_t>(q);
      in.cu_seqlens = at::tensor(predicted, at::kLong);
      auto result = train::policy_loss(config_, in);
      results_[i].loss = result.loss.item<double>();
      results_[i].metrics = result.metrics;
      if (!mb.inputs.old_logprobs.defined()) {
        // On-policy: this forward's logprobs are the old ones, and the caller gets them back.
        results_[i].logprobs = out.logprob.detach().to(at::kCPU).contiguous();
        results_[i].entropy = out.entropy.detach().to(at::kCPU).contiguous();
      }
      return result.loss;
    });
    for (size_t i = 0; i < micro_batches_.size(); ++i) results_[i].tokens = micro_batches_[i].inputs.mask.sum().item<double>();
  }

  Napi::Value Result(Napi::Env env) override {
    const auto one = [&](const Outcome& r) {
      auto out = Napi::Object::New(env);
      out["loss"] = r.loss;
      out["tokens"] = r.tokens;
      out["metrics"] = policy_metrics_to_js(env, r.metrics);
      if (r.logprobs.defined()) {
        out["logprobs"] = typed_array_from_tensor(env, r.logprobs);
        out["entropy"] = typed_array_from_tensor(env, r.entropy);
      }
      return out;
    };
    if (!batched_) return one(results_.at(0));
    auto list = Napi::Array::New(env, results_.size());
    for (size_t i = 0; i < results_.size(); ++i) list[i] = one(results_[i]);
    auto schedule = Napi::Object::New(env);
    schedule["stages"] = static_cast<double>(stats_.stages);
    schedule["microBatches"] = static_cast<double>(stats_.micro_batches);
    schedule["seconds"] = stats_.seconds;
    schedule["waitSeconds"] = stats_.wait_seconds;
    schedule["bytesSent"] = static_cast<double>(stats_.bytes_sent);
    auto out = Napi::Object::New(env);
    out["results"] = list;
    out["schedule"] = schedule;
    return out;
  }

 private:
  struct Outcome {
    double loss = 0, tokens = 0;
    train::PolicyLossMetrics metrics;
    at::Tensor logprobs, entropy;  // [tokens - sequences] fp32 host, when oldLogprobs was left out
  };
  std::vector<PolicyMicroBatch> micro_batches_;
  train::PolicyLossConfig config_;
  double temperature_;
  int64_t chunk_;
  bool batched_;
  std::vector<Outcome> results_;
  train::ScheduleStats stats_;
};

// Clip, rate from the schedule, AdamW, drop the gradients. A non-finite norm skips the update
// (and does not advance the schedule), as Megatron does for an overflowed step.
class OptimizerStepWork final : public ModelWork {
 public:
  OptimizerStepWork(Napi::Env env, std::shared_ptr<ModelSlot> slot)
      : ModelWork(env, "tiller.modelOptimizerStep", std::move(slot)) {}

  void RunLocked(ModelSlot& slot) override {
    const auto r = train::optimizer_step(slot);
    grad_norm_ = r.grad_norm;
    lr_ = r.lr;
    skipped_ = r.skipped;
    step_ = r.step;
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["gradNorm"] = grad_norm_;
    out["lr"] = lr_;
    out["step"] = step_;
    out["skipped"] = skipped_;
    return out;
  }

 private:
  double grad_norm_ = 0, lr_ = 0;
  int64_t step_ = 0;
  bool skipped_ = false;
};

// config.json (dtype updated) plus safetensors with HF names. Tied models have no lm_head.weight
// parameter, so it is not written, as HF save_pretrained does.
class SaveWork final : public ModelWork {
 public:
  SaveWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, std::string dir, int64_t max_shard_bytes)
      : ModelWork(env, "tiller.modelSave", std::move(slot)), dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {}

  void RunLocked(ModelSlot& slot) override { train::save_model(slot, dir_, max_shard_bytes_); }

 private:
  std::string dir_;
  int64_t max_shard_bytes_;
};

// Writes the optimizer's state (fp32 moments, step counters, masters of non-fp32 parameters) to one
// safetensors file, atomically, with the update count in its metadata: with the model's own folder
// (save) it is everything needed to continue training exactly.
class SaveOptimizerWork final : public ModelWork {
 public:
  SaveOptimizerWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, std::string file)
      : ModelWork(env, "tiller.modelSaveOptimizer", std::move(slot)), file_(std::move(file)) {}

  void RunLocked(ModelSlot& slot) override { train::save_optimizer(slot, file_); }
  std::string ErrorPrefix() const override { return "model.saveOptimizer(" + file_ + "): "; }

 private:
  std::string file_;
};

// Reads a file SaveOptimizerWork wrote into the model's optimizer (made by initOptimizer with the
// same options): moments, counters, masters (written back into the parameters) and the update count.
class LoadOptimizerWork final : public ModelWork {
 public:
  LoadOptimizerWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, std::string file)
      : ModelWork(env, "tiller.modelLoadOptimizer", std::move(slot)), file_(std::move(file)) {}

  void RunLocked(ModelSlot& slot) override { train::load_optimizer(slot, file_); }
  std::string ErrorPrefix() const override { return "model.loadOptimizer(" + file_ + "): "; }

 private:
  std::string file_;
};

Napi::Value wrap_slot(Napi::Env env, std::shared_ptr<ModelSlot> slot) {
  auto handle = Napi::External<Handle>::New(env, new Handle{std::move(slot)}, [](Napi::Env, Handle* h) { delete h; });
  handle.TypeTag(&kModelTag);
  return handle;
}

class LoadWork final : public PromiseWork {
 public:
  LoadWork(Napi::Env env, std::string dir, models::BuildOptions options)
      : PromiseWork(env, "tiller.modelLoad"), dir_(std::move(dir)), options_(std::move(options)) {}

 protected:
  void Run() override {
    const auto checkpoint = io::open_checkpoint(dir_);
    slot_ = std::make_shared<ModelSlot>();
    slot_->config = checkpoint.config;
    slot_->mesh = options_.mesh;
    // The builder casts (and copies) this rank's slice of every tensor, so nothing aliases the
    // mapped files after this, and the pages of other ranks' slices are never read.
    slot_->model = models::build_model(models::HfConfig(checkpoint.config), checkpoint.tensors, options_);
  }
  Napi::Value Result(Napi::Env env) override { return wrap_slot(env, std::move(slot_)); }
  std::string ErrorPrefix() const override { return "model.load(" + dir_ + "): "; }

 private:
  std::string dir_;
  models::BuildOptions options_;
  std::shared_ptr<ModelSlot> slot_;
};

// modelCreate(configJson: string, tensors: {name, dtype, shape, data}[], device: string, dtype: string,
//             freezeVision?: boolean) -> handle
Napi::Value ModelCreate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = std::make_shared<ModelSlot>();
    slot->config = io::Json::parse(info[0].As<Napi::String>().Utf8Value());
    models::WeightMap weights;
    auto list = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); ++i) {
      auto t = list.Get(i).As<Napi::Object>();
      const auto name = t.Get("name").As<Napi::String>().Utf8Value();
      const auto field = "tensors[" + std::to_string(i) + "]";
      weights[name] = tensor_from_typed_array(t.Get("data").As<Napi::TypedArray>(),
                                              dtype_from_name(t.Get("dtype").As<Napi::String>().Utf8Value()),
                                              shape_from_js(t.Get("shape"), (field + ".shape").c_str()));
    }
    const auto device = parse_device(info[2].As<Napi::String>().Utf8Value());
    models::BuildOptions options(device, dtype_from_name(info[3].As<Napi::String>().Utf8Value()));
    options.freeze_vision = info[4].ToBoolean().Value();
    // The builder copies every tensor, so nothing aliases JS memory once this returns.
    slot->model = models::build_model(models::HfConfig(slot->config), weights, options);
    return wrap_slot(env, std::move(slot));
  });
}

// modelLoad(dir: string, device: string, dtype: string, mesh?: handle, sequenceParallel?: boolean, freezeVision?: boolean)
//   -> Promise<handle>; with a mesh, every rank of it loads its slices (a collective model).
Napi::Value ModelLoad(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    models::BuildOptions options(parse_device(info[1].As<Napi::String>().Utf8Value()),
                                 dtype_from_name(info[2].As<Napi::String>().Utf8Value()));
    if (!info[3].IsUndefined() && !info[3].IsNull()) {
      options.mesh = mesh_of(info[3]);
      if (options.mesh->tensor().device() != options.device) {
        throw std::invalid_argument("device: " + options.device.str() + " differs from the mesh's " +
                                    options.mesh->tensor().device().str() + " (" +
                                    options.mesh->tensor().backend() + " works there)");
      }
    }
    options.sequence_parallel = info[4].ToBoolean().Value();
    options.freeze_vision = info[5].ToBoolean().Value();
    return queue_work<LoadWork>(env, info[0].As<Napi::String>().Utf8Value(), std::move(options));
  });
}

// The whole parameters or gradients (train::gather_parameters / gather_gradients), as host tensors.
class GatherWork final : public ModelWork {
 public:
  GatherWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, bool gradients)
      : ModelWork(env, "tiller.modelGather", std::move(slot)), gradients_(gradients) {}

  void RunLocked(ModelSlot& slot) override {
    tensors_ = gradients_ ? train::gather_gradients(slot) : train::gather_parameters(slot);
  }

  Napi::Value Result(Napi::Env env) override {
    auto list = Napi::Array::New(env, tensors_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) list[i] = host_tensor(env, tensors_[i].first, tensors_[i].second);
    return list;
  }

 private:
  bool gradients_;
  models::NamedTensors tensors_;
};

// modelGather(handle, what: "parameters" | "gradients") -> Promise<{name, dtype, shape, data}[]>: whole
// tensors on every rank of the model's mesh (a collective); on one device, host copies.
Napi::Value ModelGather(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto what = info[1].As<Napi::String>().Utf8Value();
    if (what != "parameters" && what != "gradients") {
      throw std::invalid_argument("what: '" + what + "'; allowed: parameters, gradients");
    }
    return queue_work<GatherWork>(env, slot_of(info[0]), what == "gradients");
  });
}

// modelSave(handle, dir: string, maxShardBytes: number) -> Promise<void>
Napi::Value ModelSave(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<SaveWork>(env, slot_of(info[0]), info[1].As<Napi::String>().Utf8Value(),
                                info[2].As<Napi::Number>().Int64Value());
  });
}

// modelTrainStep(handle, tokens, cuSeqlens, lossMask: Float32Array [tokens - sequences], tokenNormaliser,
//                temperature, chunkTokens, routedExperts?: Int32Array, images?) -> Promise<{loss, tokens}>
Napi::Value ModelTrainStep(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto [slot, tokens, cu] = packed_args(info);
    auto replay = replay_from_js(info[7], *slot, tokens.numel());
    auto images = images_from_js(info[8], *slot);
    return queue_work<TrainStepWork>(env, slot, tokens, cu, floats_from_js(info[3]), info[4].As<Napi::Number>().DoubleValue(),
                                     info[5].As<Napi::Number>().DoubleValue(), info[6].As<Napi::Number>().Int64Value(),
                                     std::move(replay), std::move(images));
  });
}

// One policy micro-batch from its JS values (field: where they sit, for messages).
PolicyMicroBatch policy_micro_batch(const ModelSlot& slot, at::Tensor tokens, std::vector<int64_t> cu,
                                    const Napi::Value& per_token_value, const Napi::Object& counts,
                                    const train::PolicyLossConfig& config, const Napi::Value& replay,
                                    const Napi::Value& images, const std::string& field) {
  if (!per_token_value.IsObject()) {
    throw std::invalid_argument(field + "perToken: expected {oldLogprobs?, advantages, mask, refLogprobs?}");
  }
  const auto per_token = per_token_value.As<Napi::Object>();
  const auto predicted = tokens.numel() - static_cast<int64_t>(cu.size()) + 1;
  const auto where = field + "perToken";
  PolicyMicroBatch mb;
  auto& in = mb.inputs;
  // Left out: on-policy (train/policy_loss.h), and the result carries this forward's logprobs and entropy.
  in.old_logprobs = float_tokens_field(per_token, "oldLogprobs", where.c_str(), predicted, false);
  in.advantages = float_tokens_field(per_token, "advantages", where.c_str(), predicted, true);
  in.mask = float_tokens_field(per_token, "mask", where.c_str(), predicted, true);
  in.ref_logprobs = float_tokens_field(per_token, "refLogprobs", where.c_str(), predicted, false);
  in.rollout_is_weights = float_tokens_field(per_token, "rolloutIsWeights", where.c_str(), predicted, false);
  in.global_tokens = number_field(counts, "tokens", "counts", 1);
  in.global_sequences = number_field(counts, "sequences", "counts", 1);
  if (config.kl != train::KlPenalty::kNone && !in.ref_logprobs.defined()) {
    throw std::invalid_argument(where + ".refLogprobs: required when config.kl.type is not none");
  }
  mb.replay = replay_from_js(replay, slot, tokens.numel());
  mb.images = images_from_js(images, slot);
  mb.tokens = std::move(tokens);
  mb.cu = std::move(cu);
  return mb;
}

// modelPolicyStep(handle, tokens, cuSeqlens, perToken: {oldLogprobs?, advantages, mask, refLogprobs?, rolloutIsWeights?:
//                 Float32Array [tokens - sequences]}, counts: {tokens, sequences}, config, temperature, chunkTokens,
//                 routedExperts?: Int32Array, images?) -> Promise<{loss, tokens, metrics, logprobs?, entropy?}>:
//                 without oldLogprobs the update is on-policy (old = this forward's logprobs) and the result
//                 carries those logprobs and their entropy, [tokens - sequences] each.
Napi::Value ModelPolicyStep(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto [slot, tokens, cu] = packed_args(info);
    if (!info[4].IsObject()) throw std::invalid_argument("counts: expected {tokens, sequences}");
    if (!info[5].IsObject()) throw std::invalid_argument("config: expected an object");
    auto config = policy_loss_config_from_js(info[5].As<Napi::Object>(), "config");
    std::vector<PolicyMicroBatch> one;
    one.push_back(policy_micro_batch(*slot, std::move(tokens), std::move(cu), info[3], info[4].As<Napi::Object>(), config,
                                     info[8], info[9], ""));
    return queue_work<PolicyStepWork>(env, slot, std::move(one), config, info[6].As<Napi::Number>().DoubleValue(),
                                      info[7].As<Napi::Number>().Int64Value(), /*batched=*/false);
  });
}

// modelPolicySteps(handle, microBatches: [{tokens, cuSeqlens, perToken, routedExperts?, images?}], counts, config,
//                  temperature, chunkTokens) -> Promise<{results: [{loss, tokens, metrics, logprobs?, entropy?}], schedule: {stages,
//                  microBatches, seconds, waitSeconds, bytesSent}}>: every micro-batch of a mini-batch in one
//                  call, so a pipeline can run them 1F1B.
Napi::Value ModelPolicySteps(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    if (!info[1].IsArray()) throw std::invalid_argument("microBatches: expected an array");
    if (!info[2].IsObject()) throw std::invalid_argument("counts: expected {tokens, sequences}");
    if (!info[3].IsObject()) throw std::invalid_argument("config: expected an object");
    auto config = policy_loss_config_from_js(info[3].As<Napi::Object>(), "config");
    const auto array = info[1].As<Napi::Array>();
    std::vector<PolicyMicroBatch> list;
    for (uint32_t i = 0; i < array.Length(); ++i) {
      const auto field = "microBatches[" + std::to_string(i) + "].";
      const Napi::Value entry = array[i];
      if (!entry.IsObject()) throw std::invalid_argument(field + ": expected {tokens, cuSeqlens, perToken}");
      const auto o = entry.As<Napi::Object>();
      auto tokens = ids_from_js(o.Get("tokens"), (field + "tokens").c_str());
      auto cu = cu_from_js(o.Get("cuSeqlens"), tokens.numel());
      list.push_back(policy_micro_batch(*slot, std::move(tokens), std::move(cu), o.Get("perToken"),
                                        info[2].As<Napi::Object>(), config, o.Get("routedExperts"), o.Get("images"), field));
    }
    return queue_work<PolicyStepWork>(env, slot, std::move(list), config, info[4].As<Napi::Number>().DoubleValue(),
                                      info[5].As<Napi::Number>().Int64Value(), /*batched=*/true);
  });
}

// modelOptimizerInit(handle, {lr, beta1?, beta2?, eps?, weightDecay?, noDecay?, schedule: {kind, warmupSteps?,
//                    totalSteps?, minLrRatio?}, maxGradNorm?}): AdamW over the model's parameters, from step 0.
Napi::Value ModelOptimizerInit(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    if (!info[1].IsObject()) throw std::invalid_argument("options: expected an object");
    auto o = info[1].As<Napi::Object>();
    auto config = adamw_config_from_js(o, "options");
    if (!o.Get("schedule").IsObject()) throw std::invalid_argument("options.schedule: expected an object");
    auto schedule = schedule_from_js(o.Get("schedule").As<Napi::Object>(), "options.schedule", config.lr);
    const auto max_norm = number_field(o, "maxGradNorm", "options", std::numeric_limits<double>::infinity());
    if (!(max_norm > 0)) throw std::invalid_argument("options.maxGradNorm: must be > 0");
    std::lock_guard<std::mutex> lock(slot->mutex);
    train::init_optimizer(*slot, std::move(config), schedule, max_norm);
    return env.Undefined();
  });
}

// modelOptimizerStep(handle) -> Promise<{gradNorm, lr, step, skipped}>
Napi::Value ModelOptimizerStep(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<OptimizerStepWork>(env, slot_of(info[0]));
  });
}

// The optimizer state to host memory and back (train::offload_optimizer / reload_optimizer),
// off the JS thread: the copies of a large state take a while.
class OffloadWork final : public ModelWork {
 public:
  OffloadWork(Napi::Env env, std::shared_ptr<ModelSlot> slot, bool to_host, bool parameters)
      : ModelWork(env, to_host ? "tiller.modelOffload" : "tiller.modelOnload", std::move(slot)),
        to_host_(to_host),
        parameters_(parameters) {}

  bool skips_parameter_reload() const override { return true; }

  void RunLocked(ModelSlot& slot) override {
    const auto start = std::chrono::steady_clock::now();
    if (parameters_) {
      bytes_ = to_host_ ? train::offload_parameters(slot) : train::reload_parameters(slot);
    } else {
      bytes_ = to_host_ ? train::offload_optimizer(slot) : train::reload_optimizer(slot);
    }
    synchronize(slot.model->device());
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["bytes"] = static_cast<double>(bytes_);
    out["seconds"] = seconds_;
    return out;
  }

 private:
  bool to_host_, parameters_;
  int64_t bytes_ = 0;
  double seconds_ = 0;
};

// modelOffload(handle) / modelOnload(handle) -> Promise<{bytes, seconds}>: the optimizer state to
// host memory (pinned on CUDA) and back; bytes 0 when it was already there.
// The second argument: "optimizer" (default) or "parameters".
bool offload_parameters_arg(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || info[1].IsUndefined()) return false;
  const auto what = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : std::string();
  if (what != "optimizer" && what != "parameters") {
    throw std::invalid_argument("what: expected \"optimizer\" or \"parameters\"");
  }
  return what == "parameters";
}

Napi::Value ModelOffload(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<OffloadWork>(env, slot_of(info[0]), true, offload_parameters_arg(info));
  });
}

Napi::Value ModelOnload(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<OffloadWork>(env, slot_of(info[0]), false, offload_parameters_arg(info));
  });
}

// Both models locked (in one step, so two reshards in opposite directions cannot deadlock), then
// sync::reshard from the first into the second.
class ReshardWork final : public PromiseWork {
 public:
  ReshardWork(Napi::Env env, std::shared_ptr<ModelSlot> from, std::shared_ptr<ModelSlot> to, int64_t bucket,
              bool verify)
      : PromiseWork(env, "tiller.modelReshard"),
        from_(std::move(from)),
        to_(std::move(to)),
        bucket_(bucket),
        verify_(verify) {}

 protected:
  void Run() override {
    std::scoped_lock lock(from_->mutex, to_->mutex);
    if (!from_->mesh || !to_->mesh) throw std::invalid_argument("reshard: both models must be loaded with a mesh");
    train::ensure_parameters(*from_);
    train::ensure_parameters(*to_);
    const auto& c = from_->config;
    const auto& text = c.has("num_hidden_layers") ? c : c.at("text_config");
    const auto layers = static_cast<int64_t>(text.at("num_hidden_layers").as_number());
    stats_ = sync::reshard(*from_->model, *from_->mesh, *to_->model, *to_->mesh, layers, bucket_, verify_);
    synchronize(to_->model->device());
  }

  Napi::Value Result(Napi::Env env) override {
    auto out = Napi::Object::New(env);
    out["tensors"] = static_cast<double>(stats_.tensors);
    out["bytesSent"] = static_cast<double>(stats_.bytes_sent);
    out["bytesReceived"] = static_cast<double>(stats_.bytes_received);
    out["bytesCopied"] = static_cast<double>(stats_.bytes_copied);
    out["buckets"] = static_cast<double>(stats_.buckets);
    out["verified"] = static_cast<double>(stats_.verified);
    out["seconds"] = stats_.seconds;
    return out;
  }

 private:
  std::shared_ptr<ModelSlot> from_, to_;
  int64_t bucket_;
  bool verify_;
  sync::ReshardStats stats_;
};

// modelReshard(from, to, bucketBytes, verify?) -> Promise<{tensors, bytesSent, bytesReceived, bytesCopied,
// buckets, verified, seconds}>: `to`'s parameters become `from`'s weights in `to`'s layout; `verify`
// checks every received region against its sender's checksum. Collective over all ranks.
Napi::Value ModelReshard(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto from = slot_of(info[0]);
    auto to = slot_of(info[1]);
    if (from == to) throw std::invalid_argument("to: the same model as from");
    const auto bucket = info[2].As<Napi::Number>().Int64Value();
    if (bucket < 1) throw std::invalid_argument("bucketBytes: must be >= 1");
    const bool verify = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
    return queue_work<ReshardWork>(env, std::move(from), std::move(to), bucket, verify);
  });
}

// modelSetTraining(handle, {lr?, maxGradNorm?}): changes the peak rate (the schedule keeps its shape
// and position) and the clipping norm between steps; the optimizer state is kept.
Napi::Value ModelSetTraining(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    if (!info[1].IsObject()) throw std::invalid_argument("options: expected {lr?, maxGradNorm?, recompute?}");
    auto o = info[1].As<Napi::Object>();
    std::lock_guard<std::mutex> lock(slot->mutex);
    if (o.Has("recompute")) {
      const auto r = o.Get("recompute");
      if (!r.IsObject()) throw std::invalid_argument("options.recompute: expected {granularity, layers?}");
      const auto ro = r.As<Napi::Object>();
      layers::RecomputePolicy policy;
      policy.granularity = layers::recompute_from_name(string_field(ro, "granularity", "options.recompute"),
                                                       "options.recompute.granularity");
      if (ro.Has("layers")) {
        const double n = number_field(ro, "layers", "options.recompute", 0);
        if (!(n >= 0) || n != static_cast<double>(static_cast<int64_t>(n))) {
          throw std::invalid_argument("options.recompute.layers: must be an integer >= 0 (layers from the first)");
        }
        policy.layers = static_cast<int64_t>(n);
      }
      slot->model->set_recompute(policy);
    }
    if ((o.Has("lr") || o.Has("maxGradNorm")) && !slot->has_optimizer()) {
      throw std::invalid_argument("model: no optimizer; call initOptimizer first");
    }
    if (o.Has("lr")) {
      const double lr = number_field(o, "lr", "options", 0);
      if (!(lr > 0)) throw std::invalid_argument("options.lr: must be > 0");
      slot->schedule.lr = lr;
    }
    if (o.Has("maxGradNorm")) {
      const double norm = number_field(o, "maxGradNorm", "options", 0);
      if (!(norm > 0)) throw std::invalid_argument("options.maxGradNorm: must be > 0");
      slot->max_grad_norm = norm;
    }
    return env.Undefined();
  });
}

// modelProfileNext(handle, path): the next call on this model runs under the Kineto profiler (CPU
// ops and, on CUDA, kernels) and writes a Chrome trace (JSON) to path.
Napi::Value ModelProfileNext(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    std::lock_guard<std::mutex> lock(slot->mutex);
    slot->profile_path = info[1].As<Napi::String>().Utf8Value();
    return env.Undefined();
  });
}

// modelSaveOptimizer(handle, file) -> Promise<void>; modelLoadOptimizer(handle, file) -> Promise<void>
Napi::Value ModelSaveOptimizer(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<SaveOptimizerWork>(env, slot_of(info[0]), info[1].As<Napi::String>().Utf8Value());
  });
}

Napi::Value ModelLoadOptimizer(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return queue_work<LoadOptimizerWork>(env, slot_of(info[0]), info[1].As<Napi::String>().Utf8Value());
  });
}

// modelDispose(handle): frees the model (after any running call); later calls throw.
Napi::Value ModelDispose(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    slot_of(info[0]);
    info[0].As<Napi::External<Handle>>().Data()->slot.reset();
    return env.Undefined();
  });
}

// modelLogprobs(handle, tokens, cuSeqlens, temperature, chunkTokens, routedExperts?: Int32Array, images?)
//   -> Promise<{logprobs, entropy}>
Napi::Value ModelLogprobs(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto [slot, tokens, cu] = packed_args(info);
    auto replay = replay_from_js(info[5], *slot, tokens.numel());
    auto images = images_from_js(info[6], *slot);
    return queue_work<LogprobsWork>(env, slot, tokens, cu, info[3].As<Napi::Number>().DoubleValue(),
                                    info[4].As<Napi::Number>().Int64Value(), std::move(replay), std::move(images));
  });
}

// modelActivations(handle, tokens, cuSeqlens, layer, images?) -> Promise<{values: Float32Array, shape: [tokens, hidden]}>
Napi::Value ModelActivations(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto [slot, tokens, cu] = packed_args(info);
    auto images = images_from_js(info[4], *slot);
    return queue_work<ActivationsWork>(env, slot, tokens, cu, info[3].As<Napi::Number>().Int64Value(), std::move(images));
  });
}

// modelLossBackward(handle, tokens, cuSeqlens, weights: Float32Array, temperature, chunkTokens,
//                   routedExperts?: Int32Array, images?) -> Promise<{loss, gradients}>
Napi::Value ModelLossBackward(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto [slot, tokens, cu] = packed_args(info);
    auto replay = replay_from_js(info[6], *slot, tokens.numel());
    auto images = images_from_js(info[7], *slot);
    return queue_work<LossBackwardWork>(env, slot, tokens, cu, floats_from_js(info[3]), info[4].As<Napi::Number>().DoubleValue(),
                                        info[5].As<Napi::Number>().Int64Value(), std::move(replay), std::move(images));
  });
}

// modelGenerate(handle, prompts: Int32Array[], {maxNewTokens, maxNewTokensEach?, temperature, topK, topP, stopTokenIds, seed,
//               sequenceOffset, recordExperts, images?}) -> Promise<{tokens, logprobs, finishReason, experts?}[]>
Napi::Value ModelGenerate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    auto list = info[1].As<Napi::Array>();
    std::vector<std::vector<int64_t>> prompts;
    for (uint32_t i = 0; i < list.Length(); ++i) {
      const auto t = ids_from_js(list.Get(i), ("prompts[" + std::to_string(i) + "]").c_str());
      prompts.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
    }
    auto o = info[2].As<Napi::Object>();
    rollout::GenerateOptions options;
    options.stop.max_new_tokens = o.Get("maxNewTokens").As<Napi::Number>().Int64Value();
    if (o.Has("maxNewTokensEach")) {
      // Schedule refuses a count that is not one per prompt.
      auto each = o.Get("maxNewTokensEach").As<Napi::Array>();
      for (uint32_t i = 0; i < each.Length(); ++i) {
        options.stop.max_new_tokens_each.push_back(each.Get(i).As<Napi::Number>().Int64Value());
      }
    }
    options.sampling.temperature = o.Get("temperature").As<Napi::Number>().DoubleValue();
    options.sampling.top_k = o.Get("topK").As<Napi::Number>().Int64Value();
    options.sampling.top_p = o.Get("topP").As<Napi::Number>().DoubleValue();
    options.seed = static_cast<uint64_t>(o.Get("seed").As<Napi::Number>().Int64Value());
    options.sequence_offset = static_cast<uint64_t>(o.Get("sequenceOffset").As<Napi::Number>().Int64Value());
    options.record_experts = o.Get("recordExperts").ToBoolean().Value();
    auto stops = o.Get("stopTokenIds").As<Napi::Array>();
    for (uint32_t i = 0; i < stops.Length(); ++i) {
      options.stop.stop_token_ids.push_back(stops.Get(i).As<Napi::Number>().Int64Value());
    }
    auto images = images_from_js(o.Get("images"), *slot);
    return queue_work<GenerateWork>(env, slot, std::move(prompts), std::move(options), std::move(images));
  });
}

// Host copies of one tensor per parameter, chosen by `pick`, as {name, dtype, shape, data}[].
template <typename Pick>
Napi::Value named_host_copies(const Napi::CallbackInfo& info, Pick pick) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    std::lock_guard<std::mutex> lock(slot->mutex);
    const auto& params = slot->model->named_parameters();
    auto list = Napi::Array::New(env, params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      list[i] = host_tensor(env, params[i].first, pick(params[i].second).to(at::kCPU).contiguous().clone());
    }
    return list;
  });
}

// modelParameters(handle) -> {name, dtype, shape, data}[] (host copies of the parameters, then the buffers)
Napi::Value ModelParameters(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    std::lock_guard<std::mutex> lock(slot->mutex);
    train::ensure_parameters(*slot);
    auto tensors = slot->model->named_parameters();
    const auto& buffers = slot->model->named_buffers();
    tensors.insert(tensors.end(), buffers.begin(), buffers.end());
    auto list = Napi::Array::New(env, tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      list[i] = host_tensor(env, tensors[i].first, tensors[i].second.detach().to(at::kCPU).contiguous().clone());
    }
    return list;
  });
}

// modelGradients(handle) -> {name, dtype, shape, data}[]: host copies of the gradients trainStep and
// policyStep accumulated since the last optimizer step (zeros where none).
Napi::Value ModelGradients(const Napi::CallbackInfo& info) {
  return named_host_copies(info, [](const at::Tensor& p) { return p.grad().defined() ? p.grad().detach() : at::zeros_like(p); });
}

// modelMoeShape(handle) -> {layers, experts, topK} (all 0 for a dense model)
Napi::Value ModelMoeShape(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto moe = slot_of(info[0])->model->moe_shape();
    auto out = Napi::Object::New(env);
    out["layers"] = moe.layers;
    out["experts"] = moe.experts;
    out["topK"] = moe.top_k;
    return out;
  });
}

// modelRouterStats(handle) -> {tokens, tokensPerExpert: Int32Array[] (per MoE layer), entropySum: Float64Array}:
// summed over the logprobs/lossBackward/trainStep/policyStep forwards since the last call, then reset.
Napi::Value ModelRouterStats(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    std::lock_guard<std::mutex> lock(slot->mutex);
    auto& totals = slot->router_stats;
    train::complete_router_stats(*slot);
    const auto layers = totals.tokens_per_expert.size();
    auto counts = Napi::Array::New(env, layers);
    auto entropy = Napi::Float64Array::New(env, layers);
    for (size_t l = 0; l < layers; ++l) {
      counts[l] = typed_array_from_tensor(env, totals.tokens_per_expert[l].to(at::kCPU, at::kInt).contiguous());
      entropy[l] = totals.entropy_sum[l].item<double>();
    }
    auto out = Napi::Object::New(env);
    out["tokens"] = static_cast<double>(totals.tokens);
    out["tokensPerExpert"] = counts;
    out["entropySum"] = entropy;
    totals.tokens_per_expert.clear();
    totals.entropy_sum.clear();
    totals.tokens = 0;
    return out;
  });
}

// modelMemory(handle, resetPeak = true) -> {parameters, gradients, optimizer, optimizerHost, buffers, kvCache,
// device?: {allocated, peak, reserved}}: bytes this rank holds by kind, counted from the tensors; also the
// device allocator's current, peak (since the last read with resetPeak) and reserved bytes (CUDA's
// caching allocator; on CPU the engine's count of live CPU tensors).
Napi::Value ModelMemory(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    const bool reset = !(info.Length() > 1 && info[1].IsBoolean()) || info[1].As<Napi::Boolean>().Value();
    std::lock_guard<std::mutex> lock(slot->mutex);
    const auto m = train::memory_of(*slot, reset);
    auto out = Napi::Object::New(env);
    out["parameters"] = static_cast<double>(m.parameters);
    out["gradients"] = static_cast<double>(m.gradients);
    out["optimizer"] = static_cast<double>(m.optimizer);
    out["buffers"] = static_cast<double>(m.buffers);
    out["optimizerHost"] = static_cast<double>(m.optimizer_host);
    out["parametersHost"] = static_cast<double>(m.parameters_host);
    out["kvCache"] = static_cast<double>(m.kv_cache);
    if (m.device_allocated >= 0) {
      auto device = Napi::Object::New(env);
      device["allocated"] = static_cast<double>(m.device_allocated);
      device["peak"] = static_cast<double>(m.device_peak);
      device["reserved"] = static_cast<double>(m.device_reserved);
      out["device"] = device;
    }
    return out;
  });
}

// supportedArchitectures() -> string[]
Napi::Value SupportedArchitectures(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  const auto names = models::supported_architectures();
  auto list = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); ++i) list[i] = names[i];
  return list;
}

void register_model(Napi::Env env, Napi::Object exports) {
  exports["modelCreate"] = Napi::Function::New(env, ModelCreate, "modelCreate");
  exports["modelLoad"] = Napi::Function::New(env, ModelLoad, "modelLoad");
  exports["modelGather"] = Napi::Function::New(env, ModelGather, "modelGather");
  exports["modelSave"] = Napi::Function::New(env, ModelSave, "modelSave");
  exports["modelTrainStep"] = Napi::Function::New(env, ModelTrainStep, "modelTrainStep");
  exports["modelPolicySteps"] = Napi::Function::New(env, ModelPolicySteps, "modelPolicySteps");
  exports["modelPolicyStep"] = Napi::Function::New(env, ModelPolicyStep, "modelPolicyStep");
  exports["modelOptimizerInit"] = Napi::Function::New(env, ModelOptimizerInit, "modelOptimizerInit");
  exports["modelOptimizerStep"] = Napi::Function::New(env, ModelOptimizerStep, "modelOptimizerStep");
  exports["modelProfileNext"] = Napi::Function::New(env, ModelProfileNext, "modelProfileNext");
  exports["modelReshard"] = Napi::Function::New(env, ModelReshard, "modelReshard");
  exports["modelOffload"] = Napi::Function::New(env, ModelOffload, "modelOffload");
  exports["modelOnload"] = Napi::Function::New(env, ModelOnload, "modelOnload");
  exports["modelMemory"] = Napi::Function::New(env, ModelMemory, "modelMemory");
  exports["modelSetTraining"] = Napi::Function::New(env, ModelSetTraining, "modelSetTraining");
  exports["modelSaveOptimizer"] = Napi::Function::New(env, ModelSaveOptimizer, "modelSaveOptimizer");
  exports["modelLoadOptimizer"] = Napi::Function::New(env, ModelLoadOptimizer, "modelLoadOptimizer");
  exports["modelDispose"] = Napi::Function::New(env, ModelDispose, "modelDispose");
  exports["modelLogprobs"] = Napi::Function::New(env, ModelLogprobs, "modelLogprobs");
  exports["modelActivations"] = Napi::Function::New(env, ModelActivations, "modelActivations");
  exports["modelLossBackward"] = Napi::Function::New(env, ModelLossBackward, "modelLossBackward");
  exports["modelGenerate"] = Napi::Function::New(env, ModelGenerate, "modelGenerate");
  exports["modelParameters"] = Napi::Function::New(env, ModelParameters, "modelParameters");
  exports["modelGradients"] = Napi::Function::New(env, ModelGradients, "modelGradients");
  exports["modelMoeShape"] = Napi::Function::New(env, ModelMoeShape, "modelMoeShape");
  exports["modelRouterStats"] = Napi::Function::New(env, ModelRouterStats, "modelRouterStats");
  exports["supportedArchitectures"] = Napi::Function::New(env, SupportedArchitectures, "supportedArchitectures");
}

const Registrar registrar(register_model);

}  // namespace
}  // namespace tiller::addon
