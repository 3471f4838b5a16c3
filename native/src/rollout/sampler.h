// Picks the next token of each row of logits: greedy, or sampled after temperature, top-k and
// top-p, from a generator seeded by the caller so that a seed reproduces the same tokens.
#pragma once

#include <torch/torch.h>

namespace tiller::rollout {

struct SamplingParams {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
};

struct Sampled {
  at::Tensor tokens;    // [rows] int64
  at::Tensor logprobs;  // [rows] float32: log_softmax(logits / temperature) at the token (T = 1 when greedy)
};

// logits: [rows, vocab] float32 on the CPU; generator: a CPU generator.
Sampled sample(const at::Tensor& logits, const SamplingParams& params, at::Generator& generator);

}  // namespace tiller::rollout
