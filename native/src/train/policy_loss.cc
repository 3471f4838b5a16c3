#include "train/policy_loss.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <stdexcept>

namespace tiller::train {
namespace {

void check_token_tensor(const at::Tensor& t, const char* name, int64_t tokens) {
  TORCH_CHECK(t.defined(), "policy_loss: ", name, " is missing");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == tokens, "policy_loss: ", name, " must be [", tokens, "], got ", t.sizes());
}

// verl's kl_penalty(logprob, ref_logprob): per-token estimates of KL(π || π_ref). [T] -> [T]
at::Tensor kl_penalty(KlPenalty kind, const at::Tensor& logprobs, const at::Tensor& ref_logprobs) {
  const auto diff = logprobs - ref_logprobs;
  switch (kind) {
    case KlPenalty::kK1:
      return diff;
    case KlPenalty::kAbs:
      return diff.abs();
    case KlPenalty::kK2:
      return 0.5 * diff.square();
    case KlPenalty::kK3: {
      // Schulman's low-variance estimator, clamped as verl does so that one bad token cannot blow up.
      const auto kl = (-diff).clamp(-20, 20);
      return (kl.exp() - kl - 1).clamp(-10, 10);
    }
    case KlPenalty::kNone:
      break;
  }
  throw std::logic_error("kl_penalty: no penalty selected");
}

}  // namespace

LossAggMode loss_agg_mode_from_name(const std::string& name) {
  if (name == "token-mean") return LossAggMode::kTokenMean;
  if (name == "seq-mean-token-sum") return LossAggMode::kSeqMeanTokenSum;
  if (name == "seq-mean-token-mean") return LossAggMode::kSeqMeanTokenMean;
  if (name == "seq-mean-token-sum-norm") return LossAggMode::kSeqMeanTokenSumNorm;
  throw std::invalid_argument("aggMode: '" + name +
                              "'; allowed: token-mean, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm");
}

KlPenalty kl_penalty_from_name(const std::string& name) {
  if (name == "none") return KlPenalty::kNone;
  if (name == "k1") return KlPenalty::kK1;
  if (name == "k2") return KlPenalty::kK2;
  if (name == "k3" || name == "low_var_kl") return KlPenalty::kK3;
  if (name == "abs") return KlPenalty::kAbs;
  throw std::invalid_argument("kl.type: '" + name + "'; allowed: none, k1, k2, k3 (low_var_kl), abs");
}

at::Tensor aggregate_tokens(const at::Tensor& values, const at::Tensor& mask, const at::Tensor& cu_seqlens,
                            const PolicyLossConfig& config, double global_tokens, double global_sequences) {
  const auto masked = values * mask;  // [T]
  if (config.agg_mode == LossAggMode::kTokenMean) return masked.sum() / std::max(global_tokens, 1.0);
  // Sequence index of every token, then per-sequence sums: [S].
  const auto lengths = (cu_seqlens.slice(0, 1) - cu_seqlens.slice(0, 0, -1)).to(values.device());
  const auto sequences = lengths.size(0);
  const auto seq_of_token = at::repeat_interleave(at::arange(sequences, lengths.options()), lengths);
  const auto seq_sums = at::zeros({sequences}, masked.options()).index_add(0, seq_of_token, masked);
  const auto sequences_norm = std::max(global_sequences, 1.0);
  switch (config.agg_mode) {
    case LossAggMode::kSeqMeanTokenSum:
      return seq_sums.sum() / sequences_norm;
    case LossAggMode::kSeqMeanTokenMean: {
      // A sequence without masked-in tokens has a zero sum; clamping its count keeps it zero.
      const auto seq_tokens = at::zeros({sequences}, masked.options()).index_add(0, seq_of_token, mask.to(masked.dtype()));
      return (seq_sums / seq_tokens.clamp_min(1)).sum() / sequences_norm;
    }
    case LossAggMode::kSeqMeanTokenSumNorm:
      return seq_sums.sum() / (sequences_norm * config.loss_scale_factor);
    case LossAggMode::kTokenMean:
      break;
  }
  throw std::logic_error("aggregate_tokens: unknown mode");
}

