// DeepseekV3ForCausalLM (DeepSeek-V3, Moonlight): multi-head latent attention (layers/mla.h) with
// YaRN rope and its softmax-scale correction; the first first_k_dense_replace layers have a dense
// MLP, the rest a mixture of experts routed by sigmoid scores (a bias steers selection only, within
// the best topk_group of n_group groups), plus shared experts every token passes through.
// Multi-token-prediction layers of a checkpoint (model.layers.{i}, i >= num_hidden_layers) are
// skipped with a note on stderr.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <optional>
#include <stdexcept>

#include "layers/mla.h"
#include "layers/mlp.h"
#include "layers/norm.h"
#include "layers/recompute.h"
#include "models/dense.h"

namespace tiller::models {
namespace {

struct DeepseekConfig {
  ModelConfig base;  // sizes, eps, tying, rope over qk_rope_head_dim; moe and moe_layers
  layers::MlaConfig mla;
  bool attention_bias = false;
  int64_t shared_intermediate = 0;  // moe_intermediate_size * n_shared_experts
};

double yarn_mscale(double factor, double mscale) { return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

DeepseekConfig deepseek_config(const HfConfig& c) {
  DeepseekConfig d;
  auto& m = d.base;
  m = read_common_config(c);
  const auto positive = [&](const std::string& key) {
    const auto v = c.required_int(key);
    if (v <= 0) throw std::invalid_argument("config.json: " + key + " must be > 0, found " + std::to_string(v));
    return v;
  };
  if (m.num_kv_heads != m.num_heads) {
    throw std::invalid_argument("config.json: num_key_value_heads (" + std::to_string(m.num_kv_heads) +
                                ") must equal num_attention_heads (" + std::to_string(m.num_heads) +
                                "): MLA expands its latent to every head");
  }
  const auto scoring = c.string("scoring_func").value_or("sigmoid");
  if (scoring != "sigmoid") {
    throw std::invalid_argument("config.json: scoring_func '" + scoring + "' is not supported (DeepSeek-V3 routes by sigmoid)");
  }
  // Absent keys take the defaults of transformers' DeepseekV3Config, as HF would.
  auto& a = d.mla;
  a.heads = m.num_heads;
  // q_lora_rank: null means no query bottleneck (Moonlight); absent means HF's default 1536.
  const bool q_lora_listed = c.json().has("q_lora_rank");
  a.q_lora_rank = c.has("q_lora_rank") ? positive("q_lora_rank") : (q_lora_listed ? 0 : 1536);
  a.kv_lora_rank = positive("kv_lora_rank");
  a.qk_nope_dim = positive("qk_nope_head_dim");
  a.qk_rope_dim = positive("qk_rope_head_dim");
  a.v_dim = positive("v_head_dim");
  a.interleaved_rope = c.flag_or("rope_interleave", true);
  if (a.qk_rope_dim % 2 != 0) throw std::invalid_argument("config.json: qk_rope_head_dim must be even");
  m.rope.rotary_dim = a.qk_rope_dim;  // head_dim, when config.json has it, is this too
  // Any rope scaling with mscale_all_dim also sharpens the softmax, by mscale².
  a.scale = 1.0 / std::sqrt(static_cast<double>(a.qk_nope_dim + a.qk_rope_dim));
  if (m.rope.type != layers::RopeType::Default && m.rope.mscale_all_dim && *m.rope.mscale_all_dim != 0) {
    const auto mscale = yarn_mscale(m.rope.factor, *m.rope.mscale_all_dim);
    a.scale *= mscale * mscale;
  }
  d.attention_bias = c.flag_or("attention_bias", false);

  m.moe.router = layers::RouterKind::SigmoidGrouped;
  m.moe.experts = c.required_int("n_routed_experts");
  m.moe.top_k = c.required_int("num_experts_per_tok");
  m.moe.intermediate = positive("moe_intermediate_size");
  m.moe.normalize = c.flag_or("norm_topk_prob", true);
  m.moe.groups = static_cast<int64_t>(c.number_or("n_group", 8));
  m.moe.top_groups = static_cast<int64_t>(c.number_or("topk_group", 4));
  m.moe.scaling = c.number_or("routed_scaling_factor", 2.5);
  const auto shared = static_cast<int64_t>(c.number_or("n_shared_experts", 1));
  if (shared < 0) throw std::invalid_argument("config.json: n_shared_experts must be >= 0");
  d.shared_intermediate = m.moe.intermediate * shared;
  const auto first_dense = static_cast<int64_t>(c.number_or("first_k_dense_replace", 3));
  for (int64_t i = std::max<int64_t>(first_dense, 0); i < m.num_layers; ++i) m.moe_layers.push_back(i);
  return d;
}

bool is_moe(const ModelConfig& m, int64_t layer) {
  return std::find(m.moe_layers.begin(), m.moe_layers.end(), layer) != m.moe_layers.end();
}

// Under tensor parallelism (as Megatron's MLA): the query and key-value up-projections are
// column-parallel by heads and o_proj row-parallel; the down-projections and their norms are
// replicated, applied to every token but feeding only this rank's heads (partial gradients, summed
// over the tensor group); dense MLPs and shared experts are split as the dense decoder's MLP;
// routed experts are whole on their expert rank.
std::vector<TensorSpec> deepseek_table(const DeepseekConfig& d) {
  using parallel::Split;
  const auto& m = d.base;
  const auto& a = d.mla;
  const auto h = m.hidden_size, q_out = a.heads * (a.qk_nope_dim + a.qk_rope_dim);
  const parallel::SplitSpec vocab{Split::kVocab}, column{Split::kColumn}, row{Split::kRow};
  const parallel::SplitSpec heads{Split::kColumn, a.heads}, o_heads{Split::kRow, a.heads};
  const parallel::SplitSpec latent{Split::kReplicated, 0, /*partial=*/true}, by_expert{Split::kExpert};
  std::vector<TensorSpec> table{{"model.embed_tokens.weight", {m.vocab_size, h}, false, vocab}};
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const auto p = "model.layers." + std::to_string(i) + ".";
    const auto attn = p + "self_attn.";
    table.push_back({p + "input_layernorm.weight", {h}});
    if (a.q_lora_rank > 0) {
      table.push_back({attn + "q_a_proj.weight", {a.q_lora_rank, h}, false, latent});
      if (d.attention_bias) table.push_back({attn + "q_a_proj.bias", {a.q_lora_rank}, false, latent});
      table.push_back({attn + "q_a_layernorm.weight", {a.q_lora_rank}, false, latent});
      table.push_back({attn + "q_b_proj.weight", {q_out, a.q_lora_rank}, false, heads});
    } else {
      table.push_back({attn + "q_proj.weight", {q_out, h}, false, heads});
    }
    table.push_back({attn + "kv_a_proj_with_mqa.weight", {a.kv_lora_rank + a.qk_rope_dim, h}, false, latent});
    if (d.attention_bias) {
      table.push_back({attn + "kv_a_proj_with_mqa.bias", {a.kv_lora_rank + a.qk_rope_dim}, false, latent});
    }
    table.push_back({attn + "kv_a_layernorm.weight", {a.kv_lora_rank}, false, latent});
    table.push_back({attn + "kv_b_proj.weight", {a.heads * (a.qk_nope_dim + a.v_dim), a.kv_lora_rank}, false, heads});
    table.push_back({attn + "o_proj.weight", {h, a.heads * a.v_dim}, false, o_heads});
    if (d.attention_bias) table.push_back({attn + "o_proj.bias", {h}});
    table.push_back({p + "post_attention_layernorm.weight", {h}});
    if (is_moe(m, i)) {
      const auto e = m.moe.experts, inter = m.moe.intermediate, shared = d.shared_intermediate;
      table.push_back({p + "mlp.gate.weight", {e, h}, false, router_split()});
      table.push_back({p + "mlp.gate.e_score_correction_bias", {e}, /*buffer=*/true});
      table.push_back({p + "mlp.experts.gate_up_proj", {e, 2 * inter, h}, false, by_expert});
      table.push_back({p + "mlp.experts.down_proj", {e, h, inter}, false, by_expert});
      table.push_back({p + "mlp.shared_experts.gate_proj.weight", {shared, h}, false, column});
      table.push_back({p + "mlp.shared_experts.up_proj.weight", {shared, h}, false, column});
      table.push_back({p + "mlp.shared_experts.down_proj.weight", {h, shared}, false, row});
    } else {
      table.push_back({p + "mlp.gate_proj.weight", {m.intermediate_size, h}, false, column});
      table.push_back({p + "mlp.up_proj.weight", {m.intermediate_size, h}, false, column});
      table.push_back({p + "mlp.down_proj.weight", {h, m.intermediate_size}, false, row});
    }
  }
  table.push_back({"model.norm.weight", {h}});
  if (!m.tie_word_embeddings) table.push_back({"lm_head.weight", {m.vocab_size, h}, false, vocab});
  return table;
}

struct Block {
  at::Tensor input_norm, post_norm;
  layers::MlaWeights attn;
  at::Tensor gate, up, down;  // the dense MLP, or the shared experts of an MoE layer
  int64_t moe_index = -1;     // place among the MoE layers; -1: dense
  layers::MoeWeights moe;
};

class DeepseekV3 final : public CausalLM {
 public:
  DeepseekV3(DeepseekConfig config, LoadedTensors tensors, const BuildOptions& options)
      : config_(std::move(config)), params_(std::move(tensors.parameters)), buffers_(std::move(tensors.buffers)),
        device_(options.device), dtype_(options.dtype) {
    placements_ = std::move(tensors.placements);
    tp_ = parallel::TensorParallel(options.mesh, options.sequence_parallel);
    stage_ = options.stage(config_.base.num_layers);
    local_mla_ = config_.mla;
    local_mla_.heads = config_.mla.heads / tp_.size();
    if (!config_.base.moe_layers.empty()) ep_ = moe_placement(config_.base.moe.experts, options, tp_);
    std::map<std::string, at::Tensor> by_name(params_.begin(), params_.end());
    by_name.insert(buffers_.begin(), buffers_.end());
    const auto get = [&](const std::string& name) {
      const auto it = by_name.find(name);
      return it == by_name.end() ? at::Tensor() : it->second;
    };
    const auto& m = config_.base;
    embed_ = get("model.embed_tokens.weight");
    norm_ = get("model.norm.weight");
    tied_ = m.tie_word_embeddings;
    if (stage_.last) lm_head_ = m.tie_word_embeddings ? embed_ : get("lm_head.weight");
    const auto& vocab_rows = embed_.defined() ? embed_ : lm_head_;
    vocab_start_ = vocab_rows.defined() ? vocab_rows.size(0) * tp_.rank() : 0;
    if (m.rope.type != layers::RopeType::Dynamic) {
      static_rope_ = layers::rope_frequencies(m.rope, 0);
      static_rope_->inv_freq = static_rope_->inv_freq.to(device_);
    }
    for (int64_t i = stage_.begin; i < stage_.end; ++i) {
      const auto p = "model.layers." + std::to_string(i) + ".";
      const auto a = p + "self_attn.";
      Block b;
      b.input_norm = get(p + "input_layernorm.weight");
      b.post_norm = get(p + "post_attention_layernorm.weight");
      b.attn = {get(a + "q_proj.weight"),          get(a + "q_a_proj.weight"),  get(a + "q_a_proj.bias"),
                get(a + "q_a_layernorm.weight"),   get(a + "q_b_proj.weight"),  get(a + "kv_a_proj_with_mqa.weight"),
                get(a + "kv_a_proj_with_mqa.bias"), get(a + "kv_a_layernorm.weight"), get(a + "kv_b_proj.weight"),
                get(a + "o_proj.weight"),          get(a + "o_proj.bias")};
      const auto mlp = p + (is_moe(m, i) ? "mlp.shared_experts." : "mlp.");
      b.gate = get(mlp + "gate_proj.weight");
      b.up = get(mlp + "up_proj.weight");
      b.down = get(mlp + "down_proj.weight");
      if (is_moe(m, i)) {
        b.moe_index = std::find(m.moe_layers.begin(), m.moe_layers.end(), i) - m.moe_layers.begin();
        b.moe = {get(p + "mlp.gate.weight"), get(p + "mlp.gate.e_score_correction_bias"),
                 get(p + "mlp.experts.gate_up_proj"), get(p + "mlp.experts.down_proj")};
      }
      blocks_.push_back(std::move(b));
    }
  }

