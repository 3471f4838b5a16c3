// Tensor parallelism (with optional sequence parallelism) as a transform of a plain model: the
// split kinds that a family's tensor table declares, the slicing of each tensor for a rank, how
// gradients of replicated tensors are completed, and the differentiable entry and exit of the
// parallel regions that the forward calls (identity on one rank, so the model code stays plain).
//
// Column-parallel weights ([out, in], out split) take a replicated input (copy_to_group: backward
// all-reduce); row-parallel weights ([out, in], in split) produce partial sums (reduce_from_group).
// With sequence parallelism the residual stream between regions is cut by tokens: the entry
// all-gathers tokens (backward reduce-scatter) and the exit reduce-scatters them.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "parallel/mesh.h"

namespace tiller::parallel {

enum class Split {
  kReplicated,  // every rank holds the whole tensor
  kColumn,      // dim 0 (output features) split: q/k/v, gate/up, their biases
  kRow,         // dim 1 (input features) split: o, down
  kVocab,       // dim 0 (vocabulary) split: embedding, lm-head
  kExpert,      // dim 0 of stacked experts split over expert parallelism
};

const char* split_name(Split split);

// How one HF tensor is held across `size` tensor-parallel ranks.
struct SplitSpec {
  SplitSpec(Split split_kind = Split::kReplicated, int64_t head_count = 0, bool partial_per_head = false)
      : split(split_kind), heads(head_count), per_head(partial_per_head) {}
  Split split = Split::kReplicated;
  // Column/row splits by heads: how many heads the split dimension holds (0: each row or column
  // is its own unit). Fewer heads than ranks replicate them: rank r holds head r * heads / size,
  // as key/value heads when kv_heads < TP (Qwen3-235B's 4 KV heads at rollout TP 8).
  int64_t heads = 0;
  // Replicated, but applied to head-sharded values (Qwen3's per-head q/k norms, MLA's latent
  // projections) or to a share of the tokens (the MoE router): each rank's gradient is a partial
  // sum and is completed over the tensor group.
  bool per_head = false;
};

// The slice of the split dimension (of size `extent`) that `rank` of `size` holds.
struct ShardRange {
  int64_t begin = 0, length = 0;
  int replicas = 1;           // ranks holding this same slice
  bool first_replica = true;  // the lowest of them (counts the slice once in norms)
};

// Throws std::invalid_argument naming the tensor and both numbers when the split cannot be made.
ShardRange shard_range(const std::string& name, int64_t extent, const SplitSpec& spec, int rank, int size);

// The dimension a split cuts (-1 for replicated).
int split_dim(Split split);

// rank's slice of `full` (a view of it; replicated: `full` itself).
at::Tensor shard_tensor(const std::string& name, const at::Tensor& full, const SplitSpec& spec, int rank, int size);

// How a parameter's gradient is completed after backward, before data-parallel reduction.
enum class GradSync {
  kNone,            // the gradient on each rank is already the whole gradient of its slice
  kSum,             // replicated with partial gradients: all-reduce (sum) over the tensor group
  kSumReplicas,     // a slice held by several ranks, each with a partial gradient: summed among them
};

struct TensorPlacement {
  SplitSpec spec;
  std::vector<int64_t> full_shape;  // the HF tensor's shape
  ShardRange range;                 // along split_dim(spec.split)
  GradSync grad_sync = GradSync::kNone;
  // This rank's copy counts in norms and in gathers: false on all but one of the ranks holding
  // the same values (replicated tensors: tensor rank 0; replicated slices: the first replica).
  bool counts = true;
};

// Decides each tensor's placement on this rank; sequence_parallel makes every replicated tensor's
// gradient partial (the norms then see token shards).
TensorPlacement place_tensor(const std::string& name, const std::vector<int64_t>& full_shape, const SplitSpec& spec,
                             int rank, int size, bool sequence_parallel);

// Completes the gradients of `grad_sync` tensors over `group` (one all-reduce per tensor; a
// replicated slice is placed into a zero tensor of the full extent first, so that ranks holding
// other slices add nothing to it).
void sync_tensor_gradient(at::Tensor& grad, const TensorPlacement& placement, ProcessGroup& group);

// The group a placement's split runs over: the expert group for stacked experts, else the tensor group.
ProcessGroup& split_group(const TensorPlacement& placement, const Mesh& mesh);

// The whole tensor from every rank's slice (all ranks of `group` call it, in the same order).
at::Tensor gather_tensor(const at::Tensor& local, const TensorPlacement& placement, ProcessGroup& group);

// What a model's forward calls around its parallel regions.
class TensorParallel {
 public:
  TensorParallel() = default;  // one rank: everything below is the identity
  TensorParallel(std::shared_ptr<Mesh> mesh, bool sequence_parallel);

  int size() const { return group_ ? group_->world_size() : 1; }
  int rank() const { return group_ ? group_->rank() : 0; }
  bool sequence_parallel() const { return sequence_parallel_ && size() > 1; }
  ProcessGroup* group() const { return group_; }
  const std::shared_ptr<Mesh>& mesh() const { return mesh_; }

  // Before a column-parallel matmul. x: [tokens (or token shard with sp), hidden] -> [tokens, hidden]
  at::Tensor enter(const at::Tensor& x, bool sp) const;
  // After a row-parallel matmul. y: [tokens, hidden] partial -> [tokens (or token shard), hidden]
  at::Tensor exit(const at::Tensor& y, bool sp) const;
  // Vocab-parallel embedding: weight [vocab / size, hidden] holds rows vocab_start.. of the table;
  // ids outside it give zero rows before the sum. -> [tokens (or token shard with sp), hidden]
  at::Tensor embed(const at::Tensor& weight, const at::Tensor& ids, int64_t vocab_start, bool sp) const;

 private:
  std::shared_ptr<Mesh> mesh_;
  ProcessGroup* group_ = nullptr;
  bool sequence_parallel_ = false;
};

}  // namespace tiller::parallel
