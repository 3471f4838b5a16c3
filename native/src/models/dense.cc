#include "models/dense.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <stdexcept>

#include "kernels/decode.h"
#include "layers/attention.h"
#include "layers/mlp.h"
#include "layers/norm.h"
#include "layers/recompute.h"
#include "parallel/collectives.h"

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

// Moves the named parameters (those present; at least two, else nothing) into one storage, rows
// back to back in the order given; each keeps its name and shape as a view of it.
void pack_rows(NamedTensors& params, const std::vector<std::string>& names) {
  std::vector<size_t> at;
  for (const auto& name : names) {
    const auto it = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.first == name; });
    if (it != params.end()) at.push_back(static_cast<size_t>(it - params.begin()));
  }
  if (at.size() < 2) return;
  std::vector<at::Tensor> parts;
  for (auto i : at) parts.push_back(params[i].second);
  const auto whole = at::cat(parts, 0);
  int64_t row = 0;
  for (auto i : at) {
    const auto rows = params[i].second.size(0);
    params[i].second = whole.narrow(0, row, rows).detach();
    row += rows;
  }
}

struct Block {
  at::Tensor input_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  at::Tensor post_norm, gate, up, down;
  int64_t moe_index = -1;  // place among the MoE layers; -1: the dense MLP
  layers::MoeWeights moe;
};

