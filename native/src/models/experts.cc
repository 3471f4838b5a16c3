#include "models/experts.h"

#include <stdexcept>

namespace tiller::models {
namespace {

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// "model.layers.12.mlp.experts.down_proj" -> "model.layers.12." when it ends with `suffix`, else "".
std::string prefix_before(const std::string& name, const std::string& suffix) {
  if (!starts_with(name, "model.layers.") || !ends_with(name, suffix)) return "";
  const auto prefix = name.substr(0, name.size() - suffix.size());
  const auto digits = prefix.substr(13, prefix.size() - 14);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || prefix.back() != '.') return "";
  return prefix;
}

}  // namespace

WeightMap stack_experts(WeightMap weights, const std::vector<int64_t>& moe_layers, int64_t experts,
                        const ExpertCheckpointNames& names) {
  for (const auto layer : moe_layers) {
    const auto block = layer_prefix(layer) + names.block + ".";
    const auto target = layer_prefix(layer) + "mlp.";
    const auto expert_name = [&](int64_t e, const std::string& proj) {
      return block + "experts." + std::to_string(e) + "." + proj + ".weight";
    };
    if (weights.count(expert_name(0, names.gate))) {
      std::vector<at::Tensor> gate_up, down;
      for (int64_t e = 0; e < experts; ++e) {
        const auto take = [&](const std::string& proj) {
          const auto it = weights.find(expert_name(e, proj));
          if (it == weights.end()) throw std::invalid_argument("weights: " + expert_name(e, proj) + " is missing");
          auto t = it->second;
          weights.erase(it);
          return t;
        };
        const auto g = take(names.gate), u = take(names.up);
        gate_up.push_back(at::cat({g, u}, 0));
        down.push_back(take(names.down));
      }
      weights[target + "experts.gate_up_proj"] = at::stack(gate_up);
      weights[target + "experts.down_proj"] = at::stack(down);
    }
    if (block != target) {
      // Every router tensor moves (Mixtral's block_sparse_moe.gate.weight -> mlp.gate.weight).
      const auto router = block + "gate.";
      for (auto it = weights.lower_bound(router); it != weights.end() && starts_with(it->first, router);) {
        weights[target + "gate." + it->first.substr(router.size())] = it->second;
        it = weights.erase(it);
      }
    }
  }
  return weights;
}

NamedTensors unstack_experts(const NamedTensors& tensors, const ExpertCheckpointNames& names) {
  NamedTensors out;
  for (const auto& [name, t] : tensors) {
    if (const auto p = prefix_before(name, "mlp.experts.gate_up_proj"); !p.empty()) {
      const auto inter = t.size(1) / 2;
      for (int64_t e = 0; e < t.size(0); ++e) {
        const auto base = p + names.block + ".experts." + std::to_string(e) + ".";
        out.emplace_back(base + names.gate + ".weight", t[e].slice(0, 0, inter));
        out.emplace_back(base + names.up + ".weight", t[e].slice(0, inter));
      }
    } else if (const auto p = prefix_before(name, "mlp.experts.down_proj"); !p.empty()) {
      for (int64_t e = 0; e < t.size(0); ++e) {
        out.emplace_back(p + names.block + ".experts." + std::to_string(e) + "." + names.down + ".weight", t[e]);
      }
    } else if (const auto p = prefix_before(name, "mlp.gate.weight"); !p.empty()) {
      out.emplace_back(p + names.block + ".gate.weight", t);
    } else if (const auto p = prefix_before(name, "mlp.gate.e_score_correction_bias"); !p.empty()) {
      out.emplace_back(p + names.block + ".gate.e_score_correction_bias", t);
    } else {
      out.emplace_back(name, t);
    }
  }
  return out;
}

}  // namespace tiller::models
