// Pipeline parallelism: how a model split over pipeline stages (CausalLM::stage()) runs a batch.
// Stage r receives the residual stream of each micro-batch from stage r - 1, runs its layers and
// sends the result to stage r + 1; the last stage computes logprobs and the loss, and gradients of
// the stage inputs travel back the same way. Shapes follow from the micro-batch (its token count,
// cut by sequence parallelism), so nothing but the activations themselves crosses between stages.
//
// Every rank of a pipeline calls these with the same micro-batches in the same order (they hold
// point-to-point transfers over the pipeline group and the stage's own collectives). On one stage
// they are the plain forward and backward.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "layers/logprob.h"
#include "models/causal_lm.h"

namespace tiller::train {

struct ModelSession;

// One packed micro-batch as the engine receives it.
struct MicroBatch {
  at::Tensor tokens;             // [tokens] int64, host
  std::vector<int64_t> cu;       // [sequences + 1]
  at::Tensor replay;             // [tokens, moe_layers, top_k] int64, host, or undefined
  const models::ImageInputs* images = nullptr;
};

// Micro-batch i's loss from its logprobs (called on the last stage only): a scalar with a graph.
using MicroBatchLoss = std::function<at::Tensor(size_t i, const layers::TokenLogprobs& out)>;

// What a schedule measured on this rank.
struct ScheduleStats {
  int64_t micro_batches = 0, stages = 1;
  double seconds = 0;       // the whole schedule
  double wait_seconds = 0;  // in point-to-point transfers (waiting for the neighbours included)
  int64_t bytes_sent = 0;   // activations and their gradients sent to the neighbouring stages
};

// Forward and backward of every micro-batch; gradients accumulate on the parameters (which must
// require grad: GradScope). One stage: each micro-batch's forward, loss and backward in turn.
// Several stages: 1F1B (Megatron's non-interleaved schedule): stage r runs min(p - r - 1, m)
// warm-up forwards, then alternates one forward and one backward, then the remaining backwards,
// so at most p - r micro-batches hold activations at once. Collective over the mesh.
ScheduleStats train_micro_batches(ModelSession& session, const std::vector<MicroBatch>& micro_batches,
                                  double temperature, int64_t chunk_tokens, const MicroBatchLoss& loss);

// Logprobs of one micro-batch through every stage (no graph kept unless grad mode is on): the
// last stage returns them, the others return empty tensors. Collective over the pipeline.
layers::TokenLogprobs pipeline_logprobs(ModelSession& session, const MicroBatch& micro_batch, double temperature,
                                        int64_t chunk_tokens);

// This stage's part of one forward of `batch` without a graph (generation): receives the
// previous stage's output, runs the layers, sends to the next stage. Returns the model's output
// on the last stage, an undefined tensor elsewhere.
at::Tensor pipeline_forward(const models::CausalLM& model, models::PackedBatch& batch);

// Every stage gets the last stage's `values` (same shape and dtype on every stage; host tensors
// are moved to the group's device and back). Identity on one stage.
void from_last_stage(const models::CausalLM& model, std::vector<at::Tensor*> values);

}  // namespace tiller::train
