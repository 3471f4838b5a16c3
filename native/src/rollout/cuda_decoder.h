// Fast generation on CUDA: a slot KV cache owned across calls, prefill in packed chunks, and decode
// steps replayed from CUDA graphs captured for a ladder of batch sizes (1, 2, 4, 8, then every 16,
// largest first so all share one memory pool). Device work only; which sequence runs where is
// decided by the caller (rollout/generate.cc with rollout/schedule.h).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "models/causal_lm.h"

namespace tiller::rollout {

// Whether a model can use the CUDA decoder: CUDA, bf16/fp16, rope not dynamic (dynamic NTK makes
// the frequencies depend on the context length, which a captured graph cannot follow), and per-head
// K/V in its cache. MLA models (DeepSeek-V3) cache a latent that the slot cache's flash decode cannot
// read: they take the generic path of rollout/generate.cc.
bool cuda_decoder_supported(const models::CausalLM& model);

class CudaDecoder {
 public:
  // slots: sequences held at once; max_len: prompt + new tokens per slot.
  CudaDecoder(const models::CausalLM& model, int64_t slots, int64_t max_len);
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  int64_t slots() const { return slots_; }
  int64_t max_len() const { return max_len_; }
  bool fits(int64_t sequences, int64_t max_len) const { return sequences <= slots_ && max_len <= max_len_; }

  // Writes prompt i into slot i and returns the logits of each prompt's last token: [prompts, vocab] fp32.
  at::Tensor prefill(const std::vector<std::vector<int64_t>>& prompts);

  // One token for each row: slot, input token, its position. Returns [rows, vocab] fp32 logits
  // (valid until the next call).
  at::Tensor decode(const std::vector<int64_t>& slots, const std::vector<int64_t>& tokens,
                    const std::vector<int64_t>& positions);

  const std::vector<layers::KvView>& cache() const { return cache_; }

 private:
  struct Graph;
  at::Tensor run_decode(int64_t rows);  // the captured body: reads meta_, writes logits
  Graph& graph_for(int64_t rows);

  const models::CausalLM& model_;
  int64_t slots_, max_len_;
  std::vector<layers::KvView> cache_;  // [slots + 1 (scratch for padding rows), max_len, kv_heads, D]
  at::Tensor meta_;                    // [5, slots + 1] int64 device: token, position, write row, key start, keys used
  at::Tensor meta_host_;               // the same, pinned host, filled per step
  at::Tensor cu_q_;                    // [slots + 1] int32: 0..slots
  std::vector<int64_t> ladder_;        // captured batch sizes, ascending
  std::map<int64_t, std::unique_ptr<Graph>> graphs_;
};

}  // namespace tiller::rollout