  const NamedTensors& named_parameters() const override { return params_; }
  const NamedTensors& named_buffers() const override { return buffers_; }
  NamedTensors checkpoint_tensors() const override {
    return unstack_experts(CausalLM::checkpoint_tensors(), config_.base.expert_names);
  }
  NamedTensors checkpoint_form(NamedTensors whole) const override {
    return unstack_experts(whole, config_.base.expert_names);
  }
  parallel::ProcessGroup* expert_group() const override { return ep_.group; }
  void idle_expert_step() const override {
    at::NoGradGuard no_grad;
    const auto none = at::zeros({0, config_.base.hidden_size}, at::TensorOptions().dtype(dtype_).device(device_));
    for (const auto& b : blocks_) {
      if (b.moe_index >= 0) layers::moe_forward(none, b.moe, config_.base.moe, nullptr, b.moe_index, &ep_);
    }
  }
  const at::Tensor& lm_head() const override { return lm_head_; }
  // "full": whole decoder layers; "selective": the attention (MLA's projections and core, as one
  // function of the normed input) and the routed experts.
  bool supports_recompute() const override { return true; }
  KvShape kv_shape() const override {
    return {stage_.layers(), 1, config_.mla.kv_lora_rank, config_.mla.qk_rope_dim, /*latent=*/true};
  }
  int64_t hidden_size() const override { return config_.base.hidden_size; }
  MoeShape moe_shape() const override {
    const auto& m = config_.base;
    return {static_cast<int64_t>(m.moe_layers.size()), m.moe.experts, m.moe.top_k};
  }
  bool fixed_rope() const override { return static_rope_.has_value(); }
  at::Device device() const override { return device_; }
  at::ScalarType dtype() const override { return dtype_; }

