#include "parallel/zero.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <map>

namespace tiller::parallel {

ShardedAdamW::ShardedAdamW(train::NamedTensors params, std::vector<TensorPlacement> placements,
                           std::shared_ptr<Mesh> mesh, train::AdamWConfig config)
    : params_(std::move(params)), placements_(std::move(placements)), mesh_(std::move(mesh)), config_(std::move(config)) {
  TORCH_CHECK(!params_.empty(), "ShardedAdamW: no parameters given");
  TORCH_CHECK(params_.size() == placements_.size(), "ShardedAdamW: ", params_.size(), " parameters but ",
              placements_.size(), " placements");
  TORCH_CHECK(mesh_ != nullptr, "ShardedAdamW: no mesh");
  c10::NoGradGuard no_grad;
  for (int kind = 0; kind < 4; ++kind) {
    Group g;
    g.decays = kind % 2 == 0;
    g.expert = kind >= 2;
    g.data = g.expert ? &mesh_->expert_data() : &mesh_->data_context();
    const int data = g.data->world_size();
    for (size_t i = 0; i < params_.size(); ++i) {
      const auto& [name, p] = params_[i];
      const bool d = config_.decays ? config_.decays(name, p) : true;
      if (d != g.decays || (placements_[i].spec.split == Split::kExpert) != g.expert) continue;
      TORCH_CHECK(p.is_contiguous(), "ShardedAdamW: parameter '", name, "' is not contiguous");
      g.members.push_back(i);
      g.offsets.push_back(g.numel);
      g.numel += p.numel();
    }
    if (g.members.empty()) continue;
    g.padded = (g.numel + data - 1) / data * data;
    const auto options = params_.front().second.options().dtype(at::kFloat).requires_grad(false);
    const auto shard = g.padded / data;
    groups_.push_back(std::move(g));
    auto& group = groups_.back();
    const auto begin = shard_begin(group);
    group.master = flat_values(group).narrow(0, begin, shard).clone();
    group.exp_avg = at::zeros({shard}, options);
    group.exp_avg_sq = at::zeros({shard}, options);
    group.step = at::zeros({}, options);
    // 1 where this rank's copy of an element counts in the global norm, 0 for padding and for
    // copies that another tensor rank also holds.
    auto counted = at::zeros({group.padded}, options);
    for (size_t m = 0; m < group.members.size(); ++m) {
      const auto i = group.members[m];
      if (placements_[i].counts) counted.narrow(0, group.offsets[m], params_[i].second.numel()).fill_(1);
    }
    group.counted = counted.narrow(0, begin, shard).clone();
  }
}

int64_t ShardedAdamW::shard_begin(const Group& group) const {
  const auto& dp = *group.data;
  return group.padded / dp.world_size() * dp.rank();
}

at::Tensor ShardedAdamW::flat_values(const Group& group) const {
  const auto options = params_.front().second.options().dtype(at::kFloat);
  auto flat = at::zeros({group.padded}, options);
  for (size_t m = 0; m < group.members.size(); ++m) {
    const auto& p = params_[group.members[m]].second;
    flat.narrow(0, group.offsets[m], p.numel()).copy_(p.detach().reshape({-1}));
  }
  return flat;
}

at::Tensor ShardedAdamW::flat_gradients(const Group& group) const {
  const auto options = params_.front().second.options().dtype(at::kFloat);
  auto flat = at::zeros({group.padded}, options);
  for (size_t m = 0; m < group.members.size(); ++m) {
    const auto i = group.members[m];
    const auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    auto grad = p.grad().detach().to(at::kFloat).contiguous().clone();
    sync_tensor_gradient(grad, placements_[i], mesh_->tensor());
    flat.narrow(0, group.offsets[m], p.numel()).copy_(grad.reshape({-1}));
  }
  return flat;
}

ShardedAdamW::StepResult ShardedAdamW::step(double lr, double max_norm) {
  TORCH_CHECK(lr >= 0, "ShardedAdamW::step: lr must be >= 0, got ", lr);
  TORCH_CHECK(!offloaded_, "ShardedAdamW::step: the optimizer state is offloaded to the host; reload it first");
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> shards;
  const auto zero = at::zeros({1}, params_.front().second.options().dtype(at::kFloat));
  auto dense_squares = zero.clone(), expert_squares = zero.clone();
  bool experts = false;
  for (const auto& group : groups_) {
    const auto flat = flat_gradients(group);
    auto shard = at::empty({group.padded / group.data->world_size()}, flat.options());
    group.data->reduce_scatter(shard, flat, ReduceOp::kSum);
    (group.expert ? expert_squares : dense_squares) += (shard * shard * group.counted).sum();
    experts = experts || group.expert;
    shards.push_back(shard);
  }
  // Disjoint shards over the data group, slices (each counted once) over the tensor group; the
  // experts' over the expert-data group, then the expert group's distinct experts. Every rank
  // holds the same kinds of groups, so these collectives line up.
  mesh_->data_context().all_reduce(dense_squares, ReduceOp::kSum);
  mesh_->tensor().all_reduce(dense_squares, ReduceOp::kSum);
  if (experts) {
    mesh_->expert_data().all_reduce(expert_squares, ReduceOp::kSum);
    mesh_->expert().all_reduce(expert_squares, ReduceOp::kSum);
  }
  // Pipeline stages hold disjoint parameters (a tied embedding's second copy is not counted).
  auto squares = dense_squares + expert_squares;
  if (mesh_->layout().pipeline > 1) mesh_->pipeline().all_reduce(squares, ReduceOp::kSum);
  const auto total = squares.sqrt().reshape({});
  const double norm = total.item<double>();
  if (!std::isfinite(norm)) return {norm, false};
  // As train::clip_grad_norm: always multiply (by 1 under the limit).
  const auto coef = std::isinf(max_norm) ? at::ones_like(total) : at::clamp_max(max_norm / (total + 1e-6), 1.0);
  for (size_t g = 0; g < groups_.size(); ++g) {
    auto& group = groups_[g];
    shards[g].mul_(coef);
    std::vector<at::Tensor> steps{group.step};
    at::_foreach_add_(steps, 1);
    at::_fused_adamw_({group.master}, {shards[g]}, {group.exp_avg}, {group.exp_avg_sq}, {}, {group.step}, lr,
                      config_.beta1, config_.beta2, group.decays ? config_.weight_decay : 0.0, config_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    const auto dtype = params_[group.members.front()].second.scalar_type();
    auto gathered = at::empty({group.padded}, group.master.options().dtype(dtype));
    group.data->all_gather_into(gathered, group.master.to(dtype));
    for (size_t m = 0; m < group.members.size(); ++m) {
      auto& p = params_[group.members[m]].second;
      p.copy_(gathered.narrow(0, group.offsets[m], p.numel()).view(p.sizes()));
    }
  }
  return {norm, true};
}

void ShardedAdamW::zero_grad() {
  for (auto& [_, p] : params_) p.mutable_grad().reset();
}

train::NamedTensors ShardedAdamW::full_state() const {
  c10::NoGradGuard no_grad;
  train::NamedTensors out;
  for (const auto& group : groups_) {
    // The group's flat state over all data ranks, then each parameter's slice gathered over TP
    // (experts: over the expert group).
    const auto gather = [&](const at::Tensor& shard) {
      auto flat = at::empty({group.padded}, shard.options());
      group.data->all_gather_into(flat, shard.contiguous());
      return flat;
    };
    const auto master = gather(group.master), exp_avg = gather(group.exp_avg), exp_avg_sq = gather(group.exp_avg_sq);
    for (size_t m = 0; m < group.members.size(); ++m) {
      const auto i = group.members[m];
      const auto& [name, p] = params_[i];
      const auto slice = [&](const at::Tensor& flat) {
        return gather_tensor(flat.narrow(0, group.offsets[m], p.numel()).view(p.sizes()), placements_[i],
                             split_group(placements_[i], *mesh_));
      };
      out.emplace_back("step/" + name, group.step.clone());
      if (p.scalar_type() != at::kFloat) out.emplace_back("master/" + name, slice(master));
      out.emplace_back("exp_avg/" + name, slice(exp_avg));
      out.emplace_back("exp_avg_sq/" + name, slice(exp_avg_sq));
    }
  }
  return out;
}

void ShardedAdamW::load_full_state(const train::NamedTensors& state) {
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> given(state.begin(), state.end());
  const auto find = [&](const std::string& name) {
    const auto it = given.find(name);
    TORCH_CHECK(it != given.end(), "optimizer state: '", name, "' is missing");
    return it->second;
  };
  // Check everything first, so a bad state leaves the optimizer as it was.
  std::vector<std::vector<at::Tensor>> rows(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    const auto& group = groups_[g];
    auto master = flat_values(group), exp_avg = at::zeros_like(master), exp_avg_sq = at::zeros_like(master);
    at::Tensor step;
    for (size_t m = 0; m < group.members.size(); ++m) {
      const auto i = group.members[m];
      const auto& [name, p] = params_[i];
      const auto& placement = placements_[i];
      const auto local = [&](const std::string& kind) {
        const auto full = find(kind + "/" + name);
        TORCH_CHECK(full.sizes() == at::IntArrayRef(placement.full_shape), "optimizer state: '", kind, "/", name,
                    "' has shape ", full.sizes(), ", expected ", at::IntArrayRef(placement.full_shape));
        const auto& by = split_group(placement, *mesh_);
        return shard_tensor(name, full, placement.spec, by.rank(), by.world_size()).reshape({-1});
      };
      if (!step.defined()) step = find("step/" + name);
      // An fp32 parameter is its own master: the model's values stand.
      if (p.scalar_type() != at::kFloat) master.narrow(0, group.offsets[m], p.numel()).copy_(local("master"));
      exp_avg.narrow(0, group.offsets[m], p.numel()).copy_(local("exp_avg"));
      exp_avg_sq.narrow(0, group.offsets[m], p.numel()).copy_(local("exp_avg_sq"));
    }
    const auto begin = shard_begin(group), shard = group.master.numel();
    rows[g] = {master.narrow(0, begin, shard), exp_avg.narrow(0, begin, shard), exp_avg_sq.narrow(0, begin, shard),
               step.to(group.step.device(), at::kFloat)};
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    auto& group = groups_[g];
    group.master.copy_(rows[g][0]);
    group.exp_avg.copy_(rows[g][1]);
    group.exp_avg_sq.copy_(rows[g][2]);
    group.step.copy_(rows[g][3].reshape({}));
    // The masters go back into the parameters so both agree (as train::AdamW::load_state).
    const auto dtype = params_[group.members.front()].second.scalar_type();
    auto gathered = at::empty({group.padded}, group.master.options().dtype(dtype));
    group.data->all_gather_into(gathered, group.master.to(dtype));
    for (size_t m = 0; m < group.members.size(); ++m) {
      auto& p = params_[group.members[m]].second;
      p.copy_(gathered.narrow(0, group.offsets[m], p.numel()).view(p.sizes()));
    }
  }
}

void ShardedAdamW::offload_to_host() {
  if (offloaded_) return;
  c10::NoGradGuard no_grad;
  device_ = params_.front().second.device();
  const bool pin = device_.is_cuda();
  for (auto& g : groups_) {
    for (auto* t : {&g.master, &g.exp_avg, &g.exp_avg_sq, &g.step, &g.counted}) {
      auto host = at::empty(t->sizes(), t->options().device(at::kCPU).pinned_memory(pin));
      host.copy_(*t);  // blocking: complete before the device memory is freed
      *t = host;
    }
  }
  offloaded_ = true;
}

void ShardedAdamW::reload() {
  if (!offloaded_) return;
  c10::NoGradGuard no_grad;
  for (auto& g : groups_) {
    for (auto* t : {&g.master, &g.exp_avg, &g.exp_avg_sq, &g.step, &g.counted}) {
      *t = t->to(device_, /*non_blocking=*/t->is_pinned());
    }
  }
  offloaded_ = false;
}

int64_t ShardedAdamW::state_bytes() const {
  int64_t bytes = 0;
  // Masters, both moments and the norm mask: 16 B per shard element, as the planner counts them.
  for (const auto& g : groups_) bytes += (g.master.numel() + g.exp_avg.numel() + g.exp_avg_sq.numel() + g.counted.numel()) * 4;
  return bytes;
}

}  // namespace tiller::parallel
