// The RL policy loss of verl's core_algos.py (compute_policy_loss_vanilla, agg_loss, kl_penalty):
// PPO's clipped surrogate with separate low/high bounds (DAPO clip-higher; GRPO is the same loss
// with equal bounds) and dual-clip for negative advantages, an entropy bonus and a KL penalty to a
// reference policy, aggregated over tokens and sequences in one of verl's four modes.
//
// Micro-batching: every sum is divided by a count of the whole mini-batch (all micro-batches, all
// data-parallel ranks) passed in, never by a count of this micro-batch, so the losses of the
// micro-batches add up to the mini-batch's loss and so do their gradients. How each mode uses the
// counts (L: a per-token loss, m: the mask, s: a sequence of this micro-batch, n_s = sum_{t in s} m):
//   token-mean               sum_t m·L / global_tokens
//   seq-mean-token-sum       sum_s (sum_{t in s} m·L) / global_sequences
//   seq-mean-token-mean      sum_s (sum_{t in s} m·L / n_s) / global_sequences
//   seq-mean-token-sum-norm  sum_s (sum_{t in s} m·L) / (global_sequences · loss_scale_factor)
// global_sequences counts sequences with at least one masked-in token (verl's seq_mask).
// For seq-mean-token-sum-norm (Dr. GRPO) verl divides each micro-batch's token sum by a constant
// (loss_scale_factor, by default the padded response length) and then by the number of
// gradient-accumulation steps, so its gradient grows with the micro-batch size. We take the mean
// over sequences that the mode's name and the Dr. GRPO paper state (1/G · sum_i sum_t / MAX_LEN)
// and make loss_scale_factor an explicit constant (the maximum response length): the update is
// then independent of how the mini-batch is split.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace tiller::train {

enum class LossAggMode { kTokenMean, kSeqMeanTokenSum, kSeqMeanTokenMean, kSeqMeanTokenSumNorm };

// verl's kl_penalty names: k1 = "kl", k2 = "mse", k3 = "low_var_kl", abs = "abs".
enum class KlPenalty { kNone, kK1, kK2, kK3, kAbs };

// Throw naming the allowed values for an unknown name.
LossAggMode loss_agg_mode_from_name(const std::string& name);
KlPenalty kl_penalty_from_name(const std::string& name);

struct PolicyLossConfig {
  double clip_ratio_low = 0.2;   // ratio clipped below at 1 - clip_ratio_low
  double clip_ratio_high = 0.2;  // and above at 1 + clip_ratio_high (DAPO: 0.28)
  double clip_ratio_c = 3.0;     // dual-clip: for A < 0 the loss is at most -A · clip_ratio_c; must be > 1
  LossAggMode agg_mode = LossAggMode::kTokenMean;
  double loss_scale_factor = 1;  // seq-mean-token-sum-norm's constant divisor (max response length)
  double entropy_coeff = 0;      // loss -= entropy_coeff · agg(entropy)
  KlPenalty kl = KlPenalty::kNone;
  double kl_coeff = 0;           // loss += kl_coeff · agg(kl penalty)
};

// Per-token tensors of one micro-batch, T = its predicted tokens; all [T] on one device.
struct PolicyLossInputs {
  at::Tensor logprobs;      // fp32, log π(token) now; carries the graph
  at::Tensor old_logprobs;  // fp32, under the policy that sampled (or the one before this mini-batch)
  at::Tensor advantages;    // fp32
  at::Tensor mask;          // 1 for response tokens that count, 0 for prompt/padding
  at::Tensor entropy;       // fp32 entropy of each prediction; needed when entropy_coeff != 0
  at::Tensor ref_logprobs;  // fp32 under the reference policy; needed when kl != none
  at::Tensor cu_seqlens;    // [S + 1] int64 on the CPU, boundaries of the sequences in [0, T]
  // Counts of the whole mini-batch (every micro-batch, every rank); values < 1 act as 1.
  double global_tokens = 1;     // masked-in tokens
  double global_sequences = 1;  // sequences with a masked-in token
};

// This micro-batch's share of each metric verl reports: summed over the micro-batches and ranks
// of a mini-batch they give the mini-batch's value. pg_loss, entropy and kl_loss aggregate with
// the config's mode; pg_clipfrac, pg_clipfrac_lower and ppo_kl are token means (as in verl).
struct PolicyLossMetrics {
  double pg_loss = 0, pg_clipfrac = 0, pg_clipfrac_lower = 0, ppo_kl = 0, entropy = 0, kl_loss = 0;
};

struct PolicyLossResult {
  at::Tensor loss;  // 0-dim fp32: pg_loss - entropy_coeff · entropy + kl_coeff · kl_loss
  PolicyLossMetrics metrics;
};

PolicyLossResult policy_loss(const PolicyLossConfig& config, const PolicyLossInputs& in);

// verl's agg_loss with the global counts above. values, mask: [T]; returns a 0-dim tensor.
at::Tensor aggregate_tokens(const at::Tensor& values, const at::Tensor& mask, const at::Tensor& cu_seqlens,
                            const PolicyLossConfig& config, double global_tokens, double global_sequences);

}  // namespace tiller::train
