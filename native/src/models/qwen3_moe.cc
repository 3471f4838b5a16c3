// Qwen3MoeForCausalLM: Qwen3's attention (per-head q/k RMSNorm) with a softmax-routed mixture of
// experts in every decoder_sparse_step-th layer outside mlp_only_layers, a dense MLP elsewhere.
#include <algorithm>
#include <stdexcept>

#include "models/dense.h"

namespace tiller::models {
namespace {

ModelConfig qwen3_moe_config(const HfConfig& c) {
  auto m = read_common_config(c);
  m.qk_norm = true;
  m.qkv_bias = c.flag_or("attention_bias", false);
  m.o_bias = m.qkv_bias;
  // transformers drops sliding_window unless use_sliding_window is set.
  if (c.flag_or("use_sliding_window", false)) m.sliding_window = static_cast<int64_t>(c.number_or("sliding_window", 0));
  m.moe.router = layers::RouterKind::Softmax;
  m.moe.experts = static_cast<int64_t>(c.number_or("num_experts", c.number_or("num_local_experts", 0)));
  m.moe.top_k = c.required_int("num_experts_per_tok");
  m.moe.intermediate = c.required_int("moe_intermediate_size");
  m.moe.normalize = c.flag_or("norm_topk_prob", false);
  const auto step = static_cast<int64_t>(c.number_or("decoder_sparse_step", 1));
  if (step <= 0) throw std::invalid_argument("config.json: decoder_sparse_step must be > 0");
  std::vector<int64_t> dense_only;
  if (c.has("mlp_only_layers")) {
    const auto& list = c.json().at("mlp_only_layers");
    if (!list.is_array()) throw std::invalid_argument("config.json: mlp_only_layers must be a list of layer indices");
    for (size_t i = 0; i < list.size(); ++i) dense_only.push_back(c.required_int("mlp_only_layers." + std::to_string(i)));
  }
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const bool listed = std::find(dense_only.begin(), dense_only.end(), i) != dense_only.end();
    if (!listed && m.moe.experts > 0 && (i + 1) % step == 0) m.moe_layers.push_back(i);
  }
  return m;
}

const ArchitectureRegistrar registrar("Qwen3MoeForCausalLM", [](const HfConfig& c, const WeightMap& w, const BuildOptions& o) {
  return build_dense(qwen3_moe_config(c), w, o);
});

}  // namespace
}  // namespace tiller::models
