// Differentiable collectives: autograd functions around ProcessGroup calls with Megatron's
// forward/backward pairs. Raw ProcessGroup calls carry no autograd, and torch's functional
// all-reduce has an all-reduce as its backward (wrong for tensor parallelism), so a parallel
// forward uses only these. On a one-rank group each returns its input unchanged.
//
// The group must outlive every autograd graph built with it (the model's mesh owns the groups).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "parallel/process_group.h"

namespace tiller::parallel {

// Forward identity, backward all-reduce (sum): the input of a column-parallel region.
at::Tensor copy_to_group(const at::Tensor& x, ProcessGroup& group);
// Forward all-reduce (sum), backward identity: the output of a row-parallel region.
at::Tensor reduce_from_group(const at::Tensor& x, ProcessGroup& group);
// x: [..., n] -> [..., n * size], rank r's block at [r * n, (r + 1) * n); backward keeps own block.
at::Tensor gather_last_dim(const at::Tensor& x, ProcessGroup& group);
// x: [..., n * size] -> own block [..., n]; backward all-gathers along the last dim.
at::Tensor scatter_last_dim(const at::Tensor& x, ProcessGroup& group);
// Sequence parallel, x: [n, ...] -> [n * size, ...]; backward reduce-scatters (sum) along dim 0.
at::Tensor gather_first_dim(const at::Tensor& x, ProcessGroup& group);
// x: [n * size, ...] -> [n, ...], the sum over ranks of own rows; backward all-gathers dim 0.
at::Tensor reduce_scatter_first_dim(const at::Tensor& x, ProcessGroup& group);
// x: [n * size, ...] -> own rows [n, ...]; backward all-gathers dim 0.
at::Tensor scatter_first_dim(const at::Tensor& x, ProcessGroup& group);
// x: [n, ...] -> [n * size, ...]; backward keeps own rows. For values whose consumers run replicated
// over the group (so their gradient is the same on every rank): the MoE experts' outputs of each
// tensor rank's share of the tokens, gathered back for the replicated residual stream.
at::Tensor gather_first_dim_replicated(const at::Tensor& x, ProcessGroup& group);

// x: [sum(in_splits), ...] -> [sum(out_splits), ...] (ProcessGroup::all_to_all); backward sends
// the gradient back with the splits swapped. The expert-parallel token dispatch and combine.
at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& in_splits,
                      const std::vector<int64_t>& out_splits, ProcessGroup& group);

// Not differentiable, for values outside autograd (statistics, gradients after backward).
at::Tensor all_gather_first_dim(const at::Tensor& x, ProcessGroup& group);

}  // namespace tiller::parallel
