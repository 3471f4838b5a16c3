// Process-group handles (parallel/process_group.h): create joins the rendezvous, then collectives on
// host tensors. Every blocking call is async work. c10d matches collectives across ranks by order,
// so each call takes a ticket on the JS thread and runs only when every earlier call on the same
// group has ended: the native order is the JS call order even when the thread pool reorders work.
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "addon/common.h"
#include "addon/registry.h"
#include "addon/tensor.h"
#include "addon/mesh.h"
#include "layers/moe.h"
#include "parallel/process_group.h"

namespace tiller::addon {
namespace {

using parallel::ProcessGroup;

// Tags a JS handle as a process group so that any other object passed in is refused.
constexpr napi_type_tag kProcessGroupTag = {0x4c2e8f1a6d3b5907ULL, 0x9e7a1c4f2b8d6e35ULL};

struct GroupSlot {
  std::unique_ptr<ProcessGroup> group;
  std::mutex order_mutex;
  std::condition_variable turn;
  uint64_t next_ticket = 0;  // taken on the JS thread, in call order
  uint64_t serving = 0;      // the ticket whose call may run now
};

// The JS handle owns a shared_ptr to the slot; running work holds another, so dispose() while a
// collective runs frees the group only when that collective ends.
struct Handle {
  std::shared_ptr<GroupSlot> slot;
};

std::shared_ptr<GroupSlot> slot_of(const Napi::Value& value) {
  if (!value.IsExternal() || !value.As<Napi::External<Handle>>().CheckTypeTag(&kProcessGroupTag)) {
    throw std::invalid_argument("group: not a process-group handle");
  }
  auto* handle = value.As<Napi::External<Handle>>().Data();
  if (!handle->slot) throw std::invalid_argument("group: this process group was disposed");
  return handle->slot;
}

// {data, dtype, shape} → a tensor on `device` that owns its memory (the worker thread must not
// read JS memory, and the JS array may be reused as soon as the call returns).
at::Tensor tensor_from_js(const Napi::Value& value, const std::string& device_name) {
  if (!value.IsObject()) throw std::invalid_argument("tensor: expected {data, dtype, shape}");
  auto object = value.As<Napi::Object>();
  if (!object.Get("data").IsTypedArray()) throw std::invalid_argument("tensor.data: expected a typed array");
  if (!object.Get("dtype").IsString()) throw std::invalid_argument("tensor.dtype: expected a dtype name");
  const auto dtype = dtype_from_name(object.Get("dtype").As<Napi::String>().Utf8Value());
  const auto shape = shape_from_js(object.Get("shape"), "tensor.shape");
  const auto view = tensor_from_typed_array(object.Get("data").As<Napi::TypedArray>(), dtype, shape);
  const auto device = parse_device(device_name);
  return device.is_cpu() ? view.clone() : view.to(device);
}

Napi::Object tensor_to_js(Napi::Env env, const at::Tensor& t) {
  auto out = Napi::Object::New(env);
  out["dtype"] = dtype_name(t.scalar_type());
  out["shape"] = shape_to_js(env, t.sizes());
  out["data"] = typed_array_from_tensor(env, t);
  return out;
}

std::string string_arg(const Napi::Value& value, const char* field) {
  if (!value.IsString()) throw std::invalid_argument(std::string(field) + ": expected a string");
  return value.As<Napi::String>().Utf8Value();
}

int int_arg(const Napi::Value& value, const char* field) {
  if (!value.IsNumber()) throw std::invalid_argument(std::string(field) + ": expected an integer");
  const double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= -2147483648.0 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int>(d))) {
    throw std::invalid_argument(std::string(field) + ": expected an integer, got " + std::to_string(d));
  }
  return static_cast<int>(d);
}

// Base for a collective: waits for its ticket, runs, hands the turn on (even when it throws).
class CollectiveWork : public PromiseWork {
 public:
  CollectiveWork(Napi::Env env, const char* name, std::shared_ptr<GroupSlot> slot)
      : PromiseWork(env, name), slot_(std::move(slot)) {
    ticket_ = slot_->next_ticket++;  // JS thread: tickets follow call order
  }

