// Batched generation: prefill every prompt in one packed forward, then decode one token per running
// sequence per step, with a preallocated KV cache of [sequences, longest prompt + max new tokens].
#pragma once

#include <cstdint>
#include <vector>

#include "models/causal_lm.h"
#include "rollout/sampler.h"
#include "rollout/schedule.h"

namespace tiller::rollout {

struct GenerateOptions {
  SamplingParams sampling;
  StopRules stop;
  uint64_t seed = 0;  // seeds this call's own generator: same seed, same tokens
};

// prompts: token ids, each non-empty. Returns one state per prompt (tokens, logprobs, finish reason).
std::vector<SequenceState> generate(const models::CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                    const GenerateOptions& options);

}  // namespace tiller::rollout