PolicyLossResult policy_loss(const PolicyLossConfig& config, const PolicyLossInputs& in) {
  TORCH_CHECK(config.clip_ratio_low >= 0 && config.clip_ratio_low < 1, "policy_loss: clipRatioLow must be in [0, 1), got ",
              config.clip_ratio_low);
  TORCH_CHECK(config.clip_ratio_high >= 0, "policy_loss: clipRatioHigh must be >= 0, got ", config.clip_ratio_high);
  TORCH_CHECK(config.clip_ratio_c > 1, "policy_loss: clipRatioC must be > 1, got ", config.clip_ratio_c);
  TORCH_CHECK(config.loss_scale_factor > 0, "policy_loss: lossScaleFactor must be > 0, got ", config.loss_scale_factor);
  TORCH_CHECK(in.logprobs.defined() && in.logprobs.dim() == 1, "policy_loss: logprobs must be [T]");
  const auto tokens = in.logprobs.size(0);
  check_token_tensor(in.old_logprobs, "old_logprobs", tokens);
  check_token_tensor(in.advantages, "advantages", tokens);
  check_token_tensor(in.mask, "mask", tokens);
  TORCH_CHECK(in.cu_seqlens.defined() && in.cu_seqlens.dim() == 1 && in.cu_seqlens.size(0) >= 2,
              "policy_loss: cu_seqlens must be [S + 1]");
  const auto cu = in.cu_seqlens.to(at::kCPU, at::kLong);
  TORCH_CHECK(cu[0].item<int64_t>() == 0 && cu[-1].item<int64_t>() == tokens,
              "policy_loss: cu_seqlens must run from 0 to the token count ", tokens);

  const auto logprobs = in.logprobs.to(at::kFloat);
  const auto mask = in.mask.to(logprobs.device(), at::kFloat);
  const auto advantages = in.advantages.to(logprobs.device(), at::kFloat);
  const auto agg = [&](const at::Tensor& values) {
    return aggregate_tokens(values, mask, cu, config, in.global_tokens, in.global_sequences);
  };
  const auto token_mean = [&](const at::Tensor& values) {
    return (values * mask).sum() / std::max(in.global_tokens, 1.0);
  };

  // The clipped surrogate, as verl's compute_policy_loss_vanilla.
  const auto log_ratio = (logprobs - in.old_logprobs.to(logprobs.device(), at::kFloat)).clamp(-20, 20);
  const auto ratio = log_ratio.exp();
  const auto pg_unclipped = -advantages * ratio;
  const auto pg_clipped = -advantages * ratio.clamp(1 - config.clip_ratio_low, 1 + config.clip_ratio_high);
  const auto pg_clip1 = at::maximum(pg_unclipped, pg_clipped);
  const auto pg_dual_bound = -advantages * config.clip_ratio_c;
  const auto negative = advantages < 0;
  const auto pg_losses = at::where(negative, at::minimum(pg_dual_bound, pg_clip1), pg_clip1);  // [T]
  const auto pg_loss = agg(pg_losses);
  auto loss = pg_loss;

  at::Tensor entropy_loss, kl_loss;
  if (config.entropy_coeff != 0 || in.entropy.defined()) {
    check_token_tensor(in.entropy, "entropy", tokens);
    entropy_loss = agg(in.entropy.to(logprobs.device(), at::kFloat));
    if (config.entropy_coeff != 0) loss = loss - config.entropy_coeff * entropy_loss;
  }
  if (config.kl != KlPenalty::kNone) {
    check_token_tensor(in.ref_logprobs, "ref_logprobs", tokens);
    kl_loss = agg(kl_penalty(config.kl, logprobs, in.ref_logprobs.to(logprobs.device(), at::kFloat)));
    loss = loss + config.kl_coeff * kl_loss;
  }

  // Metrics: one host transfer for all of them.
  c10::NoGradGuard no_grad;
  const auto zero = at::zeros({}, logprobs.options());
  const auto values = at::stack({pg_loss.detach(), token_mean(at::gt(pg_clipped, pg_unclipped).to(at::kFloat)),
                                 token_mean((at::gt(pg_clip1, pg_dual_bound) & negative).to(at::kFloat)),
                                 token_mean(-log_ratio.detach()),
                                 entropy_loss.defined() ? entropy_loss.detach() : zero,
                                 kl_loss.defined() ? kl_loss.detach() : zero})
                          .to(at::kCPU, at::kDouble);
  const auto* v = values.data_ptr<double>();
  return {loss, {v[0], v[1], v[2], v[3], v[4], v[5]}};
}

}  // namespace tiller::train
