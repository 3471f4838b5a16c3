// A Hugging Face model folder: config.json plus model.safetensors, or shards listed by
// model.safetensors.index.json. Opening maps the files; saving writes each file atomically.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"

namespace tiller::io {

struct Checkpoint {
  std::string dir;
  Json config;                                // config.json
  std::map<std::string, at::Tensor> tensors;  // CPU, views over mapped files (clone before mutating)
  std::vector<std::string> files;             // the safetensors files read, full paths, in shard order
};

// Throws std::runtime_error naming the folder or file and the problem: no config.json, neither
// model.safetensors nor model.safetensors.index.json, an index naming a missing shard, a tensor
// in two shards, a tensor the index lists but its shard lacks, a tensor that is not floating point or
// holds NaN/Inf, or any safetensors error.
Checkpoint open_checkpoint(const std::string& dir);

// Writes config.json and either model.safetensors (everything fits in max_shard_bytes) or
// model-0000i-of-0000N.safetensors shards plus model.safetensors.index.json, with HF's names and
// greedy packing in the given order (a tensor larger than the limit gets a shard of its own).
// Creates dir if needed; each file appears atomically; weight files of an earlier save in dir
// that the new one does not use are removed afterwards, so a stale index cannot win.
void save_checkpoint(const std::string& dir, const Json& config,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                     int64_t max_shard_bytes = 5'000'000'000);

}  // namespace tiller::io
