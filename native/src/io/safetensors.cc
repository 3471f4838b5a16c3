// safetensors reading (mmap + at::from_blob views) and atomic writing.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <stdexcept>

#include "io/json.h"

namespace tiller::io {
namespace {

// The reference implementation refuses headers above 100 MB; so do we, rather than parse a
// length that is really garbage.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

std::string errno_text() { return std::strerror(errno); }

// One mapped file; tensors hold it through shared_ptr deleters, so it lives as long as any view.
struct Mapping {
  void* address = MAP_FAILED;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (address != MAP_FAILED) munmap(address, size);
  }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(address); }
};

std::shared_ptr<Mapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open: " + errno_text());
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const auto why = errno_text();
    ::close(fd);
    fail(path, "cannot stat: " + why);
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size < 8) {
    ::close(fd);
    fail(path, "file is " + std::to_string(mapping->size) +
                   " bytes, shorter than the 8-byte header length (truncated or not a safetensors file)");
  }
  // Private and writable: a stray in-place op on a view copies one page instead of crashing the
  // process (PROT_READ) or changing the file (MAP_SHARED). Pages stay shared until written.
  mapping->address = mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const auto why = errno_text();
  ::close(fd);  // the mapping keeps its own reference to the file
  if (mapping->address == MAP_FAILED) fail(path, "cannot mmap: " + why);
  return mapping;
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;  // relative to the start of the data section
};

Entry parse_entry(const std::string& path, const std::string& name, const Json& info) {
  const std::string where = "tensor '" + name + "'";
  if (!info.is_object()) fail(path, "corrupt header: " + where + " is not an object");
  Entry entry;
  entry.name = name;
  try {
    const auto& dtype = info.at("dtype");
    if (!dtype.is_string()) fail(path, where + ": dtype is not a string");
    try {
      entry.dtype = safetensors_dtype(dtype.as_string());
    } catch (const std::invalid_argument& e) {
      fail(path, where + ": " + e.what());
    }
    const auto& shape = info.at("shape");
    if (!shape.is_array()) fail(path, where + ": shape is not an array");
    for (const auto& d : shape.elements()) {
      if (!d.is_integer() || d.as_int() < 0) fail(path, where + ": shape " + shape.dump() + " is not a list of non-negative integers");
      entry.shape.push_back(d.as_int());
    }
    const auto& offsets = info.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets.at(0).is_integer() || !offsets.at(1).is_integer() ||
        offsets.at(0).as_int() < 0 || offsets.at(1).as_int() < offsets.at(0).as_int()) {
      fail(path, where + ": data_offsets " + offsets.dump() + " is not [begin, end] with 0 <= begin <= end");
    }
    entry.begin = static_cast<uint64_t>(offsets.at(0).as_int());
    entry.end = static_cast<uint64_t>(offsets.at(1).as_int());
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    if (message.rfind(path + ": ", 0) == 0) throw;
    fail(path, "corrupt header: " + where + ": " + message);  // e.g. missing field 'dtype'
  }
  uint64_t bytes = c10::elementSize(entry.dtype);
  for (const auto d : entry.shape) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) fail(path, where + ": shape overflows");
  }
  if (entry.end - entry.begin != bytes) {
    fail(path, where + ": data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "] span " +
                   std::to_string(entry.end - entry.begin) + " bytes, but " + safetensors_dtype_name(entry.dtype) +
                   " x " + c10::str(at::IntArrayRef(entry.shape)) + " needs " + std::to_string(bytes));
  }
  return entry;
}

// A file being written: a hidden temporary beside the target, renamed over it on commit() and
// removed if commit() is never reached (an exception mid-write leaves no partial file).
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    static std::atomic<uint64_t> counter{0};
    const auto slash = path_.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : path_.substr(0, slash + 1);
    const std::string base = slash == std::string::npos ? path_ : path_.substr(slash + 1);
    temp_ = dir + "." + base + ".tmp-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path_, "cannot create " + temp_ + ": " + errno_text());
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
  }

  void write(const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail(path_, "write failed: " + errno_text());
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  void commit() {
    if (::fsync(fd_) != 0) fail(path_, "fsync failed: " + errno_text());
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail(path_, "close failed: " + errno_text());
    if (::rename(temp_.c_str(), path_.c_str()) != 0) fail(path_, "rename from " + temp_ + " failed: " + errno_text());
    committed_ = true;
  }

 private:
  std::string path_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

at::ScalarType safetensors_dtype(const std::string& name) {
  if (name == "F32") return at::kFloat;
  if (name == "F16") return at::kHalf;
  if (name == "BF16") return at::kBFloat16;
  if (name == "F64") return at::kDouble;
  if (name == "I64") return at::kLong;
  if (name == "I32") return at::kInt;
  if (name == "I16") return at::kShort;
  if (name == "I8") return at::kChar;
  if (name == "U8") return at::kByte;
  if (name == "BOOL") return at::kBool;
  // FP8 checkpoints (DeepSeek-V3) store their weights this way.
  if (name == "F8_E4M3") return at::kFloat8_e4m3fn;
  if (name == "F8_E5M2") return at::kFloat8_e5m2;
  throw std::invalid_argument("unknown dtype '" + name +
                              "' (known: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2)");
}

std::string safetensors_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    case at::kFloat8_e4m3fn: return "F8_E4M3";
    case at::kFloat8_e5m2: return "F8_E5M2";
    default: throw std::invalid_argument(std::string("safetensors has no dtype for ") + c10::toString(dtype));
  }
}

