// A model session: one loaded model with everything the engine keeps beside it (its config, its
// mesh on a multi-rank run, the optimizer and schedule, router statistics, the CUDA decoder) and
// the steps that sequence them: forward + logprobs, training steps, the optimizer step, saving.
// Plain C++; addon/model.cc only converts arguments and runs these off the JS thread.
//
// On a multi-rank run every rank of the mesh calls the same functions in the same order (they
// hold collectives); "collective" below says so.
#pragma once

#include <torch/torch.h>

#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "io/json.h"
#include "layers/logprob.h"
#include "models/causal_lm.h"
#include "parallel/mesh.h"
#include "parallel/zero.h"
#include "rollout/cuda_decoder.h"
#include "train/optimizer.h"
#include "train/pipeline.h"
#include "train/schedule.h"

namespace tiller::train {

// MoE models: router statistics summed over the training-side forwards since the last read.
struct RouterTotals {
  std::vector<at::Tensor> tokens_per_expert;  // per MoE layer: [experts] int64
  std::vector<at::Tensor> entropy_sum;        // per MoE layer: scalar float32, nats
  int64_t tokens = 0;
};

struct ModelSession {
  std::mutex mutex;  // one call at a time on this model
  std::unique_ptr<models::CausalLM> model;
  io::Json config;  // config.json as given; save writes it back with the dtype updated
  std::shared_ptr<parallel::Mesh> mesh;  // null: one device
  // Training state, from init_optimizer on: AdamW on one device, ZeRO-1 AdamW on a mesh.
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<parallel::ShardedAdamW> sharded;
  LrSchedule schedule;
  double max_grad_norm = std::numeric_limits<double>::infinity();
  int64_t updates = 0;         // optimizer steps applied (skipped ones excluded): the schedule's step
  bool grads_pending = false;  // training steps accumulated gradients that no optimizer step consumed yet
  std::unique_ptr<rollout::CudaDecoder> decoder;  // kept between generate calls on CUDA
  std::string profile_path;  // when set, the next call runs under the Kineto profiler
  RouterTotals router_stats;
  int64_t kv_cache_bytes = 0;  // the last generate call's KV cache
  // Parameter storages emptied by offload_parameters, each with its bytes on the host.
  struct ParkedStorage {
    c10::Storage storage;
    at::Tensor host;  // [nbytes] uint8 (pinned on CUDA)
    size_t nbytes = 0;
  };
  std::vector<ParkedStorage> parked_parameters;

  bool multi_rank() const { return mesh && mesh->world_size() > 1; }
  bool has_optimizer() const { return optimizer || sharded; }
};

// Positions 1..n-1 of every sequence: which hidden rows predict which targets.
struct NextTokenRows {
  at::Tensor rows, targets;  // [tokens - sequences] int64
};
NextTokenRows next_token_rows(const at::Tensor& tokens, const std::vector<int64_t>& cu);

// The model's forward over a packed batch, then per-token logprobs and entropy (vocab-parallel
// under TP). MoE models add their router statistics to the session's and replay `replay`
// ([tokens, moe_layers, top_k], host) when defined. Vision-language models read `images` (the
// batch's images in token order; null: none). Collective under TP.
layers::TokenLogprobs forward_logprobs(ModelSession& session, const at::Tensor& tokens_cpu,
                                       const std::vector<int64_t>& cu, double temperature, int64_t chunk_tokens,
                                       const at::Tensor& replay, const models::ImageInputs* images = nullptr);

// The two halves of forward_logprobs on a pipeline stage: the model's forward of `mb` (from
// `stage_input` on a stage after the first; router statistics added to the session's), and the
// logprobs of the last stage's hidden states.
at::Tensor stage_forward(ModelSession& session, const MicroBatch& mb, const at::Tensor& stage_input);
layers::TokenLogprobs head_logprobs(ModelSession& session, const at::Tensor& hidden, const MicroBatch& mb,
                                    double temperature, int64_t chunk_tokens);

// Parameters require grad only while a backward runs, so that logprobs and generation never build
// a graph. Gradients stay on the parameters when the scope ends (training steps accumulate them).
class GradScope {
 public:
  explicit GradScope(const models::NamedTensors& params);
  ~GradScope();
  GradScope(const GradScope&) = delete;
  GradScope& operator=(const GradScope&) = delete;