  at::Tensor forward(const PackedBatch& input) const override {
    if (input.slot_cache) throw std::invalid_argument("DeepseekV3: the CUDA slot decoder does not run MLA");
    const auto& m = config_.base;
    // As the dense decoder: sequence parallelism cuts the residual stream by tokens in training-side
    // forwards; cached generation keeps it whole.
    const bool sp = tp_.sequence_parallel() && !input.cache;
    const PackedBatch padded = sp ? pad_for_sequence_parallel(input, tp_.size()) : PackedBatch();
    const auto& batch = sp ? padded : input;
    auto rope = static_rope_ ? layers::rope_table_from(*static_rope_, batch.positions)
                             : layers::rope_table(m.rope, batch.positions, batch.cu_seqlens, batch.context_lengths);
    rope.cos = rope.cos.to(dtype_);
    rope.sin = rope.sin.to(dtype_);
    const layers::MoeTokens moe_tokens{sp, input.tokens.size(0)};
    const auto tokens = input.tokens.size(0);
    if (batch.layer_outputs && pipelined()) throw std::invalid_argument("activations: not under pipeline parallelism");
    if (!stage_.first) check_stage_input(input);
    // [tokens (or a token shard), hidden]: embedded here, or the previous pipeline stage's output.
    auto x = stage_.first ? tp_.embed(embed_, batch.tokens, vocab_start_, sp) : input.stage_input;
    if (batch.layer_outputs) batch.layer_outputs->push_back(whole_residual(x, sp, tp_, tokens));
    // One decoder layer on x over `pb` (the batch as attention reads it); `selective` recomputes
    // the attention and the routed experts in backward.
    const auto layer = [this, sp, moe_tokens](size_t l, const at::Tensor& x_in, const PackedBatch& pb,
                                              const layers::RopeTable& table, layers::Routing* routing,
                                              const std::shared_ptr<RecomputeState>& selective) {
      const auto& cfg = config_.base;
      const auto& b = blocks_[l];
      const auto* cache = pb.cache ? &(*pb.cache)[l] : nullptr;
      auto x = x_in;
      const auto h = tp_.enter(layers::rms_norm(x, b.input_norm, cfg.rms_norm_eps), sp);  // [tokens, hidden]
      const auto heads =
          selective ? layers::recompute([this, &b, state = selective](const std::vector<at::Tensor>& in) {
                        return layers::mla_heads(in[0], b.attn, local_mla_, state->rope, state->batch.cu_seqlens, nullptr,
                                                 state->batch.spans);
                      }, {h})
                    : layers::mla_heads(h, b.attn, local_mla_, table, pb.cu_seqlens, cache, pb.spans);
      x = x + with_bias(tp_.exit(layers::linear(heads, b.attn.o, at::Tensor()), sp), b.attn.o_bias);
      const auto f = layers::rms_norm(x, b.post_norm, cfg.rms_norm_eps);
      // The dense MLP, or the shared experts beside the routed ones.
      auto ffn = tp_.exit(layers::swiglu(tp_.enter(f, sp), b.gate, b.up, b.down), sp);
      if (b.moe_index >= 0) {
        // The first run (no grad) counts the routing; a recomputation replays without counting.
        const auto routed =
            selective ? layers::recompute([this, &b, moe_tokens, routing, state = selective](const std::vector<at::Tensor>& in) {
                          auto* r = at::GradMode::is_enabled() ? &state->routing : routing;
                          return layers::moe_forward(in[0], b.moe, config_.base.moe, r, b.moe_index, &ep_, moe_tokens);
                        }, {f})
                      : layers::moe_forward(f, b.moe, cfg.moe, routing, b.moe_index, &ep_, moe_tokens);
        ffn = routed + ffn;
      }
      return x + ffn;
    };
    x = run_decoder_layers(x, blocks_.size(), stage_.begin, batch, rope, recompute_, layer, [&](const at::Tensor& y) {
      if (batch.layer_outputs) batch.layer_outputs->push_back(whole_residual(y, sp, tp_, tokens));
    });
    if (!stage_.last) return x;
    const auto out = layers::rms_norm(x, norm_, m.rms_norm_eps);
    if (!sp) return out;
    // The column-parallel lm-head needs every token (see the dense decoder).
    return tp_.enter(out, true).narrow(0, 0, tokens);
  }

