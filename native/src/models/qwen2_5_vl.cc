#include "models/qwen2_5_vl.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>

#include "layers/attention.h"
#include "layers/mlp.h"
#include "layers/norm.h"
#include "layers/rope.h"
#include "models/dense.h"

namespace tiller::models {

MropePositions mrope_positions(const at::Tensor& tokens_cpu, const std::vector<int64_t>& cu,
                               const std::vector<int64_t>& grids, int64_t image_token_id,
                               int64_t vision_start_token_id, int64_t merge) {
  const auto tokens = tokens_cpu.to(at::kLong).contiguous();
  const auto* ids = tokens.data_ptr<int64_t>();
  MropePositions out;
  out.positions = at::empty({3, tokens.size(0)}, at::kLong);
  auto p = out.positions.accessor<int64_t, 2>();
  size_t next_grid = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    int64_t position = 0, highest = -1;
    for (int64_t i = cu[s]; i < cu[s + 1];) {
      if (ids[i] != image_token_id || i == cu[s] || ids[i - 1] != vision_start_token_id) {
        for (int d = 0; d < 3; ++d) p[d][i] = position;
        highest = std::max(highest, position);
        ++position;
        ++i;
        continue;
      }
      if (next_grid + 3 > grids.size()) {
        throw std::invalid_argument("images: sequence " + std::to_string(s) + " has image placeholder tokens at " +
                                    std::to_string(i - cu[s]) + " but all " + std::to_string(grids.size() / 3) +
                                    " images are used");
      }
      const auto t = grids[next_grid], h = grids[next_grid + 1] / merge, w = grids[next_grid + 2] / merge;
      const auto n = t * h * w;
      for (int64_t j = i; j < i + n; ++j) {
        if (j >= cu[s + 1] || ids[j] != image_token_id) {
          throw std::invalid_argument("images: image " + std::to_string(next_grid / 3) + " (grid " + std::to_string(t) +
                                      " x " + std::to_string(grids[next_grid + 1]) + " x " +
                                      std::to_string(grids[next_grid + 2]) + ") needs " + std::to_string(n) +
                                      " placeholder tokens in sequence " + std::to_string(s) + ", found " +
                                      std::to_string(j - i));
        }
      }
      int64_t j = i;
      for (int64_t a = 0; a < t; ++a) {
        for (int64_t b = 0; b < h; ++b) {
          for (int64_t c = 0; c < w; ++c, ++j) {
            out.image_rows.push_back(j);
            p[0][j] = position + a;
            p[1][j] = position + b;
            p[2][j] = position + c;
          }
        }
      }
      highest = std::max({highest, position + t - 1, position + h - 1, position + w - 1});
      position += std::max(h, w);
      i += n;
      next_grid += 3;
    }
    out.deltas.push_back(highest + 1 - (cu[s + 1] - cu[s]));
  }
  out.images_used = static_cast<int64_t>(next_grid / 3);
  return out;
}

VisionLayout vision_layout(const std::vector<int64_t>& grids, const VisionConfig& c) {
  const auto m = c.spatial_merge_size, unit = c.merge_unit();
  const auto window = c.window_size / m / c.patch_size;  // in merged tokens
  std::vector<int64_t> window_index, positions;
  VisionLayout out;
  out.cu_windows = {0};
  out.cu_frames = {0};
  int64_t base = 0;
  for (size_t g = 0; g + 2 < grids.size(); g += 3) {
    const auto t = grids[g], h = grids[g + 1], w = grids[g + 2];
    const auto lh = h / m, lw = w / m;
    const auto windows_h = (lh + window - 1) / window, windows_w = (lw + window - 1) / window;
    for (int64_t f = 0; f < t; ++f) {
      for (int64_t wh = 0; wh < windows_h; ++wh) {
        for (int64_t ww = 0; ww < windows_w; ++ww) {
          int64_t count = 0;
          for (int64_t r = wh * window; r < std::min((wh + 1) * window, lh); ++r) {
            for (int64_t col = ww * window; col < std::min((ww + 1) * window, lw); ++col, ++count) {
              window_index.push_back(base + f * lh * lw + r * lw + col);
            }
          }
          out.cu_windows.push_back(out.cu_windows.back() + count * unit);
        }
      }
      out.cu_frames.push_back(out.cu_frames.back() + h * w);
      // Patches come merge block by merge block: (row block, column block, row in block, column in block).
      for (int64_t bh = 0; bh < lh; ++bh) {
        for (int64_t bw = 0; bw < lw; ++bw) {
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < m; ++j) {
              positions.push_back(bh * m + i);
              positions.push_back(bw * m + j);
            }
          }
        }
      }
    }
    base += t * lh * lw;
  }
  out.window_index = at::tensor(window_index, at::kLong);
  out.positions = at::tensor(positions, at::kLong).view({-1, 2});
  return out;
}

