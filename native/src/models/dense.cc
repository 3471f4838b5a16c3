#include "models/dense.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <stdexcept>

#include "layers/attention.h"
#include "layers/mlp.h"
#include "layers/norm.h"

namespace tiller::models {
namespace {

std::string shape_text(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

layers::RopeConfig read_rope_config(const HfConfig& c, int64_t rotary_dim, int64_t max_positions) {
  // HF v5 writes rope_parameters (with rope_theta inside); older configs rope_theta + rope_scaling.
  const std::string prefix = c.string("rope_parameters.rope_type") || c.has("rope_parameters.rope_theta")
                                 ? "rope_parameters."
                                 : "rope_scaling.";
  layers::RopeConfig rope;
  rope.rotary_dim = rotary_dim;
  rope.max_position_embeddings = max_positions;
  rope.theta = c.number_or("rope_parameters.rope_theta", c.number_or("rope_theta", 10000.0));
  const auto type = c.string(prefix + "rope_type").value_or(c.string(prefix + "type").value_or("default"));
  rope.type = layers::rope_type_from_name(type);
  rope.original_max_position_embeddings =
      static_cast<int64_t>(c.number_or(prefix + "original_max_position_embeddings", 0));
  const auto factor = c.number(prefix + "factor");
  if (rope.type == layers::RopeType::Yarn && !factor) {
    if (rope.original_max_position_embeddings <= 0) {
      throw std::invalid_argument("config.json: yarn rope needs factor or original_max_position_embeddings");
    }
    rope.factor = static_cast<double>(max_positions) / static_cast<double>(rope.original_max_position_embeddings);
  } else if (rope.type != layers::RopeType::Default) {
    if (!factor) throw std::invalid_argument("config.json: " + prefix + "factor is missing (rope type " + type + ")");
    rope.factor = *factor;
  }
  if ((rope.type == layers::RopeType::Yarn || rope.type == layers::RopeType::Llama3) &&
      rope.original_max_position_embeddings <= 0) {
    throw std::invalid_argument("config.json: " + prefix + "original_max_position_embeddings is missing (rope type " +
                                type + ")");
  }
  rope.low_freq_factor = c.number_or(prefix + "low_freq_factor", 1.0);
  rope.high_freq_factor = c.number_or(prefix + "high_freq_factor", 4.0);
  // HF treats a 0 or absent beta as its default.
  rope.beta_fast = c.number_or(prefix + "beta_fast", 0) ? *c.number(prefix + "beta_fast") : 32.0;
  rope.beta_slow = c.number_or(prefix + "beta_slow", 0) ? *c.number(prefix + "beta_slow") : 1.0;
  rope.attention_factor = c.number(prefix + "attention_factor");
  rope.mscale = c.number(prefix + "mscale");
  rope.mscale_all_dim = c.number(prefix + "mscale_all_dim");
  rope.truncate = c.flag_or(prefix + "truncate", true);
  return rope;
}

namespace {

using layers::linear;

struct Block {
  at::Tensor input_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  at::Tensor post_norm, gate, up, down;
  int64_t moe_index = -1;  // place among the MoE layers; -1: the dense MLP
  layers::MoeWeights moe;
};

class DenseDecoder final : public CausalLM {
 public:
  DenseDecoder(ModelConfig config, NamedTensors params, at::Device device, at::ScalarType dtype)
      : config_(std::move(config)), params_(std::move(params)), device_(device), dtype_(dtype) {
    std::map<std::string, at::Tensor> by_name(params_.begin(), params_.end());
    const auto get = [&](const std::string& name) {
      const auto it = by_name.find(name);
      return it == by_name.end() ? at::Tensor() : it->second;
    };
    embed_ = get("model.embed_tokens.weight");
    norm_ = get("model.norm.weight");
    lm_head_ = config_.tie_word_embeddings ? embed_ : get("lm_head.weight");
    if (config_.rope.type != layers::RopeType::Dynamic) {
      // Fixed frequencies live on the device once, so the forward does no host work for rope.
      static_rope_ = layers::rope_frequencies(config_.rope, 0);
      static_rope_->inv_freq = static_rope_->inv_freq.to(device_);
    }
    for (int64_t i = 0; i < config_.num_layers; ++i) {
      const auto p = "model.layers." + std::to_string(i) + ".";
      Block b{get(p + "input_layernorm.weight"), get(p + "self_attn.q_proj.weight"),
              get(p + "self_attn.k_proj.weight"), get(p + "self_attn.v_proj.weight"),
              get(p + "self_attn.o_proj.weight"), get(p + "self_attn.q_proj.bias"),
              get(p + "self_attn.k_proj.bias"), get(p + "self_attn.v_proj.bias"),
              get(p + "self_attn.o_proj.bias"), get(p + "self_attn.q_norm.weight"),
              get(p + "self_attn.k_norm.weight"), get(p + "post_attention_layernorm.weight"),
              get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight"),
              get(p + "mlp.down_proj.weight"), /*moe_index=*/-1, layers::MoeWeights{}};
      const auto& moe_layers = config_.moe_layers;
      const auto found = std::find(moe_layers.begin(), moe_layers.end(), i);
      if (found != moe_layers.end()) {
        b.moe_index = found - moe_layers.begin();
        b.moe = {get(p + "mlp.gate.weight"), at::Tensor(), get(p + "mlp.experts.gate_up_proj"),
                 get(p + "mlp.experts.down_proj")};
      }
      blocks_.push_back(std::move(b));
    }
  }

  const NamedTensors& named_parameters() const override { return params_; }
  NamedTensors checkpoint_tensors() const override {
    return config_.moe_layers.empty() ? params_ : unstack_experts(params_, config_.expert_names);
  }
  const at::Tensor& lm_head() const override { return lm_head_; }
  KvShape kv_shape() const override {
    return {config_.num_layers, config_.num_kv_heads, config_.head_dim, config_.head_dim};
  }
  MoeShape moe_shape() const override {
    if (config_.moe_layers.empty()) return {};
    return {static_cast<int64_t>(config_.moe_layers.size()), config_.moe.experts, config_.moe.top_k};
  }
  bool fixed_rope() const override { return static_rope_.has_value(); }
  at::Device device() const override { return device_; }
  at::ScalarType dtype() const override { return dtype_; }

  at::Tensor forward(const PackedBatch& batch) const override {
    const auto& c = config_;
    const auto tokens = batch.tokens.size(0);
    auto rope = static_rope_ ? layers::rope_table_from(*static_rope_, batch.positions)
                             : layers::rope_table(c.rope, batch.positions, batch.cu_seqlens, batch.context_lengths);
    // Once per forward rather than in every layer's apply_rope.
    rope.cos = rope.cos.to(dtype_);
    rope.sin = rope.sin.to(dtype_);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    auto x = at::embedding(embed_, batch.tokens);  // [tokens, hidden]
    if (batch.layer_outputs) batch.layer_outputs->push_back(x);
    for (size_t l = 0; l < blocks_.size(); ++l) {
      const auto& b = blocks_[l];
      const auto h = layers::rms_norm(x, b.input_norm, c.rms_norm_eps);
      auto q = linear(h, b.q, b.q_bias).view({tokens, c.num_heads, c.head_dim});
      auto k = linear(h, b.k, b.k_bias).view({tokens, c.num_kv_heads, c.head_dim});
      const auto v = linear(h, b.v, b.v_bias).view({tokens, c.num_kv_heads, c.head_dim});
      if (c.qk_norm) {
        q = layers::rms_norm(q, b.q_norm, c.rms_norm_eps);
        k = layers::rms_norm(k, b.k_norm, c.rms_norm_eps);
      }
      q = layers::apply_rope(q, rope);
      k = layers::apply_rope(k, rope);
      const auto attn = attention(batch, l, q, k, v, scale, c.sliding_window);
      x = x + linear(attn.reshape({tokens, c.num_heads * c.head_dim}), b.o, b.o_bias);
      const auto m = layers::rms_norm(x, b.post_norm, c.rms_norm_eps);
      x = x + (b.moe_index >= 0 ? layers::moe_forward(m, b.moe, c.moe, batch.routing, b.moe_index)
                                : layers::swiglu(m, b.gate, b.up, b.down));
      if (batch.layer_outputs) batch.layer_outputs->push_back(x);
    }
    return layers::rms_norm(x, norm_, c.rms_norm_eps);
  }

 private:
  // q: [tokens, heads, D], k, v: [tokens, kv_heads, D] -> [tokens, heads, D]
  static at::Tensor attention(const PackedBatch& batch, size_t layer, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, double scale, int64_t window) {
    if (batch.slot_cache) {
      const auto& cache = (*batch.cache)[layer];
      layers::write_slot_cache(k, v, cache, batch.slot_cache->write_rows);
      return batch.slot_cache->decode ? layers::slot_decode_attention(q, cache, *batch.slot_cache, scale, window)
                                      : layers::causal_varlen_attention(q, k, v, batch.cu_seqlens, scale, window);
    }
    if (batch.cache) {
      return layers::cached_causal_attention(q, k, v, batch.cu_seqlens, (*batch.cache)[layer], batch.spans, scale, window);
    }
    return layers::causal_varlen_attention(q, k, v, batch.cu_seqlens, scale, window);
  }

  ModelConfig config_;
  std::optional<layers::RopeFrequencies> static_rope_;
  NamedTensors params_;
  at::Device device_;
  at::ScalarType dtype_;
  at::Tensor embed_, norm_, lm_head_;
  std::vector<Block> blocks_;
};

}  // namespace

ModelConfig read_common_config(const HfConfig& c) {
  ModelConfig m;
  // Sizes are checked before use: a zero head count would divide by zero below, and a negative
  // size would only fail later inside libtorch with a message that names no config field.
  const auto positive = [&](const std::string& key) {
    const auto v = c.required_int(key);
    if (v <= 0) throw std::invalid_argument("config.json: " + key + " must be > 0, found " + std::to_string(v));
    return v;
  };
  m.vocab_size = positive("vocab_size");
  m.hidden_size = positive("hidden_size");
  m.intermediate_size = positive("intermediate_size");
  m.num_layers = positive("num_hidden_layers");
  m.num_heads = positive("num_attention_heads");
  m.num_kv_heads = c.has("num_key_value_heads") ? c.required_int("num_key_value_heads") : m.num_heads;
  m.head_dim = c.has("head_dim") ? positive("head_dim") : m.hidden_size / m.num_heads;
  if (m.head_dim <= 0) {
    throw std::invalid_argument("config.json: hidden_size (" + std::to_string(m.hidden_size) +
                                ") is smaller than num_attention_heads (" + std::to_string(m.num_heads) +
                                "); set head_dim");
  }
  if (m.num_kv_heads <= 0 || m.num_heads % m.num_kv_heads != 0) {
    throw std::invalid_argument("config.json: num_attention_heads (" + std::to_string(m.num_heads) +
                                ") must be a multiple of num_key_value_heads (" + std::to_string(m.num_kv_heads) + ")");
  }
  m.rms_norm_eps = c.number_or("rms_norm_eps", 1e-6);
  if (!(m.rms_norm_eps > 0)) throw std::invalid_argument("config.json: rms_norm_eps must be > 0");
  m.tie_word_embeddings = c.flag_or("tie_word_embeddings", false);
  const auto act = c.string("hidden_act").value_or("silu");
  if (act != "silu") throw std::invalid_argument("config.json: hidden_act '" + act + "' is not supported (silu only)");
  if (c.flag_or("mlp_bias", false)) throw std::invalid_argument("config.json: mlp_bias=true is not supported");
  m.rope = read_rope_config(c, m.head_dim, static_cast<int64_t>(c.number_or("max_position_embeddings", 2048)));
  return m;
}

std::vector<TensorSpec> tensor_table(const ModelConfig& c) {
  const auto q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  std::vector<TensorSpec> table{{"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}}};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const auto p = "model.layers." + std::to_string(i) + ".";
    table.push_back({p + "input_layernorm.weight", {c.hidden_size}});
    table.push_back({p + "self_attn.q_proj.weight", {q_out, c.hidden_size}});
    table.push_back({p + "self_attn.k_proj.weight", {kv_out, c.hidden_size}});
    table.push_back({p + "self_attn.v_proj.weight", {kv_out, c.hidden_size}});
    if (c.qkv_bias) {
      table.push_back({p + "self_attn.q_proj.bias", {q_out}});
      table.push_back({p + "self_attn.k_proj.bias", {kv_out}});
      table.push_back({p + "self_attn.v_proj.bias", {kv_out}});
    }
    if (c.qk_norm) {
      table.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      table.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    table.push_back({p + "self_attn.o_proj.weight", {c.hidden_size, q_out}});
    if (c.o_bias) table.push_back({p + "self_attn.o_proj.bias", {c.hidden_size}});
    table.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}});
    if (std::find(c.moe_layers.begin(), c.moe_layers.end(), i) != c.moe_layers.end()) {
      const auto experts = c.moe.experts, inter = c.moe.intermediate;
      table.push_back({p + "mlp.gate.weight", {experts, c.hidden_size}});
      table.push_back({p + "mlp.experts.gate_up_proj", {experts, 2 * inter, c.hidden_size}});
      table.push_back({p + "mlp.experts.down_proj", {experts, c.hidden_size, inter}});
    } else {
      table.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}});
      table.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}});
      table.push_back({p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}});
    }
  }
  table.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) table.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  return table;
}

