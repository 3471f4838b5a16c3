#include "train/losses.h"

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

at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2, "token_logprobs: logits must be [T, V], got ", logits.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), "token_logprobs: targets must be [T] with T = ",
              logits.size(0), ", got ", targets.sizes());
  const auto logp = at::log_softmax(logits.to(at::kFloat), -1);   // [T, V]
  return logp.gather(1, targets.to(at::kLong).unsqueeze(1)).squeeze(1);  // [T]
}

}  // namespace tiller::train
