#include "train/session.h"

#include <stdexcept>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "parallel/collectives.h"
#include "train/grad_clip.h"

namespace tiller::train {

NextTokenRows next_token_rows(const at::Tensor& tokens, const std::vector<int64_t>& cu) {
  std::vector<int64_t> rows;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    for (int64_t j = cu[i]; j + 1 < cu[i + 1]; ++j) rows.push_back(j);
  }
  const auto r = at::tensor(rows, at::kLong).to(tokens.device());
  return {r, tokens.index_select(0, r + 1)};
}

namespace {

void add_router_stats(RouterTotals& totals, const layers::Routing& routing, int64_t tokens) {
  for (size_t l = 0; l < routing.tokens_per_expert.size(); ++l) {
    if (totals.tokens_per_expert.size() <= l) {
      totals.tokens_per_expert.push_back(routing.tokens_per_expert[l].clone());
      totals.entropy_sum.push_back(routing.entropy_sum[l].clone());
    } else {
      totals.tokens_per_expert[l].add_(routing.tokens_per_expert[l]);
      totals.entropy_sum[l].add_(routing.entropy_sum[l]);
    }
  }
  totals.tokens += tokens;
}

// Every rank of the mesh learns whether all succeeded (after rank 0's file work): the others wait
// for it instead of racing ahead, and fail too when it failed.
void agree(ModelSession& session, bool ok, const std::string& what) {
  if (!session.multi_rank()) return;
  auto flag = at::full({1}, ok ? 1.0f : 0.0f, at::TensorOptions().device(session.mesh->tensor().device()));
  session.mesh->data_context().all_reduce(flag, parallel::ReduceOp::kMin);
  session.mesh->tensor().all_reduce(flag, parallel::ReduceOp::kMin);
  session.mesh->pipeline().all_reduce(flag, parallel::ReduceOp::kMin);
  if (flag.item<float>() < 0.5f && ok) throw std::runtime_error(what + " failed on another rank");
}

bool writes_files(const ModelSession& session) { return !session.mesh || session.mesh->rank() == 0; }

}  // namespace

layers::TokenLogprobs forward_logprobs(ModelSession& session, const at::Tensor& tokens_cpu,
                                       const std::vector<int64_t>& cu, double temperature, int64_t chunk_tokens,
                                       const at::Tensor& replay, const models::ImageInputs* images) {
  auto& model = *session.model;
  if (images && !model.accepts_images()) throw std::invalid_argument("images: this model takes no images");
  const auto tokens = tokens_cpu.to(model.device());
  auto batch = models::pack_batch(tokens, cu);
  batch.images = images;
  layers::Routing routing;
  const bool moe = model.moe_shape().layers > 0;
  if (moe) {
    routing.stats = true;
    if (replay.defined()) routing.replay = replay.to(model.device());
    batch.routing = &routing;
  }
  const auto hidden = model.forward(batch);
  if (moe) add_router_stats(session.router_stats, routing, tokens.size(0));
  const auto next = next_token_rows(tokens, cu);
  const auto rows = hidden.index_select(0, next.rows);
  const auto& tp = model.tensor_parallel();
  if (tp.size() == 1) return layers::chunked_logprobs(rows, model.lm_head(), next.targets, temperature, chunk_tokens);
  // The lm-head is column-parallel: its input enters the region by copy_to_group, unless sequence
  // parallelism already gathered it (that gather's backward reduce-scatter sums the shards' parts).
  const auto input = tp.sequence_parallel() ? rows : parallel::copy_to_group(rows, *tp.group());
  return layers::vocab_parallel_logprobs(input, model.lm_head(), next.targets, temperature, chunk_tokens,
                                         {tp.group(), model.vocab_start()});
}

GradScope::GradScope(const models::NamedTensors& params) : params_(params) {
  for (const auto& [_, p] : params_) p.requires_grad_(true);
}

GradScope::~GradScope() {
  for (const auto& [_, p] : params_) p.requires_grad_(false);
}

void init_optimizer(ModelSession& session, AdamWConfig config, LrSchedule schedule, double max_grad_norm) {
  session.optimizer.reset();
  session.sharded.reset();
  const auto& params = session.model->named_parameters();
  if (session.multi_rank()) {
    session.sharded = std::make_unique<parallel::ShardedAdamW>(params, session.model->placements(), session.mesh,
                                                               std::move(config));
  } else {
    session.optimizer = std::make_unique<AdamW>(params, std::move(config));
  }
  session.schedule = schedule;
  session.max_grad_norm = max_grad_norm;
  session.updates = 0;
}

OptimizerStepResult optimizer_step(ModelSession& session) {
  if (!session.has_optimizer()) throw std::invalid_argument("model: no optimizer; call initOptimizer first");
  OptimizerStepResult out;
  out.lr = lr_at(session.schedule, session.updates);
  if (session.sharded) {
    const auto r = session.sharded->step(out.lr, session.max_grad_norm);
    out.grad_norm = r.norm;
    out.skipped = !r.finite;
    session.sharded->zero_grad();
  } else {
    const auto clip = clip_grad_norm(session.optimizer->params(), session.max_grad_norm);
    out.grad_norm = clip.norm;
    out.skipped = !clip.finite;
    if (!out.skipped) session.optimizer->step(out.lr);
    session.optimizer->zero_grad();
  }
  if (!out.skipped) ++session.updates;
  session.grads_pending = false;
  out.step = session.updates;
  return out;
}

