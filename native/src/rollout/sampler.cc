#include "rollout/sampler.h"

#include <limits>

#include "kernels/logprob.h"

namespace tiller::rollout {

Sampled sample(const at::Tensor& logits, const SamplingParams& params, at::Generator& generator) {
  // The sampled tokens' logprobs come from the kernel the training forward uses, so rollout and
  // training logprobs agree bit for bit.
  if (params.temperature == 0) {
    const auto tokens = logits.argmax(-1);
    return {tokens, kernels::logprob_rows(logits, tokens, 1.0).logprob};
  }
  const auto log_probs = at::log_softmax(logits / params.temperature, -1);  // [rows, vocab]
  auto filtered = log_probs.clone();
  const auto vocab = logits.size(-1);
  const double minus_inf = -std::numeric_limits<double>::infinity();
  if (params.top_k > 0 && params.top_k < vocab) {
    const auto kth = std::get<0>(log_probs.topk(params.top_k, -1)).select(1, params.top_k - 1).unsqueeze(1);
    filtered.masked_fill_(log_probs < kth, minus_inf);
  }
  if (params.top_p < 1.0) {
    // Keep the smallest prefix of the sorted distribution whose mass reaches top_p (at least one).
    const auto [sorted, order] = filtered.sort(-1, /*descending=*/true);
    const auto cumulative = sorted.exp().cumsum(-1);
    auto drop = (cumulative - sorted.exp()) >= params.top_p;  // mass before this token already enough
    drop.select(1, 0).fill_(false);
    filtered.scatter_(1, order, sorted.masked_fill(drop, minus_inf));
  }
  const auto tokens = at::multinomial(at::softmax(filtered, -1), 1, /*replacement=*/false, generator).squeeze(1);
  return {tokens, kernels::logprob_rows(logits, tokens, params.temperature).logprob};
}

}  // namespace tiller::rollout
