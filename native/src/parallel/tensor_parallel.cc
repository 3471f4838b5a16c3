#include "parallel/tensor_parallel.h"

#include <stdexcept>

#include "parallel/collectives.h"

namespace tiller::parallel {

const char* split_name(Split split) {
  switch (split) {
    case Split::kReplicated: return "replicated";
    case Split::kColumn: return "column";
    case Split::kRow: return "row";
    case Split::kVocab: return "vocab";
    case Split::kExpert: return "expert";
  }
  return "?";
}

int split_dim(Split split) {
  switch (split) {
    case Split::kColumn:
    case Split::kVocab:
    case Split::kExpert: return 0;
    case Split::kRow: return 1;
    case Split::kReplicated: return -1;
  }
  return -1;
}

ShardRange shard_range(const std::string& name, int64_t extent, const SplitSpec& spec, int rank, int size) {
  ShardRange r;
  if (spec.split == Split::kReplicated || size == 1) {
    r.length = extent;
    r.replicas = spec.split == Split::kReplicated ? size : 1;
    r.first_replica = spec.split != Split::kReplicated || rank == 0;
    return r;
  }
  const int64_t units = spec.heads > 0 ? spec.heads : extent;
  const auto what = spec.heads > 0 ? " heads" : (spec.split == Split::kVocab ? " vocabulary rows" : " rows/columns");
  if (extent % units != 0) {
    throw std::invalid_argument(name + ": extent " + std::to_string(extent) + " is not a multiple of " +
                                std::to_string(units) + what);
  }
  const int64_t unit = extent / units;
  if (units >= size) {
    if (units % size != 0) {
      throw std::invalid_argument(name + ": " + std::to_string(units) + what + " cannot be split over tensor " +
                                  std::to_string(size) + " ranks (" + split_name(spec.split) + " split)");
    }
    const int64_t per = units / size;
    r.begin = rank * per * unit;
    r.length = per * unit;
    return r;
  }
  // Fewer heads than ranks: each head is held by size / heads ranks.
  if (spec.heads == 0 || size % units != 0) {
    throw std::invalid_argument(name + ": " + std::to_string(units) + what + " cannot be split over tensor " +
                                std::to_string(size) + " ranks; tensor must divide them or be a multiple of them");
  }
  r.replicas = static_cast<int>(size / units);
  r.begin = (rank / r.replicas) * unit;
  r.length = unit;
  r.first_replica = rank % r.replicas == 0;
  return r;
}

at::Tensor shard_tensor(const std::string& name, const at::Tensor& full, const SplitSpec& spec, int rank, int size) {
  const int dim = split_dim(spec.split);
  if (dim < 0 || size == 1) return full;
  if (full.dim() <= dim) throw std::invalid_argument(name + ": a " + split_name(spec.split) + " split needs dim " + std::to_string(dim));
  const auto range = shard_range(name, full.size(dim), spec, rank, size);
  return full.narrow(dim, range.begin, range.length);
}

TensorPlacement place_tensor(const std::string& name, const std::vector<int64_t>& full_shape, const SplitSpec& spec,
                             int rank, int size, bool sequence_parallel) {
  TensorPlacement p;
  p.spec = spec;
  p.full_shape = full_shape;
  const int dim = split_dim(spec.split);
  if (dim >= static_cast<int>(full_shape.size())) {
    throw std::invalid_argument(name + ": a " + std::string(split_name(spec.split)) + " split needs dim " + std::to_string(dim));
  }
  p.range = shard_range(name, dim < 0 ? 0 : full_shape[static_cast<size_t>(dim)], spec, rank, size);
  p.counts = p.range.first_replica;
  if (size > 1) {
    if (spec.split == Split::kReplicated) {
      if (spec.per_head || sequence_parallel) p.grad_sync = GradSync::kSum;
    } else if (p.range.replicas > 1) {
      p.grad_sync = GradSync::kSumReplicas;
    }
  }
  return p;
}

void sync_tensor_gradient(at::Tensor& grad, const TensorPlacement& placement, ProcessGroup& group) {
  if (placement.grad_sync == GradSync::kNone || group.world_size() == 1) return;
  if (placement.grad_sync == GradSync::kSum) {
    auto g = grad.contiguous();
    group.all_reduce(g, ReduceOp::kSum);
    if (!g.is_same(grad)) grad.copy_(g);
    return;
  }
  const int dim = split_dim(placement.spec.split);
  auto full = at::zeros(placement.full_shape, grad.options());
  full.narrow(dim, placement.range.begin, placement.range.length).copy_(grad);
  group.all_reduce(full, ReduceOp::kSum);
  grad.copy_(full.narrow(dim, placement.range.begin, placement.range.length));
}

ProcessGroup& split_group(const TensorPlacement& placement, const Mesh& mesh) {
  return placement.spec.split == Split::kExpert ? mesh.expert() : mesh.tensor();
}

at::Tensor gather_tensor(const at::Tensor& local, const TensorPlacement& placement, ProcessGroup& group) {
  const int dim = split_dim(placement.spec.split);
  if (dim < 0 || group.world_size() == 1) return local;
  // Every rank's slice, stacked: [size, slice...]; then each slice of the full extent taken once.
  const auto moved = local.movedim(dim, 0).contiguous();
  const auto gathered = all_gather_first_dim(moved.unsqueeze(0), group);  // [size, length, ...]
  const auto step = placement.range.replicas;
  const auto unique = gathered.slice(0, 0, group.world_size(), step);    // the first replica of each slice
  const auto flat = unique.flatten(0, 1);                                  // [extent, ...]
  return flat.movedim(0, dim).contiguous();
}

TensorParallel::TensorParallel(std::shared_ptr<Mesh> mesh, bool sequence_parallel)
    : mesh_(std::move(mesh)), sequence_parallel_(sequence_parallel) {
  if (mesh_ && mesh_->layout().tensor > 1) group_ = &mesh_->tensor();
}

at::Tensor TensorParallel::enter(const at::Tensor& x, bool sp) const {
  if (size() == 1) return x;
  return sp ? gather_first_dim(x, *group_) : copy_to_group(x, *group_);
}

at::Tensor TensorParallel::exit(const at::Tensor& y, bool sp) const {
  if (size() == 1) return y;
  return sp ? reduce_scatter_first_dim(y, *group_) : reduce_from_group(y, *group_);
}

at::Tensor TensorParallel::embed(const at::Tensor& weight, const at::Tensor& ids, int64_t vocab_start, bool sp) const {
  if (size() == 1) return at::embedding(weight, ids);
  const auto rows = weight.size(0);
  const auto outside = ids.lt(vocab_start).logical_or(ids.ge(vocab_start + rows));
  const auto local = (ids - vocab_start).masked_fill(outside, 0);
  const auto partial = at::embedding(weight, local).masked_fill(outside.unsqueeze(-1), 0);
  return exit(partial, sp);
}

}  // namespace tiller::parallel
