// An HF config.json flattened to dotted keys ("rope_parameters.factor", "architectures.0"):
// numbers (booleans as 0/1) and strings; null values are absent. Whoever parses the JSON fills it.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace tiller::models {

struct HfConfig {
  std::map<std::string, double> numbers;
  std::map<std::string, std::string> strings;

  bool has(const std::string& key) const { return numbers.count(key) || strings.count(key); }
  std::optional<double> number(const std::string& key) const;
  // Throws "config.json: <key> is missing" when absent.
  double required_number(const std::string& key) const;
  int64_t required_int(const std::string& key) const;
  double number_or(const std::string& key, double fallback) const;
  bool flag_or(const std::string& key, bool fallback) const;
  std::optional<std::string> string(const std::string& key) const;
};

}  // namespace tiller::models
