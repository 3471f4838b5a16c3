// Per-token log-probability of a target token and entropy of the next-token distribution,
// computed over the vocabulary in token chunks so that [tokens x vocab] logits never exist at once,
// neither in the forward pass nor in the autograd graph (backward recomputes each chunk).
#pragma once

#include <torch/torch.h>

#include "parallel/process_group.h"

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

// The vocabulary split over a tensor group: this rank's lm_head holds rows vocab_start.. .
struct VocabShard {
  parallel::ProcessGroup* group = nullptr;
  int64_t vocab_start = 0;
};

// As above with lm_head: [vocab / size, hidden], this rank's rows. The logits stay sharded: each
// chunk's per-shard statistics (logsumexp, entropy, target logit) are merged with two small fp32
// all-reduces, and the backward needs none. `hidden` must be the same on every rank of the group
// and already pass through parallel::copy_to_group (its gradient here is this shard's part).
TokenLogprobs vocab_parallel_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& targets,
                                      double temperature, int64_t chunk_tokens, const VocabShard& shard);

}  // namespace tiller::layers