 protected:
  virtual void RunInTurn(ProcessGroup& group) = 0;

 private:
  // Ends this call's turn when it leaves scope, by return or by exception.
  struct TurnPass {
    GroupSlot& slot;
    ~TurnPass() {
      {
        std::lock_guard<std::mutex> lock(slot.order_mutex);
        ++slot.serving;
      }
      slot.turn.notify_all();
    }
  };

  void Run() final {
    {
      std::unique_lock<std::mutex> lock(slot_->order_mutex);
      slot_->turn.wait(lock, [&] { return slot_->serving == ticket_; });
    }
    TurnPass pass{*slot_};
    RunInTurn(*slot_->group);
  }

  std::shared_ptr<GroupSlot> slot_;
  uint64_t ticket_ = 0;
};

// One tensor in, one tensor out (all-reduce, broadcast, all-gather, reduce-scatter).
class TensorWork final : public CollectiveWork {
 public:
  using Fn = std::function<at::Tensor(ProcessGroup&, at::Tensor&)>;
  TensorWork(Napi::Env env, const char* name, std::shared_ptr<GroupSlot> slot, at::Tensor input, Fn fn)
      : CollectiveWork(env, name, std::move(slot)), input_(std::move(input)), fn_(std::move(fn)) {}

 protected:
  void RunInTurn(ProcessGroup& group) override {
    // The host copy is made here, so the JS thread never waits on a device.
    result_ = fn_(group, input_).to(at::kCPU).contiguous();
  }
  Napi::Value Result(Napi::Env env) override { return tensor_to_js(env, result_); }

 private:
  at::Tensor input_;
  Fn fn_;
  at::Tensor result_;
};

class BarrierWork final : public CollectiveWork {
 public:
  BarrierWork(Napi::Env env, std::shared_ptr<GroupSlot> slot)
      : CollectiveWork(env, "tiller.processGroupBarrier", std::move(slot)) {}

 protected:
  void RunInTurn(ProcessGroup& group) override { group.barrier(); }
};

// Wraps a group in a new JS handle.
Napi::Value group_handle(Napi::Env env, std::unique_ptr<ProcessGroup> group) {
  auto slot = std::make_shared<GroupSlot>();
  slot->group = std::move(group);
  auto handle = Napi::External<Handle>::New(env, new Handle{slot}, [](Napi::Env, Handle* h) { delete h; });
  handle.TypeTag(&kProcessGroupTag);
  return handle;
}

// A group of some of this group's ranks (ProcessGroup::subgroup), made in the parent's call order;
// only its members call it, and it resolves once all of them have.
class SubgroupWork final : public CollectiveWork {
 public:
  SubgroupWork(Napi::Env env, std::shared_ptr<GroupSlot> slot, std::vector<int> ranks, std::string name)
      : CollectiveWork(env, "tiller.processGroupSubgroup", std::move(slot)), ranks_(std::move(ranks)),
        name_(std::move(name)) {}

 protected:
  void RunInTurn(ProcessGroup& group) override { child_ = group.subgroup(ranks_, name_); }
  Napi::Value Result(Napi::Env env) override { return group_handle(env, std::move(child_)); }

 private:
  std::vector<int> ranks_;
  std::string name_;
  std::unique_ptr<ProcessGroup> child_;
};

class CreateWork final : public PromiseWork {
 public:
  CreateWork(Napi::Env env, parallel::ProcessGroupOptions options)
      : PromiseWork(env, "tiller.processGroupCreate"), options_(std::move(options)) {}

 protected:
  void Run() override { group_ = ProcessGroup::create(options_); }
  Napi::Value Result(Napi::Env env) override {
    auto slot = std::make_shared<GroupSlot>();
    slot->group = std::move(group_);
    auto handle = Napi::External<Handle>::New(env, new Handle{slot}, [](Napi::Env, Handle* h) { delete h; });
    handle.TypeTag(&kProcessGroupTag);
    return handle;
  }

 private:
  parallel::ProcessGroupOptions options_;
  std::unique_ptr<ProcessGroup> group_;
};

