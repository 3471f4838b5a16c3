#include "train/optimizer.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <set>
#include <unordered_map>

namespace tiller::train {

bool decays_unless_bias_or_norm(const std::string& name, const at::Tensor& param) {
  const std::string bias = ".bias";
  const bool is_bias = name.size() >= bias.size() && name.compare(name.size() - bias.size(), bias.size(), bias) == 0;
  return !is_bias && param.dim() > 1;
}

AdamW::AdamW(NamedTensors params, AdamWConfig config) : config_(std::move(config)), device_(at::kCPU) {
  TORCH_CHECK(!params.empty(), "AdamW: no parameters given");
  TORCH_CHECK(config_.lr >= 0, "AdamW: lr must be >= 0, got ", config_.lr);
  TORCH_CHECK(config_.beta1 >= 0 && config_.beta1 < 1, "AdamW: beta1 must be in [0, 1), got ", config_.beta1);
  TORCH_CHECK(config_.beta2 >= 0 && config_.beta2 < 1, "AdamW: beta2 must be in [0, 1), got ", config_.beta2);
  TORCH_CHECK(config_.eps >= 0, "AdamW: eps must be >= 0, got ", config_.eps);
  TORCH_CHECK(config_.weight_decay >= 0, "AdamW: weight_decay must be >= 0, got ", config_.weight_decay);
  device_ = params.front().second.device();
  std::set<std::string> seen;
  c10::NoGradGuard no_grad;
  slots_.reserve(params.size());
  for (auto& [name, param] : params) {
    TORCH_CHECK(seen.insert(name).second, "AdamW: parameter '", name, "' given twice");
    TORCH_CHECK(param.defined(), "AdamW: parameter '", name, "' is undefined");
    TORCH_CHECK(at::isFloatingType(param.scalar_type()) && param.scalar_type() != at::kDouble,
                "AdamW: parameter '", name, "' has dtype ", param.scalar_type(), "; expected float32, bfloat16 or float16");
    TORCH_CHECK(param.device() == device_, "AdamW: parameter '", name, "' is on ", param.device(), ", the first on ",
                device_, "; one optimizer serves one device");
    TORCH_CHECK(param.is_contiguous(), "AdamW: parameter '", name, "' is not contiguous");
    Slot slot;
    slot.name = name;
    slot.param = param;
    const auto fp32 = param.options().dtype(at::kFloat).requires_grad(false);
    slot.master = param.scalar_type() == at::kFloat ? param : param.detach().to(at::kFloat).contiguous();
    slot.exp_avg = at::zeros_like(slot.master, fp32);
    slot.exp_avg_sq = at::zeros_like(slot.master, fp32);
    slot.step = at::zeros({}, fp32);
    slot.decays = config_.decays ? config_.decays(name, param) : true;
    slots_.push_back(std::move(slot));
  }
}

void AdamW::step(double lr) {
  TORCH_CHECK(!offloaded_, "AdamW::step: the optimizer state is offloaded to the host; call reload() first");
  TORCH_CHECK(lr >= 0, "AdamW::step: lr must be >= 0, got ", lr);
  c10::NoGradGuard no_grad;
  // The fused kernel takes one weight decay per call, so decaying and non-decaying parameters
  // go in two calls: index 1 decays, 0 does not.
  std::vector<at::Tensor> masters[2], grads[2], exp_avgs[2], exp_avg_sqs[2], steps[2];
  std::vector<Slot*> updated;
  for (auto& slot : slots_) {
    const auto& grad = slot.param.grad();
    if (!grad.defined()) continue;
    TORCH_CHECK(grad.sizes() == slot.param.sizes(), "AdamW::step: gradient of '", slot.name, "' has shape ",
                grad.sizes(), ", the parameter ", slot.param.sizes());
    const int g = slot.decays ? 1 : 0;
    masters[g].push_back(slot.master);
    grads[g].push_back(grad.to(at::kFloat).contiguous());
    exp_avgs[g].push_back(slot.exp_avg);
    exp_avg_sqs[g].push_back(slot.exp_avg_sq);
    steps[g].push_back(slot.step);
    updated.push_back(&slot);
  }
  for (int g = 0; g < 2; ++g) {
    if (masters[g].empty()) continue;
    // torch.optim counts the step before the kernel reads it (bias correction uses step >= 1).
    at::_foreach_add_(steps[g], 1);
    at::_fused_adamw_(masters[g], grads[g], exp_avgs[g], exp_avg_sqs[g], /*max_exp_avg_sqs=*/{}, steps[g], lr,
                      config_.beta1, config_.beta2, g == 1 ? config_.weight_decay : 0.0, config_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  }
  for (auto* slot : updated) {
    if (slot->own_master()) slot->param.copy_(slot->master);
  }
}

void AdamW::zero_grad() {
  for (auto& slot : slots_) slot.param.mutable_grad().reset();
}

template <typename SlotT, typename Fn>
void AdamW::for_each_state(SlotT& slot, Fn&& fn) {
  fn("step/" + slot.name, slot.step);
  if (slot.own_master()) fn("master/" + slot.name, slot.master);
  fn("exp_avg/" + slot.name, slot.exp_avg);
  fn("exp_avg_sq/" + slot.name, slot.exp_avg_sq);
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  out.reserve(slots_.size() * 4);
  for (const auto& slot : slots_) {
    for_each_state(slot, [&](std::string name, const at::Tensor& t) { out.emplace_back(std::move(name), t); });
  }
  return out;
}

void AdamW::load_state(const NamedTensors& state) {
  std::unordered_map<std::string, const at::Tensor*> given;
  for (const auto& [name, tensor] : state) {
    TORCH_CHECK(given.emplace(name, &tensor).second, "AdamW::load_state: '", name, "' given twice");
  }
  c10::NoGradGuard no_grad;
  // Check everything before writing anything, so a bad checkpoint leaves the optimizer intact.
  size_t expected = 0;
  for (auto& slot : slots_) {
    for_each_state(slot, [&](const std::string& name, at::Tensor& t) {
      ++expected;
      auto it = given.find(name);
      TORCH_CHECK(it != given.end(), "AdamW::load_state: '", name, "' is missing from the state");
      TORCH_CHECK(it->second->sizes() == t.sizes(), "AdamW::load_state: '", name, "' has shape ",
                  it->second->sizes(), ", expected ", t.sizes());
    });
  }
  if (given.size() != expected) {
    std::set<std::string> known;
    for (auto& slot : slots_) for_each_state(slot, [&](const std::string& name, at::Tensor&) { known.insert(name); });
    for (const auto& [name, tensor] : state) {
      TORCH_CHECK(known.count(name), "AdamW::load_state: '", name, "' names no state of this optimizer");
    }
  }
  for (auto& slot : slots_) {
    for_each_state(slot, [&](const std::string& name, at::Tensor& t) { t.copy_(*given.at(name)); });
    if (slot.own_master()) slot.param.copy_(slot.master);
  }
}

void AdamW::offload_to_cpu() {
  if (offloaded_) return;
  c10::NoGradGuard no_grad;
  // Pinned host memory makes the copy back asynchronous; it needs a CUDA context to exist.
  const bool pin = device_.is_cuda();
  for (auto& slot : slots_) {
    for_each_state(slot, [&](const std::string&, at::Tensor& t) {
      auto host = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(pin));
      host.copy_(t);  // blocking: the host copy is complete before the device memory is freed
      t = host;
    });
  }
  offloaded_ = true;
}

void AdamW::reload() {
  if (!offloaded_) return;
  c10::NoGradGuard no_grad;
  for (auto& slot : slots_) {
    for_each_state(slot, [&](const std::string&, at::Tensor& t) {
      // From pinned memory the copy is stream-ordered before the next kernel that reads it.
      t = t.to(device_, /*non_blocking=*/t.is_pinned());
    });
  }
  offloaded_ = false;
}

NamedTensors AdamW::params() const {
  NamedTensors out;
  out.reserve(slots_.size());
  for (const auto& slot : slots_) out.emplace_back(slot.name, slot.param);
  return out;
}

}  // namespace tiller::train