 private:
  DeepseekConfig config_;
  NamedTensors params_, buffers_;
  at::Device device_;
  at::ScalarType dtype_;
  std::optional<layers::RopeFrequencies> static_rope_;
  layers::MlaConfig local_mla_;  // this tensor rank's heads
  layers::ExpertParallel ep_;
  at::Tensor embed_, norm_, lm_head_;
  std::vector<Block> blocks_;

};

// Drops multi-token-prediction tensors (model.layers.{i}.*, i >= layers), noting how many on stderr.
WeightMap without_mtp_layers(const WeightMap& weights, int64_t layers) {
  WeightMap kept;
  int64_t skipped = 0;
  std::string first;
  for (const auto& [name, t] : weights) {
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) == 0) {
      const auto end = name.find('.', prefix.size());
      const auto digits = name.substr(prefix.size(), end == std::string::npos ? std::string::npos : end - prefix.size());
      if (!digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos && std::stoll(digits) >= layers) {
        if (first.empty()) first = name;
        ++skipped;
        continue;
      }
    }
    kept.emplace(name, t);
  }
  if (skipped > 0) {
    std::cerr << "tiller: DeepseekV3: skipping " << skipped << " multi-token-prediction tensors (layers >= " << layers
              << ", e.g. " << first << "); tiller does not run MTP\n";
  }
  return kept;
}

