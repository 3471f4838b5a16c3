#include "addon/tensor.h"

#include "addon/common.h"

#include <stdexcept>
#include <string>

namespace tiller::addon {
namespace {

napi_typedarray_type js_array_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return napi_float32_array;
    case at::kDouble: return napi_float64_array;
    case at::kHalf:
    case at::kBFloat16: return napi_uint16_array;
    case at::kChar: return napi_int8_array;
    case at::kByte:
    case at::kBool: return napi_uint8_array;
    case at::kShort: return napi_int16_array;
    case at::kInt: return napi_int32_array;
    case at::kLong: return napi_bigint64_array;
    default: throw std::invalid_argument(std::string("dtype: unsupported ") + c10::toString(dtype));
  }
}

}  // namespace

at::Tensor tensor_from_typed_array(const Napi::TypedArray& array, at::ScalarType dtype,
                                   const std::vector<int64_t>& shape) {
  if (array.TypedArrayType() != js_array_type(dtype)) {
    throw std::invalid_argument("data: typed array kind does not match dtype " + dtype_name(dtype));
  }
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  if (numel != static_cast<int64_t>(array.ElementLength())) {
    throw std::invalid_argument("shape: covers " + std::to_string(numel) + " elements but data has " +
                                std::to_string(array.ElementLength()));
  }
  auto* base = static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  return at::from_blob(base, shape, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

Napi::TypedArray typed_array_from_tensor(Napi::Env env, at::Tensor tensor) {
  if (!tensor.device().is_cpu() || !tensor.is_contiguous()) {
    tensor = tensor.to(at::kCPU).contiguous();
  }
  const auto kind = js_array_type(tensor.scalar_type());
  const auto length = static_cast<size_t>(tensor.numel());
  Napi::ArrayBuffer buffer;
  if (length == 0) {
    buffer = Napi::ArrayBuffer::New(env, 0);
  } else {
    // The heap copy of the handle keeps the storage alive until V8 collects the buffer.
    auto* owner = new at::Tensor(tensor);
    buffer = Napi::ArrayBuffer::New(env, owner->data_ptr(), owner->nbytes(),
                                    [](Napi::Env, void*, at::Tensor* t) { delete t; }, owner);
  }
  return Napi::TypedArray(env, [&] {
    napi_value out;
    NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, kind, length, buffer, 0, &out), Napi::TypedArray());
    return out;
  }());
}

std::vector<int64_t> shape_from_js(const Napi::Value& value, const char* field) {
  if (!value.IsArray()) throw std::invalid_argument(std::string(field) + ": expected an array of integers");
  auto array = value.As<Napi::Array>();
  std::vector<int64_t> shape;
  shape.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value v = array[i];
    if (!v.IsNumber()) throw std::invalid_argument(std::string(field) + "[" + std::to_string(i) + "]: not a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != static_cast<double>(static_cast<int64_t>(d))) {
      throw std::invalid_argument(std::string(field) + "[" + std::to_string(i) + "]: not a non-negative integer");
    }
    shape.push_back(static_cast<int64_t>(d));
  }
  return shape;
}

Napi::Array shape_to_js(Napi::Env env, at::IntArrayRef shape) {
  auto out = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) out[i] = Napi::Number::New(env, static_cast<double>(shape[i]));
  return out;
}

}  // namespace tiller::addon