class DenseDecoder final : public CausalLM {
 public:
  DenseDecoder(ModelConfig config, LoadedTensors loaded, const BuildOptions& options)
      : config_(std::move(config)), params_(std::move(loaded.parameters)), device_(options.device),
        dtype_(options.dtype) {
    tp_ = parallel::TensorParallel(options.mesh, options.sequence_parallel);
    stage_ = options.stage(config_.num_layers);
    if (!config_.moe_layers.empty()) ep_ = moe_placement(config_.moe.experts, options, tp_);
    placements_ = std::move(loaded.placements);
    // Per-rank shapes: the forward sees only this rank's heads (key/value heads replicated when
    // there are fewer than ranks) and its slice of the vocabulary.
    const int size = tp_.size();
    local_heads_ = config_.num_heads / size;
    local_kv_heads_ = std::max<int64_t>(1, config_.num_kv_heads / size);
    for (int64_t i = stage_.begin; i < stage_.end; ++i) {
      const auto p = "model.layers." + std::to_string(i) + ".";
      // q/k/v and gate/up side by side: each projection group is then one GEMM (layers::linear_parts).
      pack_rows(params_, {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"});
      pack_rows(params_, {p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias", p + "self_attn.v_proj.bias"});
      pack_rows(params_, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"});
    }
    std::map<std::string, at::Tensor> by_name(params_.begin(), params_.end());
    const auto get = [&](const std::string& name) {
      const auto it = by_name.find(name);
      return it == by_name.end() ? at::Tensor() : it->second;
    };
    embed_ = get("model.embed_tokens.weight");
    norm_ = get("model.norm.weight");
    tied_ = config_.tie_word_embeddings;
    if (stage_.last) lm_head_ = config_.tie_word_embeddings ? embed_ : get("lm_head.weight");
    // Each stage holds its vocabulary shard of the embedding, the lm-head, both or (middle) neither.
    const auto& vocab_rows = embed_.defined() ? embed_ : lm_head_;
    vocab_start_ = vocab_rows.defined() ? vocab_rows.size(0) * tp_.rank() : 0;
    if (config_.rope.type != layers::RopeType::Dynamic) {
      // Fixed frequencies live on the device once, so the forward does no host work for rope.
      static_rope_ = layers::rope_frequencies(config_.rope, 0);
      static_rope_->inv_freq = static_rope_->inv_freq.to(device_);
    }
    for (int64_t i = stage_.begin; i < stage_.end; ++i) {
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
  NamedTensors checkpoint_form(NamedTensors whole) const override {
    return config_.moe_layers.empty() ? whole : unstack_experts(whole, config_.expert_names);
  }
  parallel::ProcessGroup* expert_group() const override { return ep_.group; }
  void idle_expert_step() const override {
    at::NoGradGuard no_grad;
    const auto none = at::zeros({0, config_.hidden_size}, at::TensorOptions().dtype(dtype_).device(device_));
    for (const auto& b : blocks_) {
      if (b.moe_index >= 0) layers::moe_forward(none, b.moe, config_.moe, nullptr, b.moe_index, &ep_);
    }
  }
  const at::Tensor& lm_head() const override { return lm_head_; }
  KvShape kv_shape() const override { return {stage_.layers(), local_kv_heads_, config_.head_dim, config_.head_dim}; }
  int64_t hidden_size() const override { return config_.hidden_size; }
  MoeShape moe_shape() const override {
    if (config_.moe_layers.empty()) return {};
    return {static_cast<int64_t>(config_.moe_layers.size()), config_.moe.experts, config_.moe.top_k};
  }
  bool fixed_rope() const override { return static_rope_.has_value(); }
  bool supports_recompute() const override { return true; }
  at::Device device() const override { return device_; }
  at::ScalarType dtype() const override { return dtype_; }

  at::Tensor forward(const PackedBatch& input) const override {
    const auto& c = config_;
    // Sequence parallelism cuts the residual stream by tokens in training-side forwards; cached
    // generation keeps it whole (same math, no padding of one-token decode steps).
    const bool sp = tp_.sequence_parallel() && !input.cache && !input.slot_cache;
    const PackedBatch padded = sp ? pad_for_sequence_parallel(input, tp_.size()) : PackedBatch();
    const auto& batch = sp ? padded : input;
    const auto tokens = batch.tokens.size(0);
    auto rope = batch.rope             ? *batch.rope
                : static_rope_           ? layers::rope_table_from(*static_rope_, batch.positions)
                                         : layers::rope_table(c.rope, batch.positions, batch.cu_seqlens, batch.context_lengths);
    // Once per forward rather than in every layer's apply_rope.
    rope.cos = rope.cos.to(dtype_);
    rope.sin = rope.sin.to(dtype_);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    const auto heads = local_heads_, kv_heads = local_kv_heads_;
    if (batch.layer_outputs && pipelined()) throw std::invalid_argument("activations: not under pipeline parallelism");
    // [tokens (or a token shard), hidden]: embedded here, or the previous pipeline stage's output.
    if (!stage_.first) check_stage_input(input);
    auto x = stage_.first ? tp_.embed(embed_, batch.tokens, vocab_start_, sp) : input.stage_input;
    const layers::MoeTokens moe_tokens{sp, input.tokens.size(0)};
    // A vision-language model's image rows (never under sequence parallelism: it refuses it).
    if (batch.embed_rows.defined()) x = x.index_put({batch.embed_rows}, batch.embed_values);
    if (batch.layer_outputs) batch.layer_outputs->push_back(whole_residual(x, sp, tp_, input.tokens.size(0)));
    // One decoder layer on x: `at` is the batch as attention reads it, `selective` recomputes the
    // attention core and the experts in backward.
    // A CUDA decode step (one token per row, no grad, one rank) normalises with the decode
    // kernels: q/k norms and rope in one launch, the residual add with the norm after it.
    const bool decode = batch.slot_cache && batch.slot_cache->decode && tp_.size() == 1 && !at::GradMode::is_enabled() &&
                        kernels::decode_norm_available(x);
    const bool decode_rope = decode && rope.cos.size(1) == c.head_dim && kernels::qk_norm_rope_available(x, c.head_dim);
    const auto layer = [this, &c, sp, tokens, scale, heads, kv_heads, moe_tokens, decode, decode_rope](
                           size_t l, const at::Tensor& x_in, const PackedBatch& at, const layers::RopeTable& rope,
                           layers::Routing* routing, const std::shared_ptr<RecomputeState>& selective) {
      const auto& b = blocks_[l];
      auto x = x_in;
      const auto h = decode ? kernels::add_rms_norm(x, at::Tensor(), b.input_norm, c.rms_norm_eps).second
                            : tp_.enter(layers::rms_norm(x, b.input_norm, c.rms_norm_eps), sp);  // [tokens, hidden]
      const auto qkv = layers::linear_parts(h, {b.q, b.k, b.v}, {b.q_bias, b.k_bias, b.v_bias});
      auto q = qkv[0].view({tokens, heads, c.head_dim});
      auto k = qkv[1].view({tokens, kv_heads, c.head_dim});
      auto v = qkv[2].view({tokens, kv_heads, c.head_dim});
      if (decode_rope) {
        std::tie(q, k) = kernels::qk_norm_rope(q, k, c.qk_norm ? b.q_norm : at::Tensor(), c.qk_norm ? b.k_norm : at::Tensor(),
                                               c.rms_norm_eps, rope.cos, rope.sin);
      } else if (c.qk_norm) {
        q = layers::rms_norm(q, b.q_norm, c.rms_norm_eps);
        k = layers::rms_norm(k, b.k_norm, c.rms_norm_eps);
      } else if (!q.is_contiguous()) {
        // Column views of one GEMM's output: the fused rope wants whole rows, and v alone would
        // otherwise keep the whole [tokens, q + k + v] alive until attention's backward.
        q = q.contiguous();
        k = k.contiguous();
        v = v.contiguous();
      }
      if (!decode_rope) std::tie(q, k) = layers::apply_rope_pair(q, k, rope);
      const auto window = c.sliding_window;
      const auto attn = selective ? layers::recompute([l, scale, window, state = selective](const std::vector<at::Tensor>& in) {
                                      return attention(state->batch, l, in[0], in[1], in[2], scale, window);
                                    }, {q, k, v})
                                  : attention(at, l, q, k, v, scale, window);
      const auto flat = attn.reshape({tokens, heads * c.head_dim});
      // A row-parallel bias is added once, after the partial sums are reduced.
      const auto o = tp_.size() == 1 ? linear(flat, b.o, b.o_bias) : with_bias(tp_.exit(linear(flat, b.o, at::Tensor()), sp), b.o_bias);
      at::Tensor m;
      if (decode) {
        std::tie(x, m) = kernels::add_rms_norm(x, o, b.post_norm, c.rms_norm_eps);
      } else {
        x = x + o;
        m = layers::rms_norm(x, b.post_norm, c.rms_norm_eps);
      }
      if (b.moe_index < 0) return x + tp_.exit(layers::swiglu(tp_.enter(m, sp), b.gate, b.up, b.down), sp);
      if (!selective) return x + layers::moe_forward(m, b.moe, c.moe, routing, b.moe_index, &ep_, moe_tokens);
      // The experts' activations are recomputed too: the first run (no grad) counts the routing,
      // the recomputation replays without counting.
      return x + layers::recompute([this, &c, &b, moe_tokens, routing, state = selective](const std::vector<at::Tensor>& in) {
                   auto* r = at::GradMode::is_enabled() ? &state->routing : routing;
                   return layers::moe_forward(in[0], b.moe, c.moe, r, b.moe_index, &ep_, moe_tokens);
                 }, {m});
    };
    x = run_decoder_layers(x, blocks_.size(), stage_.begin, batch, rope, recompute_, layer, [&](const at::Tensor& y) {
      if (batch.layer_outputs) batch.layer_outputs->push_back(whole_residual(y, sp, tp_, input.tokens.size(0)));
    });
    if (!stage_.last) return x;
    const auto out = layers::rms_norm(x, norm_, c.rms_norm_eps);
    if (!sp) return out;
    // The lm-head is column-parallel: it needs every token, gathered here (backward: reduce-scatter,
    // which also sums the vocabulary shards' parts, so the caller adds no copy_to_group); the
    // padding is dropped.
    return tp_.enter(out, true).narrow(0, 0, input.tokens.size(0));
  }

 private:
  // q: [tokens, heads, D], k, v: [tokens, kv_heads, D] -> [tokens, heads, D]
  static at::Tensor attention(const PackedBatch& batch, size_t layer, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, double scale, int64_t window) {
    if (batch.context) return layers::context_parallel_attention(q, k, v, *batch.context, scale, window);
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
  int64_t local_heads_ = 0, local_kv_heads_ = 0;
  layers::ExpertParallel ep_;  // group null: every expert on this rank
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

PackedBatch pad_for_sequence_parallel(const PackedBatch& batch, int size) {
  const auto tokens = batch.tokens.size(0);
  const auto pad = (size - tokens % size) % size;
  PackedBatch out = batch;
  if (pad == 0) return out;
  out.tokens = at::cat({batch.tokens, at::zeros({pad}, batch.tokens.options())});
  out.positions = at::cat({batch.positions, at::arange(pad, batch.positions.options())});
  out.cu_seqlens.push_back(tokens + pad);
  out.context_lengths.push_back(pad);
  return out;
}

at::Tensor run_decoder_layers(at::Tensor x, size_t count, int64_t first, const PackedBatch& batch,
                              const layers::RopeTable& rope, const layers::RecomputePolicy& policy,
                              const DecoderLayerFn& layer, const std::function<void(const at::Tensor&)>& each) {
  const bool recomputing = policy.granularity != layers::Recompute::kNone && at::GradMode::is_enabled();
  std::shared_ptr<RecomputeState> saved;
  if (recomputing) {
    saved = std::make_shared<RecomputeState>();
    saved->batch = batch;
    if (batch.context) {
      saved->context = *batch.context;
      saved->batch.context = &*saved->context;
    }
    saved->rope = rope;
    if (batch.routing) saved->routing.replay = batch.routing->replay;
  }
  for (size_t l = 0; l < count; ++l) {
    const auto global = first + static_cast<int64_t>(l);
    if (recomputing && policy.full(global)) {
      // Whole layer: the forward keeps only its input, backward runs it again.
      x = layers::recompute([layer, l, saved, routing = batch.routing](const std::vector<at::Tensor>& in) {
            auto* r = at::GradMode::is_enabled() ? &saved->routing : routing;
            return layer(l, in[0], saved->batch, saved->rope, r, nullptr);
          }, {x});
    } else {
      x = layer(l, x, batch, rope, batch.routing, recomputing && policy.selective(global) ? saved : nullptr);
    }
    each(x);
  }
  return x;
}

at::Tensor whole_residual(const at::Tensor& x, bool sp, const parallel::TensorParallel& tp, int64_t tokens) {
  if (!sp) return x;
  return parallel::all_gather_first_dim(x.detach(), *tp.group()).narrow(0, 0, tokens);
}

layers::ExpertParallel moe_placement(int64_t experts, const BuildOptions& options, const parallel::TensorParallel& tp) {
  layers::ExpertParallel ep;
  ep.tensor = tp.group();
  ep.local = experts;
  if (options.expert_size() > 1) {
    ep.local = experts / options.expert_size();
    ep.group = &options.mesh->expert();
    ep.first = options.expert_rank() * ep.local;
  }
  return ep;
}

parallel::SplitSpec router_split() { return {parallel::Split::kReplicated, 0, /*partial=*/true}; }

std::vector<TensorSpec> tensor_table(const ModelConfig& c) {
  using parallel::Split;
  const auto q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  const parallel::SplitSpec vocab{Split::kVocab}, column{Split::kColumn}, row{Split::kRow};
  const parallel::SplitSpec q_heads{Split::kColumn, c.num_heads}, kv_heads{Split::kColumn, c.num_kv_heads};
  const parallel::SplitSpec o_heads{Split::kRow, c.num_heads}, per_head{Split::kReplicated, 0, true};
  std::vector<TensorSpec> table{{"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, false, vocab}};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const auto p = "model.layers." + std::to_string(i) + ".";
    table.push_back({p + "input_layernorm.weight", {c.hidden_size}});
    table.push_back({p + "self_attn.q_proj.weight", {q_out, c.hidden_size}, false, q_heads});
    table.push_back({p + "self_attn.k_proj.weight", {kv_out, c.hidden_size}, false, kv_heads});
    table.push_back({p + "self_attn.v_proj.weight", {kv_out, c.hidden_size}, false, kv_heads});
    if (c.qkv_bias) {
      table.push_back({p + "self_attn.q_proj.bias", {q_out}, false, q_heads});
      table.push_back({p + "self_attn.k_proj.bias", {kv_out}, false, kv_heads});
      table.push_back({p + "self_attn.v_proj.bias", {kv_out}, false, kv_heads});
    }
    if (c.qk_norm) {
      table.push_back({p + "self_attn.q_norm.weight", {c.head_dim}, false, per_head});
      table.push_back({p + "self_attn.k_norm.weight", {c.head_dim}, false, per_head});
    }
    table.push_back({p + "self_attn.o_proj.weight", {c.hidden_size, q_out}, false, o_heads});
    if (c.o_bias) table.push_back({p + "self_attn.o_proj.bias", {c.hidden_size}});
    table.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}});
    if (std::find(c.moe_layers.begin(), c.moe_layers.end(), i) != c.moe_layers.end()) {
      const auto experts = c.moe.experts, inter = c.moe.intermediate;
      table.push_back({p + "mlp.gate.weight", {experts, c.hidden_size}, false, router_split()});
      const parallel::SplitSpec by_expert(parallel::Split::kExpert);
      table.push_back({p + "mlp.experts.gate_up_proj", {experts, 2 * inter, c.hidden_size}, false, by_expert});
      table.push_back({p + "mlp.experts.down_proj", {experts, c.hidden_size, inter}, false, by_expert});
    } else {
      table.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}, false, column});
      table.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}, false, column});
      table.push_back({p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}, false, row});
    }
  }
  table.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) table.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, false, vocab});
  return table;
}

