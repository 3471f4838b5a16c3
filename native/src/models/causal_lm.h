// The interface every model family implements: HF-named parameters and a forward pass over a
// packed batch that returns final hidden states. Logits, logprobs and sampling live outside.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "layers/attention.h"
#include "layers/moe.h"
#include "layers/recompute.h"
#include "layers/rope.h"
#include "parallel/tensor_parallel.h"

namespace tiller::models {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The images of a packed batch, for vision-language models: pixel patches laid out as
// transformers' image processor lays them out (pixel_values) and each image's grid
// (image_grid_thw), in the order their placeholder tokens appear in the batch.
struct ImageInputs {
  at::Tensor pixels;           // [patches, channels * temporal_patch * patch * patch] float32, host
  std::vector<int64_t> grids;  // [images * 3]: (t, h, w) of each image, in patches
  int64_t count() const { return static_cast<int64_t>(grids.size() / 3); }
};

// A packed batch: sequence i owns tokens cu_seqlens[i] .. cu_seqlens[i+1]-1 (no padding).
struct PackedBatch {
  at::Tensor tokens;                     // [tokens] int64, on the model's device
  at::Tensor positions;                  // [tokens] int64, restart per sequence (plus cache offset)
  std::vector<int64_t> cu_seqlens;       // [sequences + 1], host
  std::vector<int64_t> context_lengths;  // [sequences]: last position + 1 (dynamic rope)
  // Generation only: one cache view per layer and where each sequence writes into it.
  const std::vector<layers::KvView>* cache = nullptr;
  layers::CacheSpans spans;
  // CUDA generation (rollout/cuda_decoder): when set, `cache` is a slot cache addressed by device
  // tensors only, and cu_seqlens/context_lengths are not read on the decode path.
  const layers::SlotCacheIndex* slot_cache = nullptr;
  // Debugging (activations): when set, the forward appends the residual stream after the
  // embedding and after each decoder layer ([tokens, hidden] each, layers + 1 in all).
  std::vector<at::Tensor>* layer_outputs = nullptr;
  // MoE models: routing replay, recording and statistics for this forward (layers/moe.h); null: none.
  layers::Routing* routing = nullptr;
  // Vision-language models: the images of this batch's sequences (null: text only; a model that
  // does not accept_images() refuses them).
  const ImageInputs* images = nullptr;
  // Set by a model that wraps the decoder (models/qwen2_5_vl.h): rows of the embedded input that
  // are replaced ([n] int64 token indices, [n, hidden] values), and a rope table used instead of
  // the one computed from `positions` (M-RoPE). Undefined / null: none.
  at::Tensor embed_rows, embed_values;
  const layers::RopeTable* rope = nullptr;
  // Pipeline parallelism: on a stage after the first, the previous stage's output, which the
  // forward starts from instead of the embedding ([CausalLM::stage_rows(batch), hidden]).
  at::Tensor stage_input;
  // Context parallelism: `tokens` and `positions` are this rank's chunks of the padded sequences
  // (parallel/context_parallel.h), which attention reads; null: the whole sequences.
  const parallel::ContextShards* context = nullptr;
};

// Builds positions 0..n-1 per sequence (shifted by offsets when given) and the context lengths.
PackedBatch pack_batch(const at::Tensor& tokens, std::vector<int64_t> cu_seqlens,
                       const std::vector<int64_t>& offsets = {});

// One layer's generation cache: k [slots, len, kv_heads, head_dim], v [slots, len, kv_heads, value_dim].
struct KvShape {
  int64_t layers, kv_heads, head_dim, value_dim;
  // MLA (layers/mla.h): k holds the compressed latent and v the shared rope key, one "head" each;
  // attention expands them per head, so the CUDA slot decoder, which reads K/V directly, cannot run it.
  bool latent = false;
};

// The routing of an MoE model: how many MoE layers, experts per layer, experts per token (all 0 for
// a dense model). Routing replay and recording hold [tokens, layers, top_k] expert ids.
struct MoeShape {
  int64_t layers = 0, experts = 0, top_k = 0;
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  // HF names -> trainable parameters (valid as long as the model lives), as transformers holds them in
  // memory (MoE experts stacked: mlp.experts.gate_up_proj, mlp.experts.down_proj).
  virtual const NamedTensors& named_parameters() const = 0;
  // Tensors that are loaded and saved but not trained (DeepSeek-V3's e_score_correction_bias, kept in
  // float32); none by default.
  virtual const NamedTensors& named_buffers() const;
  // The tensors under the names an HF checkpoint stores them (what save writes): by default the
  // parameters then the buffers; MoE families split their stacked experts per expert.
  virtual NamedTensors checkpoint_tensors() const;
  // The same renaming applied to whole tensors given under the parameter names (a sharded model's
  // gathered parameters, then its buffers): identity by default, MoE families unstack experts.
  virtual NamedTensors checkpoint_form(NamedTensors whole) const { return whole; }
  // Expert parallelism: this rank holds only some experts of each MoE layer, and every forward is
  // collective over this group (null when every expert is here). Generation runs in lockstep over
  // it: a rank with nothing left to decode joins each step's dispatch with idle_expert_step().
  virtual parallel::ProcessGroup* expert_group() const { return nullptr; }
  bool expert_parallel() const { return expert_group() != nullptr; }
  // Every MoE layer's dispatch with no tokens of this rank's, in forward order.
  virtual void idle_expert_step() const {}
  // batch -> hidden states after the final norm: [tokens, hidden]. On a pipeline stage that is not
  // the last: the residual stream after this stage's layers, [stage_rows(batch), hidden], which
  // is the next stage's PackedBatch::stage_input.
  virtual at::Tensor forward(const PackedBatch& batch) const = 0;
  // Pipeline parallelism: the decoder layers this rank holds, and whether it holds the embedding
  // (the first stage) and the final norm and lm-head (the last). One stage: all of them.
  const parallel::StageRange& stage() const { return stage_; }
  bool pipelined() const { return !(stage_.first && stage_.last); }
  // The ranks of this rank's pipeline, one per stage (group rank = stage); null on one stage.
  parallel::ProcessGroup* pipeline_group() const { return pipelined() ? &tp_.mesh()->pipeline() : nullptr; }
  // A tied word embedding (lm-head = embedding): under pipeline parallelism the first and the last
  // stage each hold a copy, whose gradients are summed over Mesh::embedding() before each update.
  bool tied_embeddings() const { return tied_; }
  // Rows of the residual stream between stages for `batch`: its tokens, or under sequence
  // parallelism (training-side forwards) this tensor rank's shard of the padded tokens.
  int64_t stage_rows(const PackedBatch& batch) const;
  virtual int64_t hidden_size() const = 0;
  // Throws std::invalid_argument unless batch.stage_input is [stage_rows(batch), hidden_size()].
  void check_stage_input(const PackedBatch& batch) const;
  // [vocab, hidden]: the output projection (the embedding when tied); the last stage only.
  virtual const at::Tensor& lm_head() const = 0;
  virtual KvShape kv_shape() const = 0;
  virtual MoeShape moe_shape() const { return {}; }
  // Vision-language models take PackedBatch::images; text models refuse them.
  virtual bool accepts_images() const { return false; }
  // Per sequence of a prompt batch, what to add to a generated token's cache position to get its
  // rope position (M-RoPE packs an image's tokens into fewer positions); empty: nothing.
  virtual std::vector<int64_t> position_shift(const PackedBatch& /*prompts*/) const { return {}; }
  // Activation recomputation in training forwards (layers/recompute.h): the decoder families say
  // whether they run it; set_recompute refuses a policy the family cannot run.
  virtual bool supports_recompute() const { return false; }
  void set_recompute(const layers::RecomputePolicy& policy);
  const layers::RecomputePolicy& recompute_policy() const { return recompute_; }
  // True when rope frequencies do not depend on the context length (not dynamic NTK): the
  // forward then does no host work, which CUDA graph capture requires.
  virtual bool fixed_rope() const = 0;
  virtual at::Device device() const = 0;
  virtual at::ScalarType dtype() const = 0;

  // Tensor parallelism: identity on one rank. Under TP the parameters are this rank's slices,
  // placed as placements() says (one entry per named_parameters() entry, same order).
  const parallel::TensorParallel& tensor_parallel() const { return tp_; }
  const std::vector<parallel::TensorPlacement>& placements() const { return placements_; }
  // The lm-head's first vocabulary row on this rank (0 unless the vocabulary is split).
  int64_t vocab_start() const { return vocab_start_; }
  // The one output projection: rows [n, hidden] -> logits [n, vocab] over the whole vocabulary
  // (all-gathered across the tensor group when the lm-head is split), in the model's dtype.
  at::Tensor logits(const at::Tensor& rows) const;

 protected:
  parallel::TensorParallel tp_;
  std::vector<parallel::TensorPlacement> placements_;
  int64_t vocab_start_ = 0;
  parallel::StageRange stage_;
  bool tied_ = false;
  layers::RecomputePolicy recompute_;
};

}  // namespace tiller::models