// processGroupCreate({host, port, rank, worldSize, backend, timeoutMs, hostStore?, device?})
//   -> Promise<handle>; resolves once every rank has joined.
Napi::Value ProcessGroupCreate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) throw std::invalid_argument("options: expected an object");
    auto o = info[0].As<Napi::Object>();
    parallel::ProcessGroupOptions options;
    options.store_host = string_arg(o.Get("host"), "host");
    options.store_port = int_arg(o.Get("port"), "port");
    options.rank = int_arg(o.Get("rank"), "rank");
    options.world_size = int_arg(o.Get("worldSize"), "worldSize");
    options.backend = string_arg(o.Get("backend"), "backend");
    options.timeout = std::chrono::milliseconds(int_arg(o.Get("timeoutMs"), "timeoutMs"));
    const auto host_store = o.Get("hostStore");
    options.host_store = host_store.IsBoolean() ? host_store.As<Napi::Boolean>().Value() : options.rank == 0;
    const auto device = o.Get("device");
    if (device.IsString()) options.device = device.As<Napi::String>().Utf8Value();
    return queue_work<CreateWork>(env, std::move(options));
  });
}

// processGroupDispose(handle): frees the group once any running collective ends; later calls throw.
Napi::Value ProcessGroupDispose(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    slot_of(info[0]);
    info[0].As<Napi::External<Handle>>().Data()->slot.reset();
    return env.Undefined();
  });
}

// processGroupAllReduce(handle, tensor, op: "sum"|"avg"|"max"|"min", device) -> Promise<tensor>
Napi::Value ProcessGroupAllReduce(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    const auto op = parallel::reduce_op_from_name(string_arg(info[2], "op"));
    auto input = tensor_from_js(info[1], string_arg(info[3], "device"));
    return queue_work<TensorWork>(env, "tiller.processGroupAllReduce", slot, input,
                                  [op](ProcessGroup& g, at::Tensor& t) {
                                    g.all_reduce(t, op);
                                    return t;
                                  });
  });
}

// processGroupBroadcast(handle, tensor, root, device) -> Promise<tensor>: root's tensor on every rank.
Napi::Value ProcessGroupBroadcast(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    const int root = int_arg(info[2], "root");
    auto input = tensor_from_js(info[1], string_arg(info[3], "device"));
    return queue_work<TensorWork>(env, "tiller.processGroupBroadcast", slot, input,
                                  [root](ProcessGroup& g, at::Tensor& t) {
                                    g.broadcast(t, root);
                                    return t;
                                  });
  });
}

// processGroupAllGather(handle, tensor [n, ...], device) -> Promise<tensor [worldSize * n, ...]>
Napi::Value ProcessGroupAllGather(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    auto input = tensor_from_js(info[1], string_arg(info[2], "device"));
    if (input.dim() == 0) throw std::invalid_argument("tensor.shape: all-gather needs at least one dimension");
    auto out_shape = input.sizes().vec();
    out_shape[0] *= slot->group->world_size();
    auto out = at::empty(out_shape, input.options());
    return queue_work<TensorWork>(env, "tiller.processGroupAllGather", slot, input,
                                  [out](ProcessGroup& g, at::Tensor& t) mutable {
                                    g.all_gather_into(out, t);
                                    return out;
                                  });
  });
}