bool in_stage(const std::string& name, const parallel::StageRange& stage, bool tied) {
  if (stage.first && stage.last) return true;
  static const std::string kLayers = "model.layers.";
  if (name.rfind(kLayers, 0) == 0) {
    const auto layer = std::stoll(name.substr(kLayers.size(), name.find('.', kLayers.size()) - kLayers.size()));
    return layer >= stage.begin && layer < stage.end;
  }
  if (name == "model.norm.weight" || name == "lm_head.weight") return stage.last;
  if (name == "model.embed_tokens.weight") return stage.first || (tied && stage.last);
  return stage.first;
}

LoadedTensors load_tensors(const std::vector<TensorSpec>& table, const WeightMap& weights, bool tied,
                           const BuildOptions& options, const parallel::StageRange* stage) {
  const int rank = options.tensor_rank(), size = options.tensor_size();
  const bool sp = options.sequence_parallel && size > 1;
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
    if (stage && !in_stage(spec.name, *stage, tied)) continue;
    // Stacked experts are cut over the expert group, everything else over the tensor group.
    const bool by_expert = spec.split.split == parallel::Split::kExpert;
    const int r = by_expert ? options.expert_rank() : rank, n = by_expert ? options.expert_size() : size;
    // The slice is a view of the (mapped) tensor: only its bytes are copied to the device.
    const auto slice = parallel::shard_tensor(spec.name, it->second, spec.split, r, n);
    auto& list = spec.buffer ? out.buffers : out.parameters;
    list.emplace_back(spec.name, slice.to(options.device, spec.buffer ? at::kFloat : options.dtype,
                                          /*non_blocking=*/false, /*copy=*/true).contiguous());
    if (spec.buffer) continue;
    out.placements.push_back(parallel::place_tensor(spec.name, spec.shape, spec.split, r, n, sp));
    // A tied embedding's copy on the last stage counts once in the gradient norm: on the first.
    if (stage && !stage->first && spec.name == "model.embed_tokens.weight") out.placements.back().counts = false;
  }
  for (const auto& [name, _] : weights) {
    // A tied checkpoint may still carry lm_head.weight (a copy of the embedding): ignored.
    if (!expected.count(name) && !(tied && name == "lm_head.weight")) {
      throw std::invalid_argument("weights: " + name + " is not a tensor of this model");
    }
  }
  return out;
}

