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

namespace tiller::models {

// HF tensor name -> CPU tensor as stored (any float dtype); the builder casts and moves it.
using WeightMap = std::map<std::string, at::Tensor>;

using Builder = std::function<std::unique_ptr<CausalLM>(const HfConfig&, const WeightMap&, at::Device, at::ScalarType)>;

struct ArchitectureRegistrar {
  ArchitectureRegistrar(const std::string& architecture, Builder builder);
};

std::vector<std::string> supported_architectures();

// Picks the builder from config "architectures.0".
std::unique_ptr<CausalLM> build_model(const HfConfig& config, const WeightMap& weights, at::Device device,
                                      at::ScalarType dtype);

}  // namespace tiller::models