// processGroupExpertDispatch(handle, x [tokens, hidden], experts [tokens, topK] int, weights [tokens, topK],
// numExperts, upstream [tokens, hidden], scaleByExpert, device) -> Promise<tensor [2, tokens, hidden]>:
// the MoE token dispatcher alone (layers::dispatch_combine) with experts spread evenly over the
// group's ranks that return their rows (scaleByExpert: times 1 + the global expert id, so that a row
// sent to the wrong expert shows): [0] the combined output, [1] the gradient of sum(output · upstream)
// with respect to x.
// The dispatcher's own test (tests/native/expert-dispatch.test.ts) calls it on every rank.
Napi::Value ProcessGroupExpertDispatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    const bool scale = info[6].ToBoolean().Value();
    const auto device = string_arg(info[7], "device");
    auto x = tensor_from_js(info[1], device);
    const auto experts = tensor_from_js(info[2], device).to(at::kLong);
    const auto weights = tensor_from_js(info[3], device).to(at::kFloat);
    const int64_t num_experts = int_arg(info[4], "numExperts");
    const auto upstream = tensor_from_js(info[5], device);
    const int size = slot->group->world_size();
    if (x.dim() != 2 || experts.dim() != 2 || experts.size(0) != x.size(0) || weights.sizes() != experts.sizes() ||
        upstream.sizes() != x.sizes()) {
      throw std::invalid_argument("expertDispatch: x [tokens, hidden], experts and weights [tokens, topK], upstream like x");
    }
    if (num_experts <= 0 || num_experts % size != 0) {
      throw std::invalid_argument("numExperts: " + std::to_string(num_experts) + " must be a positive multiple of the " +
                                  std::to_string(size) + " ranks");
    }
    return queue_work<TensorWork>(env, "tiller.processGroupExpertDispatch", slot, x,
                                  [experts, weights, upstream, num_experts, scale](ProcessGroup& g, at::Tensor& t) {
                                    const auto local = num_experts / g.world_size();
                                    const auto first = g.rank() * local;
                                    layers::ExpertParallel ep{&g, first, local, nullptr};
                                    at::AutoGradMode grad(true);
                                    auto input = t.detach().clone().requires_grad_(true);
                                    const auto run = [scale, first](const at::Tensor& rows, const at::Tensor& ends) {
                                      if (!scale) return rows;
                                      // Row i belongs to local expert e where ends[e-1] <= i < ends[e].
                                      const auto index = at::arange(rows.size(0), ends.options());
                                      const auto expert = at::searchsorted(ends, index, /*out_int32=*/false, /*right=*/true);
                                      return rows * (expert + first + 1).to(rows.scalar_type()).unsqueeze(1);
                                    };
                                    const auto y = layers::dispatch_combine(input, experts, weights, num_experts, &ep, run);
                                    (y * upstream).sum().backward();
                                    return at::stack({y.detach(), input.grad()});
                                  });
  });
}

// processGroupReduceScatter(handle, tensor [worldSize * n, ...], op, device) -> Promise<tensor [n, ...]>
Napi::Value ProcessGroupReduceScatter(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    const auto op = parallel::reduce_op_from_name(string_arg(info[2], "op"));
    auto input = tensor_from_js(info[1], string_arg(info[3], "device"));
    const int world = slot->group->world_size();
    if (input.dim() == 0 || input.size(0) % world != 0) {
      throw std::invalid_argument("tensor.shape: reduce-scatter needs a first dimension divisible by worldSize " +
                                  std::to_string(world) + ", got " + c10::str(input.sizes()));
    }
    auto out_shape = input.sizes().vec();
    out_shape[0] /= world;
    auto out = at::empty(out_shape, input.options());
    return queue_work<TensorWork>(env, "tiller.processGroupReduceScatter", slot, input,
                                  [out, op](ProcessGroup& g, at::Tensor& t) mutable {
                                    g.reduce_scatter(out, t, op);
                                    return out;
                                  });
  });
}

// processGroupSubgroup(handle, ranks: number[] ascending, name) -> Promise<handle>
Napi::Value ProcessGroupSubgroup(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    if (!info[1].IsArray()) throw std::invalid_argument("ranks: expected an array of ranks");
    auto list = info[1].As<Napi::Array>();
    std::vector<int> ranks;
    for (uint32_t i = 0; i < list.Length(); ++i) ranks.push_back(int_arg(list.Get(i), "ranks[]"));
    return queue_work<SubgroupWork>(env, slot, std::move(ranks), string_arg(info[2], "name"));
  });
}

// processGroupBarrier(handle) -> Promise<void>
Napi::Value ProcessGroupBarrier(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value { return queue_work<BarrierWork>(env, slot_of(info[0])); });
}

