// The multi-rank optimizer: AdamW with ZeRO stage 1 over the data-parallel (× context) group
// (stacked experts: over the expert-data group).
// Gradients of each weight-decay group live in one flat fp32 buffer, padded to a multiple of the
// group size; a step completes tensor-parallel gradients (tensor_parallel.h), reduce-scatters the
// buffer (sum), clips by the global norm (every parameter counted once, replicated ones too),
// updates this rank's shard of the fp32 masters and Adam moments, and all-gathers the parameters.
// Per parameter the arithmetic is the single-device AdamW's (train/optimizer.h).
#pragma once

#include <memory>
#include <vector>

#include "parallel/mesh.h"
#include "parallel/tensor_parallel.h"
#include "train/optimizer.h"

namespace tiller::parallel {

class ShardedAdamW {
 public:
  // params: this rank's slices (the model's tensors, referenced, not copied), placed as
  // `placements` says; every rank of the mesh builds it with the same parameter order.
  ShardedAdamW(train::NamedTensors params, std::vector<TensorPlacement> placements, std::shared_ptr<Mesh> mesh,
               train::AdamWConfig config);

  struct StepResult {
    double norm = 0;     // global L2 norm of the gradients before clipping
    bool finite = true;  // false: nothing updated (the caller skips the step)
  };
  // Collective over the mesh. Parameters without a gradient count as zero gradients.
  StepResult step(double lr, double max_norm);
  void zero_grad();

  // The whole optimizer state under the single-device AdamW's names (train::AdamW::state()):
  // gathered over the data and tensor groups, so any layout (one device included) can load it.
  // Collective; every rank gets the same tensors.
  train::NamedTensors full_state() const;
  // Takes this rank's part of a full state (as full_state() or train::AdamW::state() wrote it).
  void load_full_state(const train::NamedTensors& state);

  // Bytes of optimizer state this rank holds (masters, moments, the norm mask), for memory accounting.
  int64_t state_bytes() const;

  // Moves the state to host memory (pinned on CUDA) and back, as train::AdamW does: offloaded
  // between updates while the rollout uses the device. step() refuses while offloaded.
  void offload_to_host();
  void reload();
  bool offloaded() const { return offloaded_; }

 private:
  struct Group {
    std::vector<size_t> members;     // indices into params_
    std::vector<int64_t> offsets;    // each member's first element in the flat buffer
    int64_t numel = 0, padded = 0;   // elements, and rounded up to a multiple of the data size
    at::Tensor master, exp_avg, exp_avg_sq, step, counted;  // [padded / data] fp32 (step: 0-dim)
    bool decays = true;
    // Stacked experts (expert parallelism): sharded over the expert-data group, their slices
    // gathered over the expert group; everything else over data × context and tensor.
    bool expert = false;
    ProcessGroup* data = nullptr;
  };
  at::Tensor flat_gradients(const Group& group) const;  // [padded] fp32
  at::Tensor flat_values(const Group& group) const;     // [padded] fp32
  int64_t shard_begin(const Group& group) const;

  train::NamedTensors params_;
  std::vector<TensorPlacement> placements_;
  std::shared_ptr<Mesh> mesh_;
  train::AdamWConfig config_;
  std::vector<Group> groups_;
  bool offloaded_ = false;
  at::Device device_{at::kCPU};  // where the state lives when not offloaded
};

}  // namespace tiller::parallel
