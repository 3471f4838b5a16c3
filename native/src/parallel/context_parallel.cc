#include "parallel/context_parallel.h"

#include <stdexcept>

#include "parallel/collectives.h"

namespace tiller::parallel {

ContextShards plan_context(const std::vector<int64_t>& cu, ProcessGroup& group, int64_t multiple) {
  ContextShards s;
  s.group = &group;
  s.rank = group.rank();
  s.size = group.world_size();
  const int64_t pieces = 2 * static_cast<int64_t>(s.size), unit = pieces * multiple;
  s.padded_cu = {0};
  s.local_cu = {0};
  std::vector<int64_t> local;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    const auto n = cu[i + 1] - cu[i];
    const auto padded = (n + unit - 1) / unit * unit;
    const auto c = padded / pieces;
    s.lengths.push_back(n);
    s.chunk.push_back(c);
    const auto base = s.padded_cu.back();
    for (const int64_t piece : {static_cast<int64_t>(s.rank), pieces - 1 - s.rank}) {
      for (int64_t j = 0; j < c; ++j) local.push_back(base + piece * c + j);
    }
    s.padded_cu.push_back(base + padded);
    s.local_cu.push_back(s.local_cu.back() + 2 * c);
  }
  s.local_index = at::tensor(local, at::kLong);
  // Rank q's local rows sit at [q * local, (q + 1) * local) of the gather, in its own chunk order.
  std::vector<int64_t> order(static_cast<size_t>(s.padded_rows()));
  const auto rows = s.local_rows();
  for (int q = 0; q < s.size; ++q) {
    int64_t at_row = q * rows;
    for (size_t i = 0; i + 1 < s.padded_cu.size(); ++i) {
      const auto c = s.chunk[i];
      for (const int64_t piece : {static_cast<int64_t>(q), pieces - 1 - q}) {
        for (int64_t j = 0; j < c; ++j) order[static_cast<size_t>(s.padded_cu[i] + piece * c + j)] = at_row++;
      }
    }
  }
  s.gathered_order = at::tensor(order, at::kLong);
  return s;
}

namespace {

at::Tensor reorder(const at::Tensor& gathered, const ContextShards& shards) {
  return gathered.index_select(0, shards.gathered_order.to(gathered.device()));
}

void check_rows(const at::Tensor& x, const ContextShards& shards) {
  if (x.size(0) != shards.local_rows()) {
    throw std::invalid_argument("context parallelism: " + std::to_string(x.size(0)) + " rows, expected " +
                                std::to_string(shards.local_rows()) + " local rows");
  }
}

}  // namespace

at::Tensor gather_context(const at::Tensor& x, const ContextShards& shards) {
  check_rows(x, shards);
  return reorder(gather_first_dim(x.contiguous(), *shards.group), shards);
}

at::Tensor gather_context_replicated(const at::Tensor& x, const ContextShards& shards) {
  check_rows(x, shards);
  return reorder(gather_first_dim_replicated(x.contiguous(), *shards.group), shards);
}

}  // namespace tiller::parallel
