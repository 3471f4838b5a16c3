// Activation recomputation (Megatron's activation checkpointing): a function of some tensors runs
// without keeping its intermediate activations, and runs again in backward, with the same inputs,
// to build the graph its gradients need. Everything it captures must be held by value: the
// recomputation happens after the caller's forward has returned.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace tiller::layers {

using RecomputeFn = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

// fn(inputs) -> one tensor, whose gradients (to the inputs and to any parameter fn reads) equal
// those of calling fn directly. Outside grad mode it is fn(inputs).
at::Tensor recompute(RecomputeFn fn, const std::vector<at::Tensor>& inputs);

// How much of a decoder a training forward recomputes: nothing, whole layers, or the attention core
// and the MoE experts of each layer (Megatron's selective); `layers` from the first (-1: all).
enum class Recompute { kNone, kFull, kSelective };
struct RecomputePolicy {
  Recompute granularity = Recompute::kNone;
  int64_t layers = -1;
  bool full(int64_t layer) const { return granularity == Recompute::kFull && (layers < 0 || layer < layers); }
  bool selective(int64_t layer) const {
    return granularity == Recompute::kSelective && (layers < 0 || layer < layers);
  }
};
// "none" | "full" | "selective"; throws naming `field` otherwise.
Recompute recompute_from_name(const std::string& name, const std::string& field);

}  // namespace tiller::layers
