// MixtralForCausalLM: Llama-style attention (optionally over a sliding window) and in every layer a
// mixture of experts routed by softmax top-k with the chosen weights renormalised. Checkpoints name
// the experts block_sparse_moe.experts.{e}.w1 (gate), w3 (up), w2 (down). router_jitter_noise only
// perturbs HF's training mode and is not applied.
#include <stdexcept>

#include "models/dense.h"

namespace tiller::models {
namespace {

ModelConfig mixtral_config(const HfConfig& c) {
  auto m = read_common_config(c);
  m.sliding_window = static_cast<int64_t>(c.number_or("sliding_window", 0));
  if (m.sliding_window < 0) throw std::invalid_argument("config.json: sliding_window must be >= 0 or null");
  m.moe.router = layers::RouterKind::Softmax;
  m.moe.experts = c.required_int("num_local_experts");
  m.moe.top_k = c.required_int("num_experts_per_tok");
  m.moe.intermediate = m.intermediate_size;
  m.moe.normalize = true;
  for (int64_t i = 0; i < m.num_layers; ++i) m.moe_layers.push_back(i);
  m.expert_names = {"block_sparse_moe", "w1", "w3", "w2"};
  return m;
}

const ArchitectureRegistrar registrar("MixtralForCausalLM", [](const HfConfig& c, const WeightMap& w, const BuildOptions& o) {
  return build_dense(mixtral_config(c), w, o);
});

}  // namespace
}  // namespace tiller::models
