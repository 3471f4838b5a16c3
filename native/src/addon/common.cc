#include "addon/common.h"

#ifdef TILLER_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <stdexcept>

namespace tiller::addon {

PromiseWork::PromiseWork(Napi::Env env, const char* name)
    : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

Napi::Promise PromiseWork::Start() {
  auto promise = deferred_.Promise();
  Queue();
  return promise;
}

void PromiseWork::Execute() {
  try {
    Run();
  } catch (const c10::Error& e) {
    SetError(ErrorPrefix() + "libtorch: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    SetError(ErrorPrefix() + e.what());
  }
}

void PromiseWork::OnOK() {
  auto env = Env();
  try {
    deferred_.Resolve(Result(env));
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  } catch (const std::exception& e) {
    deferred_.Reject(Napi::Error::New(env, e.what()).Value());
  }
}

void PromiseWork::OnError(const Napi::Error& error) { deferred_.Reject(error.Value()); }

Napi::Value PromiseWork::Result(Napi::Env env) { return env.Undefined(); }

std::string PromiseWork::ErrorPrefix() const { return {}; }

at::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "int8") return at::kChar;
  if (name == "uint8") return at::kByte;
  if (name == "int16") return at::kShort;
  if (name == "int32") return at::kInt;
  if (name == "int64") return at::kLong;
  if (name == "bool") return at::kBool;
  throw std::invalid_argument("dtype: unknown '" + name + "'");
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: throw std::invalid_argument(std::string("dtype: no JS name for ") + c10::toString(t));
  }
}

at::Device parse_device(const std::string& name) {
  at::Device device(name);  // throws c10::Error on a malformed string
  if (device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw std::invalid_argument("device: '" + name + "' asked for, but this build has no CUDA device");
    }
    const auto count = static_cast<int64_t>(torch::cuda::device_count());
    if (device.has_index() && device.index() >= count) {
      throw std::invalid_argument("device: '" + name + "' is out of range (" + std::to_string(count) +
                                  " CUDA devices)");
    }
  } else if (!device.is_cpu()) {
    throw std::invalid_argument("device: '" + name + "' is not supported (use cpu, cuda or cuda:N)");
  }
  return device;
}

void synchronize(const at::Device& device) {
#ifdef TILLER_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

}  // namespace tiller::addon
