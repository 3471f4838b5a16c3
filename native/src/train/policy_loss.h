// The RL policy losses of verl's core_algos.py (policy_loss.loss_mode: vanilla, gspo, sapo, gpg,
// clip_cov, kl_cov, geo_mean, cispo), agg_loss and kl_penalty: PPO's clipped surrogate with
// separate low/high bounds (DAPO clip-higher; GRPO is the same loss with equal bounds) and
// dual-clip for negative advantages, verl's newer surrogates, an entropy bonus and a KL penalty to
// a reference policy, aggregated over tokens and sequences in one of verl's five modes, each
// token's loss optionally weighted by a rollout-correction importance weight.
//
// Micro-batching: every sum is divided by a count of the whole mini-batch (all micro-batches, all
// data-parallel ranks) passed in, never by a count of this micro-batch, so the losses of the
// micro-batches add up to the mini-batch's loss and so do their gradients. How each mode uses the
// counts (L: a per-token loss, m: the mask, s: a sequence of this micro-batch, n_s = sum_{t in s} m):
//   token-mean               sum_t m·L / global_tokens
//   token-sum                sum_t m·L
//   seq-mean-token-sum       sum_s (sum_{t in s} m·L) / global_sequences
//   seq-mean-token-mean      sum_s (sum_{t in s} m·L / n_s) / global_sequences
//   seq-mean-token-sum-norm  sum_s (sum_{t in s} m·L) / (global_sequences · loss_scale_factor)
// global_sequences counts every sequence of the mini-batch, an empty response included, as verl's
// global_batch_size (ppo_mini_batch_size · n) does.
// For seq-mean-token-sum-norm (Dr. GRPO) verl divides by loss_scale_factor, by default the padded
// response length of the micro-batch; here it is an explicit constant (default: the maximum
// response length), so that the update does not depend on how the mini-batch is split.
//
// Three modes look at a whole micro-batch, as verl's do: clip_cov and kl_cov pick tokens by the
// covariance of advantage and logprob over the micro-batch's tokens, geo_mean averages per
// sequence. clip_cov's random choice among its candidates uses a generator seeded with
// config.seed (verl draws from torch's global generator).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace tiller::train {

enum class LossAggMode { kTokenMean, kTokenSum, kSeqMeanTokenSum, kSeqMeanTokenMean, kSeqMeanTokenSumNorm };

// verl's policy_loss.loss_mode.
enum class PolicyLossMode { kVanilla, kGspo, kSapo, kGpg, kClipCov, kKlCov, kGeoMean, kCispo };

// verl's kl_penalty names: k1 = "kl", k2 = "mse", k3 = "low_var_kl", abs = "abs".
enum class KlPenalty { kNone, kK1, kK2, kK3, kAbs };

// Throw naming the allowed values for an unknown name.
LossAggMode loss_agg_mode_from_name(const std::string& name);
PolicyLossMode policy_loss_mode_from_name(const std::string& name);
// A trailing '+' (e.g. "k3+") selects verl's straight-through variant: the value of the named
// estimator with the gradient of k2.
KlPenalty kl_penalty_from_name(const std::string& name, bool* straight_through = nullptr);

struct PolicyLossConfig {
  PolicyLossMode mode = PolicyLossMode::kVanilla;
  double clip_ratio_low = 0.2;   // ratio clipped below at 1 - clip_ratio_low
  double clip_ratio_high = 0.2;  // and above at 1 + clip_ratio_high (DAPO: 0.28)
  double clip_ratio_c = 3.0;     // dual-clip: for A < 0 the loss is at most -A · clip_ratio_c; must be > 1
  LossAggMode agg_mode = LossAggMode::kTokenMean;
  double loss_scale_factor = 1;  // seq-mean-token-sum-norm's constant divisor (max response length)
  double entropy_coeff = 0;      // loss -= entropy_coeff · agg(entropy)
  KlPenalty kl = KlPenalty::kNone;
  bool kl_straight_through = false;  // "k3+" etc.: k2's gradient under the estimator's value
  double kl_coeff = 0;               // loss += kl_coeff · agg(kl penalty)
  // sapo: gate temperatures for A > 0 and A <= 0 (verl's tau_pos, tau_neg).
  double tau_pos = 1.0, tau_neg = 1.05;
  // clip_cov: the fraction of tokens to detach, picked among covariances in (lb, ub).
  double clip_cov_ratio = 0.0002, clip_cov_lb = 1.0, clip_cov_ub = 5.0;
  // kl_cov: the fraction of tokens with the largest covariance that get ppo_kl_coef · |log ratio|.
  double kl_cov_ratio = 0.0002, ppo_kl_coef = 0.1;
  uint64_t seed = 0;  // clip_cov's choice among candidates
};

// Per-token tensors of one micro-batch, T = its predicted tokens; all [T] on one device.
struct PolicyLossInputs {
  at::Tensor logprobs;      // fp32, log π(token) now; carries the graph
  // fp32, under the policy that sampled (or the one before this mini-batch). Undefined: on-policy,
  // the old policy is this one, so old = logprobs.detach() (a ratio of exactly 1), as verl's
  // update does with one mini-batch and one epoch.
  at::Tensor old_logprobs;
  at::Tensor advantages;    // fp32
  at::Tensor mask;          // 1 for response tokens that count, 0 for prompt/padding
  at::Tensor entropy;       // fp32 entropy of each prediction; needed when entropy_coeff != 0
  at::Tensor ref_logprobs;  // fp32 under the reference policy; needed when kl != none
  at::Tensor rollout_is_weights;  // fp32 rollout-correction weights multiplying the policy loss; optional
  at::Tensor cu_seqlens;    // [S + 1] int64 on the CPU, boundaries of the sequences in [0, T]
  // Counts of the whole mini-batch (every micro-batch, every rank); values < 1 act as 1.
  double global_tokens = 1;     // masked-in tokens
  double global_sequences = 1;  // sequences, an empty response included
};

// This micro-batch's share of each metric verl reports: summed over the micro-batches and ranks
// of a mini-batch they give the mini-batch's value. pg_loss, entropy and kl_loss aggregate with
// the config's mode; pg_clipfrac, pg_clipfrac_lower and ppo_kl are token means (as in verl).
// A mode that does not measure a metric (verl reports none, or a constant 0) leaves its has_* false.
struct PolicyLossMetrics {
  double pg_loss = 0, pg_clipfrac = 0, pg_clipfrac_lower = 0, ppo_kl = 0, entropy = 0, kl_loss = 0;
  bool has_pg_clipfrac = true, has_pg_clipfrac_lower = true, has_ppo_kl = true;
};

struct PolicyLossResult {
  at::Tensor loss;  // 0-dim fp32: pg_loss - entropy_coeff · entropy + kl_coeff · kl_loss
  PolicyLossMetrics metrics;
};

PolicyLossResult policy_loss(const PolicyLossConfig& config, const PolicyLossInputs& in);

// verl's agg_loss with the global counts above. values, mask: [T]; returns a 0-dim tensor.
at::Tensor aggregate_tokens(const at::Tensor& values, const at::Tensor& mask, const at::Tensor& cu_seqlens,
                            LossAggMode mode, double loss_scale_factor, double global_tokens,
                            double global_sequences);

// verl's kl_penalty(logprob, ref_logprob): per-token estimates of KL(π || π_ref). [T] -> [T]
at::Tensor kl_penalty(KlPenalty kind, bool straight_through, const at::Tensor& logprobs,
                      const at::Tensor& ref_logprobs);

}  // namespace tiller::train
