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
  int64_t verified = 0;  // received regions checked against their sender's checksum
  double seconds = 0;
};

// Every parameter of `to` (held under `to_mesh`) set from `from` (under `from_mesh`): both the same
// model (names, shapes, splits) over the same ranks; `layers` its decoder layers (for the pipeline
// stages of `from`). Collective over all the ranks, in the same order everywhere. `verify` (a debug
// option): every region sent goes with a checksum of its bits computed by its sender, and the
// receiver throws, naming the tensor, the rows and the sender, where its own checksum differs.
ReshardStats reshard(const models::CausalLM& from, const parallel::Mesh& from_mesh, models::CausalLM& to,
                     const parallel::Mesh& to_mesh, int64_t layers, int64_t bucket_bytes, bool verify = false);

// A checksum of a contiguous tensor's bits (two float64 sums of its elements' bit patterns, one
// plain and one position-weighted), computed where the tensor lives; identical bits give
// identical sums on the same kind of device.
at::Tensor bit_checksum(const at::Tensor& t);

}  // namespace tiller::sync