 private:
  const models::NamedTensors& params_;
};

// Under pipeline parallelism each stage counted only its own MoE layers: sums them over the
// pipeline so every stage holds every layer's totals (a no-op otherwise). Collective over the
// pipeline; called before the totals are read.
void complete_router_stats(ModelSession& session);

// Bytes a rank holds, by kind, counted from its tensors; also the device allocator's current, peak
// (since the last call with reset_peak, which restarts it) and reserved bytes: CUDA's caching allocator, or on
// CPU the engine's counting allocator (train/cpu_memory.h; reserved = allocated), -1 without one.
struct MemoryBytes {
  int64_t parameters = 0, gradients = 0, optimizer = 0, buffers = 0;
  int64_t optimizer_host = 0;  // the optimizer state while offloaded (then optimizer is 0)
  int64_t parameters_host = 0;  // the parameters while offloaded (then parameters is 0)
  int64_t device_allocated = -1, device_peak = -1, device_reserved = -1;
  int64_t kv_cache = 0;  // the KV cache of the last generate call (held between calls by the CUDA decoder)
};
MemoryBytes memory_of(const ModelSession& session, bool reset_peak = true);

// Optimizer state to host memory (pinned on CUDA) between updates, and back; both return the bytes
// moved (0 when already there). optimizer_step reloads by itself; saving and loading the state work
// either way.
int64_t offload_optimizer(ModelSession& session);
int64_t reload_optimizer(ModelSession& session);
bool optimizer_offloaded(const ModelSession& session);

// The parameters to host memory (pinned on CUDA) and back: each storage is copied out and emptied,
// then refilled in place, so every tensor and view over it stays valid (the CUDA decoder's graphs,
// which hold raw addresses, are rebuilt). Both return the bytes moved (0 when already there).
// Refused while gradients are pending. ensure_parameters reloads if needed: every call that reads
// the weights runs it first.
int64_t offload_parameters(ModelSession& session);
int64_t reload_parameters(ModelSession& session);
inline void ensure_parameters(ModelSession& session) {
  if (!session.parked_parameters.empty()) reload_parameters(session);
}

void init_optimizer(ModelSession& session, AdamWConfig config, LrSchedule schedule, double max_grad_norm);

struct OptimizerStepResult {
  double grad_norm = 0, lr = 0;
  int64_t step = 0;
  bool skipped = false;
};
// Clip, rate from the schedule, AdamW, drop the gradients. A non-finite norm skips the update
// (and does not advance the schedule), as Megatron does for an overflowed step. Collective on a mesh.
OptimizerStepResult optimizer_step(ModelSession& session);

// The whole tensors of the model (parameters, then buffers) or of its gradients (completed over
// the tensor group and summed over the data group, as the optimizer will see them), by HF name,
// on the host; under pipeline parallelism every stage's, in layer order (a tied embedding once,
// its gradient the sum of both copies'). Collective on a mesh; every rank gets them.
models::NamedTensors gather_parameters(ModelSession& session);
models::NamedTensors gather_gradients(ModelSession& session);

// An HF folder: config.json (dtype updated) and safetensors, tensors gathered one at a time;
// on a mesh only rank 0 writes. Collective.
void save_model(ModelSession& session, const std::string& dir, int64_t max_shard_bytes);

// The optimizer state under the single-device names (gathered on a mesh; rank 0 writes) with the
// update count in its metadata; loading takes each rank's part, so a state saved in one layout
// resumes in any other. Collective.
void save_optimizer(ModelSession& session, const std::string& file);
void load_optimizer(ModelSession& session, const std::string& file);

}  // namespace tiller::train
