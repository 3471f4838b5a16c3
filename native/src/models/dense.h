// The grouped-query-attention decoder shared by Qwen2, Qwen3, Llama, Qwen3-MoE and Mixtral:
// pre-norm blocks of attention and a feed-forward that is a SwiGLU MLP or, in MoE layers, the
// mixture of experts of layers/moe.h. The families differ only in hyper-parameters (QKV bias,
// per-head q/k norm, sliding window, which layers are MoE and how they route), which their files
// read from config.json into ModelConfig. Also the loading helpers every family shares.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/moe.h"
#include "layers/rope.h"
#include "models/causal_lm.h"
#include "models/experts.h"
#include "models/hf_config.h"
#include "models/registry.h"

namespace tiller::models {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // of the dense MLP layers
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // may differ from hidden_size / num_heads
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;       // Qwen2; Llama's attention_bias
  bool o_bias = false;         // Llama's attention_bias
  bool qk_norm = false;        // Qwen3: RMSNorm over head_dim of q and k, before rope
  int64_t sliding_window = 0;  // > 0: each query sees the keys of the last sliding_window positions
  layers::RopeConfig rope;
  // MoE families: the layers (ascending) whose feed-forward is the mixture of experts, its routing,
  // and how a checkpoint names its experts. Empty moe_layers: a dense model.
  std::vector<int64_t> moe_layers;
  layers::MoeConfig moe;
  ExpertCheckpointNames expert_names;
};

// The fields every family reads the same way: sizes, eps, tying, rope (HF v5's rope_parameters or
// the older rope_theta + rope_scaling).
ModelConfig read_common_config(const HfConfig& config);

// rope_parameters (HF v5) or rope_theta + rope_scaling, for `rotary_dim` rotated dimensions.
layers::RopeConfig read_rope_config(const HfConfig& config, int64_t rotary_dim, int64_t max_positions);

struct TensorSpec {
  TensorSpec(std::string tensor_name, std::vector<int64_t> tensor_shape, bool is_buffer = false,
             parallel::SplitSpec split_spec = {})
      : name(std::move(tensor_name)), shape(std::move(tensor_shape)), buffer(is_buffer), split(split_spec) {}
  std::string name;
  std::vector<int64_t> shape;
  bool buffer = false;  // loaded and saved but not trained; kept in float32
  parallel::SplitSpec split;  // how tensor parallelism cuts it (replicated by default)
};

// Every HF tensor name of the model with its shape, in checkpoint order (experts stacked).
std::vector<TensorSpec> tensor_table(const ModelConfig& config);

struct LoadedTensors {
  NamedTensors parameters, buffers;
  std::vector<parallel::TensorPlacement> placements;  // one per parameter, same order
};

// Checks `weights` against `table` (missing, unexpected, wrong shape: errors name the tensor; a tied
// model may carry an lm_head.weight, which is ignored), then copies this rank's slice of each
// (options' tensor rank and size; the whole tensor on one rank) to the device, parameters cast to
// the dtype, buffers to float32. Only the slice is read: a memory-mapped checkpoint's other pages
// are never touched.
// Under pipeline parallelism (`stage` given) only the stage's tensors are copied (in_stage); the
// others are still checked.
LoadedTensors load_tensors(const std::vector<TensorSpec>& table, const WeightMap& weights, bool tied,
                           const BuildOptions& options, const parallel::StageRange* stage = nullptr);

// Whether pipeline stage `stage` holds the HF tensor `name`: decoder layer i's tensors
// ("model.layers.<i>.…") on the stage of layer i, the final norm and the lm-head on the last, the
// embedding on the first and (tied) on the last too, everything else on the first.
bool in_stage(const std::string& name, const parallel::StageRange& stage, bool tied);

// Shared by the decoders that run tensor parallelism:
// appends a padding sequence so that the token count divides over `size` tensor ranks (sequence parallelism);
PackedBatch pad_for_sequence_parallel(const PackedBatch& batch, int size);
// a residual-stream value as the unsharded model holds it (for activations): gathered from the
// token shards and without the padding (`tokens`: the batch's own);
at::Tensor whole_residual(const at::Tensor& x, bool sp, const parallel::TensorParallel& tp, int64_t tokens);
// the MoE layers' parallel placement of this rank: its experts, the expert group, the tensor group;
layers::ExpertParallel moe_placement(int64_t experts, const BuildOptions& options, const parallel::TensorParallel& tp);
// the router's split: replicated, each tensor rank routing its share of the tokens (partial gradient);
parallel::SplitSpec router_split();
// y + bias, or y when there is no bias (a row-parallel bias is added once, after the reduction).
inline at::Tensor with_bias(const at::Tensor& y, const at::Tensor& bias) { return bias.defined() ? y + bias : y; }

// What a recomputed layer reads in backward, after the forward that saved it has returned: the
// batch as attention reads it (its context-parallel plan copied with it), rope, and a routing that
// replays without counting the statistics again.
struct RecomputeState {
  PackedBatch batch;
  std::optional<parallel::ContextShards> context;  // batch.context points here
  layers::RopeTable rope;
  layers::Routing routing;
};

// One decoder layer l on x over `batch` (as attention reads it) and `rope`, recording its routing
// into `routing`; `selective`, when given, is the state its recomputed parts read in backward.
using DecoderLayerFn =
    std::function<at::Tensor(size_t l, const at::Tensor& x, const PackedBatch& batch, const layers::RopeTable& rope,
                             layers::Routing* routing, const std::shared_ptr<RecomputeState>& selective)>;

// Runs a stage's `count` decoder layers (global indices first, first + 1, ...) on x under `policy`
// (while grad is on): a "full" layer keeps only its input and runs again in backward, a "selective"
// one gets the saved state; the first run counts the routing, a recomputation replays it without
// counting. `each` sees every layer's output.
at::Tensor run_decoder_layers(at::Tensor x, size_t count, int64_t first, const PackedBatch& batch,
                              const layers::RopeTable& rope, const layers::RecomputePolicy& policy,
                              const DecoderLayerFn& layer, const std::function<void(const at::Tensor&)>& each);

// Stacks per-expert checkpoint tensors (models/experts.h), then loads and builds the decoder.
std::unique_ptr<CausalLM> build_dense(const ModelConfig& config, const WeightMap& weights, const BuildOptions& options);

}  // namespace tiller::models