namespace {


bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

struct VisionBlock {
  at::Tensor norm1, norm2, qkv, qkv_bias, proj, proj_bias, gate, gate_bias, up, up_bias, down, down_bias;
};

// The tensors of the vision tower under their checkpoint names ("visual.").
std::vector<TensorSpec> vision_table(const VisionConfig& c) {
  const auto d = c.hidden_size, inter = c.intermediate_size, merged = d * c.merge_unit();
  std::vector<TensorSpec> table{
      {"visual.patch_embed.proj.weight", {d, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size}}};
  for (int64_t i = 0; i < c.depth; ++i) {
    const auto p = "visual.blocks." + std::to_string(i) + ".";
    table.push_back({p + "norm1.weight", {d}});
    table.push_back({p + "norm2.weight", {d}});
    table.push_back({p + "attn.qkv.weight", {3 * d, d}});
    table.push_back({p + "attn.qkv.bias", {3 * d}});
    table.push_back({p + "attn.proj.weight", {d, d}});
    table.push_back({p + "attn.proj.bias", {d}});
    table.push_back({p + "mlp.gate_proj.weight", {inter, d}});
    table.push_back({p + "mlp.gate_proj.bias", {inter}});
    table.push_back({p + "mlp.up_proj.weight", {inter, d}});
    table.push_back({p + "mlp.up_proj.bias", {inter}});
    table.push_back({p + "mlp.down_proj.weight", {d, inter}});
    table.push_back({p + "mlp.down_proj.bias", {d}});
  }
  table.push_back({"visual.merger.ln_q.weight", {d}});
  table.push_back({"visual.merger.mlp.0.weight", {merged, merged}});
  table.push_back({"visual.merger.mlp.0.bias", {merged}});
  table.push_back({"visual.merger.mlp.2.weight", {c.out_hidden_size, merged}});
  table.push_back({"visual.merger.mlp.2.bias", {c.out_hidden_size}});
  return table;
}

// The vision transformer: patches of a batch of images -> one embedding per merged 2x2 group, in
// the order of the images' placeholder tokens.
class VisionTower {
 public:
  VisionTower(VisionConfig config, const NamedTensors& tensors) : c_(std::move(config)) {
    std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
    const auto get = [&](const std::string& name) { return by_name.at(name); };
    patch_ = get("visual.patch_embed.proj.weight");  // [hidden, channels, temporal, patch, patch]
    for (int64_t i = 0; i < c_.depth; ++i) {
      const auto p = "visual.blocks." + std::to_string(i) + ".";
      blocks_.push_back({get(p + "norm1.weight"), get(p + "norm2.weight"), get(p + "attn.qkv.weight"),
                         get(p + "attn.qkv.bias"), get(p + "attn.proj.weight"), get(p + "attn.proj.bias"),
                         get(p + "mlp.gate_proj.weight"), get(p + "mlp.gate_proj.bias"), get(p + "mlp.up_proj.weight"),
                         get(p + "mlp.up_proj.bias"), get(p + "mlp.down_proj.weight"), get(p + "mlp.down_proj.bias")});
    }
    merger_norm_ = get("visual.merger.ln_q.weight");
    merger_fc1_ = get("visual.merger.mlp.0.weight");
    merger_fc1_bias_ = get("visual.merger.mlp.0.bias");
    merger_fc2_ = get("visual.merger.mlp.2.weight");
    merger_fc2_bias_ = get("visual.merger.mlp.2.bias");
    // Axial rope: a quarter of the head's dimensions per axis (rows, then columns), as HF's
    // default ladder over head_dim / 2.
    layers::RopeConfig rope;
    rope.theta = c_.rope_theta;
    rope.rotary_dim = c_.head_dim() / 2;
    inv_freq_ = layers::rope_frequencies(rope, 0).inv_freq;
  }

