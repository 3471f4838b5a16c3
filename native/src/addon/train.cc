// Training calls: an AdamW handle over standalone parameter tensors given from JS, gradient
// clipping, learning-rate schedules, and a tiny linear model for testing the loss arithmetic.
// The model handle will drive the same train/ classes over a model's own parameters.
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "addon/train_args.h"
#include "train/grad_clip.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace tiller::addon {
namespace {

// What an optimizer handle points at. `busy` is set while async work runs on a worker thread:
// every other call on the handle is refused meanwhile rather than racing it.
struct OptimizerBox {
  std::unique_ptr<train::AdamW> optimizer;
  at::Device device = at::kCPU;
  std::atomic<bool> busy{false};
};

constexpr napi_type_tag kOptimizerTag = {0x7f1c2a9e4b3d4e11ULL, 0x9a0b8c7d6e5f4a32ULL};

Napi::Value wrap_optimizer(Napi::Env env, std::unique_ptr<train::AdamW> optimizer, at::Device device) {
  auto* box = new OptimizerBox();
  box->optimizer = std::move(optimizer);
  box->device = device;
  // The finalizer is the safety net; dispose() frees the optimizer's tensors at once.
  auto handle = Napi::External<OptimizerBox>::New(env, box, [](Napi::Env, OptimizerBox* b) { delete b; });
  NAPI_THROW_IF_FAILED(env, napi_type_tag_object(env, handle, &kOptimizerTag), Napi::Value());
  return handle;
}

OptimizerBox& unwrap_box(const Napi::Value& value) {
  bool tagged = false;
  if (value.IsExternal()) {
    if (napi_check_object_type_tag(value.Env(), value, &kOptimizerTag, &tagged) != napi_ok) tagged = false;
  }
  if (!tagged) throw std::invalid_argument("handle: not an optimizer handle");
  return *value.As<Napi::External<OptimizerBox>>().Data();
}

// The live optimizer of a handle that is neither disposed nor busy.
train::AdamW& unwrap(const Napi::Value& value) {
  auto& box = unwrap_box(value);
  if (!box.optimizer) throw std::invalid_argument("handle: the optimizer was disposed");
  if (box.busy) throw std::invalid_argument("handle: the optimizer is busy with an async call; await it first");
  return *box.optimizer;
}

// {dtype, shape, data} -> a CPU tensor with its own storage (the typed array may be reused by JS).
at::Tensor tensor_from_js(const Napi::Value& value, const std::string& field) {
  if (!value.IsObject()) throw std::invalid_argument(field + ": expected {dtype, shape, data}");
  auto o = value.As<Napi::Object>();
  const auto dtype = dtype_from_name(string_field(o, "dtype", field));
  const auto shape = shape_from_js(o.Get("shape"), (field + ".shape").c_str());
  auto data = o.Get("data");
  if (!data.IsTypedArray()) throw std::invalid_argument(field + ".data: expected a typed array");
  return tensor_from_typed_array(data.As<Napi::TypedArray>(), dtype, shape).clone();
}

// [{name, dtype, shape, data}] -> named tensors on `device`.
train::NamedTensors named_tensors_from_js(const Napi::Value& value, const char* field, at::Device device) {
  if (!value.IsArray()) throw std::invalid_argument(std::string(field) + ": expected an array of {name, dtype, shape, data}");
  auto array = value.As<Napi::Array>();
  train::NamedTensors out;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const std::string at_i = std::string(field) + "[" + std::to_string(i) + "]";
    Napi::Value entry = array[i];
    if (!entry.IsObject()) throw std::invalid_argument(at_i + ": expected {name, dtype, shape, data}");
    out.emplace_back(string_field(entry.As<Napi::Object>(), "name", at_i), tensor_from_js(entry, at_i).to(device));
  }
  return out;
}

// Named tensors -> [{name, dtype, shape, data}], each data a copy (the live tensors keep changing).
Napi::Array named_tensors_to_js(Napi::Env env, const train::NamedTensors& tensors) {
  auto out = Napi::Array::New(env, tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto copy = tensors[i].second.detach().to(at::kCPU).clone();
    auto entry = Napi::Object::New(env);
    entry["name"] = Napi::String::New(env, tensors[i].first);
    entry["dtype"] = Napi::String::New(env, dtype_name(copy.scalar_type()));
    entry["shape"] = shape_to_js(env, copy.sizes());
    entry["data"] = typed_array_from_tensor(env, copy);
    out[i] = entry;
  }
  return out;
}

