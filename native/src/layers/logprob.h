// Per-token log-probability of a target token and entropy of the next-token distribution,
// computed over the vocabulary in token chunks so that [tokens x vocab] logits never exist at once,
// neither in the forward pass nor in the autograd graph (backward recomputes each chunk).
#pragma once

#include <torch/torch.h>

namespace tiller::layers {

struct TokenLogprobs {
  at::Tensor logprob;  // [tokens] float32
  at::Tensor entropy;  // [tokens] float32
};

// hidden: [tokens, hidden], lm_head: [vocab, hidden], targets: [tokens] int64.
// Logits are divided by temperature. Differentiable in hidden and lm_head.
// chunk_tokens: how many tokens' logits are materialised at a time.
TokenLogprobs chunked_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& targets,
                               double temperature, int64_t chunk_tokens = 1024);

}  // namespace tiller::layers
