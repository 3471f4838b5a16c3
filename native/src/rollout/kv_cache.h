// The KV cache of one generate call: per layer, one preallocated row of positions per sequence.
#pragma once

#include <vector>

#include "layers/attention.h"
#include "models/causal_lm.h"

namespace tiller::rollout {

// Per layer, keys [slots, max_length, kv_heads, head_dim] and values [.., value_dim] (for MLA the
// latent and the rope key: models/causal_lm.h KvShape), on the model's device and dtype.
std::vector<layers::KvView> allocate_kv_cache(const models::CausalLM& model, int64_t slots, int64_t max_length);

// The bytes of a cache's tensors.
int64_t kv_cache_bytes(const std::vector<layers::KvView>& cache);

}  // namespace tiller::rollout
