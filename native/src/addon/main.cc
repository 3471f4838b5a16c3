// The addon's entry point: runs every binding file's registration (see registry.h).
#include "addon/registry.h"

namespace tiller::addon {

std::vector<RegisterFn>& registered_bindings() {
  static std::vector<RegisterFn> fns;
  return fns;
}

}  // namespace tiller::addon

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  for (auto fn : tiller::addon::registered_bindings()) fn(env, exports);
  return exports;
}

NODE_API_MODULE(tiller, Init)