models::NamedTensors gather_parameters(ModelSession& session) {
  at::NoGradGuard no_grad;
  const auto& model = *session.model;
  models::NamedTensors out;
  const auto& params = model.named_parameters();
  const auto& placements = model.placements();
  for (size_t i = 0; i < params.size(); ++i) {
    auto t = params[i].second.detach();
    if (session.multi_rank()) t = parallel::gather_tensor(t, placements[i], parallel::split_group(placements[i], *session.mesh));
    out.emplace_back(params[i].first, t.to(at::kCPU).contiguous().clone());
  }
  for (const auto& [name, b] : model.named_buffers()) out.emplace_back(name, b.detach().to(at::kCPU).contiguous().clone());
  return out;
}

models::NamedTensors gather_gradients(ModelSession& session) {
  at::NoGradGuard no_grad;
  const auto& model = *session.model;
  models::NamedTensors out;
  const auto& params = model.named_parameters();
  const auto& placements = model.placements();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i].second;
    auto g = p.grad().defined() ? p.grad().detach().contiguous().clone() : at::zeros_like(p);
    if (session.multi_rank()) {
      parallel::sync_tensor_gradient(g, placements[i], session.mesh->tensor());
      // An expert's gradient is already the sum over the tokens every data rank sent it; only the
      // expert-data replicas of it add up.
      const bool expert = placements[i].spec.split == parallel::Split::kExpert;
      (expert ? session.mesh->expert_data() : session.mesh->data_context()).all_reduce(g, parallel::ReduceOp::kSum);
      g = parallel::gather_tensor(g, placements[i], parallel::split_group(placements[i], *session.mesh));
    }
    out.emplace_back(params[i].first, g.to(at::kCPU).contiguous());
  }
  return out;
}

void save_model(ModelSession& session, const std::string& dir, int64_t max_shard_bytes) {
  auto& model = *session.model;
  // Split tensors are gathered (one at a time, on every tensor rank); whole ones are as the model
  // holds them for the checkpoint (MoE experts unstacked).
  models::NamedTensors tensors;
  if (model.tensor_parallel().size() > 1 || model.expert_parallel()) {
    tensors = model.checkpoint_form(gather_parameters(session));
  } else if (writes_files(session)) {
    for (const auto& [name, p] : model.checkpoint_tensors()) tensors.emplace_back(name, p.detach().to(at::kCPU).contiguous());
  }
  bool ok = true;
  std::string error;
  if (writes_files(session)) {
    try {
      auto config = session.config;
      const auto dtype = std::string(c10::toString(model.dtype()));
      const auto name = dtype == "Float" ? "float32" : dtype == "BFloat16" ? "bfloat16" : dtype == "Half" ? "float16" : "float64";
      // transformers 5 reads "dtype", 4 reads "torch_dtype": update whichever the config has.
      bool written = false;
      for (const char* key : {"dtype", "torch_dtype"}) {
        if (config.has(key)) {
          config.set(key, name);
          written = true;
        }
      }
      if (!written) config.set("dtype", name);
      io::save_checkpoint(dir, config, tensors, max_shard_bytes);
    } catch (const std::exception& e) {
      ok = false;
      error = e.what();
    }
  }
  agree(session, ok, "model.save(" + dir + ")");
  if (!ok) throw std::runtime_error(error);
}

void save_optimizer(ModelSession& session, const std::string& file) {
  if (!session.has_optimizer()) throw std::invalid_argument("model: no optimizer; call initOptimizer first");
  if (session.grads_pending) {
    throw std::invalid_argument("model: gradients are pending; call optimizerStep before saving the optimizer");
  }
  const auto state = session.sharded ? session.sharded->full_state() : session.optimizer->state();
  bool ok = true;
  std::string error;
  if (writes_files(session)) {
    try {
      io::write_safetensors(file, state, {{"updates", std::to_string(session.updates)}});
    } catch (const std::exception& e) {
      ok = false;
      error = e.what();
    }
  }
  agree(session, ok, "model.saveOptimizer");
  if (!ok) throw std::runtime_error(error);
}

void load_optimizer(ModelSession& session, const std::string& file) {
  if (!session.has_optimizer()) throw std::invalid_argument("model: no optimizer; call initOptimizer first");
  auto read = io::read_safetensors(file);
  const auto updates = read.metadata.find("updates");
  if (updates == read.metadata.end()) throw std::runtime_error("no \"updates\" in the metadata: not an optimizer state");
  if (session.sharded) {
    session.sharded->load_full_state(read.tensors);
    session.sharded->zero_grad();
  } else {
    session.optimizer->load_state(read.tensors);
    session.optimizer->zero_grad();
  }
  session.updates = std::stoll(updates->second);
  session.grads_pending = false;
}

}  // namespace tiller::train