LoadedTensors load_tensors(const std::vector<TensorSpec>& table, const WeightMap& weights, bool tied,
                           at::Device device, at::ScalarType dtype) {
  std::set<std::string> expected;
  LoadedTensors out;
  for (const auto& spec : table) {
    expected.insert(spec.name);
    const auto it = weights.find(spec.name);
    if (it == weights.end()) throw std::invalid_argument("weights: " + spec.name + " is missing");
    if (it->second.sizes() != at::IntArrayRef(spec.shape)) {
      throw std::invalid_argument("weights: " + spec.name + " has shape " + shape_text(it->second.sizes()) +
                                  ", the config implies " + shape_text(spec.shape));
    }
    auto& list = spec.buffer ? out.buffers : out.parameters;
    list.emplace_back(spec.name, it->second.to(device, spec.buffer ? at::kFloat : dtype, /*non_blocking=*/false,
                                               /*copy=*/true));
  }
  for (const auto& [name, _] : weights) {
    // A tied checkpoint may still carry lm_head.weight (a copy of the embedding): ignored.
    if (!expected.count(name) && !(tied && name == "lm_head.weight")) {
      throw std::invalid_argument("weights: " + name + " is not a tensor of this model");
    }
  }
  return out;
}

std::unique_ptr<CausalLM> build_dense(const ModelConfig& config, const WeightMap& weights, at::Device device,
                                      at::ScalarType dtype) {
  if (!config.moe_layers.empty()) layers::check_moe_config(config.moe);
  auto loaded = load_tensors(tensor_table(config),
                             config.moe_layers.empty()
                                 ? weights
                                 : stack_experts(weights, config.moe_layers, config.moe.experts, config.expert_names),
                             config.tie_word_embeddings, device, dtype);
  return std::make_unique<DenseDecoder>(config, std::move(loaded.parameters), device, dtype);
}

}  // namespace tiller::models
