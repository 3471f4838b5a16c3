// Read access to an HF config.json by dotted key ("rope_parameters.factor", "architectures.0"):
// the parsed io::Json itself, so that what is loaded is also what is saved back. Booleans read as
// numbers 0/1; null values count as absent.
#pragma once

#include <optional>
#include <string>

#include "io/json.h"

namespace tiller::models {

class HfConfig {
 public:
  // Throws when the document is not a JSON object.
  explicit HfConfig(io::Json json);

  const io::Json& json() const { return json_; }

  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Throws "config.json: <key> must be a number, found <type>" for a present value of another type.
  std::optional<double> number(const std::string& key) const;
  // Throws "config.json: <key> is missing" when absent.
  double required_number(const std::string& key) const;
  int64_t required_int(const std::string& key) const;
  double number_or(const std::string& key, double fallback) const;
  bool flag_or(const std::string& key, bool fallback) const;
  std::optional<std::string> string(const std::string& key) const;

 private:
  // The value at a dotted key, or nullptr when a step is absent or the value is null.
  const io::Json* find(const std::string& key) const;
  io::Json json_;
};

}  // namespace tiller::models
