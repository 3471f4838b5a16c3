// Resharding: the weights of a model held in one parallel layout (training) copied into the same
// model held in another layout over the same ranks (rollout). Every rank works out, from the two
// layouts and each tensor's split alone, which regions each rank holds and needs: a rank keeps
// what it already holds (a local copy), and every region it lacks arrives once, from one of the
// ranks holding it (replicas take turns), by point-to-point transfers over all the ranks, a
// bucket of tensors at a time so no rank allocates more than a bucket beyond its shards.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "models/causal_lm.h"
#include "parallel/mesh.h"

namespace tiller::sync {

struct ReshardStats {
  int64_t tensors = 0;
  int64_t bytes_sent = 0, bytes_received = 0;  // this rank's, between ranks
  int64_t bytes_copied = 0;                     // regions this rank already held
  int64_t buckets = 0;
  double seconds = 0;
};

// Every parameter of `to` (held under `to_mesh`) set from `from` (under `from_mesh`): both the same
// model (names, shapes, splits) over the same ranks; `layers` its decoder layers (for the pipeline
// stages of `from`). Collective over all the ranks, in the same order everywhere.
ReshardStats reshard(const models::CausalLM& from, const parallel::Mesh& from_mesh, models::CausalLM& to,
                     const parallel::Mesh& to_mesh, int64_t layers, int64_t bucket_bytes);

}  // namespace tiller::sync
