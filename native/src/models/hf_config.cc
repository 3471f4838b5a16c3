#include "models/hf_config.h"

#include <cmath>
#include <stdexcept>

namespace tiller::models {

std::optional<double> HfConfig::number(const std::string& key) const {
  const auto it = numbers.find(key);
  if (it == numbers.end()) return std::nullopt;
  return it->second;
}

double HfConfig::required_number(const std::string& key) const {
  const auto v = number(key);
  if (!v) throw std::invalid_argument("config.json: " + key + " is missing (a number is required)");
  return *v;
}

int64_t HfConfig::required_int(const std::string& key) const {
  const double v = required_number(key);
  if (v != std::floor(v)) throw std::invalid_argument("config.json: " + key + " must be an integer");
  return static_cast<int64_t>(v);
}

double HfConfig::number_or(const std::string& key, double fallback) const { return number(key).value_or(fallback); }

bool HfConfig::flag_or(const std::string& key, bool fallback) const {
  const auto v = number(key);
  return v ? *v != 0 : fallback;
}

std::optional<std::string> HfConfig::string(const std::string& key) const {
  const auto it = strings.find(key);
  if (it == strings.end()) return std::nullopt;
  return it->second;
}

}  // namespace tiller::models
