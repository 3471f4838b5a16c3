// Declaration-only stand-in for gloo's header, which the torch wheel does not ship (see
// native/shims/gloo/README.md). c10d's ProcessGroupGloo.hpp holds gloo contexts only by pointer;
// its inline setTimeout() names the one member below. That inline body is never emitted into our
// library (ProcessGroupGloo's vtable lives in libtorch_cpu), so no call to it is linked from here.
#pragma once

#include <chrono>

namespace gloo {

class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

}  // namespace gloo
