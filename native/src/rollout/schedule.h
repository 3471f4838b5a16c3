// Generation bookkeeping without tensors: which sequences are still running, where each one's
// next token goes in the cache, and why each finished.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tiller::rollout {

struct StopRules {
  int64_t max_new_tokens = 16;
  // One limit per sequence (overrides max_new_tokens), or empty.
  std::vector<int64_t> max_new_tokens_each;
  std::vector<int64_t> stop_token_ids;
  int64_t limit(size_t sequence) const {
    return max_new_tokens_each.empty() ? max_new_tokens : max_new_tokens_each.at(sequence);
  }
};

struct SequenceState {
  int64_t prompt_length = 0;
  std::vector<int64_t> tokens;  // generated only
  std::vector<float> logprobs;  // one per generated token
  // MoE routing, when generation records it (GenerateOptions::record_experts): [prompt + generated
  // tokens, moe_layers, top_k] expert ids, row-major; the last generated token never passes through
  // the model, so its row is -1 (which routing replay reads as "route normally").
  std::vector<int32_t> experts;
  bool finished = false;
  std::string finish_reason;    // "stop" | "length" once finished
};

class Schedule {
 public:
  Schedule(const std::vector<int64_t>& prompt_lengths, StopRules rules);
  // Indices of sequences still generating, in order.
  std::vector<int64_t> running() const;
  // Cache position of sequence i's next input token (its last generated token).
  int64_t next_offset(int64_t i) const;
  // Records a sampled token (none once finished); marks the sequence finished on a stop id or the
  // length limit.
  void append(int64_t i, int64_t token, float logprob);
  // The longest prompt plus its own limit: the per-sequence cache length needed.
  int64_t cache_length() const;
  const std::vector<SequenceState>& sequences() const { return sequences_; }

 private:
  StopRules rules_;
  std::vector<SequenceState> sequences_;
};

}  // namespace tiller::rollout
