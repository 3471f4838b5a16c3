#include "layers/recompute.h"

#include <stdexcept>

namespace tiller::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The function, kept alive by the autograd context until backward has run it again.
struct Held : torch::CustomClassHolder {
  explicit Held(RecomputeFn f) : fn(std::move(f)) {}
  RecomputeFn fn;
};

class Recomputed : public torch::autograd::Function<Recomputed> {
 public:
  // Runs with grad mode off (autograd::Function does so): nothing of fn's graph is kept.
  // inputs as a TensorList: autograd::Function counts each of its tensors as an input (a
  // std::vector would count as one non-tensor argument).
  static at::Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<Held> held, at::TensorList list) {
    const variable_list inputs(list.begin(), list.end());
    ctx->save_for_backward(inputs);
    c10::List<bool> grads;
    for (const auto& t : inputs) grads.push_back(t.requires_grad());
    ctx->saved_data["fn"] = c10::IValue::make_capsule(held);
    ctx->saved_data["grads"] = grads;
    return held->fn(inputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto grads = ctx->saved_data["grads"].toBoolList();
    auto held = c10::static_intrusive_pointer_cast<Held>(ctx->saved_data["fn"].toCapsule());
    variable_list inputs;
    for (size_t i = 0; i < saved.size(); ++i) inputs.push_back(saved[i].detach().requires_grad_(grads.get(i)));
    at::Tensor out;
    {
      at::AutoGradMode grad(true);
      out = held->fn(inputs);
    }
    // Parameters read by fn get their gradients here, added to what they already hold.
    torch::autograd::backward({out}, {grad_outputs[0]});
    variable_list result{variable_list::value_type()};  // the Held argument has no gradient
    for (const auto& t : inputs) result.push_back(t.requires_grad() ? t.grad() : at::Tensor());
    return result;
  }
};

}  // namespace

at::Tensor recompute(RecomputeFn fn, const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  return Recomputed::apply(c10::make_intrusive<Held>(std::move(fn)), at::TensorList(inputs));
}

Recompute recompute_from_name(const std::string& name, const std::string& field) {
  if (name == "none") return Recompute::kNone;
  if (name == "full") return Recompute::kFull;
  if (name == "selective") return Recompute::kSelective;
  throw std::invalid_argument(field + ": '" + name + "' is not a recompute granularity; allowed: none, full, selective");
}

}  // namespace tiller::layers
