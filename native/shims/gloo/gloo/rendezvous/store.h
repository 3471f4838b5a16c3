// Declaration-only stand-in for gloo's header (see native/shims/gloo/README.md). c10d's GlooStore
// derives from this class and overrides these four members (the v2 members exist only under
// GLOO_STORE_HAS_STORE_V2, which we leave undefined). We never construct a GlooStore: libtorch
// builds its own, against the real gloo, inside ProcessGroupGloo.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gloo::rendezvous {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};

}  // namespace gloo::rendezvous