// processGroupInfo(handle) -> {rank, worldSize, backend, device}
Napi::Value ProcessGroupInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto& group = *slot_of(info[0])->group;
    auto out = Napi::Object::New(env);
    out["rank"] = group.rank();
    out["worldSize"] = group.world_size();
    out["backend"] = group.backend();
    out["device"] = group.device().str();
    return out;
  });
}

// processGroupBackendAvailable(backend) -> boolean: whether this build can create that backend.
Napi::Value ProcessGroupBackendAvailable(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return Napi::Boolean::New(env, parallel::backend_available(string_arg(info[0], "backend")));
  });
}

// Tags a JS handle as a mesh.
constexpr napi_type_tag kMeshTag = {0x2b7e151628aed2a6ULL, 0xabf7158809cf4f3cULL};

struct MeshHandle {
  std::shared_ptr<parallel::Mesh> mesh;
};

// Takes its turn on the world group like a collective, so a mesh is made after the calls before it.
class MeshCreateWork final : public CollectiveWork {
 public:
  MeshCreateWork(Napi::Env env, std::shared_ptr<GroupSlot> slot, parallel::Layout layout)
      : CollectiveWork(env, "tiller.meshCreate", std::move(slot)), layout_(layout) {}

 protected:
  void RunInTurn(ProcessGroup& group) override { mesh_ = parallel::Mesh::create(group, layout_); }
  Napi::Value Result(Napi::Env env) override {
    auto handle = Napi::External<MeshHandle>::New(env, new MeshHandle{std::move(mesh_)},
                                                  [](Napi::Env, MeshHandle* h) { delete h; });
    handle.TypeTag(&kMeshTag);
    return handle;
  }

 private:
  parallel::Layout layout_;
  std::shared_ptr<parallel::Mesh> mesh_;
};

// meshCreate(group, {tensor, context, pipeline, expert, data, sequenceParallel, firstStageLayers?,
// lastStageLayers?}) -> Promise<handle>;
// every rank of the group calls it with the same layout.
Napi::Value MeshCreate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto slot = slot_of(info[0]);
    if (!info[1].IsObject()) throw std::invalid_argument("layout: expected an object");
    auto o = info[1].As<Napi::Object>();
    parallel::Layout layout;
    const auto size = [&](const char* key) {
      const auto v = o.Get(key);
      return v.IsUndefined() ? 1 : int_arg(v, (std::string("layout.") + key).c_str());
    };
    layout.tensor = size("tensor");
    layout.context = size("context");
    layout.pipeline = size("pipeline");
    layout.expert = size("expert");
    layout.data = size("data");
    layout.sequence_parallel = o.Get("sequenceParallel").ToBoolean().Value();
    for (auto [key, field] : {std::pair{"firstStageLayers", &layout.first_stage_layers},
                              std::pair{"lastStageLayers", &layout.last_stage_layers}}) {
      const auto v = o.Get(key);
      if (v.IsUndefined()) continue;
      *field = int_arg(v, (std::string("layout.") + key).c_str());
      if (*field < 1) throw std::invalid_argument(std::string("layout.") + key + ": must be >= 1, got " + std::to_string(*field));
    }
    parallel::check_layout(layout, slot->group->world_size());
    return queue_work<MeshCreateWork>(env, slot, layout);
  });
}

// meshInfo(mesh) -> {rank, worldSize, layout, coordinates}
Napi::Value MeshInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto mesh = mesh_of(info[0]);
    const auto& l = mesh->layout();
    const auto& c = mesh->coordinates();
    auto layout = Napi::Object::New(env);
    layout["tensor"] = l.tensor;
    layout["context"] = l.context;
    layout["pipeline"] = l.pipeline;
    layout["expert"] = l.expert;
    layout["data"] = l.data;
    layout["sequenceParallel"] = l.sequence_parallel;
    if (l.first_stage_layers > 0) {
      layout["firstStageLayers"] = static_cast<double>(l.first_stage_layers);
      layout["lastStageLayers"] = static_cast<double>(l.last_stage_layers);
    }
    auto coords = Napi::Object::New(env);
    coords["tensor"] = c.tensor;
    coords["context"] = c.context;
    coords["data"] = c.data;
    coords["pipeline"] = c.pipeline;
    coords["expert"] = c.expert;
    coords["expertData"] = c.expert_data;
    auto out = Napi::Object::New(env);
    out["rank"] = mesh->rank();
    out["worldSize"] = mesh->world_size();
    out["layout"] = layout;
    out["coordinates"] = coords;
    out["describe"] = l.describe();
    return out;
  });
}

