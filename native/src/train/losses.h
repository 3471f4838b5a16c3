// Token-level losses. A loss reads per-token tensors of one micro-batch and returns a scalar
// already divided by the token count of the whole mini-batch, so that summing gradients over
// micro-batches gives exactly the gradient of the mini-batch.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <unordered_map>

#include "train/policy_loss.h"

namespace tiller::train {

struct TokenLossInputs {
  at::Tensor logprobs;  // [T] fp32, log p(token) under the current policy; carries the graph
  at::Tensor mask;      // [T] bool or float: 1 for tokens that count (responses), 0 for prompt/padding
  // Tokens that count in the whole mini-batch (all micro-batches, all DP ranks); values < 1 act as 1.
  double token_normaliser = 1;
  // Further per-token inputs a loss may need, each [T]: "advantages", "old_logprobs", ...
  std::unordered_map<std::string, at::Tensor> per_token;

  // Throws naming the missing field when `name` is absent.
  const at::Tensor& get(const std::string& name) const;
};

// logprobs -> scalar loss. The RL policy losses (PPO clip, DAPO, GSPO ...) are further ones.
using TokenLoss = std::function<at::Tensor(const TokenLossInputs&)>;

// sum(mask * -logprob) / max(token_normaliser, 1): supervised fine-tuning, and a test of the
// micro-batch arithmetic. Returns a 0-dim fp32 tensor.
at::Tensor masked_token_nll(const TokenLossInputs& in);

// PPO's clipped value loss (verl's compute_value_loss): 0.5 · agg(max((v − R)², (clip(v, v_old ± c) − R)²)).
struct ValueLossConfig {
  double cliprange_value = 0.5;  // verl's critic.cliprange_value
  LossAggMode agg_mode = LossAggMode::kTokenMean;
  double loss_scale_factor = 1;  // seq-mean-token-sum-norm's constant
};

// Per-token tensors of one micro-batch, all [T] on one device.
struct ValueLossInputs {
  at::Tensor vpreds;      // fp32 values now; carries the graph
  at::Tensor values;      // fp32 values when the batch was scored (before this step's updates)
  at::Tensor returns;     // fp32 targets (GAE returns)
  at::Tensor mask;        // 1 for response tokens
  at::Tensor cu_seqlens;  // [S + 1] int64 on the CPU
  double global_tokens = 1, global_sequences = 1;  // of the whole mini-batch, as for the policy loss
};

// loss: 0-dim; vf_loss its value; vf_clipfrac and vpred_mean are token means over global_tokens
// (this micro-batch's share, summed over micro-batches).
struct ValueLossResult {
  at::Tensor loss;
  double vf_loss = 0, vf_clipfrac = 0, vpred_mean = 0;
};

ValueLossResult value_loss(const ValueLossConfig& config, const ValueLossInputs& in);

// Per-token log p(target): logits [T, V] (any float dtype), targets [T] int64 -> [T] fp32.
// log_softmax runs in fp32, as the HF reference does for its logprobs.
at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace tiller::train
