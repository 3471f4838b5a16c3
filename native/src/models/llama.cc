// LlamaForCausalLM: the dense decoder; attention_bias puts biases on q, k, v and o.
#include "models/dense.h"

namespace tiller::models {
namespace {

ModelConfig llama_config(const HfConfig& c) {
  auto m = read_common_config(c);
  m.qkv_bias = c.flag_or("attention_bias", false);
  m.o_bias = m.qkv_bias;
  return m;
}

const ArchitectureRegistrar registrar("LlamaForCausalLM", [](const HfConfig& c, const WeightMap& w, const BuildOptions& o) {
  return build_dense(llama_config(c), w, o);
});

}  // namespace
}  // namespace tiller::models