// optimizerCreate(params: [{name, dtype, shape, data}], config, device) -> handle
// config: {lr, beta1?, beta2?, eps?, weightDecay?, noDecay?: "biases-and-norms" | string[]}
Napi::Value OptimizerCreate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = parse_device(info[2].As<Napi::String>().Utf8Value());
    auto params = named_tensors_from_js(info[0], "params", device);
    for (auto& [name, t] : params) t.requires_grad_(true);
    if (!info[1].IsObject()) throw std::invalid_argument("config: expected an object");
    auto c = info[1].As<Napi::Object>();
    auto config = adamw_config_from_js(c, "config");
    return wrap_optimizer(env, std::make_unique<train::AdamW>(std::move(params), std::move(config)), device);
  });
}

// optimizerSetGrads(handle, grads: [{name, dtype, shape, data}]): replaces those gradients.
Napi::Value OptimizerSetGrads(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto& optimizer = unwrap(info[0]);
    std::unordered_map<std::string, at::Tensor> params;
    for (auto& [name, t] : optimizer.params()) params.emplace(name, t);
    const auto grads = named_tensors_from_js(info[1], "grads", unwrap_box(info[0]).device);
    for (size_t i = 0; i < grads.size(); ++i) {
      const auto& [name, grad] = grads[i];
      const std::string field = "grads[" + std::to_string(i) + "]";
      auto it = params.find(name);
      if (it == params.end()) throw std::invalid_argument(field + ".name: '" + name + "' is not a parameter of this optimizer");
      if (grad.scalar_type() != it->second.scalar_type()) {
        throw std::invalid_argument(field + ".dtype: " + dtype_name(grad.scalar_type()) + ", but parameter '" + name +
                                    "' is " + dtype_name(it->second.scalar_type()));
      }
      if (grad.sizes() != it->second.sizes()) throw std::invalid_argument(field + ".shape: does not match parameter '" + name + "'");
    }
    for (const auto& [name, grad] : grads) params.at(name).mutable_grad() = grad;
    return env.Undefined();
  });
}

// Runs one optimizer operation on a worker thread; the handle stays referenced (so not
// collected) and marked busy until the promise settles.
class OptimizerWork final : public PromiseWork {
 public:
  using Fn = std::function<void(train::AdamW&)>;
  OptimizerWork(Napi::Env env, const Napi::Value& handle, const char* name, Fn fn)
      : PromiseWork(env, name), handle_(Napi::Persistent(handle)), box_(unwrap_box(handle)), fn_(std::move(fn)) {
    box_.busy = true;
  }

  void OnOK() override {
    box_.busy = false;
    PromiseWork::OnOK();
  }

  void OnError(const Napi::Error& error) override {
    box_.busy = false;
    PromiseWork::OnError(error);
  }

 protected:
  void Run() override {
    fn_(*box_.optimizer);
    synchronize(box_.device);
  }

 private:
  Napi::Reference<Napi::Value> handle_;
  OptimizerBox& box_;
  Fn fn_;
};

Napi::Value queue(const Napi::CallbackInfo& info, const char* name, OptimizerWork::Fn fn) {
  unwrap(info[0]);  // refuses a disposed or busy handle before any work is made
  return queue_work<OptimizerWork>(info.Env(), info[0], name, std::move(fn));
}

// optimizerStep(handle, lr) -> Promise<void>
Napi::Value OptimizerStep(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const double lr = info[1].As<Napi::Number>().DoubleValue();
    return queue(info, "tiller.optimizerStep", [lr](train::AdamW& o) { o.step(lr); });
  });
}

// optimizerOffload(handle) / optimizerReload(handle) -> Promise<void>
Napi::Value OptimizerOffload(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return queue(info, "tiller.optimizerOffload", [](train::AdamW& o) { o.offload_to_cpu(); });
  });
}

Napi::Value OptimizerReload(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return queue(info, "tiller.optimizerReload", [](train::AdamW& o) { o.reload(); });
  });
}

Napi::Value OptimizerZeroGrad(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    unwrap(info[0]).zero_grad();
    return info.Env().Undefined();
  });
}

// optimizerParams(handle) -> [{name, dtype, shape, data}] (copies)
Napi::Value OptimizerParams(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return named_tensors_to_js(info.Env(), unwrap(info[0]).params()); });
}

// optimizerGrads(handle) -> [{name, dtype, shape, data}] for parameters that have a gradient
Napi::Value OptimizerGrads(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    train::NamedTensors grads;
    for (auto& [name, t] : unwrap(info[0]).params()) {
      if (t.grad().defined()) grads.emplace_back(name, t.grad());
    }
    return named_tensors_to_js(info.Env(), grads);
  });
}

// optimizerState(handle) -> [{name, dtype, shape, data}] (copies; names as AdamW::state())
Napi::Value OptimizerState(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return named_tensors_to_js(info.Env(), unwrap(info[0]).state()); });
}