std::unique_ptr<CausalLM> build_dense(const ModelConfig& config, const WeightMap& weights, const BuildOptions& options) {
  if (!config.moe_layers.empty()) layers::check_moe_config(config.moe);
  const int experts = options.expert_size();
  if (experts > 1 && !config.moe_layers.empty() && config.moe.experts % experts != 0) {
    throw std::invalid_argument("layout.expert: " + std::to_string(experts) + " does not divide the " +
                                std::to_string(config.moe.experts) + " experts (num_experts)");
  }
  if (options.context_size() > 1) {
    const auto refuse = [&](const std::string& why) {
      throw std::invalid_argument("layout.context: " + std::to_string(options.context_size()) + ": " + why);
    };
    if (!config.moe_layers.empty()) refuse("context parallelism of MoE models is not in the engine yet");
    if (config.rope.type == layers::RopeType::Dynamic) refuse("dynamic NTK rope reads whole sequences; not with context parallelism");
    if (options.pipeline_size() > 1) refuse("context parallelism with pipeline stages is not in the engine yet");
  }
  const int size = options.tensor_size();
  if (size > 1) {
    const auto refuse = [&](const std::string& what, int64_t n) {
      throw std::invalid_argument("layout.tensor: " + std::to_string(size) + " does not divide " + what + " (" +
                                  std::to_string(n) + ")");
    };
    if (config.num_heads % size != 0) refuse("num_attention_heads", config.num_heads);
    if (config.num_kv_heads % size != 0 && size % config.num_kv_heads != 0) {
      throw std::invalid_argument("layout.tensor: " + std::to_string(size) + " and num_key_value_heads (" +
                                  std::to_string(config.num_kv_heads) +
                                  ") must divide one another (fewer key-value heads than ranks are replicated)");
    }
    if (config.vocab_size % size != 0) refuse("vocab_size", config.vocab_size);
    // Experts are whole on their expert rank (expert tensor parallelism 1); dense MLPs are split.
    const bool dense_mlp = static_cast<int64_t>(config.moe_layers.size()) < config.num_layers;
    if (dense_mlp && config.intermediate_size % size != 0) refuse("intermediate_size", config.intermediate_size);
  }
  const auto stage = options.stage(config.num_layers);
  auto loaded = load_tensors(tensor_table(config),
                             config.moe_layers.empty()
                                 ? weights
                                 : stack_experts(weights, config.moe_layers, config.moe.experts, config.expert_names),
                             config.tie_word_embeddings, options, &stage);
  return std::make_unique<DenseDecoder>(config, std::move(loaded), options);
}

}  // namespace tiller::models
