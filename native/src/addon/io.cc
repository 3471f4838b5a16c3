// File-format calls: safetensors read/write, HF checkpoint inspect/resave, and a JSON round trip
// for tests of the parser. Calls that touch weight files run as async work returning a Promise;
// JS values are read before the work is queued and built only after it finishes, on the JS thread.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "io/safetensors.h"

namespace tiller::addon {
namespace {

// Runs `work` on a libuv worker thread, then `finish` on the JS thread to turn its result into
// a JS value; the Promise rejects with the C++ error message. One template serves every I/O call:
// they differ only in those two functions.
template <typename Value>
class IoWork final : public PromiseWork {
 public:
  using Work = std::function<Value()>;
  using Finish = std::function<Napi::Value(Napi::Env, Value&)>;

  IoWork(Napi::Env env, const char* name, Work work, Finish finish)
      : PromiseWork(env, name), work_(std::move(work)), finish_(std::move(finish)) {}

  // Keeps a JS value (e.g. a typed array whose memory the work reads) alive until the work ends.
  void Keep(const Napi::Value& value) { kept_.push_back(Napi::Persistent(value)); }

 protected:
  void Run() override { value_ = work_(); }
  Napi::Value Result(Napi::Env env) override { return finish_(env, value_); }

 private:
  Work work_;
  Finish finish_;
  Value value_{};
  std::vector<Napi::Reference<Napi::Value>> kept_;
};

// TS names; float8 (which JS has no array for) travels as raw bytes in a Uint8Array.
std::string js_dtype_name(at::ScalarType dtype) {
  if (dtype == at::kFloat8_e4m3fn) return "float8_e4m3fn";
  if (dtype == at::kFloat8_e5m2) return "float8_e5m2";
  return dtype_name(dtype);
}

at::ScalarType js_dtype(const std::string& name) {
  if (name == "float8_e4m3fn") return at::kFloat8_e4m3fn;
  if (name == "float8_e5m2") return at::kFloat8_e5m2;
  return dtype_from_name(name);
}

bool is_float8(at::ScalarType dtype) { return dtype == at::kFloat8_e4m3fn || dtype == at::kFloat8_e5m2; }

std::string string_arg(const Napi::CallbackInfo& info, size_t i, const char* field) {
  if (!info[i].IsString()) throw std::invalid_argument(std::string(field) + ": expected a string");
  return info[i].As<Napi::String>().Utf8Value();
}

// jsonRoundTrip(text, indent) -> string: Json::parse then dump(indent).
Napi::Value JsonRoundTrip(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto text = string_arg(info, 0, "text");
    const int indent = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : -1;
    return Napi::String::New(env, io::Json::parse(text).dump(indent));
  });
}

Napi::Array strings_to_js(Napi::Env env, const std::vector<std::string>& strings) {
  auto out = Napi::Array::New(env, strings.size());
  for (size_t i = 0; i < strings.size(); ++i) out[i] = Napi::String::New(env, strings[i]);
  return out;
}

// checkpointInspect(dir) -> Promise<{config: string (compact JSON), files, tensors: [{name, dtype, shape}]}>
Napi::Value CheckpointInspect(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto dir = string_arg(info, 0, "dir");
    return queue_work<IoWork<std::shared_ptr<io::Checkpoint>>>(
        env, "tiller.checkpointInspect",
        [dir] { return std::make_shared<io::Checkpoint>(io::open_checkpoint(dir)); },
        [](Napi::Env env, std::shared_ptr<io::Checkpoint>& checkpoint) -> Napi::Value {
          auto out = Napi::Object::New(env);
          out["config"] = Napi::String::New(env, checkpoint->config.dump());
          out["files"] = strings_to_js(env, checkpoint->files);
          auto tensors = Napi::Array::New(env, checkpoint->tensors.size());
          uint32_t i = 0;
          for (const auto& [name, tensor] : checkpoint->tensors) {
            auto t = Napi::Object::New(env);
            t["name"] = Napi::String::New(env, name);
            t["dtype"] = Napi::String::New(env, js_dtype_name(tensor.scalar_type()));
            t["shape"] = shape_to_js(env, tensor.sizes());
            tensors[i++] = t;
          }
          out["tensors"] = tensors;
          return out;
        });
  });
}

// safetensorsRead(path) -> Promise<{metadata, tensors: [{name, dtype, shape, data}]}>, tensors in
// file order; each data array is a view of the mapped file (no copy).
Napi::Value SafetensorsRead(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto path = string_arg(info, 0, "path");
    return queue_work<IoWork<std::shared_ptr<io::SafetensorsFile>>>(
        env, "tiller.safetensorsRead",
        [path] { return std::make_shared<io::SafetensorsFile>(io::read_safetensors(path)); },
        [](Napi::Env env, std::shared_ptr<io::SafetensorsFile>& file) -> Napi::Value {
          auto out = Napi::Object::New(env);
          auto metadata = Napi::Object::New(env);
          for (const auto& [key, value] : file->metadata) metadata[key] = Napi::String::New(env, value);
          out["metadata"] = metadata;
          auto tensors = Napi::Array::New(env, file->tensors.size());
          for (size_t i = 0; i < file->tensors.size(); ++i) {
            const auto& [name, tensor] = file->tensors[i];
            auto t = Napi::Object::New(env);
            t["name"] = Napi::String::New(env, name);
            t["dtype"] = Napi::String::New(env, js_dtype_name(tensor.scalar_type()));
            t["shape"] = shape_to_js(env, tensor.sizes());
            t["data"] = typed_array_from_tensor(env, is_float8(tensor.scalar_type()) ? tensor.view(at::kByte) : tensor);
            tensors[i] = t;
          }
          out["tensors"] = tensors;
          return out;
        });
  });
}

