// Picks the next token of each row of logits: greedy, or sampled after temperature, top-k and
// top-p by inverse-CDF sampling from one uniform draw per row. The caller derives each draw from
// (seed, sequence, token index) alone (sequence_uniform), so a sequence's tokens do not depend on
// which other sequences share its batch: a batch split over data-parallel ranks samples exactly
// what one rank would.
#pragma once

#include <cstdint>

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

// A uniform in [0, 1) from a counter-based hash of (seed, sequence key, token index): the draw for
// the index-th generated token of that sequence, whatever else runs beside it.
double sequence_uniform(uint64_t seed, uint64_t sequence, uint64_t index);

// logits: [rows, vocab] float32 (any device); uniforms: [rows] float64 on the CPU, in [0, 1),
// unused when greedy.
Sampled sample(const at::Tensor& logits, const SamplingParams& params, const at::Tensor& uniforms);

}  // namespace tiller::rollout