  const VisionConfig& config() const { return c_; }

  // pixels: [patches, patch_dim] (the model's device and dtype) -> [patches / merge², out_hidden]
  at::Tensor forward(const at::Tensor& pixels, const std::vector<int64_t>& grids) const {
    const auto layout = vision_layout(grids, c_);
    const auto device = pixels.device();
    const auto n = pixels.size(0), d = c_.hidden_size, unit = c_.merge_unit(), hd = c_.head_dim();
    const auto order = layout.window_index.to(device);
    // Rows of a [patches, width] tensor regrouped into window order, merged groups kept whole.
    const auto to_windows = [&](const at::Tensor& x) {
      return x.view({n / unit, unit, x.size(-1)}).index_select(0, order).reshape({n, x.size(-1)});
    };
    // The Conv3d with stride = kernel, as a matmul (viewed here, so that its gradient reaches the parameter).
    auto x = to_windows(layers::linear(pixels, patch_.view({d, -1})));
    const auto pos = layout.positions.to(device).to(at::kFloat);
    const auto inv = inv_freq_.to(device).unsqueeze(0);
    const auto half = at::cat({pos.slice(1, 0, 1) * inv, pos.slice(1, 1, 2) * inv}, 1);  // [patches, hd / 2]
    const auto angles = to_windows(at::cat({half, half}, 1));
    const layers::RopeTable rope{angles.cos(), angles.sin()};
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    const auto& full = c_.fullatt_block_indexes;
    for (int64_t l = 0; l < c_.depth; ++l) {
      const auto& b = blocks_[l];
      const auto h = layers::rms_norm(x, b.norm1, 1e-6);
      const auto qkv = layers::linear(h, b.qkv, b.qkv_bias).view({n, 3, c_.num_heads, hd});
      // Rotated in float32 whatever the model's dtype, as HF does for the vision tower.
      const auto q = layers::apply_rope(qkv.select(1, 0).to(at::kFloat), rope).to(x.scalar_type());
      const auto k = layers::apply_rope(qkv.select(1, 1).to(at::kFloat), rope).to(x.scalar_type());
      const auto v = qkv.select(1, 2);
      const bool whole = std::find(full.begin(), full.end(), l) != full.end();
      const auto attn = layers::segment_attention(q, k, v, whole ? layout.cu_frames : layout.cu_windows, scale);
      x = x + layers::linear(attn.reshape({n, d}), b.proj, b.proj_bias);
      const auto m = layers::rms_norm(x, b.norm2, 1e-6);
      x = x + layers::linear(at::silu(layers::linear(m, b.gate, b.gate_bias)) * layers::linear(m, b.up, b.up_bias), b.down, b.down_bias);
    }
    const auto grouped = layers::rms_norm(x, merger_norm_, 1e-6).reshape({n / unit, unit * d});
    const auto merged = layers::linear(at::gelu(layers::linear(grouped, merger_fc1_, merger_fc1_bias_)), merger_fc2_, merger_fc2_bias_);
    return merged.index_select(0, at::argsort(order));
  }

