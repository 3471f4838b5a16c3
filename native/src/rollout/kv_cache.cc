#include "rollout/kv_cache.h"

namespace tiller::rollout {

std::vector<layers::KvView> allocate_kv_cache(const models::CausalLM& model, int64_t slots, int64_t max_length) {
  const auto shape = model.kv_shape();
  const auto options = at::TensorOptions().dtype(model.dtype()).device(model.device());
  std::vector<layers::KvView> cache;
  for (int64_t l = 0; l < shape.layers; ++l) {
    cache.push_back({at::zeros({slots, max_length, shape.kv_heads, shape.head_dim}, options),
                     at::zeros({slots, max_length, shape.kv_heads, shape.value_dim}, options)});
  }
  return cache;
}

int64_t kv_cache_bytes(const std::vector<layers::KvView>& cache) {
  int64_t bytes = 0;
  for (const auto& kv : cache) {
    if (kv.k.defined()) bytes += static_cast<int64_t>(kv.k.nbytes());
    if (kv.v.defined()) bytes += static_cast<int64_t>(kv.v.nbytes());
  }
  return bytes;
}

}  // namespace tiller::rollout
