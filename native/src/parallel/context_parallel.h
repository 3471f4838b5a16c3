// Context parallelism for long sequences (Megatron's load-balanced causal split): each packed
// sequence is padded to a multiple of 2·C·m (C context ranks; m the tensor size under sequence
// parallelism, else 1) and cut into 2·C equal chunks; rank r keeps chunks r and 2·C − 1 − r, so
// every rank gets as much causal work as the others. Everything but attention is per token and
// runs on the local rows as on one device (rope at the tokens' original positions). Attention
// (layers::context_parallel_attention) all-gathers K and V over the context group (backward:
// reduce-scatter of their gradients) and runs each local chunk's queries against its sequence's
// causal prefix.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "parallel/process_group.h"

namespace tiller::parallel {

struct ContextShards {
  ProcessGroup* group = nullptr;
  int rank = 0, size = 1;
  std::vector<int64_t> lengths;    // per sequence: its real token count
  std::vector<int64_t> padded_cu;  // [sequences + 1]: the padded sequences, packed in order
  std::vector<int64_t> chunk;      // per sequence: its chunk length (padded length / 2C)
  std::vector<int64_t> local_cu;   // [sequences + 1]: this rank's rows of each sequence (2 chunks)
  at::Tensor local_index;          // [local rows] int64, host: each local row's index in the padded packing
  at::Tensor gathered_order;       // [padded rows] int64, host: each padded row's place in the rank-major gather
  int64_t local_rows() const { return local_cu.back(); }
  int64_t padded_rows() const { return padded_cu.back(); }
};

// The split of a packed batch (cu_seqlens of the real sequences) over `group`'s ranks, each
// sequence padded to a multiple of 2 · size · multiple.
ContextShards plan_context(const std::vector<int64_t>& cu, ProcessGroup& group, int64_t multiple);

// x: [local rows, ...] on every rank -> [padded rows, ...] in packing order. Backward reduce-scatters
// the gradient (every rank's use of every row adds up): for K and V.
at::Tensor gather_context(const at::Tensor& x, const ContextShards& shards);
// As gather_context, but the backward keeps this rank's rows only: for values that every rank then
// uses identically (the logprobs of a loss computed on every context rank).
at::Tensor gather_context_replicated(const at::Tensor& x, const ContextShards& shards);

}  // namespace tiller::parallel