// optimizerLoadState(handle, state: [{name, dtype, shape, data}])
Napi::Value OptimizerLoadState(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto& optimizer = unwrap(info[0]);
    optimizer.load_state(named_tensors_from_js(info[1], "state", at::kCPU));
    return info.Env().Undefined();
  });
}

Napi::Value OptimizerOffloaded(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), unwrap(info[0]).offloaded());
  });
}

// optimizerDispose(handle): frees the optimizer now; later calls on the handle throw.
Napi::Value OptimizerDispose(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto& box = unwrap_box(info[0]);
    if (box.busy) throw std::invalid_argument("handle: the optimizer is busy with an async call; await it first");
    box.optimizer.reset();
    return info.Env().Undefined();
  });
}

// optimizerClipGradNorm(handle, maxNorm) -> {norm, finite}
Napi::Value OptimizerClipGradNorm(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto result = train::clip_grad_norm(unwrap(info[0]).params(), info[1].As<Napi::Number>().DoubleValue());
    auto out = Napi::Object::New(env);
    out["norm"] = result.norm;
    out["finite"] = result.finite;
    return out;
  });
}

// lrAt({kind, lr, warmupSteps?, totalSteps?, minLrRatio?, numCycles?}, step) -> number
Napi::Value LrAt(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsObject()) throw std::invalid_argument("schedule: expected an object");
    auto o = info[0].As<Napi::Object>();
    const auto s = schedule_from_js(o, "schedule", number_field(o, "lr", "schedule", -1));
    return Napi::Number::New(info.Env(), train::lr_at(s, static_cast<int64_t>(info[1].As<Napi::Number>().Int64Value())));
  });
}

// trainTestLinearNll(handle, weightName, x [T,D], targets [T] int, mask [T], normaliser) -> loss
// A test model: logits = x · W with W [D, V] the named parameter of the optimizer; runs the
// masked NLL and its backward, accumulating into W's gradient as a model's micro-batch would.
Napi::Value TrainTestLinearNll(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto& optimizer = unwrap(info[0]);
    const auto device = unwrap_box(info[0]).device;
    const auto weight_name = info[1].As<Napi::String>().Utf8Value();
    at::Tensor weight;
    for (auto& [name, t] : optimizer.params()) {
      if (name == weight_name) weight = t;
    }
    if (!weight.defined()) throw std::invalid_argument("weightName: '" + weight_name + "' is not a parameter");
    const auto x = tensor_from_js(info[2], "x").to(device);              // [T, D]
    const auto targets = tensor_from_js(info[3], "targets").to(device);  // [T]
    train::TokenLossInputs in;
    in.logprobs = train::token_logprobs(at::matmul(x.to(weight.scalar_type()), weight), targets);  // [T]
    in.mask = tensor_from_js(info[4], "mask").to(device);                                          // [T]
    in.token_normaliser = info[5].As<Napi::Number>().DoubleValue();
    const auto loss = train::masked_token_nll(in);
    loss.backward();
    return Napi::Number::New(info.Env(), loss.item<double>());
  });
}

void register_train(Napi::Env env, Napi::Object exports) {
  exports["optimizerCreate"] = Napi::Function::New(env, OptimizerCreate, "optimizerCreate");
  exports["optimizerSetGrads"] = Napi::Function::New(env, OptimizerSetGrads, "optimizerSetGrads");
  exports["optimizerStep"] = Napi::Function::New(env, OptimizerStep, "optimizerStep");
  exports["optimizerZeroGrad"] = Napi::Function::New(env, OptimizerZeroGrad, "optimizerZeroGrad");
  exports["optimizerParams"] = Napi::Function::New(env, OptimizerParams, "optimizerParams");
  exports["optimizerGrads"] = Napi::Function::New(env, OptimizerGrads, "optimizerGrads");
  exports["optimizerState"] = Napi::Function::New(env, OptimizerState, "optimizerState");
  exports["optimizerLoadState"] = Napi::Function::New(env, OptimizerLoadState, "optimizerLoadState");
  exports["optimizerOffload"] = Napi::Function::New(env, OptimizerOffload, "optimizerOffload");
  exports["optimizerReload"] = Napi::Function::New(env, OptimizerReload, "optimizerReload");
  exports["optimizerOffloaded"] = Napi::Function::New(env, OptimizerOffloaded, "optimizerOffloaded");
  exports["optimizerDispose"] = Napi::Function::New(env, OptimizerDispose, "optimizerDispose");
  exports["optimizerClipGradNorm"] = Napi::Function::New(env, OptimizerClipGradNorm, "optimizerClipGradNorm");
  exports["lrAt"] = Napi::Function::New(env, LrAt, "lrAt");
  exports["trainTestLinearNll"] = Napi::Function::New(env, TrainTestLinearNll, "trainTestLinearNll");
}

const Registrar registrar(register_train);

}  // namespace
}  // namespace tiller::addon
