// The process mesh of a run: from a layout {tensor, context, pipeline, expert, data} over the ranks
// of one process group, the c10d subgroups of every dimension, made once. Rank order is
// Megatron's: tensor fastest, then context, then data, then pipeline,
//   rank = t + T * (c + C * (d + D * p)).
// Experts fold over the same ranks as attention's tensor × context × data within a pipeline stage
// (expert tensor parallelism 1): stage-local index i = t + T * (c + C * d) gives expert rank
// i % EP and expert-data rank i / EP.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/process_group.h"

namespace tiller::parallel {

struct Layout {
  int tensor = 1, context = 1, pipeline = 1, expert = 1, data = 1;
  // Norms and residual on token shards between the tensor-parallel regions (needs tensor > 1 to matter).
  bool sequence_parallel = false;
  // Pipeline stages: decoder layers of the first and last stage (0: an even split), the middle
  // stages sharing the rest evenly (verl's DeepSeek-V3 recipe: first 3, last 2).
  int64_t first_stage_layers = 0, last_stage_layers = 0;
  int world() const { return tensor * context * pipeline * data; }
  // "TP2 x DP2" style, for messages.
  std::string describe() const;
};

// Throws std::invalid_argument naming the field when a size is < 1, when the sizes do not
// multiply to `world_size`, or when expert does not divide tensor × context × data.
void check_layout(const Layout& layout, int world_size);

// The decoder layers [begin, end) of pipeline stage `stage` of a model with `layers` layers.
// Throws std::invalid_argument naming layout.pipeline / layout.firstStageLayers when they do not
// split the layers (more stages than layers, a split that is not even, ends without a middle).
struct StageRange {
  int64_t begin = 0, end = 0;
  bool first = true, last = true;  // holds the embedding / the final norm and the lm-head
  int64_t layers() const { return end - begin; }
};
StageRange stage_range(const Layout& layout, int stage, int64_t layers);

struct Coordinates {
  int tensor = 0, context = 0, data = 0, pipeline = 0, expert = 0, expert_data = 0;
};

// Coordinates of `rank` under `layout` (pure arithmetic, no groups).
Coordinates coordinates_of(const Layout& layout, int rank);

class Mesh {
 public:
  // Every rank of `world` calls this with the same layout; blocks until its groups are connected.
  static std::shared_ptr<Mesh> create(const ProcessGroup& world, const Layout& layout);

  const Layout& layout() const { return layout_; }
  const Coordinates& coordinates() const { return coordinates_; }
  int rank() const { return rank_; }
  int world_size() const { return layout_.world(); }

  ProcessGroup& tensor() const { return *tensor_; }
  ProcessGroup& context() const { return *context_; }
  ProcessGroup& data() const { return *data_; }
  ProcessGroup& pipeline() const { return *pipeline_; }
  ProcessGroup& expert() const { return *expert_; }
  ProcessGroup& expert_data() const { return *expert_data_; }
  // Data × context: the ranks that hold the same parameters (gradients are reduced over it).
  ProcessGroup& data_context() const { return *data_context_; }
  // The first and last stage of this rank's pipeline (Megatron's embedding group), which both hold
  // the word embedding of a tied model; null on the middle stages and when there is one stage.
  ProcessGroup* embedding() const { return embedding_.get(); }
  // Every rank of the mesh (a group of its own over the world's ranks): transfers between two
  // layouts of the same ranks (resharding) go over it.
  ProcessGroup& all() const { return *all_; }
  // Every group by kind ("tensor", "context", "data", "pipeline", "expert", "expert_data", "data_context",
  // and "embedding" on the end stages of a pipeline).
  std::vector<std::pair<std::string, ProcessGroup*>> groups() const;

 private:
  Mesh() = default;
  Layout layout_;
  Coordinates coordinates_;
  int rank_ = 0;
  std::unique_ptr<ProcessGroup> tensor_, context_, data_, pipeline_, expert_, expert_data_, data_context_, embedding_, all_;
};

}  // namespace tiller::parallel
