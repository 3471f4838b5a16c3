// Opening and saving HF model folders on top of the safetensors reader and writer.
#include "io/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "io/safetensors.h"

namespace tiller::io {
namespace fs = std::filesystem;

namespace {

constexpr const char* kConfig = "config.json";
constexpr const char* kSingle = "model.safetensors";
constexpr const char* kIndex = "model.safetensors.index.json";

[[noreturn]] void fail(const std::string& where, const std::string& problem) {
  throw std::runtime_error(where + ": " + problem);
}

Json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), "cannot open");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return Json::parse(text.str());
  } catch (const std::runtime_error& e) {
    fail(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

// model-00001-of-00003.safetensors
std::string shard_name(size_t index, size_t count) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buffer;
}

// Model weights are floating point: an integer tensor is a mismatch that a cast would hide (a float
// stored as int32 loads as garbage), and a NaN or Inf weight poisons every forward that reads it.
void check_weight(const std::string& file, const std::string& name, const at::Tensor& tensor) {
  if (!at::isFloatingType(tensor.scalar_type())) {
    fail(file, "tensor '" + name + "' is stored as " + std::string(c10::toString(tensor.scalar_type())) +
                   "; model weights must be a floating type (F32, F16, BF16)");
  }
  const auto type = tensor.scalar_type();
  const bool checkable = type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16;
  if (!checkable) return;  // fp8 (DeepSeek-V3's weights): no CPU isfinite, and its scales are checked as F32
  const auto bad = tensor.isfinite().logical_not().sum().item<int64_t>();
  if (bad > 0) {
    fail(file, "tensor '" + name + "' holds " + std::to_string(bad) + " non-finite value" + (bad == 1 ? "" : "s") +
                   " (NaN or Inf) of " + std::to_string(tensor.numel()) + ": the checkpoint is damaged");
  }
}

}  // namespace

Checkpoint open_checkpoint(const std::string& dir) {
  const fs::path folder(dir);
  if (!fs::is_directory(folder)) fail(dir, "not a folder");
  Checkpoint out;
  out.dir = dir;
  const fs::path config = folder / kConfig;
  if (!fs::exists(config)) fail(dir, "no config.json (is this a Hugging Face model folder?)");
  out.config = read_json_file(config);
  if (!out.config.is_object()) fail(config.string(), "not a JSON object");

  std::map<std::string, std::string> file_of;  // tensor name -> shard file name
  auto add_file = [&](const std::string& name) {
    const fs::path path = folder / name;
    auto file = read_safetensors(path.string());
    for (auto& [tensor_name, tensor] : file.tensors) check_weight(path.string(), tensor_name, tensor);
    for (auto& [tensor_name, tensor] : file.tensors) {
      const auto [it, inserted] = file_of.emplace(tensor_name, name);
      if (!inserted) fail(dir, "tensor '" + tensor_name + "' is in two shards, " + it->second + " and " + name);
      out.tensors.emplace(tensor_name, std::move(tensor));
    }
    out.files.push_back(path.string());
  };

  const fs::path index_path = folder / kIndex;
  if (fs::exists(index_path)) {
    const Json index = read_json_file(index_path);
    if (!index.is_object() || !index.has("weight_map") || !index.at("weight_map").is_object()) {
      fail(index_path.string(), "no \"weight_map\" object");
    }
    const auto& weight_map = index.at("weight_map").items();
    std::set<std::string> shards;
    for (const auto& [tensor_name, shard] : weight_map) {
      if (!shard.is_string()) fail(index_path.string(), "weight_map['" + tensor_name + "'] is not a file name");
      const auto& name = shard.as_string();
      // A plain file name only: an index must not point outside its folder.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        fail(index_path.string(), "weight_map['" + tensor_name + "'] = '" + name + "' is not a file name in the folder");
      }
      if (shards.insert(name).second && !fs::exists(folder / name)) {
        fail(index_path.string(), "names shard '" + name + "' (for tensor '" + tensor_name + "'), which is missing");
      }
    }
    for (const auto& shard : shards) add_file(shard);  // sorted: HF shard names sort in order
    for (const auto& [tensor_name, shard] : weight_map) {
      const auto found = file_of.find(tensor_name);
      if (found == file_of.end()) {
        fail(index_path.string(), "lists tensor '" + tensor_name + "' in " + shard.as_string() +
                                      ", but that shard does not hold it");
      }
      if (found->second != shard.as_string()) {
        fail(index_path.string(), "lists tensor '" + tensor_name + "' in " + shard.as_string() + ", but it is in " +
                                      found->second);
      }
    }
  } else if (fs::exists(folder / kSingle)) {
    add_file(kSingle);
  } else {
    std::string hint;
    if (fs::exists(folder / "pytorch_model.bin") || fs::exists(folder / "pytorch_model.bin.index.json")) {
      hint = "; it holds pytorch_model.bin weights, which tiller does not read: convert them to safetensors "
             "(model.save_pretrained(dir, safe_serialization=True) in transformers)";
    }
    fail(dir, std::string("neither ") + kSingle + " nor " + kIndex + hint);
  }
  return out;
}

