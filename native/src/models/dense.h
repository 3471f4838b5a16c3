// The dense decoder shared by Qwen2, Qwen3 and Llama: pre-norm blocks of grouped-query attention
// and a SwiGLU MLP. The families differ only in hyper-parameters (QKV bias, per-head q/k norm),
// which their files read from config.json into ModelConfig.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "layers/rope.h"
#include "models/causal_lm.h"
#include "models/hf_config.h"
#include "models/registry.h"

namespace tiller::models {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // may differ from hidden_size / num_heads
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2; Llama's attention_bias
  bool o_bias = false;    // Llama's attention_bias
  bool qk_norm = false;   // Qwen3: RMSNorm over head_dim of q and k, before rope
  layers::RopeConfig rope;
};

// The fields every dense family reads the same way: sizes, eps, tying, rope (HF v5's
// rope_parameters or the older rope_theta + rope_scaling).
ModelConfig read_common_config(const HfConfig& config);

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every HF tensor name of the model with its shape, in checkpoint order.
std::vector<TensorSpec> tensor_table(const ModelConfig& config);

// Checks `weights` against the table (missing, unexpected, wrong shape: errors name the tensor),
// then casts and moves them to device/dtype.
std::unique_ptr<CausalLM> build_dense(const ModelConfig& config, const WeightMap& weights, at::Device device,
                                      at::ScalarType dtype);

}  // namespace tiller::models