 private:
  VisionConfig c_;
  at::Tensor patch_, merger_norm_, merger_fc1_, merger_fc1_bias_, merger_fc2_, merger_fc2_bias_, inv_freq_;
  std::vector<VisionBlock> blocks_;
};

struct VlConfig {
  VisionConfig vision;
  ModelConfig text;
  int64_t image_token_id = 151655, vision_start_token_id = 151652;
  std::vector<int64_t> mrope_section;
};

class Qwen2_5_VL final : public CausalLM {
 public:
  Qwen2_5_VL(VlConfig config, LoadedTensors vision, std::unique_ptr<CausalLM> text, bool freeze_vision)
      : c_(std::move(config)), text_(std::move(text)), tower_(c_.vision, vision.parameters) {
    tp_ = text_->tensor_parallel();
    vocab_start_ = text_->vocab_start();
    if (freeze_vision) {
      buffers_ = std::move(vision.parameters);
    } else {
      params_ = std::move(vision.parameters);
      placements_ = std::move(vision.placements);
    }
    const auto& text_params = text_->named_parameters();
    params_.insert(params_.end(), text_params.begin(), text_params.end());
    placements_.insert(placements_.end(), text_->placements().begin(), text_->placements().end());
    freqs_ = layers::rope_frequencies(c_.text.rope, 0);
    freqs_.inv_freq = freqs_.inv_freq.to(text_->device());
  }

  const NamedTensors& named_parameters() const override { return params_; }
  const NamedTensors& named_buffers() const override { return buffers_; }
  const at::Tensor& lm_head() const override { return text_->lm_head(); }
  KvShape kv_shape() const override { return text_->kv_shape(); }
  int64_t hidden_size() const override { return text_->hidden_size(); }
  // The prefill computes positions on the host, so the CUDA slot decoder (graph capture) is not used.
  bool fixed_rope() const override { return false; }
  bool accepts_images() const override { return true; }
  at::Device device() const override { return text_->device(); }
  at::ScalarType dtype() const override { return text_->dtype(); }

  std::vector<int64_t> position_shift(const PackedBatch& prompts) const override {
    if (!prompts.images) return {};
    return positions(prompts).deltas;
  }

  at::Tensor forward(const PackedBatch& batch) const override {
    // Text only, or a decode step: positions as given (generation shifts them; position_shift).
    if (!batch.images) return text_->forward(batch);
    const auto& images = *batch.images;
    const auto mrope = positions(batch);
    const auto table = layers::mrope_table(freqs_, mrope.positions.to(device()), c_.mrope_section);
    PackedBatch b = batch;
    b.rope = &table;
    if (images.count() > 0) {
      check_pixels(images);
      b.embed_values = tower_.forward(images.pixels.to(device(), dtype()), images.grids);
      b.embed_rows = at::tensor(mrope.image_rows, at::kLong).to(device());
    }
    return text_->forward(b);
  }

 private:
  MropePositions positions(const PackedBatch& batch) const {
    const auto& images = *batch.images;
    if (images.grids.size() % 3 != 0) throw std::invalid_argument("images.grids: needs 3 entries (t, h, w) per image");
    auto out = mrope_positions(batch.tokens.to(at::kCPU), batch.cu_seqlens, images.grids, c_.image_token_id,
                               c_.vision_start_token_id, c_.vision.spatial_merge_size);
    if (out.images_used != images.count()) {
      throw std::invalid_argument("images: " + std::to_string(images.count()) + " given, but the tokens hold placeholders for " +
                                  std::to_string(out.images_used));
    }
    return out;
  }

  void check_pixels(const ImageInputs& images) const {
    const auto& v = c_.vision;
    int64_t patches = 0;
    for (int64_t i = 0; i < images.count(); ++i) {
      const auto t = images.grids[3 * i], h = images.grids[3 * i + 1], w = images.grids[3 * i + 2];
      if (t < 1 || h < 1 || w < 1 || h % v.spatial_merge_size != 0 || w % v.spatial_merge_size != 0) {
        throw std::invalid_argument("images.grids: image " + std::to_string(i) + " is " + std::to_string(t) + " x " +
                                    std::to_string(h) + " x " + std::to_string(w) + "; h and w must be positive multiples of " +
                                    std::to_string(v.spatial_merge_size));
      }
      patches += t * h * w;
    }
    if (images.pixels.dim() != 2 || images.pixels.size(0) != patches || images.pixels.size(1) != v.patch_dim()) {
      throw std::invalid_argument("images.pixels: expected [" + std::to_string(patches) + ", " + std::to_string(v.patch_dim()) +
                                  "] (the grids' patches x channels * temporal_patch_size * patch_size²), found " +
                                  std::to_string(images.pixels.numel()) + " values");
    }
  }