void save_checkpoint(const std::string& dir, const Json& config,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t max_shard_bytes) {
  if (max_shard_bytes <= 0) fail(dir, "max_shard_bytes must be positive, got " + std::to_string(max_shard_bytes));
  if (!config.is_object()) fail(dir, "config must be a JSON object");
  const fs::path folder(dir);
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) fail(dir, "cannot create the folder: " + ec.message());

  // Greedy packing in the given order, as transformers' save_pretrained does.
  std::vector<std::vector<size_t>> shards;
  int64_t shard_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto bytes = static_cast<int64_t>(tensors[i].second.numel() * tensors[i].second.element_size());
    if (shards.empty() || (shard_bytes + bytes > max_shard_bytes && !shards.back().empty())) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
  }

  const std::map<std::string, std::string> metadata{{"format", "pt"}};  // transformers checks "format"
  std::set<std::string> written;
  if (shards.size() <= 1) {
    write_safetensors((folder / kSingle).string(), tensors, metadata);
    written.insert(kSingle);
  } else {
    Json weight_map = Json::object();
    std::map<std::string, std::string> file_of;  // sorted by tensor name, as HF writes the index
    int64_t total_bytes = 0;
    for (size_t s = 0; s < shards.size(); ++s) {
      const auto name = shard_name(s, shards.size());
      std::vector<std::pair<std::string, at::Tensor>> part;
      part.reserve(shards[s].size());
      for (const size_t i : shards[s]) {
        part.push_back(tensors[i]);
        file_of[tensors[i].first] = name;
      }
      total_bytes += write_safetensors((folder / name).string(), part, metadata);
      written.insert(name);
    }
    for (const auto& [tensor_name, file] : file_of) weight_map.append(tensor_name, Json(file));
    Json index_metadata = Json::object();
    index_metadata.set("total_size", Json(total_bytes));
    Json index = Json::object();
    index.set("metadata", std::move(index_metadata));
    index.set("weight_map", std::move(weight_map));
    write_file_atomically((folder / kIndex).string(), index.dump(2) + "\n");
    written.insert(kIndex);
  }
  write_file_atomically((folder / kConfig).string(), config.dump(2) + "\n");

  // Remove weight files of an earlier save that this one replaced, only now that it is complete.
  static const std::regex shard_pattern(R"(model-\d{5}-of-\d{5}\.safetensors)");
  for (const auto& entry : fs::directory_iterator(folder)) {
    const auto name = entry.path().filename().string();
    const bool ours = name == kSingle || name == kIndex || std::regex_match(name, shard_pattern);
    if (ours && written.count(name) == 0) fs::remove(entry.path());
  }
}

}  // namespace tiller::io