std::unique_ptr<CausalLM> build_deepseek_v3(const HfConfig& c, const WeightMap& weights, const BuildOptions& options) {
  const auto config = deepseek_config(c);
  const auto& m = config.base;
  layers::check_moe_config(m.moe);
  if (options.context_size() > 1) {
    throw std::invalid_argument("layout.context: context parallelism of DeepSeek-V3 (MLA) is not in the engine yet");
  }
  const int experts = options.expert_size(), size = options.tensor_size();
  if (experts > 1 && m.moe.experts % experts != 0) {
    throw std::invalid_argument("layout.expert: " + std::to_string(experts) + " does not divide the " +
                                std::to_string(m.moe.experts) + " experts (n_routed_experts)");
  }
  if (size > 1) {
    const auto refuse = [&](const std::string& what, int64_t n) {
      if (n % size != 0) {
        throw std::invalid_argument("layout.tensor: " + std::to_string(size) + " does not divide " + what + " (" +
                                    std::to_string(n) + ")");
      }
    };
    refuse("num_attention_heads", m.num_heads);
    refuse("vocab_size", m.vocab_size);
    if (static_cast<int64_t>(m.moe_layers.size()) < m.num_layers) refuse("intermediate_size", m.intermediate_size);
    if (!m.moe_layers.empty()) refuse("moe_intermediate_size * n_shared_experts", config.shared_intermediate);
  }
  auto stacked = stack_experts(without_mtp_layers(weights, m.num_layers), m.moe_layers, m.moe.experts, m.expert_names);
  const auto stage = options.stage(m.num_layers);
  auto loaded = load_tensors(deepseek_table(config), stacked, m.tie_word_embeddings, options, &stage);
  return std::make_unique<DeepseekV3>(config, std::move(loaded), options);
}

const ArchitectureRegistrar registrar("DeepseekV3ForCausalLM", build_deepseek_v3);

}  // namespace
}  // namespace tiller::models
