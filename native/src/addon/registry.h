// Each binding file registers its functions with one static Registrar, so adding a file never
// means editing main.cc:  static Registrar reg("engine", register_engine);
#pragma once

#include <napi.h>

#include <vector>

namespace tiller::addon {

using RegisterFn = void (*)(Napi::Env env, Napi::Object exports);

std::vector<RegisterFn>& registered_bindings();

struct Registrar {
  explicit Registrar(RegisterFn fn) { registered_bindings().push_back(fn); }
};

}  // namespace tiller::addon