  VlConfig c_;
  std::unique_ptr<CausalLM> text_;
  VisionTower tower_;
  NamedTensors params_, buffers_;
  layers::RopeFrequencies freqs_;
};

std::vector<int64_t> int_list(const io::Json& list, const std::string& key) {
  if (!list.is_array()) throw std::invalid_argument("config.json: " + key + " must be a list of integers");
  std::vector<int64_t> out;
  for (const auto& v : list.elements()) out.push_back(v.as_int());
  return out;
}

VisionConfig read_vision_config(const HfConfig& c) {
  const auto positive = [&](const std::string& key) {
    const auto v = c.required_int("vision_config." + key);
    if (v <= 0) throw std::invalid_argument("config.json: vision_config." + key + " must be > 0");
    return v;
  };
  VisionConfig v;
  v.depth = positive("depth");
  v.hidden_size = positive("hidden_size");
  v.intermediate_size = positive("intermediate_size");
  v.num_heads = positive("num_heads");
  v.out_hidden_size = positive("out_hidden_size");
  // The hub's configs name it in_chans, transformers' in_channels.
  v.in_channels = static_cast<int64_t>(c.number_or("vision_config.in_channels", c.number_or("vision_config.in_chans", 3)));
  v.patch_size = static_cast<int64_t>(c.number_or("vision_config.patch_size", 14));
  v.temporal_patch_size = static_cast<int64_t>(c.number_or("vision_config.temporal_patch_size", 2));
  v.spatial_merge_size = static_cast<int64_t>(c.number_or("vision_config.spatial_merge_size", 2));
  v.window_size = static_cast<int64_t>(c.number_or("vision_config.window_size", 112));
  v.rope_theta = c.number_or("vision_config.rope_parameters.rope_theta", 10000.0);
  const auto& vision = c.json().at("vision_config");
  if (vision.has("fullatt_block_indexes")) {
    v.fullatt_block_indexes = int_list(vision.at("fullatt_block_indexes"), "vision_config.fullatt_block_indexes");
  } else {
    v.fullatt_block_indexes = {7, 15, 23, 31};
  }
  const auto act = c.string("vision_config.hidden_act").value_or("silu");
  if (act != "silu") throw std::invalid_argument("config.json: vision_config.hidden_act '" + act + "' is not supported (silu only)");
  if (v.hidden_size % v.num_heads != 0 || (v.hidden_size / v.num_heads) % 4 != 0) {
    throw std::invalid_argument("config.json: vision_config.hidden_size / num_heads must be a multiple of 4");
  }
  if (v.window_size / v.spatial_merge_size / v.patch_size <= 0) {
    throw std::invalid_argument("config.json: vision_config.window_size must be at least patch_size * spatial_merge_size");
  }
  return v;
}

VlConfig read_vl_config(const HfConfig& c) {
  if (!c.has("vision_config")) throw std::invalid_argument("config.json: vision_config is missing");
  VlConfig out;
  out.vision = read_vision_config(c);
  // transformers 5 nests the language model's fields in text_config; the hub's configs keep them
  // at the top level with rope_scaling {type: mrope, mrope_section}.
  const bool nested = c.has("text_config");
  const std::string t = nested ? "text_config." : "";
  io::Json text = nested ? c.json().at("text_config") : c.json();
  const auto type = c.string(t + "rope_parameters.rope_type")
                        .value_or(c.string(t + "rope_scaling.type").value_or(c.string(t + "rope_scaling.rope_type").value_or("default")));
  if (type != "default" && type != "mrope") {
    throw std::invalid_argument("config.json: rope type '" + type + "' is not supported for Qwen2.5-VL (default / mrope)");
  }
  const double theta =
      c.number_or(t + "rope_parameters.rope_theta", c.number_or(t + "rope_theta", c.number_or("rope_theta", 1000000.0)));
  const io::Json* section = nullptr;
  for (const auto& key : {"rope_parameters", "rope_scaling"}) {
    if (text.has(key) && text.at(key).is_object() && text.at(key).has("mrope_section")) section = &text.at(key).at("mrope_section");
  }
  out.mrope_section = section ? int_list(*section, "mrope_section") : std::vector<int64_t>{16, 24, 24};
  // The decoder reads plain default rope at that theta; M-RoPE's sections are applied here.
  text.set("rope_parameters", nullptr);
  text.set("rope_scaling", nullptr);
  text.set("rope_theta", theta);
  const HfConfig text_config(std::move(text));
  if (text_config.flag_or("use_sliding_window", false)) {
    throw std::invalid_argument("config.json: Qwen2.5-VL use_sliding_window=true is not supported");
  }
  out.text = read_common_config(text_config);
  out.text.qkv_bias = true;
  out.text.tie_word_embeddings = c.flag_or("tie_word_embeddings", false) || out.text.tie_word_embeddings;
  int64_t sum = 0;
  for (const auto s : out.mrope_section) sum += s;
  if (sum * 2 != out.text.head_dim) {
    throw std::invalid_argument("config.json: mrope_section sums to " + std::to_string(sum) + ", expected head_dim / 2 = " +
                                std::to_string(out.text.head_dim / 2));
  }
  out.image_token_id = static_cast<int64_t>(c.number_or("image_token_id", 151655));
  out.vision_start_token_id = static_cast<int64_t>(c.number_or("vision_start_token_id", 151652));
  if (out.vision.out_hidden_size != out.text.hidden_size) {
    throw std::invalid_argument("config.json: vision_config.out_hidden_size (" + std::to_string(out.vision.out_hidden_size) +
                                ") must equal the language model's hidden_size (" + std::to_string(out.text.hidden_size) + ")");
  }
  return out;
}

std::unique_ptr<CausalLM> build_qwen2_5_vl(const HfConfig& c, const WeightMap& weights, const BuildOptions& options) {
  auto config = read_vl_config(c);
  if (options.sequence_parallel && options.tensor_size() > 1) {
    throw std::invalid_argument("layout.sequenceParallel: not supported for Qwen2.5-VL (image rows replace embedded tokens)");
  }
  if (options.context_size() > 1) {
    throw std::invalid_argument("layout.context: not supported for Qwen2.5-VL yet (M-RoPE positions of image tokens)");
  }
  if (options.pipeline_size() > 1) {
    throw std::invalid_argument("layout.pipeline: not supported for Qwen2.5-VL yet (the vision tower and M-RoPE positions "
                                "would have to reach every stage)");
  }
  // transformers holds the tensors as model.visual.* and model.language_model.*; checkpoints (and
  // its save_pretrained) use visual.* and model.*: both are read, the latter is what we keep.
  WeightMap text_weights, vision_weights;
  for (const auto& [name, tensor] : weights) {
    std::string n = name;
    if (starts_with(n, "model.visual.")) n = n.substr(6);
    else if (starts_with(n, "model.language_model.")) n = "model." + n.substr(21);
    (starts_with(n, "visual.") ? vision_weights : text_weights)[n] = tensor;
  }
  auto text = build_dense(config.text, text_weights, options);
  auto vision = load_tensors(vision_table(config.vision), vision_weights, false, options);
  return std::make_unique<Qwen2_5_VL>(std::move(config), std::move(vision), std::move(text), options.freeze_vision);
}

const ArchitectureRegistrar registrar("Qwen2_5_VLForConditionalGeneration", build_qwen2_5_vl);

}  // namespace
}  // namespace tiller::models
