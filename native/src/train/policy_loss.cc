#include "train/policy_loss.h"

#include <ATen/CPUGeneratorImpl.h>
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

at::Tensor kl_penalty_value(KlPenalty kind, const at::Tensor& diff) {
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

// The tokens of each sequence of a micro-batch, for per-sequence sums.
struct Sequences {
  at::Tensor of_token;  // [T] int64: the sequence of each token
  int64_t count;

  Sequences(const at::Tensor& cu_seqlens, const at::Device& device) {
    const auto lengths = (cu_seqlens.slice(0, 1) - cu_seqlens.slice(0, 0, -1)).to(device);
    count = lengths.size(0);
    of_token = at::repeat_interleave(at::arange(count, lengths.options()), lengths);
  }
  // values: [T] -> [S]
  at::Tensor sum(const at::Tensor& values) const {
    return at::zeros({count}, values.options()).index_add(0, of_token, values);
  }
  // per_sequence: [S] -> [T]
  at::Tensor broadcast(const at::Tensor& per_sequence) const { return per_sequence.index_select(0, of_token); }
};

// The surrogate's per-token losses (or the per-sequence losses of geo_mean) and the metrics it measures.
struct Surrogate {
  at::Tensor pg_loss;  // 0-dim
  at::Tensor clipfrac, clipfrac_lower, ppo_kl;  // 0-dim each, undefined when not measured
};

}  // namespace

LossAggMode loss_agg_mode_from_name(const std::string& name) {
  if (name == "token-mean") return LossAggMode::kTokenMean;
  if (name == "token-sum") return LossAggMode::kTokenSum;
  if (name == "seq-mean-token-sum") return LossAggMode::kSeqMeanTokenSum;
  if (name == "seq-mean-token-mean") return LossAggMode::kSeqMeanTokenMean;
  if (name == "seq-mean-token-sum-norm") return LossAggMode::kSeqMeanTokenSumNorm;
  throw std::invalid_argument(
      "aggMode: '" + name +
      "'; allowed: token-mean, token-sum, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm");
}

PolicyLossMode policy_loss_mode_from_name(const std::string& name) {
  if (name == "vanilla") return PolicyLossMode::kVanilla;
  if (name == "gspo") return PolicyLossMode::kGspo;
  if (name == "sapo") return PolicyLossMode::kSapo;
  if (name == "gpg") return PolicyLossMode::kGpg;
  if (name == "clip_cov") return PolicyLossMode::kClipCov;
  if (name == "kl_cov") return PolicyLossMode::kKlCov;
  if (name == "geo_mean") return PolicyLossMode::kGeoMean;
  if (name == "cispo") return PolicyLossMode::kCispo;
  throw std::invalid_argument("lossMode: '" + name +
                              "'; allowed: vanilla, gspo, sapo, gpg, clip_cov, kl_cov, geo_mean, cispo");
}

KlPenalty kl_penalty_from_name(const std::string& name, bool* straight_through) {
  const bool plus = !name.empty() && name.back() == '+';
  const auto base = plus ? name.substr(0, name.size() - 1) : name;
  if (straight_through != nullptr) *straight_through = plus;
  if (base == "none" && !plus) return KlPenalty::kNone;
  if (base == "k1" || base == "kl") return KlPenalty::kK1;
  if (base == "k2" || base == "mse") return KlPenalty::kK2;
  if (base == "k3" || base == "low_var_kl") return KlPenalty::kK3;
  if (base == "abs") return KlPenalty::kAbs;
  throw std::invalid_argument("kl.type: '" + name +
                              "'; allowed: none, k1 (kl), k2 (mse), k3 (low_var_kl), abs, each but none with a "
                              "trailing + for k2's gradient (e.g. k3+)");
}

at::Tensor kl_penalty(KlPenalty kind, bool straight_through, const at::Tensor& logprobs,
                      const at::Tensor& ref_logprobs) {
  const auto diff = logprobs - ref_logprobs;
  const auto value = kl_penalty_value(kind, diff);
  if (!straight_through || kind == KlPenalty::kK2) return value;
  // The value of the estimator, the gradient of k2 (an unbiased estimate of KL's gradient).
  const auto k2 = 0.5 * diff.square();
  return k2 - k2.detach() + value.detach();
}

