// Qwen3ForCausalLM: the dense decoder with per-head RMSNorm of q and k and no projection biases
// (unless attention_bias says so).
#include <stdexcept>

#include "models/dense.h"

namespace tiller::models {
namespace {

ModelConfig qwen3_config(const HfConfig& c) {
  auto m = read_common_config(c);
  m.qk_norm = true;
  m.qkv_bias = c.flag_or("attention_bias", false);
  m.o_bias = m.qkv_bias;
  if (c.flag_or("use_sliding_window", false)) {
    throw std::invalid_argument("config.json: Qwen3 use_sliding_window=true is not supported");
  }
  return m;
}

const ArchitectureRegistrar registrar("Qwen3ForCausalLM", [](const HfConfig& c, const WeightMap& w, const BuildOptions& o) {
  return build_dense(qwen3_config(c), w, o);
});

}  // namespace
}  // namespace tiller::models
