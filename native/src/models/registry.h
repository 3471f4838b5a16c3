// HF `architectures` name -> builder. Family files register themselves with a static
// ArchitectureRegistrar; build_model() lists the supported names when asked for another.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/causal_lm.h"
#include "models/hf_config.h"
#include "parallel/mesh.h"

namespace tiller::models {

// HF tensor name -> CPU tensor as stored (any float dtype); the builder casts and moves it.
using WeightMap = std::map<std::string, at::Tensor>;

// Where and how a model is built: its device and dtype and, for a multi-rank run, the mesh whose
// tensor group its tensor-parallel slices follow (null: one device, whole tensors).
struct BuildOptions {
  BuildOptions(at::Device on = at::kCPU, at::ScalarType as = at::kFloat) : device(on), dtype(as) {}
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  std::shared_ptr<parallel::Mesh> mesh;
  bool sequence_parallel = false;
  // Vision-language models: the vision tower is loaded and saved but not trained (no gradients).
  bool freeze_vision = false;
  int tensor_rank() const { return mesh ? mesh->coordinates().tensor : 0; }
  int tensor_size() const { return mesh ? mesh->layout().tensor : 1; }
  int expert_rank() const { return mesh ? mesh->expert().rank() : 0; }
  int expert_size() const { return mesh ? mesh->expert().world_size() : 1; }
  // This rank's pipeline stage of a model with `layers` decoder layers (all of them on one stage).
  parallel::StageRange stage(int64_t layers) const {
    if (!mesh) return {0, layers, true, true};
    return parallel::stage_range(mesh->layout(), mesh->coordinates().pipeline, layers);
  }
  int pipeline_size() const { return mesh ? mesh->layout().pipeline : 1; }
  int context_size() const { return mesh ? mesh->layout().context : 1; }
};

using Builder = std::function<std::unique_ptr<CausalLM>(const HfConfig&, const WeightMap&, const BuildOptions&)>;

struct ArchitectureRegistrar {
  ArchitectureRegistrar(const std::string& architecture, Builder builder);
};

std::vector<std::string> supported_architectures();

// Picks the builder from config "architectures.0".
std::unique_ptr<CausalLM> build_model(const HfConfig& config, const WeightMap& weights, const BuildOptions& options);

}  // namespace tiller::models
