#include "models/registry.h"

#include <stdexcept>

namespace tiller::models {
namespace {

std::map<std::string, Builder>& builders() {
  static std::map<std::string, Builder> table;
  return table;
}

}  // namespace

ArchitectureRegistrar::ArchitectureRegistrar(const std::string& architecture, Builder builder) {
  builders()[architecture] = std::move(builder);
}

std::vector<std::string> supported_architectures() {
  std::vector<std::string> names;
  for (const auto& [name, _] : builders()) names.push_back(name);
  return names;
}

std::unique_ptr<CausalLM> build_model(const HfConfig& config, const WeightMap& weights, const BuildOptions& options) {
  const auto architecture = config.string("architectures.0");
  std::string supported;
  for (const auto& name : supported_architectures()) supported += (supported.empty() ? "" : ", ") + name;
  if (!architecture) throw std::invalid_argument("config.json: architectures is missing; supported: " + supported);
  const auto it = builders().find(*architecture);
  if (it == builders().end()) {
    throw std::invalid_argument("config.json: architecture '" + *architecture + "' is not supported; supported: " +
                                supported);
  }
  return it->second(config, weights, options);
}

}  // namespace tiller::models
