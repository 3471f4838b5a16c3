// Shared helpers for the Node-API bindings: error conversion, dtype names, device parsing.
// Everything here runs on the JS thread unless a comment says otherwise.
#pragma once

#include <napi.h>
#include <torch/torch.h>

#include <string>
#include <utility>

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

// Base for every blocking call: Execute runs Run() on a libuv worker thread and turns a C++ / libtorch
// exception into the rejection message (as guarded() does, after ErrorPrefix()); OnOK resolves with
// Result(), on the JS thread, where a thrown error rejects instead. The worker deletes itself once
// the promise settles, so members (handles, shared_ptrs) live exactly until then.
class PromiseWork : public Napi::AsyncWorker {
 public:
  PromiseWork(Napi::Env env, const char* name);

  // Queues the work and returns its Promise.
  Napi::Promise Start();

  void Execute() final;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 protected:
  // Worker thread: no JS values.
  virtual void Run() = 0;
  // JS thread: the resolved value (undefined unless overridden).
  virtual Napi::Value Result(Napi::Env env);
  // Worker thread: put before every error message Run throws.
  virtual std::string ErrorPrefix() const;

 private:
  Napi::Promise::Deferred deferred_;
};

// new Work(env, args...)->Start(): the usual way to make a call's Promise.
template <typename Work, typename... Args>
Napi::Promise queue_work(Napi::Env env, Args&&... args) {
  return (new Work(env, std::forward<Args>(args)...))->Start();
}

// dtype names as the TS binding spells them ("float32", "bfloat16", ...).
at::ScalarType dtype_from_name(const std::string& name);
std::string dtype_name(at::ScalarType t);

// "cpu", "cuda", "cuda:1".
at::Device parse_device(const std::string& name);

// Blocks until queued device work is done (no-op on CPU). Callable from worker threads.
void synchronize(const at::Device& device);

}  // namespace tiller::addon