// safetensorsWrite(path, tensors: [{name, dtype, shape, data}], metadata: {string: string})
//   -> Promise<{bytes}> (tensor-data bytes). The typed arrays are wrapped, not copied, and held
// until the write ends; the caller must not change them meanwhile.
Napi::Value SafetensorsWrite(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto path = string_arg(info, 0, "path");
    if (!info[1].IsArray()) throw std::invalid_argument("tensors: expected an array");
    const auto list = info[1].As<Napi::Array>();
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    std::vector<Napi::Value> arrays;
    for (uint32_t i = 0; i < list.Length(); ++i) {
      const std::string field = "tensors[" + std::to_string(i) + "]";
      Napi::Value item = list[i];
      if (!item.IsObject()) throw std::invalid_argument(field + ": expected {name, dtype, shape, data}");
      auto t = item.As<Napi::Object>();
      if (!t.Get("name").IsString()) throw std::invalid_argument(field + ".name: expected a string");
      if (!t.Get("dtype").IsString()) throw std::invalid_argument(field + ".dtype: expected a string");
      if (!t.Get("data").IsTypedArray()) throw std::invalid_argument(field + ".data: expected a typed array");
      const auto dtype = js_dtype(t.Get("dtype").As<Napi::String>().Utf8Value());
      const auto shape = shape_from_js(t.Get("shape"), (field + ".shape").c_str());
      const auto data = t.Get("data").As<Napi::TypedArray>();
      at::Tensor tensor = is_float8(dtype) ? tensor_from_typed_array(data, at::kByte, shape).view(dtype)
                                           : tensor_from_typed_array(data, dtype, shape);
      tensors.emplace_back(t.Get("name").As<Napi::String>().Utf8Value(), std::move(tensor));
      arrays.push_back(data);
    }
    std::map<std::string, std::string> metadata;
    if (info[2].IsObject()) {
      const auto object = info[2].As<Napi::Object>();
      const auto keys = object.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); ++i) {
        const auto key = keys.Get(i).As<Napi::String>().Utf8Value();
        const auto value = object.Get(key);
        if (!value.IsString()) throw std::invalid_argument("metadata." + key + ": expected a string");
        metadata[key] = value.As<Napi::String>().Utf8Value();
      }
    }
    auto* work = new IoWork<int64_t>(
        env, "tiller.safetensorsWrite",
        [path, tensors = std::move(tensors), metadata = std::move(metadata)] {
          return io::write_safetensors(path, tensors, metadata);
        },
        [](Napi::Env env, int64_t& bytes) -> Napi::Value {
          auto out = Napi::Object::New(env);
          out["bytes"] = Napi::Number::New(env, static_cast<double>(bytes));
          return out;
        });
    for (const auto& array : arrays) work->Keep(array);
    return work->Start();
  });
}

// checkpointResave(srcDir, dstDir, maxShardBytes) -> Promise<{files}>: open_checkpoint(src) then
// save_checkpoint(dst) with the tensors in name order; `files` are those of the reopened dst.
Napi::Value CheckpointResave(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto src = string_arg(info, 0, "srcDir");
    const auto dst = string_arg(info, 1, "dstDir");
    if (!info[2].IsNumber()) throw std::invalid_argument("maxShardBytes: expected a number");
    const auto max_shard_bytes = info[2].As<Napi::Number>().Int64Value();
    return queue_work<IoWork<std::vector<std::string>>>(
        env, "tiller.checkpointResave",
        [src, dst, max_shard_bytes] {
          std::vector<std::pair<std::string, at::Tensor>> tensors;
          {
            auto checkpoint = io::open_checkpoint(src);
            tensors.assign(checkpoint.tensors.begin(), checkpoint.tensors.end());
            io::save_checkpoint(dst, checkpoint.config, tensors, max_shard_bytes);
          }
          return io::open_checkpoint(dst).files;
        },
        [](Napi::Env env, std::vector<std::string>& files) -> Napi::Value {
          auto out = Napi::Object::New(env);
          out["files"] = strings_to_js(env, files);
          return out;
        });
  });
}

void register_io(Napi::Env env, Napi::Object exports) {
  exports["jsonRoundTrip"] = Napi::Function::New(env, JsonRoundTrip, "jsonRoundTrip");
  exports["checkpointInspect"] = Napi::Function::New(env, CheckpointInspect, "checkpointInspect");
  exports["safetensorsRead"] = Napi::Function::New(env, SafetensorsRead, "safetensorsRead");
  exports["safetensorsWrite"] = Napi::Function::New(env, SafetensorsWrite, "safetensorsWrite");
  exports["checkpointResave"] = Napi::Function::New(env, CheckpointResave, "checkpointResave");
}

const Registrar registrar(register_io);

}  // namespace
}  // namespace tiller::addon
