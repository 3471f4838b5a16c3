// Batched generation: prefill every prompt in one packed forward, then decode one token per running
// sequence per step, with a preallocated KV cache of [sequences, longest prompt + max new tokens].
#pragma once

#include <cstdint>
#include <vector>

#include <memory>

#include "models/causal_lm.h"
#include "rollout/cuda_decoder.h"
#include "rollout/sampler.h"
#include "rollout/schedule.h"

namespace tiller::rollout {

struct GenerateOptions {
  SamplingParams sampling;
  StopRules stop;
  uint64_t seed = 0;  // same seed, same tokens
  // The key of the first prompt's sequence in the sampling hash (prompt i draws as sequence
  // sequence_offset + i): a data-parallel rank given prompts [k, k + n) of a batch passes k and
  // samples what one rank given the whole batch would.
  uint64_t sequence_offset = 0;
  // MoE models: fill SequenceState::experts with the experts each token was routed to. Recording
  // takes the generic path (the CUDA decoder's captured graphs do not record).
  bool record_experts = false;
  // Vision-language models: the prompts' images, in prompt order (null: text only). Read by the
  // prefill; valid for the duration of the call.
  const models::ImageInputs* images = nullptr;
  // Out (when given): the bytes of the KV cache the call used (the CUDA decoder's, kept between calls).
  int64_t* kv_cache_bytes = nullptr;
};

// prompts: token ids, each non-empty. Returns one state per prompt (tokens, logprobs, finish reason).
// `decoder`, when given and the model supports it (cuda_decoder_supported), holds the CUDA decoder
// kept between calls: reused when it fits, rebuilt larger when not. Sampling runs on the logits'
// device from draws hashed on the CPU (sampler.h), so a seed gives the same draws everywhere.
std::vector<SequenceState> generate(const models::CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                    const GenerateOptions& options,
                                    std::unique_ptr<CudaDecoder>* decoder = nullptr);

}  // namespace tiller::rollout
