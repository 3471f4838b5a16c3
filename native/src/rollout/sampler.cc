#include "rollout/sampler.h"

#include <limits>

#include "kernels/logprob.h"
#include "kernels/sample.h"

namespace tiller::rollout {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

double sequence_uniform(uint64_t seed, uint64_t sequence, uint64_t index) {
  const auto bits = splitmix64(seed ^ splitmix64(sequence ^ splitmix64(index)));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;  // 53 random bits: [0, 1)
}

Sampled sample(const at::Tensor& logits, const SamplingParams& params, const at::Tensor& uniforms) {
  // The sampled tokens' logprobs come from the kernel the training forward uses, so rollout and
  // training logprobs agree bit for bit.
  if (params.temperature == 0) {
    const auto tokens = logits.argmax(-1);
    return {tokens, kernels::logprob_rows(logits, tokens, 1.0).logprob};
  }
  const auto vocab = logits.size(-1);
  if ((params.top_k <= 0 || params.top_k >= vocab) && params.top_p >= 1.0 && kernels::sample_kernel_available(logits)) {
    // CUDA: the same inverse CDF in one kernel (kernels/sample.h) instead of the passes below.
    const auto tokens = kernels::sample_rows_cuda(logits, uniforms, params.temperature);
    return {tokens, kernels::logprob_rows(logits, tokens, params.temperature).logprob};
  }
  const auto log_probs = at::log_softmax(logits / params.temperature, -1);  // [rows, vocab]
  auto filtered = log_probs.clone();
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
  // Inverse CDF in float64: the first token whose cumulative mass exceeds u · total. Filtered-out
  // tokens add no mass, so the first index past the draw always has mass of its own.
  const auto cdf = at::softmax(filtered.to(at::kDouble), -1).cumsum(-1);  // [rows, vocab]
  const auto target = (uniforms.to(cdf.device()) * cdf.select(1, vocab - 1)).unsqueeze(1);
  const auto tokens =
      at::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).squeeze(1).clamp_max(vocab - 1);
  return {tokens, kernels::logprob_rows(logits, tokens, params.temperature).logprob};
}

}  // namespace tiller::rollout
