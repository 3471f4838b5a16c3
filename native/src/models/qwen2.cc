// Qwen2ForCausalLM: the dense decoder with biases on q, k and v projections.
#include <stdexcept>

#include "models/dense.h"

namespace tiller::models {
namespace {

ModelConfig qwen2_config(const HfConfig& c) {
  auto m = read_common_config(c);
  m.qkv_bias = true;
  if (c.flag_or("use_sliding_window", false)) {
    throw std::invalid_argument("config.json: Qwen2 use_sliding_window=true is not supported");
  }
  return m;
}

const ArchitectureRegistrar registrar("Qwen2ForCausalLM", [](const HfConfig& c, const WeightMap& w, const BuildOptions& o) {
  return build_dense(qwen2_config(c), w, o);
});

}  // namespace
}  // namespace tiller::models
