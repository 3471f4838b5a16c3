#include "models/hf_config.h"

#include <cmath>
#include <stdexcept>

namespace tiller::models {

HfConfig::HfConfig(io::Json json) : json_(std::move(json)) {
  if (!json_.is_object()) {
    throw std::invalid_argument(std::string("config.json: expected an object, found ") +
                                io::Json::type_name(json_.type()));
  }
}

const io::Json* HfConfig::find(const std::string& key) const {
  const io::Json* node = &json_;
  size_t start = 0;
  while (node) {
    const auto dot = key.find('.', start);
    const auto part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (node->is_object()) {
      node = node->has(part) ? &node->at(part) : nullptr;
    } else if (node->is_array() && !part.empty() && part.find_first_not_of("0123456789") == std::string::npos) {
      const auto index = std::stoull(part);
      node = index < node->size() ? &node->at(index) : nullptr;
    } else {
      node = nullptr;
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return node && !node->is_null() ? node : nullptr;
}

std::optional<double> HfConfig::number(const std::string& key) const {
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_bool()) return v->as_bool() ? 1.0 : 0.0;
  if (!v->is_number()) {
    throw std::invalid_argument("config.json: " + key + " must be a number, found " + io::Json::type_name(v->type()));
  }
  return v->as_number();
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
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) {
    throw std::invalid_argument("config.json: " + key + " must be a string, found " + io::Json::type_name(v->type()));
  }
  return v->as_string();
}

}  // namespace tiller::models
