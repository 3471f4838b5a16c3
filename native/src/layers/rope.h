// Rotary position embedding: the inverse frequencies of each HF rope type (default, linear,
// dynamic NTK, YaRN, llama3) and their application to packed [tokens, heads, head_dim] tensors.
#pragma once

#include <utility>

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

namespace tiller::layers {

enum class RopeType { Default, Linear, Dynamic, Yarn, Llama3 };

// "default" | "linear" | "dynamic" | "yarn" | "llama3"; anything else throws, naming the known ones.
RopeType rope_type_from_name(const std::string& name);

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  int64_t rotary_dim = 0;  // = head_dim (no partial rotary in the supported families)
  int64_t max_position_embeddings = 0;
  double factor = 1.0;                              // linear, dynamic, yarn, llama3
  int64_t original_max_position_embeddings = 0;     // yarn, llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  double beta_fast = 32.0, beta_slow = 1.0;         // yarn
  std::optional<double> attention_factor;           // yarn: scales cos/sin
  std::optional<double> mscale, mscale_all_dim;     // yarn: infer attention_factor
  bool truncate = true;                             // yarn: integer correction range
};

struct RopeFrequencies {
  at::Tensor inv_freq;          // [rotary_dim / 2] float32, CPU
  double attention_scaling = 1.0;  // multiplies cos and sin (YaRN)
};

// context_length matters only for dynamic NTK: the frequencies stretch once a sequence runs past
// max_position_embeddings.
RopeFrequencies rope_frequencies(const RopeConfig& config, int64_t context_length);

struct RopeTable {
  at::Tensor cos, sin;  // [tokens, rotary_dim] float32 on the positions' device
};

// positions: [tokens] int64. Sequence i owns tokens cu_seqlens[i]..cu_seqlens[i+1] and, for dynamic
// NTK, is rotated with the frequencies of context_lengths[i] (each sequence on its own, so a
// sequence's result never depends on what it is packed with).
RopeTable rope_table(const RopeConfig& config, const at::Tensor& positions,
                     const std::vector<int64_t>& cu_seqlens, const std::vector<int64_t>& context_lengths);

// The table of one set of frequencies: no host work when freqs.inv_freq already sits on the
// positions' device, so it can run inside a CUDA graph.
RopeTable rope_table_from(const RopeFrequencies& freqs, const at::Tensor& positions);

// Multimodal rope (Qwen2-VL's M-RoPE): positions [3, tokens] int64 (temporal, height, width).
// Frequency i of the half table takes its angle from the position of the section it falls in;
// `sections` (sizes summing to rotary_dim / 2) cycle temporal, height, width.
RopeTable mrope_table(const RopeFrequencies& freqs, const at::Tensor& positions, const std::vector<int64_t>& sections);

// x: [tokens, heads, head_dim], table rows per token -> same shape and dtype as x
at::Tensor apply_rope(const at::Tensor& x, const RopeTable& table);

// apply_rope of a layer's queries and keys at once: on CUDA one fused kernel with the same values
// (kernels/fused.h; its backward the inverse rotation), elsewhere two apply_rope calls.
std::pair<at::Tensor, at::Tensor> apply_rope_pair(const at::Tensor& q, const at::Tensor& k, const RopeTable& table);

// DeepSeek's rope_interleave: rotates the pairs (x[2i], x[2i+1]) instead of (x[i], x[i + D/2]) and
// returns them de-interleaved (every first element, then every second), as HF does. Queries and
// keys come out permuted alike, so their dot products are those of the interleaved rotation.
at::Tensor apply_rope_interleaved(const at::Tensor& x, const RopeTable& table);

}  // namespace tiller::layers
