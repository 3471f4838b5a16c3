// AdamW over named parameters, with fp32 master weights for bf16/fp16 parameters. The update
// itself is libtorch's fused AdamW kernel (CPU and CUDA); this class owns the state around it:
// masters, moments, step counters, checkpointing and host offload.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace tiller::train {

// Parameters as models expose them: HF names, tensors with requires_grad (any float dtype).
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// True when the parameter gets weight decay.
using DecayRule = std::function<bool(const std::string& name, const at::Tensor& param)>;

// Megatron's (and so verl's) default rule: biases and 1-D tensors (norm weights) get no decay.
bool decays_unless_bias_or_norm(const std::string& name, const at::Tensor& param);

struct AdamWConfig {
  double lr;  // the base rate; a schedule scales it, step() takes the rate of that step
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  DecayRule decays;  // empty: every parameter decays
};

class AdamW {
 public:
  // All parameters must live on one device. The optimizer keeps references to them: it is valid
  // as long as the model that owns them lives. State starts at zero (step 0).
  AdamW(NamedTensors params, AdamWConfig config);

  // One update with rate `lr` for every parameter that has a gradient (others keep their state,
  // as torch.optim does). Gradients are read as fp32 (bf16/fp16 ones are cast first); the fp32
  // masters are updated and copied back into the model's parameters.
  void step(double lr);

  // Drops the gradients (set to undefined, like torch's zero_grad(set_to_none=True)).
  void zero_grad();

  // The state a checkpoint needs, as fp32 tensors named "<kind>/<param name>" with kind one of
  // step (0-dim), exp_avg, exp_avg_sq, and master (only for parameters that are not fp32: an fp32
  // parameter is its own master and is saved with the model). The tensors alias the live state:
  // they change with the next step(); clone to keep.
  NamedTensors state() const;

  // Copies a state() back in (shapes checked, every entry required, unknown names refused), then
  // writes the masters into the model's parameters so both agree. Works while offloaded.
  void load_state(const NamedTensors& state);

  // Moves masters (of non-fp32 parameters) and moments to host memory, pinned when CUDA is
  // present, freeing device memory while the rollout engine runs. step() refuses until reload().
  void offload_to_cpu();
  void reload();
  bool offloaded() const { return offloaded_; }

  const AdamWConfig& config() const { return config_; }
  // The model's parameters, in the order given.
  NamedTensors params() const;

 private:
  struct Slot {
    std::string name;
    at::Tensor param;       // the model's tensor: any float dtype, shape S
    at::Tensor master;      // fp32, shape S; the same tensor as `param` when param is fp32
    at::Tensor exp_avg;     // fp32, shape S
    at::Tensor exp_avg_sq;  // fp32, shape S
    at::Tensor step;        // fp32, 0-dim: the fused kernel reads the step count from a tensor
    bool decays = true;
    bool own_master() const { return param.scalar_type() != at::kFloat; }
  };

  // Every state tensor of a slot with its state() name, for state, load, offload and reload.
  template <typename SlotT, typename Fn>
  static void for_each_state(SlotT& slot, Fn&& fn);

  AdamWConfig config_;
  at::Device device_;
  std::vector<Slot> slots_;
  bool offloaded_ = false;
};

}  // namespace tiller::train