at::Tensor aggregate_tokens(const at::Tensor& values, const at::Tensor& mask, const at::Tensor& cu_seqlens,
                            LossAggMode mode, double loss_scale_factor, double global_tokens,
                            double global_sequences) {
  const auto masked = values * mask;  // [T]
  if (mode == LossAggMode::kTokenMean) return masked.sum() / std::max(global_tokens, 1.0);
  if (mode == LossAggMode::kTokenSum) return masked.sum();
  const Sequences seqs(cu_seqlens, values.device());
  const auto seq_sums = seqs.sum(masked);  // [S]
  const auto sequences_norm = std::max(global_sequences, 1.0);
  switch (mode) {
    case LossAggMode::kSeqMeanTokenSum:
      return seq_sums.sum() / sequences_norm;
    case LossAggMode::kSeqMeanTokenMean: {
      // A sequence without masked-in tokens has a zero sum; clamping its count keeps it zero.
      const auto seq_tokens = seqs.sum(mask.to(masked.dtype()));
      return (seq_sums / seq_tokens.clamp_min(1)).sum() / sequences_norm;
    }
    case LossAggMode::kSeqMeanTokenSumNorm:
      return seq_sums.sum() / (sequences_norm * loss_scale_factor);
    case LossAggMode::kTokenMean:
    case LossAggMode::kTokenSum:
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
  TORCH_CHECK(config.tau_pos > 0 && config.tau_neg > 0, "policy_loss: tauPos and tauNeg must be > 0");
  TORCH_CHECK(config.clip_cov_ratio > 0, "policy_loss: clipCovRatio must be > 0, got ", config.clip_cov_ratio);
  TORCH_CHECK(config.kl_cov_ratio > 0, "policy_loss: klCovRatio must be > 0, got ", config.kl_cov_ratio);
  TORCH_CHECK(in.logprobs.defined() && in.logprobs.dim() == 1, "policy_loss: logprobs must be [T]");
  const auto tokens = in.logprobs.size(0);
  if (in.old_logprobs.defined()) check_token_tensor(in.old_logprobs, "old_logprobs", tokens);
  check_token_tensor(in.advantages, "advantages", tokens);
  check_token_tensor(in.mask, "mask", tokens);
  TORCH_CHECK(in.cu_seqlens.defined() && in.cu_seqlens.dim() == 1 && in.cu_seqlens.size(0) >= 2,
              "policy_loss: cu_seqlens must be [S + 1]");
  const auto cu = in.cu_seqlens.to(at::kCPU, at::kLong);
  TORCH_CHECK(cu[0].item<int64_t>() == 0 && cu[-1].item<int64_t>() == tokens,
              "policy_loss: cu_seqlens must run from 0 to the token count ", tokens);

  const auto logprobs = in.logprobs.to(at::kFloat);
  const auto device = logprobs.device();
  const auto mask = in.mask.to(device, at::kFloat);
  const auto advantages = in.advantages.to(device, at::kFloat);
  const auto old_logprobs = in.old_logprobs.defined() ? in.old_logprobs.to(device, at::kFloat) : logprobs.detach();
  at::Tensor is_weights;
  if (in.rollout_is_weights.defined()) {
    check_token_tensor(in.rollout_is_weights, "rollout_is_weights", tokens);
    is_weights = in.rollout_is_weights.to(device, at::kFloat);
  }
  const auto agg_with = [&](const at::Tensor& values, LossAggMode mode) {
    return aggregate_tokens(values, mask, cu, mode, config.loss_scale_factor, in.global_tokens, in.global_sequences);
  };
  const auto agg = [&](const at::Tensor& values) { return agg_with(values, config.agg_mode); };
  const auto token_mean = [&](const at::Tensor& values) {
    return (values.detach() * mask).sum() / std::max(in.global_tokens, 1.0);
  };
  const auto weighted = [&](const at::Tensor& pg_losses) {
    return is_weights.defined() ? pg_losses * is_weights : pg_losses;
  };
  const auto low = 1 - config.clip_ratio_low, high = 1 + config.clip_ratio_high;

  Surrogate s;
  switch (config.mode) {
    case PolicyLossMode::kVanilla: {  // compute_policy_loss_vanilla
      const auto log_ratio = (logprobs - old_logprobs).clamp(-20, 20);
      const auto ratio = log_ratio.exp();
      const auto pg_unclipped = -advantages * ratio;
      const auto pg_clipped = -advantages * ratio.clamp(low, high);
      const auto pg_clip1 = at::maximum(pg_unclipped, pg_clipped);
      const auto pg_dual_bound = -advantages * config.clip_ratio_c;
      const auto negative = advantages < 0;
      const auto pg_losses = at::where(negative, at::minimum(pg_dual_bound, pg_clip1), pg_clip1);  // [T]
      s.pg_loss = agg(weighted(pg_losses));
      s.clipfrac = token_mean(at::gt(pg_clipped, pg_unclipped).to(at::kFloat));
      s.clipfrac_lower = token_mean((at::gt(pg_clip1, pg_dual_bound) & negative).to(at::kFloat));
      s.ppo_kl = token_mean(-log_ratio);
      break;
    }
    case PolicyLossMode::kGspo: {  // compute_policy_loss_gspo: one ratio per sequence, token gradients
      const Sequences seqs(cu, device);
      const auto log_ratio = logprobs - old_logprobs;
      const auto seq_log_ratio = seqs.sum(log_ratio * mask) / seqs.sum(mask).clamp_min(1);  // [S]
      const auto log_seq_ratio =
          (logprobs - logprobs.detach() + seqs.broadcast(seq_log_ratio.detach())).clamp_max(10.0);
      const auto ratio = log_seq_ratio.exp();
      const auto pg_unclipped = -advantages * ratio;
      const auto pg_clipped = -advantages * ratio.clamp(low, high);
      s.pg_loss = agg(weighted(at::maximum(pg_unclipped, pg_clipped)));
      s.clipfrac = token_mean(at::gt(pg_clipped, pg_unclipped).to(at::kFloat));
      s.ppo_kl = token_mean(-log_ratio);
      break;
    }
    case PolicyLossMode::kSapo: {  // compute_policy_loss_sapo: a sigmoid gate instead of the clip
      const auto log_ratio = (logprobs - old_logprobs).clamp(-20, 20);
      const auto ratio = log_ratio.exp();
      const auto taus = at::where(advantages > 0, at::full_like(advantages, config.tau_pos),
                                  at::full_like(advantages, config.tau_neg));
      const auto gates = at::sigmoid(taus * (ratio - 1.0)) * (4.0 / taus);
      // verl aggregates SAPO's surrogate as seq-mean-token-mean whatever the configured mode.
      s.pg_loss = agg_with(weighted(-gates * advantages), LossAggMode::kSeqMeanTokenMean);
      s.ppo_kl = token_mean(-log_ratio);
      break;
    }
    case PolicyLossMode::kGpg:  // compute_policy_loss_gpg: plain policy gradient, no ratio
      s.pg_loss = agg(weighted(-logprobs * advantages));
      break;
    case PolicyLossMode::kClipCov: {  // compute_policy_loss_clip_cov
      const auto log_ratio = logprobs - old_logprobs;
      const auto ratio = log_ratio.exp();
      const auto pg_unclipped = -advantages * ratio;
      const auto pg_clipped = -advantages * ratio.clamp(low, high);
      at::Tensor keep;  // [T] 1, or 0 for the tokens whose gradient is cut
      {
        c10::NoGradGuard no_grad;
        const auto valid = mask > 0;
        const auto n_valid = mask.sum();
        const auto mean_adv = (advantages * mask).sum() / (n_valid + 1e-8);
        const auto mean_logp = (logprobs.detach() * mask).sum() / (n_valid + 1e-8);
        const auto cov = (advantages - mean_adv) * (logprobs.detach() - mean_logp);
        const auto clipped_by_ratio = at::gt(pg_clipped, pg_unclipped) & valid;
        const auto candidates =
            (at::lt(cov, config.clip_cov_ub) & at::gt(cov, config.clip_cov_lb) & valid & ~clipped_by_ratio)
                .nonzero()
                .squeeze(1)
                .to(at::kCPU);
        const auto clip_count = std::max<int64_t>(
            static_cast<int64_t>(config.clip_cov_ratio * mask.sum().item<double>()), 1);
        keep = at::ones_like(advantages);
        if (candidates.numel() > 0) {
          auto generator = at::make_generator<at::CPUGeneratorImpl>(config.seed);
          const auto order = at::randperm(candidates.numel(), generator, at::TensorOptions().dtype(at::kLong));
          const auto chosen = candidates.index_select(0, order.slice(0, 0, std::min(clip_count, candidates.numel())));
          keep.index_fill_(0, chosen.to(device), 0.0);
        }
      }
      s.pg_loss = agg(weighted(at::maximum(pg_unclipped, pg_clipped) * keep));
      s.clipfrac = token_mean((keep == 0).to(at::kFloat));
      s.ppo_kl = token_mean(-log_ratio);
      break;
    }
    case PolicyLossMode::kKlCov: {  // compute_policy_loss_kl_cov
      const auto log_ratio = logprobs - old_logprobs;
      const auto ratio = log_ratio.exp();
      const auto pg_plain = -advantages * ratio;
      const auto pg_kl = pg_plain + config.ppo_kl_coef * log_ratio.abs();
      at::Tensor penalised;  // [T] bool
      {
        c10::NoGradGuard no_grad;
        const auto valid = (mask > 0).nonzero().squeeze(1);
        penalised = at::zeros({tokens}, advantages.options().dtype(at::kBool));
        if (valid.numel() > 0) {
          const auto adv = advantages.index_select(0, valid).to(at::kCPU);
          const auto logp = logprobs.detach().index_select(0, valid).to(at::kCPU);
          const auto cov = (adv - adv.mean()) * (logp - logp.mean());
          const auto k = std::max<int64_t>(1, static_cast<int64_t>(valid.numel() * config.kl_cov_ratio));
          const auto top = std::get<1>(at::topk(cov, k, 0, true));
          penalised.index_fill_(0, valid.index_select(0, top.to(device)), true);
        }
      }
      s.pg_loss = agg(weighted(at::where(penalised, pg_kl, pg_plain)));
      s.ppo_kl = token_mean(log_ratio.abs());  // verl reports |log ratio| here
      break;
    }
    case PolicyLossMode::kGeoMean: {  // compute_policy_loss_geo_mean (GMPO): one ratio per sequence
      const Sequences seqs(cu, device);
      const auto log_ratio = logprobs - old_logprobs;
      const auto sign = advantages.sign();
      const auto clamped = log_ratio.clamp(-config.clip_ratio_low, config.clip_ratio_high);
      const auto bounded = sign * at::minimum(sign * log_ratio, sign * clamped);
      const auto seq_tokens = seqs.sum(mask) + 1e-8;
      const auto ratio = (seqs.sum(bounded * mask) / seq_tokens).exp();  // [S]
      const auto seq_advantage = seqs.sum(advantages * mask) / seq_tokens;
      auto pg_losses = -seq_advantage * ratio;  // [S]
      if (is_weights.defined()) {
        pg_losses = pg_losses * (seqs.sum(at::log(is_weights + 1e-10) * mask) / seq_tokens).exp();
      }
      // verl takes the mean over the micro-batch's sequences; over the mini-batch's here.
      s.pg_loss = pg_losses.sum() / std::max(in.global_sequences, 1.0);
      const auto clipped = at::ne(log_ratio, clamped);
      s.clipfrac = token_mean((clipped & (advantages > 0)).to(at::kFloat));
      s.clipfrac_lower = token_mean((clipped & (advantages < 0)).to(at::kFloat));
      s.ppo_kl = token_mean(-log_ratio);
      break;
    }
    case PolicyLossMode::kCispo: {  // compute_policy_loss_cispo: the clipped ratio as a detached weight
      const auto log_ratio = (logprobs - old_logprobs).clamp(-20, 20);
      const auto ratio = log_ratio.exp();
      const auto clipped = ratio.clamp(low, high);
      s.pg_loss = agg(weighted(-clipped.detach() * advantages * logprobs));
      s.clipfrac = token_mean(at::ne(ratio, clipped).to(at::kFloat));
      s.ppo_kl = token_mean(-log_ratio);
      break;
    }
  }
  auto loss = s.pg_loss;

  at::Tensor entropy_loss, kl_loss;
  if (config.entropy_coeff != 0 || in.entropy.defined()) {
    check_token_tensor(in.entropy, "entropy", tokens);
    entropy_loss = agg(in.entropy.to(device, at::kFloat));
    if (config.entropy_coeff != 0) loss = loss - config.entropy_coeff * entropy_loss;
  }
  if (config.kl != KlPenalty::kNone) {
    check_token_tensor(in.ref_logprobs, "ref_logprobs", tokens);
    kl_loss = agg(kl_penalty(config.kl, config.kl_straight_through, logprobs, in.ref_logprobs.to(device, at::kFloat)));
    loss = loss + config.kl_coeff * kl_loss;
  }

  // Metrics: one host transfer for all of them.
  c10::NoGradGuard no_grad;
  const auto zero = at::zeros({}, logprobs.options());
  const auto or_zero = [&](const at::Tensor& t) { return t.defined() ? t.detach() : zero; };
  const auto values = at::stack({s.pg_loss.detach(), or_zero(s.clipfrac), or_zero(s.clipfrac_lower), or_zero(s.ppo_kl),
                                 or_zero(entropy_loss), or_zero(kl_loss)})
                          .to(at::kCPU, at::kDouble);
  const auto* v = values.data_ptr<double>();
  PolicyLossMetrics metrics{v[0], v[1], v[2], v[3], v[4], v[5]};
  metrics.has_pg_clipfrac = s.clipfrac.defined();
  metrics.has_pg_clipfrac_lower = s.clipfrac_lower.defined();
  metrics.has_ppo_kl = s.ppo_kl.defined();
  return {loss, metrics};
}

}  // namespace tiller::train
