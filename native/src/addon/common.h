// Shared helpers for the Node-API bindings: error conversion, dtype names, device parsing.
// Everything here runs on the JS thread unless a comment says otherwise.
#pragma once

#include <napi.h>
#include <torch/torch.h>

#include <string>

namespace tiller::addon {

// Runs fn and turns a C++ / libtorch exception into a JS Error carrying its message.
template <typename Fn>
auto guarded(const Napi::Env& env, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Napi::Error::New(env, std::string("libtorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// dtype names as the TS binding spells them ("float32", "bfloat16", ...).
at::ScalarType dtype_from_name(const std::string& name);
std::string dtype_name(at::ScalarType t);

// "cpu", "cuda", "cuda:1".
at::Device parse_device(const std::string& name);

// Blocks until queued device work is done (no-op on CPU). Callable from worker threads.
void synchronize(const at::Device& device);

}  // namespace tiller::addon
