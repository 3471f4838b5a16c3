// Moving tensors across the JS boundary without copies where libtorch allows.
#pragma once

#include <napi.h>
#include <torch/torch.h>

#include <vector>

namespace tiller::addon {

// Wraps the memory of a JS typed array as a CPU tensor, no copy. The tensor aliases the typed
// array: it is valid only while that array lives and is not detached. Checks that the element
// width of the array fits dtype and that shape covers exactly its length.
at::Tensor tensor_from_typed_array(const Napi::TypedArray& array, at::ScalarType dtype,
                                   const std::vector<int64_t>& shape);

// Hands a tensor to JS as a typed array over the tensor's own storage (an external ArrayBuffer
// whose finalizer releases the tensor). Non-CPU or non-contiguous tensors are first brought to
// contiguous CPU memory (one copy). bf16/fp16 come back as Uint16Array, bool as Uint8Array.
Napi::TypedArray typed_array_from_tensor(Napi::Env env, at::Tensor tensor);

// A JS array of non-negative integers (a shape) as a vector; names `field` in errors.
std::vector<int64_t> shape_from_js(const Napi::Value& value, const char* field);

Napi::Array shape_to_js(Napi::Env env, at::IntArrayRef shape);

}  // namespace tiller::addon
