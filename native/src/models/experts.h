// MoE expert tensors between the two layouts HF uses: checkpoints store one tensor per expert and
// projection (what save_pretrained writes: mlp.experts.{e}.gate_proj.weight ..., or Mixtral's
// block_sparse_moe.experts.{e}.w1.weight ...), while the model holds one stacked tensor per
// projection, as transformers 5 does in memory: mlp.experts.gate_up_proj [experts, 2·inter, hidden]
// (gate rows, then up rows) and mlp.experts.down_proj [experts, hidden, inter], router mlp.gate.
#pragma once

#include <string>
#include <vector>

#include "models/causal_lm.h"
#include "models/registry.h"

namespace tiller::models {

// How a checkpoint names one MoE block: model.layers.{i}.<block>.experts.{e}.<gate|up|down>.weight
// and model.layers.{i}.<block>.gate.* for the router.
struct ExpertCheckpointNames {
  std::string block = "mlp";
  std::string gate = "gate_proj", up = "up_proj", down = "down_proj";
};

// For each of `moe_layers` whose experts the checkpoint stores per expert: stacks them into the
// model's names (checking that all `experts` are present and no other) and moves the router from
// <block>.gate.* to mlp.gate.*. Layers already stacked pass through; other tensors are untouched.
WeightMap stack_experts(WeightMap weights, const std::vector<int64_t>& moe_layers, int64_t experts,
                        const ExpertCheckpointNames& names);

// The inverse, for saving: stacked expert tensors split into per-expert views under the checkpoint
// names, the router renamed; other tensors unchanged. Order kept.
NamedTensors unstack_experts(const NamedTensors& tensors, const ExpertCheckpointNames& names);

}  // namespace tiller::models
