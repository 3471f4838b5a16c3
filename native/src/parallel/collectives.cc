#include "parallel/collectives.h"

#include <torch/autograd.h>

#include <cstdint>

namespace tiller::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// autograd contexts hold IValues only: the group travels as its address.
int64_t address_of(ProcessGroup& group) { return reinterpret_cast<int64_t>(&group); }
ProcessGroup& group_of(AutogradContext* ctx) {
  return *reinterpret_cast<ProcessGroup*>(ctx->saved_data["group"].toInt());
}

at::Tensor all_reduce_sum(const at::Tensor& x, ProcessGroup& group) {
  auto out = x.contiguous().clone();
  group.all_reduce(out, ReduceOp::kSum);
  return out;
}

at::Tensor gather_rows(const at::Tensor& x, ProcessGroup& group) {
  const auto in = x.contiguous();
  auto sizes = in.sizes().vec();
  sizes[0] *= group.world_size();
  auto out = at::empty(sizes, in.options());
  group.all_gather_into(out, in);
  return out;
}

at::Tensor reduce_scatter_rows(const at::Tensor& x, ProcessGroup& group) {
  const auto in = x.contiguous();
  TORCH_CHECK(in.size(0) % group.world_size() == 0, "reduce-scatter: ", in.size(0), " rows do not split over ",
              group.world_size(), " ranks");
  auto sizes = in.sizes().vec();
  sizes[0] /= group.world_size();
  auto out = at::empty(sizes, in.options());
  group.reduce_scatter(out, in, ReduceOp::kSum);
  return out;
}

at::Tensor own_rows(const at::Tensor& x, ProcessGroup& group) {
  TORCH_CHECK(x.size(0) % group.world_size() == 0, "scatter: ", x.size(0), " rows do not split over ",
              group.world_size(), " ranks");
  const auto n = x.size(0) / group.world_size();
  return x.narrow(0, n * group.rank(), n).contiguous();
}

// [..., n] on every rank -> [..., n * size]: gather rows of the transposed view.
at::Tensor gather_columns(const at::Tensor& x, ProcessGroup& group) {
  const auto moved = x.movedim(-1, 0).contiguous();  // [n, ...]
  return gather_rows(moved, group).movedim(0, -1).contiguous();
}

at::Tensor own_columns(const at::Tensor& x, ProcessGroup& group) {
  const auto last = x.size(-1);
  TORCH_CHECK(last % group.world_size() == 0, "scatter: last dimension ", last, " does not split over ",
              group.world_size(), " ranks");
  const auto n = last / group.world_size();
  return x.narrow(-1, n * group.rank(), n).contiguous();
}

// One autograd function per pair: Forward and Backward are the two collectives.
template <at::Tensor (*Forward)(const at::Tensor&, ProcessGroup&),
          at::Tensor (*Backward)(const at::Tensor&, ProcessGroup&)>
struct Pair : public torch::autograd::Function<Pair<Forward, Backward>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return Forward(x, *reinterpret_cast<ProcessGroup*>(group));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {Backward(grads[0], group_of(ctx)), at::Tensor()};
  }
};

at::Tensor identity(const at::Tensor& x, ProcessGroup&) { return x; }

template <typename F>
at::Tensor apply(const at::Tensor& x, ProcessGroup& group) {
  if (group.world_size() == 1) return x;
  return F::apply(x, address_of(group));
}

at::Tensor exchange(const at::Tensor& x, const std::vector<int64_t>& in_splits, const std::vector<int64_t>& out_splits,
                    ProcessGroup& group) {
  const auto in = x.contiguous();
  int64_t rows = 0;
  for (auto n : out_splits) rows += n;
  auto sizes = in.sizes().vec();
  sizes[0] = rows;
  auto out = at::empty(sizes, in.options());
  group.all_to_all(out, in, out_splits, in_splits);
  return out;
}

struct AllToAll : public torch::autograd::Function<AllToAll> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group, std::vector<int64_t> in_splits,
                            std::vector<int64_t> out_splits) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["in"] = in_splits;
    ctx->saved_data["out"] = out_splits;
    return exchange(x, in_splits, out_splits, *reinterpret_cast<ProcessGroup*>(group));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto in_splits = ctx->saved_data["in"].toIntVector();
    const auto out_splits = ctx->saved_data["out"].toIntVector();
    return {exchange(grads[0], out_splits, in_splits, group_of(ctx)), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& in_splits,
                      const std::vector<int64_t>& out_splits, ProcessGroup& group) {
  if (group.world_size() == 1) return x;
  return AllToAll::apply(x, address_of(group), in_splits, out_splits);
}

at::Tensor copy_to_group(const at::Tensor& x, ProcessGroup& g) { return apply<Pair<identity, all_reduce_sum>>(x, g); }
at::Tensor reduce_from_group(const at::Tensor& x, ProcessGroup& g) { return apply<Pair<all_reduce_sum, identity>>(x, g); }
at::Tensor gather_last_dim(const at::Tensor& x, ProcessGroup& g) { return apply<Pair<gather_columns, own_columns>>(x, g); }
at::Tensor scatter_last_dim(const at::Tensor& x, ProcessGroup& g) { return apply<Pair<own_columns, gather_columns>>(x, g); }
at::Tensor gather_first_dim(const at::Tensor& x, ProcessGroup& g) { return apply<Pair<gather_rows, reduce_scatter_rows>>(x, g); }
at::Tensor reduce_scatter_first_dim(const at::Tensor& x, ProcessGroup& g) {
  return apply<Pair<reduce_scatter_rows, gather_rows>>(x, g);
}
at::Tensor scatter_first_dim(const at::Tensor& x, ProcessGroup& g) { return apply<Pair<own_rows, gather_rows>>(x, g); }
at::Tensor gather_first_dim_replicated(const at::Tensor& x, ProcessGroup& g) {
  return apply<Pair<gather_rows, own_rows>>(x, g);
}

at::Tensor all_gather_first_dim(const at::Tensor& x, ProcessGroup& g) {
  if (g.world_size() == 1) return x;
  return gather_rows(x, g);
}

}  // namespace tiller::parallel
