// The addon's entry point: runs every binding file's registration (see registry.h).
#include <ATen/Context.h>

#include "addon/registry.h"
#include "train/cpu_memory.h"

namespace tiller::addon {

std::vector<RegisterFn>& registered_bindings() {
  static std::vector<RegisterFn> fns;
  return fns;
}

}  // namespace tiller::addon

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // float32 means IEEE float32: libtorch lets cuDNN use TF32 by default.
  at::globalContext().setAllowTF32CuDNN(false);
  // CPU tensors counted from here on: memory() reports their bytes and peak on CPU runs.
  tiller::train::install_counting_cpu_allocator();
  for (auto fn : tiller::addon::registered_bindings()) fn(env, exports);
  return exports;
}

NODE_API_MODULE(tiller, Init)