// meshTraffic(mesh, reset: boolean) -> {[group]: {[collective]: {calls, bytes}}}: what each group's
// collectives moved since the last reset (groups of one rank move nothing and are left out).
Napi::Value MeshTraffic(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const auto mesh = mesh_of(info[0]);
    const bool reset = info[1].ToBoolean().Value();
    auto out = Napi::Object::New(env);
    for (const auto& [kind, group] : mesh->groups()) {
      if (group->world_size() == 1) continue;
      auto per = Napi::Object::New(env);
      for (const auto& [name, t] : group->traffic()) {
        auto entry = Napi::Object::New(env);
        entry["calls"] = static_cast<double>(t.calls);
        entry["bytes"] = static_cast<double>(t.bytes);
        entry["seconds"] = t.seconds;
        per[name] = entry;
      }
      out[kind] = per;
      if (reset) group->reset_traffic();
    }
    return out;
  });
}

// meshDispose(mesh): the groups close once no model uses them.
Napi::Value MeshDispose(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    mesh_of(info[0]);
    info[0].As<Napi::External<MeshHandle>>().Data()->mesh.reset();
    return env.Undefined();
  });
}

}  // namespace

std::shared_ptr<parallel::Mesh> mesh_of(const Napi::Value& value) {
  if (!value.IsExternal() || !value.As<Napi::External<MeshHandle>>().CheckTypeTag(&kMeshTag)) {
    throw std::invalid_argument("mesh: not a mesh handle");
  }
  auto mesh = value.As<Napi::External<MeshHandle>>().Data()->mesh;
  if (!mesh) throw std::invalid_argument("mesh: this mesh was disposed");
  return mesh;
}

namespace {

void register_dist(Napi::Env env, Napi::Object exports) {
  exports["meshCreate"] = Napi::Function::New(env, MeshCreate, "meshCreate");
  exports["meshInfo"] = Napi::Function::New(env, MeshInfo, "meshInfo");
  exports["meshDispose"] = Napi::Function::New(env, MeshDispose, "meshDispose");
  exports["meshTraffic"] = Napi::Function::New(env, MeshTraffic, "meshTraffic");
  exports["processGroupCreate"] = Napi::Function::New(env, ProcessGroupCreate, "processGroupCreate");
  exports["processGroupDispose"] = Napi::Function::New(env, ProcessGroupDispose, "processGroupDispose");
  exports["processGroupAllReduce"] = Napi::Function::New(env, ProcessGroupAllReduce, "processGroupAllReduce");
  exports["processGroupBroadcast"] = Napi::Function::New(env, ProcessGroupBroadcast, "processGroupBroadcast");
  exports["processGroupAllGather"] = Napi::Function::New(env, ProcessGroupAllGather, "processGroupAllGather");
  exports["processGroupReduceScatter"] =
      Napi::Function::New(env, ProcessGroupReduceScatter, "processGroupReduceScatter");
  exports["processGroupExpertDispatch"] =
      Napi::Function::New(env, ProcessGroupExpertDispatch, "processGroupExpertDispatch");
  exports["processGroupBarrier"] = Napi::Function::New(env, ProcessGroupBarrier, "processGroupBarrier");
  exports["processGroupSubgroup"] = Napi::Function::New(env, ProcessGroupSubgroup, "processGroupSubgroup");
  exports["processGroupInfo"] = Napi::Function::New(env, ProcessGroupInfo, "processGroupInfo");
  exports["processGroupBackendAvailable"] =
      Napi::Function::New(env, ProcessGroupBackendAvailable, "processGroupBackendAvailable");
}

const Registrar registrar(register_dist);

}  // namespace
}  // namespace tiller::addon
