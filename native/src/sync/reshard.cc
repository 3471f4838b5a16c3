#include "sync/reshard.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/dense.h"
#include "parallel/tensor_parallel.h"

namespace tiller::sync {
namespace {

// What rank r holds of one tensor under a layout: an interval of its split dimension (the whole
// extent when replicated), or nothing (another pipeline stage's tensor).
struct Holding {
  bool has = false;
  int64_t begin = 0, end = 0;
};

Holding holding(const parallel::Layout& layout, int rank, const std::string& name, const parallel::TensorPlacement& p,
                int64_t layers, bool tied) {
  const auto c = parallel::coordinates_of(layout, rank);
  if (layout.pipeline > 1 && !models::in_stage(name, parallel::stage_range(layout, c.pipeline, layers), tied)) return {};
  const int dim = std::max(0, parallel::split_dim(p.spec.split));
  const auto extent = p.full_shape.at(static_cast<size_t>(dim));
  if (p.spec.split == parallel::Split::kReplicated) return {true, 0, extent};
  const bool expert = p.spec.split == parallel::Split::kExpert;
  const auto r = parallel::shard_range(name, extent, p.spec, expert ? c.expert : c.tensor,
                                       expert ? layout.expert : layout.tensor);
  return {true, r.begin, r.begin + r.length};
}

// One region moving (or copied) into rank `to`'s slice of a tensor: [begin, end) of the split dim.
struct Piece {
  int from, to;
  int64_t begin, end;
};

}  // namespace

at::Tensor bit_checksum(const at::Tensor& t) {
  at::NoGradGuard no_grad;
  const auto flat = t.contiguous().reshape({-1});
  at::Tensor bits;
  switch (c10::elementSize(flat.scalar_type())) {
    case 8: bits = flat.view(at::kLong); break;
    case 4: bits = flat.view(at::kInt); break;
    case 2: bits = flat.view(at::kShort); break;
    default: bits = flat.view(at::kByte); break;
  }
  const auto values = bits.to(at::kDouble);
  const auto weights = at::arange(values.numel(), values.options()).remainder(251).add_(1);
  return at::stack({values.sum(), (values * weights).sum()});
}

ReshardStats reshard(const models::CausalLM& from, const parallel::Mesh& from_mesh, models::CausalLM& to,
                     const parallel::Mesh& to_mesh, int64_t layers, int64_t bucket_bytes, bool verify) {
  const auto start = std::chrono::steady_clock::now();
  at::NoGradGuard no_grad;
  if (from_mesh.world_size() != to_mesh.world_size()) {
    throw std::invalid_argument("reshard: the layouts span " + std::to_string(from_mesh.world_size()) + " and " +
                                std::to_string(to_mesh.world_size()) + " ranks; they must cover the same ranks");
  }
  if (to.pipelined()) throw std::invalid_argument("reshard: the rollout layout has pipeline stages");
  if (bucket_bytes < 1) throw std::invalid_argument("bucketBytes: must be >= 1");
  const int world = from_mesh.world_size(), me = from_mesh.rank();
  const auto& fl = from_mesh.layout();
  const auto& tl = to_mesh.layout();
  std::map<std::string, at::Tensor> mine;  // this rank's training slices
  for (const auto& [name, t] : from.named_parameters()) mine.emplace(name, t);
  const auto& targets = to.named_parameters();
  const auto& placements = to.placements();
  auto& group = to_mesh.all();
  ReshardStats stats;
  const auto element = static_cast<int64_t>(c10::elementSize(to.dtype()));

  // The transfers of one tensor, in an order every rank computes alike.
  struct Plan {
    size_t index;  // into targets
    int dim;
    std::vector<Piece> pieces;
  };
  const auto plan_of = [&](size_t i) {
    const auto& [name, _] = targets[i];
    const auto& p = placements[i];
    Plan plan{i, std::max(0, parallel::split_dim(p.spec.split)), {}};
    std::vector<Holding> held(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) held[static_cast<size_t>(r)] = holding(fl, r, name, p, layers, from.tied_embeddings());
    for (int q = 0; q < world; ++q) {
      const auto want = holding(tl, q, name, p, layers, false);
      // Cut what q needs at every holder's boundary; each piece from q itself or a holder.
      std::vector<int64_t> cuts{want.begin, want.end};
      for (const auto& h : held) {
        for (auto x : {h.begin, h.end}) {
          if (h.has && x > want.begin && x < want.end) cuts.push_back(x);
        }
      }
      std::sort(cuts.begin(), cuts.end());
      cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
      for (size_t k = 0; k + 1 < cuts.size(); ++k) {
        const auto b = cuts[k], e = cuts[k + 1];
        std::vector<int> holders;
        for (int r = 0; r < world; ++r) {
          const auto& h = held[static_cast<size_t>(r)];
          if (h.has && h.begin <= b && h.end >= e) holders.push_back(r);
        }
        if (holders.empty()) throw std::logic_error("reshard: no rank holds " + name + " [" + std::to_string(b) + ", " + std::to_string(e) + ")");
        const bool own = std::find(holders.begin(), holders.end(), q) != holders.end();
        plan.pieces.push_back({own ? q : holders[static_cast<size_t>(q) % holders.size()], q, b, e});
      }
    }
    return plan;
  };
  // A region of a tensor along `dim` ([begin, end) of the whole tensor's extent) from a slice held at `offset`.
  const auto region = [](const at::Tensor& slice, int dim, int64_t offset, const Piece& piece) {
    return slice.narrow(dim, piece.begin - offset, piece.end - piece.begin);
  };

  size_t next = 0;
  while (next < targets.size()) {
    // A bucket: whole tensors until their (whole) bytes pass bucket_bytes; the same on every rank.
    std::vector<Plan> bucket;
    int64_t bytes = 0;
    while (next < targets.size() && (bucket.empty() || bytes < bucket_bytes)) {
      bytes += targets[next].second.numel() * element;
      bucket.push_back(plan_of(next++));
    }
    std::vector<parallel::ProcessGroup::Transfer> sends, receives;
    struct Landing {
      at::Tensor buffer;
      size_t index;
      int dim;
      Piece piece;
      at::Tensor checksum;  // the sender's (verify)
    };
    std::vector<Landing> landings;
    for (const auto& plan : bucket) {
      const auto& [name, target] = targets[plan.index];
      const auto& p = placements[plan.index];
      const auto want_mine = holding(tl, me, name, p, layers, false);
      const auto held_mine = holding(fl, me, name, p, layers, from.tied_embeddings());
      for (const auto& piece : plan.pieces) {
        if (piece.from == me && piece.to == me) {
          // Already here: a local copy from the training slice.
          auto dst = region(target, plan.dim, want_mine.begin, piece);
          dst.copy_(region(mine.at(name), plan.dim, held_mine.begin, piece));
          stats.bytes_copied += static_cast<int64_t>(dst.nbytes());
        } else if (piece.from == me) {
          auto src = region(mine.at(name), plan.dim, held_mine.begin, piece).contiguous().to(group.device());
          stats.bytes_sent += static_cast<int64_t>(src.nbytes());
          sends.push_back({src, piece.to});
          if (verify) sends.push_back({bit_checksum(src), piece.to});
        } else if (piece.to == me) {
          auto shape = region(target, plan.dim, want_mine.begin, piece).sizes().vec();
          auto buffer = at::empty(shape, target.options().device(group.device()));
          stats.bytes_received += static_cast<int64_t>(buffer.nbytes());
          receives.push_back({buffer, piece.from});
          at::Tensor checksum;
          if (verify) {
            checksum = at::empty({2}, buffer.options().dtype(at::kDouble));
            receives.push_back({checksum, piece.from});
          }
          landings.push_back({buffer, plan.index, plan.dim, piece, checksum});
        }
      }
    }
    group.exchange(sends, receives);
    for (const auto& l : landings) {
      const auto& [name, target] = targets[l.index];
      if (verify) {
        const auto mine = bit_checksum(l.buffer).cpu(), theirs = l.checksum.cpu();
        const auto a = mine.data_ptr<double>(), b = theirs.data_ptr<double>();
        if (a[0] != b[0] || a[1] != b[1]) {
          throw std::runtime_error("reshard: " + name + " [" + std::to_string(l.piece.begin) + ", " +
                                   std::to_string(l.piece.end) + ") of dim " + std::to_string(l.dim) +
                                   " from rank " + std::to_string(l.piece.from) +
                                   " arrived with other bits than sent (checksum " + std::to_string(a[0]) + "/" +
                                   std::to_string(a[1]) + ", sender's " + std::to_string(b[0]) + "/" +
                                   std::to_string(b[1]) + ")");
        }
        ++stats.verified;
      }
      const auto want = holding(tl, me, name, placements[l.index], layers, false);
      region(target, l.dim, want.begin, l.piece).copy_(l.buffer);
    }
    stats.tensors += static_cast<int64_t>(bucket.size());
    ++stats.buckets;
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace tiller::sync
