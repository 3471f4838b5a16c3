#include "train/losses.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace tiller::train {

const at::Tensor& TokenLossInputs::get(const std::string& name) const {
  auto it = per_token.find(name);
  TORCH_CHECK(it != per_token.end(), "loss: per-token input '", name, "' is missing");
  return it->second;
}

at::Tensor masked_token_nll(const TokenLossInputs& in) {
  TORCH_CHECK(in.logprobs.dim() == 1, "masked_token_nll: logprobs must be [T], got ", in.logprobs.sizes());
  TORCH_CHECK(in.mask.sizes() == in.logprobs.sizes(), "masked_token_nll: mask has shape ", in.mask.sizes(),
              ", logprobs ", in.logprobs.sizes());
  const auto mask = in.mask.to(at::kFloat);
  return -(in.logprobs.to(at::kFloat) * mask).sum() / std::max(in.token_normaliser, 1.0);
}

ValueLossResult value_loss(const ValueLossConfig& config, const ValueLossInputs& in) {
  TORCH_CHECK(config.cliprange_value >= 0, "value_loss: cliprangeValue must be >= 0, got ", config.cliprange_value);
  TORCH_CHECK(in.vpreds.defined() && in.vpreds.dim() == 1, "value_loss: vpreds must be [T]");
  const auto tokens = in.vpreds.size(0);
  for (const auto* t : {&in.values, &in.returns, &in.mask}) {
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->size(0) == tokens, "value_loss: values, returns and mask must be [",
                tokens, "]");
  }
  const auto vpreds = in.vpreds.to(at::kFloat);
  const auto device = vpreds.device();
  const auto values = in.values.to(device, at::kFloat);
  const auto returns = in.returns.to(device, at::kFloat);
  const auto mask = in.mask.to(device, at::kFloat);
  const auto clipped = at::maximum(at::minimum(vpreds, values + config.cliprange_value), values - config.cliprange_value);
  const auto unclipped_loss = (vpreds - returns).square();
  const auto clipped_loss = (clipped - returns).square();
  const auto per_token = at::maximum(unclipped_loss, clipped_loss);
  const auto loss = 0.5 * aggregate_tokens(per_token, mask, in.cu_seqlens.to(at::kCPU, at::kLong), config.agg_mode,
                                           config.loss_scale_factor, in.global_tokens, in.global_sequences);
  c10::NoGradGuard no_grad;
  const auto norm = std::max(in.global_tokens, 1.0);
  const auto stats = at::stack({loss.detach(), (at::gt(clipped_loss, unclipped_loss).to(at::kFloat) * mask).sum() / norm,
                                (vpreds.detach() * mask).sum() / norm})
                         .to(at::kCPU, at::kDouble);
  const auto* v = stats.data_ptr<double>();
  return {loss, v[0], v[1], v[2]};
}

at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2, "token_logprobs: logits must be [T, V], got ", logits.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), "token_logprobs: targets must be [T] with T = ",
              logits.size(0), ", got ", targets.sizes());
  const auto logp = at::log_softmax(logits.to(at::kFloat), -1);   // [T, V]
  return logp.gather(1, targets.to(at::kLong).unsqueeze(1)).squeeze(1);  // [T]
}

}  // namespace tiller::train
