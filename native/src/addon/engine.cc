// Engine-level calls: what this build and machine offer, the tensor round trip, and the matmul
// probe that measures the device's dense rate.
#include <torch/headeronly/version.h>

#include <chrono>
#include <string>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"

#ifdef TILLER_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace tiller::addon {
namespace {

// engineInfo(): {torchVersion, cudaCompiled, cudaAvailable, devices[], cpuThreads}
Napi::Value EngineInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto out = Napi::Object::New(env);
    out["torchVersion"] = Napi::String::New(env, std::to_string(TORCH_VERSION_MAJOR) + "." +
                                                     std::to_string(TORCH_VERSION_MINOR) + "." +
                                                     std::to_string(TORCH_VERSION_PATCH));
#ifdef TILLER_CUDA
    out["cudaCompiled"] = Napi::Boolean::New(env, true);
#else
    out["cudaCompiled"] = Napi::Boolean::New(env, false);
#endif
    const bool cuda = torch::cuda::is_available();
    out["cudaAvailable"] = Napi::Boolean::New(env, cuda);
    out["cpuThreads"] = Napi::Number::New(env, at::get_num_threads());
    auto devices = Napi::Array::New(env);
    auto cpu = Napi::Object::New(env);
    cpu["device"] = "cpu";
    cpu["name"] = "cpu";
    cpu["bf16"] = true;
    devices[0u] = cpu;
#ifdef TILLER_CUDA
    if (cuda) {
      for (int i = 0; i < static_cast<int>(torch::cuda::device_count()); ++i) {
        const auto* props = at::cuda::getDeviceProperties(i);
        auto d = Napi::Object::New(env);
        d["device"] = Napi::String::New(env, "cuda:" + std::to_string(i));
        d["name"] = Napi::String::New(env, props->name);
        d["totalMemoryBytes"] = Napi::Number::New(env, static_cast<double>(props->totalGlobalMem));
        d["computeCapability"] = Napi::String::New(env, std::to_string(props->major) + "." + std::to_string(props->minor));
        d["multiprocessors"] = Napi::Number::New(env, props->multiProcessorCount);
        d["bf16"] = Napi::Boolean::New(env, props->major >= 8);
        devices[devices.Length()] = d;
      }
    }
#endif
    out["devices"] = devices;
    return out;
  });
}

// tensorRoundTrip(data, dtype, shape, device): typed array -> tensor on `device` -> typed array.
// On CPU the input is wrapped without a copy and the output is a view of the same tensor storage.
// Returns {data, shape, dtype, sum, aliased}; `sum` (float64) is computed by libtorch on the device,
// proving it read the values, and `aliased` says whether input and output share memory.
Napi::Value TensorRoundTrip(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto dtype = dtype_from_name(info[1].As<Napi::String>().Utf8Value());
    const auto shape = shape_from_js(info[2], "shape");
    const auto device = parse_device(info[3].As<Napi::String>().Utf8Value());
    const auto host = tensor_from_typed_array(info[0].As<Napi::TypedArray>(), dtype, shape);
    const auto on_device = host.to(device);
    const double sum = on_device.to(at::kDouble).sum().item<double>();
    auto back = typed_array_from_tensor(env, on_device);
    auto out = Napi::Object::New(env);
    out["data"] = back;
    out["shape"] = shape_to_js(env, on_device.sizes());
    out["dtype"] = Napi::String::New(env, dtype_name(on_device.scalar_type()));
    out["sum"] = Napi::Number::New(env, sum);
    out["aliased"] = Napi::Boolean::New(
        env, back.ElementLength() > 0 &&
                 static_cast<uint8_t*>(back.ArrayBuffer().Data()) + back.ByteOffset() ==
                     static_cast<uint8_t*>(info[0].As<Napi::TypedArray>().ArrayBuffer().Data()) +
                         info[0].As<Napi::TypedArray>().ByteOffset());
    return out;
  });
}

// Times `iterations` matmuls [m,k] x [k,n] on a worker thread. 2*m*n*k FLOP each.
class MatmulProbe final : public PromiseWork {
 public:
  MatmulProbe(Napi::Env env, at::Device device, at::ScalarType dtype, int64_t m, int64_t n, int64_t k,
              int64_t iterations)
      : PromiseWork(env, "tiller.matmulProbe"),
        device_(device),
        dtype_(dtype),
        m_(m), n_(n), k_(k),
        iterations_(iterations) {}

 protected:
  void Run() override {
    at::NoGradGuard no_grad;
    const auto options = at::TensorOptions().dtype(dtype_).device(device_);
    const auto a = at::randn({m_, k_}, options);
    const auto b = at::randn({k_, n_}, options);
    auto c = at::empty({m_, n_}, options);
    for (int i = 0; i < 3; ++i) at::matmul_out(c, a, b);  // warm-up: cuBLAS heuristics, clocks
    synchronize(device_);
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iterations_; ++i) at::matmul_out(c, a, b);
    synchronize(device_);
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  Napi::Value Result(Napi::Env env) override {
    const double flop = 2.0 * m_ * n_ * k_ * iterations_;
    auto out = Napi::Object::New(env);
    out["seconds"] = seconds_;
    out["flop"] = flop;
    out["tflops"] = flop / seconds_ / 1e12;
    return out;
  }

 private:
  at::Device device_;
  at::ScalarType dtype_;
  int64_t m_, n_, k_, iterations_;
  double seconds_ = 0;
};

// matmulProbe(device, dtype, m, n, k, iterations) -> Promise<{seconds, flop, tflops}>
Napi::Value MatmulProbeCall(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto device = parse_device(info[0].As<Napi::String>().Utf8Value());
    const auto dtype = dtype_from_name(info[1].As<Napi::String>().Utf8Value());
    auto dim = [&](int i) { return static_cast<int64_t>(info[i].As<Napi::Number>().Int64Value()); };
    return queue_work<MatmulProbe>(env, device, dtype, dim(2), dim(3), dim(4), dim(5));
  });
}

void register_engine(Napi::Env env, Napi::Object exports) {
  exports["engineInfo"] = Napi::Function::New(env, EngineInfo, "engineInfo");
  exports["tensorRoundTrip"] = Napi::Function::New(env, TensorRoundTrip, "tensorRoundTrip");
  exports["matmulProbe"] = Napi::Function::New(env, MatmulProbeCall, "matmulProbe");
}

const Registrar registrar(register_engine);

}  // namespace

}  // namespace tiller::addon
