// The safetensors format: an 8-byte little-endian header length, a JSON header
// (name -> {dtype, shape, data_offsets}, optional "__metadata__": {string: string}), then the
// tensor bytes. Reading maps the file; writing goes through a temporary file and a rename.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace tiller::io {

struct SafetensorsFile {
  std::string path;
  std::map<std::string, std::string> metadata;  // "__metadata__", empty when absent
  // In file order (by data offset). Each tensor is a CPU view over a private mapping of the file
  // and keeps that mapping alive; the views are valid after this struct is gone. The mapping is
  // copy-on-write: writing into a tensor never reaches the file, but clone before mutating all
  // the same, since a written page stops being shared with the page cache.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
};

// Throws std::runtime_error("<path>: <problem>") for a file shorter than 8 bytes, a header
// length beyond the file ("truncated"), a header that is not a JSON object ("corrupt header"),
// an unknown dtype, a bad shape, and data_offsets out of range, overlapping, or not matching
// dtype x shape.
SafetensorsFile read_safetensors(const std::string& path);

// Writes tensors (any device, any layout: each is brought to contiguous CPU memory, one at a
// time) with HF's layout: larger element types first, then by name, so every tensor starts
// aligned to its element size; the header is padded with spaces to a multiple of 8 bytes.
// The file appears atomically (temporary file in the same folder, fsync, rename). Names must
// be unique and not "__metadata__". Returns the number of tensor-data bytes written.
int64_t write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                          const std::map<std::string, std::string>& metadata = {});

// "F32" <-> at::kFloat, ... ; the parse throws for names it does not know.
at::ScalarType safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(at::ScalarType dtype);

// Writes bytes to path through a temporary file and a rename, so a reader never sees a partial
// file. Shared with the checkpoint writer for config.json and the index.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace tiller::io
