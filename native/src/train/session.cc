#include "train/session.h"

#include <set>

#ifdef TILLER_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif
#include <stdexcept>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "parallel/collectives.h"
#include "parallel/context_parallel.h"
#include "train/cpu_memory.h"
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
  // A pipeline stage routes only its own MoE layers: the others' entries stay undefined.
  if (totals.tokens_per_expert.size() < routing.tokens_per_expert.size()) {
    totals.tokens_per_expert.resize(routing.tokens_per_expert.size());
    totals.entropy_sum.resize(routing.tokens_per_expert.size());
  }
  for (size_t l = 0; l < routing.tokens_per_expert.size(); ++l) {
    if (!routing.tokens_per_expert[l].defined()) continue;
    if (!totals.tokens_per_expert[l].defined()) {
      totals.tokens_per_expert[l] = routing.tokens_per_expert[l].clone();
      totals.entropy_sum[l] = routing.entropy_sum[l].clone();
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

// The word embedding's gradient of a tied model on a pipeline: the first stage's copy has the
// embedding's part, the last stage's the lm-head's; both get the sum (Megatron's embedding group).
at::Tensor* tied_embedding_gradient(ModelSession& session) {
  const auto& model = *session.model;
  if (!model.tied_embeddings() || !model.pipelined() || !session.mesh->embedding()) return nullptr;
  for (const auto& [name, p] : model.named_parameters()) {
    if (name == "model.embed_tokens.weight") {
      auto& grad = const_cast<at::Tensor&>(p).mutable_grad();
      if (!grad.defined()) grad = at::zeros_like(p);
      return &grad;
    }
  }
  throw std::logic_error("tied model without model.embed_tokens.weight on an end stage");
}

void sum_tied_embedding_gradients(ModelSession& session) {
  if (auto* grad = tied_embedding_gradient(session)) session.mesh->embedding()->all_reduce(*grad, parallel::ReduceOp::kSum);
}

// Every stage's named host tensors on every stage, in stage order; a name already given by an
// earlier stage (a tied embedding's copy) is dropped. Each stage broadcasts a header (names,
// dtypes, shapes as int64) and then its tensors, so no stage needs to know another's table.
models::NamedTensors gather_stages(const models::CausalLM& model, models::NamedTensors local) {
  auto* group = model.pipeline_group();
  if (!group) return local;
  const auto device = group->device();
  const auto longs = at::TensorOptions().dtype(at::kLong).device(device);
  models::NamedTensors out;
  std::set<std::string> seen;
  for (int stage = 0; stage < group->world_size(); ++stage) {
    const bool mine = stage == group->rank();
    std::vector<int64_t> header;
    if (mine) {
      header.push_back(static_cast<int64_t>(local.size()));
      for (const auto& [name, t] : local) {
        header.push_back(static_cast<int64_t>(t.scalar_type()));
        header.push_back(t.dim());
        for (auto d : t.sizes()) header.push_back(d);
        header.push_back(static_cast<int64_t>(name.size()));
        for (unsigned char ch : name) header.push_back(ch);
      }
    }
    auto length = at::full({1}, static_cast<int64_t>(header.size()), longs);
    group->broadcast(length, stage);
    auto encoded = mine ? at::tensor(header, at::kLong).to(device) : at::empty({length.item<int64_t>()}, longs);
    group->broadcast(encoded, stage);
    const auto h = encoded.to(at::kCPU);
    const auto* v = h.data_ptr<int64_t>();
    size_t pos = 0;
    const auto count = v[pos++];
    for (int64_t i = 0; i < count; ++i) {
      const auto dtype = static_cast<at::ScalarType>(v[pos++]);
      const auto dims = v[pos++];
      std::vector<int64_t> shape(v + pos, v + pos + dims);
      pos += dims;
      const auto name_length = v[pos++];
      std::string name;
      for (int64_t c = 0; c < name_length; ++c) name.push_back(static_cast<char>(v[pos++]));
      auto t = mine ? local[i].second.to(device).contiguous() : at::empty(shape, at::TensorOptions().dtype(dtype).device(device));
      group->broadcast(t, stage);
      if (seen.insert(name).second) out.emplace_back(name, t.to(at::kCPU).contiguous());
    }
  }
  return out;
}

bool writes_files(const ModelSession& session) { return !session.mesh || session.mesh->rank() == 0; }

}  // namespace

at::Tensor stage_forward(ModelSession& session, const MicroBatch& mb, const at::Tensor& stage_input) {
  auto& model = *session.model;
  if (mb.images && !model.accepts_images()) throw std::invalid_argument("images: this model takes no images");
  const auto tokens = mb.tokens.to(model.device());
  auto batch = models::pack_batch(tokens, mb.cu);
  batch.images = mb.images;
  batch.stage_input = stage_input;
  layers::Routing routing;
  const bool moe = model.moe_shape().layers > 0;
  if (moe) {
    routing.stats = true;
    if (mb.replay.defined()) routing.replay = mb.replay.to(model.device());
    batch.routing = &routing;
  }
  auto hidden = model.forward(batch);
  if (moe) add_router_stats(session.router_stats, routing, tokens.size(0));
  return hidden;
}

namespace {

// Logprobs and entropy of `targets` at hidden rows `rows` through the lm-head (vocab-parallel under TP).
layers::TokenLogprobs logprobs_at(const models::CausalLM& model, const at::Tensor& rows, const at::Tensor& targets,
                                  double temperature, int64_t chunk_tokens) {
  const auto& tp = model.tensor_parallel();
  if (tp.size() == 1) return layers::chunked_logprobs(rows, model.lm_head(), targets, temperature, chunk_tokens);
  // The lm-head is column-parallel: its input enters the region by copy_to_group, unless sequence
  // parallelism already gathered it (that gather's backward reduce-scatter sums the shards' parts).
  const auto input = tp.sequence_parallel() ? rows : parallel::copy_to_group(rows, *tp.group());
  return layers::vocab_parallel_logprobs(input, model.lm_head(), targets, temperature, chunk_tokens,
                                         {tp.group(), model.vocab_start()});
}

// Context parallelism: the forward on this rank's chunks of the padded sequences, logprobs of its
// rows, then every rank's gathered (backward: own rows) into the one-device order of predicted
// tokens, so the loss is computed on every context rank alike and each rank's gradient covers
// its own rows.
layers::TokenLogprobs context_logprobs(ModelSession& session, const MicroBatch& mb, double temperature,
                                       int64_t chunk_tokens) {
  auto& model = *session.model;
  if (mb.replay.defined() || mb.images) throw std::invalid_argument("context parallelism: no routing replay or images");
  const auto& tp = model.tensor_parallel();
  const auto shards = parallel::plan_context(mb.cu, session.mesh->context(), tp.sequence_parallel() ? tp.size() : 1);
  // The padded packing on the host: each sequence's tokens then zeros; positions run on through the padding.
  const auto rows = shards.padded_rows();
  auto tokens = at::zeros({rows}, at::kLong), positions = at::empty({rows}, at::kLong), targets = at::zeros({rows}, at::kLong);
  auto* t = tokens.data_ptr<int64_t>();
  auto* p = positions.data_ptr<int64_t>();
  auto* y = targets.data_ptr<int64_t>();
  const auto* in = mb.tokens.data_ptr<int64_t>();
  std::vector<int64_t> predicted;  // padded rows of the one-device prediction rows, in order
  for (size_t s = 0; s + 1 < mb.cu.size(); ++s) {
    const auto begin = shards.padded_cu[s], n = shards.lengths[s];
    for (int64_t j = 0; j < shards.padded_cu[s + 1] - begin; ++j) {
      p[begin + j] = j;
      if (j < n) t[begin + j] = in[mb.cu[s] + j];
      if (j + 1 < n) {
        y[begin + j] = in[mb.cu[s] + j + 1];
        predicted.push_back(begin + j);
      }
    }
  }
  const auto device = model.device();
  const auto& local = shards.local_index;
  models::PackedBatch batch;
  batch.tokens = tokens.index_select(0, local).to(device);
  batch.positions = positions.index_select(0, local).to(device);
  batch.cu_seqlens = shards.local_cu;
  for (size_t s = 0; s + 1 < shards.padded_cu.size(); ++s) {
    batch.context_lengths.push_back(shards.padded_cu[s + 1] - shards.padded_cu[s]);
  }
  batch.context = &shards;
  const auto hidden = model.forward(batch);  // [local rows, hidden]
  const auto mine = logprobs_at(model, hidden, targets.index_select(0, local).to(device), temperature, chunk_tokens);
  const auto order = at::tensor(predicted, at::kLong).to(device);
  return {parallel::gather_context_replicated(mine.logprob, shards).index_select(0, order),
          parallel::gather_context_replicated(mine.entropy, shards).index_select(0, order)};
}

}  // namespace

layers::TokenLogprobs head_logprobs(ModelSession& session, const at::Tensor& hidden, const MicroBatch& mb,
                                    double temperature, int64_t chunk_tokens) {
  auto& model = *session.model;
  const auto next = next_token_rows(mb.tokens.to(model.device()), mb.cu);
  return logprobs_at(model, hidden.index_select(0, next.rows), next.targets, temperature, chunk_tokens);
}

layers::TokenLogprobs forward_logprobs(ModelSession& session, const at::Tensor& tokens_cpu,
                                       const std::vector<int64_t>& cu, double temperature, int64_t chunk_tokens,
                                       const at::Tensor& replay, const models::ImageInputs* images) {
  const MicroBatch mb{tokens_cpu, cu, replay, images};
  if (session.model->pipelined()) return pipeline_logprobs(session, mb, temperature, chunk_tokens);
  if (session.mesh && session.mesh->layout().context > 1) return context_logprobs(session, mb, temperature, chunk_tokens);
  return head_logprobs(session, stage_forward(session, mb, at::Tensor()), mb, temperature, chunk_tokens);
}

GradScope::GradScope(const models::NamedTensors& params) : params_(params) {
  for (const auto& [_, p] : params_) p.requires_grad_(true);
}

GradScope::~GradScope() {
  for (const auto& [_, p] : params_) p.requires_grad_(false);
}

MemoryBytes memory_of(const ModelSession& session, bool reset_peak) {
  MemoryBytes m;
  const auto& model = *session.model;
  for (const auto& [_, p] : model.named_parameters()) {
    m.parameters += static_cast<int64_t>(p.nbytes());
    if (p.grad().defined()) m.gradients += static_cast<int64_t>(p.grad().nbytes());
  }
  if (!session.parked_parameters.empty()) {
    m.parameters_host = m.parameters;
    m.parameters = 0;
  }
  for (const auto& [_, b] : model.named_buffers()) m.buffers += static_cast<int64_t>(b.nbytes());
  int64_t state = 0;
  if (session.sharded) state = session.sharded->state_bytes();
  if (session.optimizer) {
    for (const auto& [_, t] : session.optimizer->state()) state += static_cast<int64_t>(t.nbytes());
  }
  (optimizer_offloaded(session) ? m.optimizer_host : m.optimizer) = state;
  m.kv_cache = session.kv_cache_bytes;
  if (model.device().is_cpu()) {
    const auto cpu = cpu_tensor_bytes();
    if (cpu.counting) {
      m.device_allocated = m.device_reserved = cpu.current;
      m.device_peak = cpu.peak;
      if (reset_peak) reset_cpu_tensor_peak();
    }
  }
#ifdef TILLER_CUDA
  if (model.device().is_cuda()) {
    const auto index = model.device().index();
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    const auto total = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    m.device_allocated = stats.allocated_bytes[total].current;
    m.device_peak = stats.allocated_bytes[total].peak;
    m.device_reserved = stats.reserved_bytes[total].current;
    if (reset_peak) c10::cuda::CUDACachingAllocator::resetPeakStats(index);
  }
#endif
  return m;
}

bool optimizer_offloaded(const ModelSession& session) {
  return (session.sharded && session.sharded->offloaded()) || (session.optimizer && session.optimizer->offloaded());
}

namespace {

int64_t optimizer_state_bytes(const ModelSession& session) {
  if (session.sharded) return session.sharded->state_bytes();
  int64_t bytes = 0;
  if (session.optimizer) {
    for (const auto& [_, t] : session.optimizer->state()) bytes += static_cast<int64_t>(t.nbytes());
  }
  return bytes;
}

}  // namespace

int64_t offload_optimizer(ModelSession& session) {
  if (!session.has_optimizer()) throw std::invalid_argument("model: no optimizer; call initOptimizer first");
  if (optimizer_offloaded(session)) return 0;
  if (session.sharded) session.sharded->offload_to_host();
  if (session.optimizer) session.optimizer->offload_to_cpu();
  return optimizer_state_bytes(session);
}

int64_t reload_optimizer(ModelSession& session) {
  if (!session.has_optimizer()) throw std::invalid_argument("model: no optimizer; call initOptimizer first");
  if (!optimizer_offloaded(session)) return 0;
  if (session.sharded) session.sharded->reload();
  if (session.optimizer) session.optimizer->reload();
  return optimizer_state_bytes(session);
}

namespace {

// A byte tensor over a whole storage, on its device.
at::Tensor storage_bytes(const c10::Storage& storage, size_t nbytes) {
  return at::empty({0}, at::TensorOptions().dtype(at::kByte).device(storage.device()))
      .set_(storage, 0, {static_cast<int64_t>(nbytes)}, {1});
}

}  // namespace

int64_t offload_parameters(ModelSession& session) {
  if (!session.parked_parameters.empty()) return 0;
  if (session.grads_pending) {
    throw std::invalid_argument("offload parameters: gradients are pending (an update is half done); step the optimizer first");
  }
  at::NoGradGuard no_grad;
  const auto device = session.model->device();
  std::set<const c10::StorageImpl*> seen;  // tied weights share one storage
  int64_t bytes = 0;
  for (const auto& [_, p] : session.model->named_parameters()) {
    const auto storage = p.storage();
    const auto nbytes = storage.nbytes();
    if (nbytes == 0 || !seen.insert(storage.unsafeGetStorageImpl()).second) continue;
    auto host = at::empty({static_cast<int64_t>(nbytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(device.is_cuda()));
    host.copy_(storage_bytes(storage, nbytes));
    session.parked_parameters.push_back({storage, host, nbytes});
    bytes += static_cast<int64_t>(nbytes);
  }
  // Only now the storages are emptied (their memory freed): every copy above was a blocking one.
  for (auto& park : session.parked_parameters) {
    auto* impl = park.storage.unsafeGetStorageImpl();
    impl->set_data_ptr_noswap(c10::DataPtr(nullptr, impl->device()));
    impl->set_nbytes(0);
  }
  session.decoder.reset();
  return bytes;
}

int64_t reload_parameters(ModelSession& session) {
  if (session.parked_parameters.empty()) return 0;
  at::NoGradGuard no_grad;
  int64_t bytes = 0;
  for (auto& park : session.parked_parameters) {
    auto* impl = park.storage.unsafeGetStorageImpl();
    auto* allocator = impl->allocator() ? impl->allocator() : c10::GetAllocator(impl->device_type());
    impl->set_data_ptr_noswap(allocator->allocate(park.nbytes));
    impl->set_nbytes(park.nbytes);
    storage_bytes(park.storage, park.nbytes).copy_(park.host);
    bytes += static_cast<int64_t>(park.nbytes);
  }
  session.parked_parameters.clear();
  session.decoder.reset();  // captured graphs hold the old addresses
  return bytes;
}

void complete_router_stats(ModelSession& session) {
  const auto& model = *session.model;
  auto* pipeline = model.pipeline_group();
  const auto shape = model.moe_shape();
  auto& totals = session.router_stats;
  // Every stage ran the same forwards, so all agree on whether there is anything to add up.
  if (!pipeline || shape.layers == 0 || totals.tokens == 0) return;
  totals.tokens_per_expert.resize(shape.layers);
  totals.entropy_sum.resize(shape.layers);
  const auto options = at::TensorOptions().dtype(at::kDouble).device(pipeline->device());
  auto packed = at::zeros({shape.layers, shape.experts + 1}, options);
  for (int64_t l = 0; l < shape.layers; ++l) {
    if (!totals.tokens_per_expert[l].defined()) continue;
    packed[l].narrow(0, 0, shape.experts).copy_(totals.tokens_per_expert[l]);
    packed[l][shape.experts].copy_(totals.entropy_sum[l]);
  }
  pipeline->all_reduce(packed, parallel::ReduceOp::kSum);
  const auto device = model.device();
  for (int64_t l = 0; l < shape.layers; ++l) {
    totals.tokens_per_expert[l] = packed[l].narrow(0, 0, shape.experts).to(device, at::kLong);
    totals.entropy_sum[l] = packed[l][shape.experts].to(device, at::kFloat);
  }
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
  reload_optimizer(session);  // an offloaded state comes back for the step (the caller may offload it again)
  OptimizerStepResult out;
  out.lr = lr_at(session.schedule, session.updates);
  if (session.sharded) {
    sum_tied_embedding_gradients(session);
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
  return gather_stages(model, std::move(out));
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
      // A tied embedding's two copies on a pipeline: its gradient is the sum of both.
      if (model.tied_embeddings() && model.pipelined() && session.mesh->embedding() &&
          params[i].first == "model.embed_tokens.weight") {
        g = g.contiguous();
        session.mesh->embedding()->all_reduce(g, parallel::ReduceOp::kSum);
      }
    }
    out.emplace_back(params[i].first, g.to(at::kCPU).contiguous());
  }
  return gather_stages(model, std::move(out));
}

void save_model(ModelSession& session, const std::string& dir, int64_t max_shard_bytes) {
  auto& model = *session.model;
  // Split tensors are gathered (one at a time, on every tensor rank); whole ones are as the model
  // holds them for the checkpoint (MoE experts unstacked).
  models::NamedTensors tensors;
  if (model.tensor_parallel().size() > 1 || model.expert_parallel() || model.pipelined()) {
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
  // The state's collectives run on the device: an offloaded state comes back for them, then goes again.
  const bool offloaded = optimizer_offloaded(session);
  reload_optimizer(session);
  const auto state = session.sharded ? gather_stages(*session.model, session.sharded->full_state())
                                     : session.optimizer->state();
  if (offloaded) offload_optimizer(session);
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
  const bool offloaded = optimizer_offloaded(session);
  reload_optimizer(session);
  if (session.sharded) {
    session.sharded->load_full_state(read.tensors);
    session.sharded->zero_grad();
  } else {
    session.optimizer->load_state(read.tensors);
    session.optimizer->zero_grad();
  }
  session.updates = std::stoll(updates->second);
  session.grads_pending = false;
  if (offloaded) offload_optimizer(session);
}

}  // namespace tiller::train