SafetensorsFile read_safetensors(const std::string& path) {
  const auto mapping = map_file(path);
  const uint64_t header_bytes = read_le64(mapping->bytes());
  const uint64_t after_length = mapping->size - 8;
  if (header_bytes > after_length) {
    // The length itself is not shown: for a file that is not safetensors it is the file's first bytes.
    fail(path, "truncated or not a safetensors file: the header length is more than the " +
                   std::to_string(after_length) + " bytes that follow it");
  }
  if (header_bytes > kMaxHeaderBytes) fail(path, "corrupt header: its length is over the 100 MB limit");
  Json header;
  try {
    header = Json::parse(std::string_view(reinterpret_cast<const char*>(mapping->bytes() + 8), header_bytes));
  } catch (const std::runtime_error& e) {
    fail(path, std::string("corrupt header: ") + e.what());
  }
  if (!header.is_object()) fail(path, std::string("corrupt header: a ") + Json::type_name(header.type()) + ", not an object");

  SafetensorsFile out;
  out.path = path;
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail(path, "corrupt header: __metadata__ is not an object");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) fail(path, "corrupt header: __metadata__['" + key + "'] is not a string");
        out.metadata[key] = value.as_string();
      }
      continue;
    }
    entries.push_back(parse_entry(path, name, info));
  }

  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_bytes = mapping->size - data_start;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.end > data_bytes) {
      fail(path, "tensor '" + e.name + "': data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                     "] run past the end of the data (" + std::to_string(data_bytes) + " bytes; truncated file?)");
    }
    // Empty tensors occupy no bytes and may share an offset with anything.
    if (i > 0 && e.begin < entries[i - 1].end && e.begin != e.end) {
      fail(path, "tensors '" + entries[i - 1].name + "' and '" + e.name + "' overlap: data_offsets [" +
                     std::to_string(entries[i - 1].begin) + ", " + std::to_string(entries[i - 1].end) + "] and [" +
                     std::to_string(e.begin) + ", " + std::to_string(e.end) + "]");
    }
  }

  out.tensors.reserve(entries.size());
  for (const auto& e : entries) {
    auto* data = const_cast<uint8_t*>(mapping->bytes()) + data_start + e.begin;
    const auto options = at::TensorOptions().dtype(e.dtype).device(at::kCPU);
    at::Tensor tensor = at::from_blob(data, e.shape, [mapping](void*) {}, options);
    // Files from HF writers keep every tensor aligned to its element size; a file that does not
    // gets an aligned copy of that tensor, since vectorised kernels may assume alignment.
    if (reinterpret_cast<uintptr_t>(data) % c10::elementSize(e.dtype) != 0) tensor = tensor.clone();
    out.tensors.emplace_back(e.name, std::move(tensor));
  }
  return out;
}

int64_t write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                          const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order(tensors.size());
  std::set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    if (name == "__metadata__") fail(path, "'__metadata__' cannot name a tensor");
    if (!tensor.defined()) fail(path, "tensor '" + name + "' is undefined");
    if (!names.insert(name).second) fail(path, "tensor '" + name + "' given twice");
    safetensors_dtype_name(tensor.scalar_type());  // throws for a dtype the format lacks
    order[i] = i;
  }
  // HF's order: wider elements first, so each tensor's offset stays a multiple of its width.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto wa = c10::elementSize(tensors[a].second.scalar_type());
    const auto wb = c10::elementSize(tensors[b].second.scalar_type());
    return wa != wb ? wa > wb : tensors[a].first < tensors[b].first;
  });

  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [key, value] : metadata) meta.set(key, Json(value));
    header.set("__metadata__", std::move(meta));
  }
  int64_t offset = 0;
  for (const size_t i : order) {
    const auto& tensor = tensors[i].second;
    Json shape = Json::array();
    for (const auto d : tensor.sizes()) shape.push_back(Json(d));
    const auto bytes = static_cast<int64_t>(tensor.numel() * tensor.element_size());
    Json offsets = Json::array();
    offsets.push_back(Json(offset));
    offsets.push_back(Json(offset + bytes));
    Json info = Json::object();
    info.set("dtype", Json(safetensors_dtype_name(tensor.scalar_type())));
    info.set("shape", std::move(shape));
    info.set("data_offsets", std::move(offsets));
    header.append(tensors[i].first, std::move(info));  // names checked unique above
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  AtomicFile file(path);
  uint8_t length[8];
  write_le64(length, text.size());
  file.write(length, sizeof length);
  file.write(text.data(), text.size());
  for (const size_t i : order) {
    // One tensor at a time on the host: peak extra memory is the largest tensor, not the file.
    const at::Tensor host = tensors[i].second.detach().to(at::kCPU).contiguous();
    file.write(host.data_ptr(), host.nbytes());
  }
  file.commit();
  return offset;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace tiller::io
