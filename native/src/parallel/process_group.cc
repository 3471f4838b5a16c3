// ProcessGroup on c10d: a TCPStore rendezvous with our own join check (so a missing rank is named),
// then a gloo or NCCL backend whose collectives we wait on here.
#include "parallel/process_group.h"

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef TILLER_CUDA
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <optional>
#endif

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

namespace tiller::parallel {

struct ProcessGroup::Connection {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Backend> backend;  // null for a one-rank subgroup
  std::string store_host;                     // for gloo's device choice in subgroups
  std::string device;                         // ProcessGroupOptions::device
};

namespace {

std::string ms(std::chrono::milliseconds t) { return std::to_string(t.count()) + " ms"; }

std::string message_of(const c10::Error& e) { return e.what_without_backtrace(); }

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Which network interface gloo binds. $TILLER_GLOO_IFNAME names one (e.g. "eth0", "ib0"); otherwise a
// loopback store means one machine, so gloo stays on loopback too; otherwise gloo's own default
// (the interface the hostname resolves to, or $GLOO_SOCKET_IFNAME).
std::shared_ptr<gloo::transport::Device> gloo_device(const std::string& store_host) {
  // lazyInit false: connect the full mesh inside create(), so a missing peer fails there, bounded
  // by the timeout, rather than at some later collective.
  constexpr bool kLazyInit = false;
  if (const char* ifname = std::getenv("TILLER_GLOO_IFNAME"); ifname != nullptr && *ifname != '\0') {
    try {
      return c10d::ProcessGroupGloo::createDeviceForInterface(ifname, kLazyInit);
    } catch (const c10::Error& e) {
      throw std::invalid_argument(std::string("TILLER_GLOO_IFNAME: cannot use interface '") + ifname +
                                  "': " + message_of(e));
    }
  }
  if (is_loopback(store_host)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1", kLazyInit);
  return c10d::ProcessGroupGloo::createDefaultDevice(kLazyInit);
}

void check_options(const ProcessGroupOptions& o) {
  if (o.world_size < 1) {
    throw std::invalid_argument("worldSize: must be at least 1, got " + std::to_string(o.world_size));
  }
  if (o.rank < 0 || o.rank >= o.world_size) {
    throw std::invalid_argument("rank: " + std::to_string(o.rank) + " is out of range for worldSize " +
                                std::to_string(o.world_size) + " (0.." + std::to_string(o.world_size - 1) + ")");
  }
  if (o.store_host.empty()) throw std::invalid_argument("host: must not be empty");
  if (o.store_port < 1 || o.store_port > 65535) {
    throw std::invalid_argument("port: " + std::to_string(o.store_port) + " is not a TCP port (1..65535)");
  }
  if (o.timeout.count() <= 0) throw std::invalid_argument("timeoutMs: must be positive, got " + ms(o.timeout));
  if (o.backend != "gloo" && o.backend != "nccl") {
    throw std::invalid_argument("backend: '" + o.backend + "' is not a backend; allowed: gloo, nccl");
  }
  if (!backend_available(o.backend)) {
    throw std::invalid_argument(
        "backend: nccl is not available in this build (built without CUDA); use gloo, or rebuild on a "
        "CUDA machine with TILLER_CUDA=1");
  }
}

c10::intrusive_ptr<c10d::TCPStore> open_store(const ProcessGroupOptions& o, const std::string& address) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(o.store_port);
  store_options.isServer = o.host_store;
  store_options.numWorkers = static_cast<std::size_t>(o.world_size);
  // Our own join check below names the missing ranks; the server's wait would only count them.
  store_options.waitWorkers = false;
  store_options.timeout = o.timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(o.store_host, store_options);
  } catch (const c10::Error& e) {
    if (o.host_store) {
      throw std::runtime_error("rendezvous: rank " + std::to_string(o.rank) + " could not host the store at " +
                               address + " (is the port in use?): " + message_of(e));
    }
    throw std::runtime_error("rendezvous: no store answered at " + address + " within " + ms(o.timeout) +
                             " (is the rank hosting it running, and is the address right?): " + message_of(e));
  }
}

// Rendezvous: each rank writes its key and counts itself in, then polls the count. The first rank
// to time out names the missing ranks (their keys are absent) under "join/failed"; every rank that
// sees that key fails with the same message. The store's host lingers (bounded) until the joined
// ranks have read it, so that they report the missing ranks rather than a vanished store.
void join(c10d::Store& store, const ProcessGroupOptions& o, const std::string& address) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kPoll = std::chrono::milliseconds(20);
  const auto key = [](int r) { return "join/" + std::to_string(r); };
  const auto world = static_cast<int64_t>(o.world_size);
  const auto lost = [&](const c10::Error& e) {
    return std::runtime_error("rendezvous: lost the store at " + address + " while waiting for the other ranks (" +
                              (o.host_store ? "this rank hosts it" : "did the rank hosting it fail or leave?") +
                              "): " + message_of(e));
  };
  std::string failure;  // "rank(s) ... did not join ...", from this rank or another
  try {
    store.set(key(o.rank), std::vector<uint8_t>{1});
    store.add("join/count", 1);
    const auto deadline = Clock::now() + o.timeout;
    while (store.add("join/count", 0) < world) {
      if (store.check({"join/failed"})) {
        const auto value = store.get("join/failed");
        failure.assign(value.begin(), value.end());
        break;
      }
      if (Clock::now() >= deadline) {
        std::string missing;
        for (int r = 0; r < o.world_size; ++r) {
          if (!store.check({key(r)})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        }
        failure = "rank(s) " + missing + " of worldSize " + std::to_string(o.world_size) + " did not join within " +
                  ms(o.timeout) + " (seen by rank " + std::to_string(o.rank) + ")";
        store.set("join/failed", std::vector<uint8_t>(failure.begin(), failure.end()));
        break;
      }
      std::this_thread::sleep_for(kPoll);
    }
    if (failure.empty()) return;
    store.add("join/acknowledged", 1);
    if (o.host_store) {
      const auto linger_until = Clock::now() + std::min(o.timeout, std::chrono::milliseconds(2000));
      while (store.add("join/acknowledged", 0) < store.add("join/count", 0) && Clock::now() < linger_until) {
        std::this_thread::sleep_for(kPoll);
      }
    }
  } catch (const c10::Error& e) {
    throw lost(e);
  }
  throw std::runtime_error("rendezvous at " + address + ": " + failure);
}

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            const ProcessGroupOptions& o) {
  auto options = c10d::ProcessGroupGloo::Options::create(o.timeout);
  options->devices.push_back(gloo_device(o.store_host));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, options);
}

#ifdef TILLER_CUDA
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            const ProcessGroupOptions& o, const at::Device& device) {
  // NVLink multicast (NVLS) stays off: on shared hosts it can wedge the fabric for other jobs.
  // NCCL reads this when the first communicator is made, which is below.
  ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1);
  c10::cuda::CUDAGuard guard(device);
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = o.timeout;
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, o.rank, o.world_size, options);
  // Binding the device lets NCCL make the communicator now (ncclCommInitRank) instead of at the
  // first collective, so a broken peer fails create() rather than a training step.
  backend->setBoundDeviceId(device);
  backend->eagerConnectSingleDevice(device);
  return backend;
}
#endif

at::Device device_for(const ProcessGroupOptions& o) {
  if (o.backend == "gloo") return at::Device(at::kCPU);
  at::Device device(o.device);  // throws c10::Error on a malformed string
  if (!device.is_cuda() || !device.has_index()) {
    throw std::invalid_argument("device: nccl needs 'cuda:N', got '" + o.device + "'");
  }
  return device;
}

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return c10d::ReduceOp::SUM;
    case ReduceOp::kAvg: return c10d::ReduceOp::AVG;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
  }
  throw std::invalid_argument("op: unknown reduce op");
}

}  // namespace

ReduceOp reduce_op_from_name(const std::string& name) {
  if (name == "sum") return ReduceOp::kSum;
  if (name == "avg") return ReduceOp::kAvg;
  if (name == "max") return ReduceOp::kMax;
  if (name == "min") return ReduceOp::kMin;
  throw std::invalid_argument("op: '" + name + "' is not a reduce op; allowed: sum, avg, max, min");
}

bool backend_available(const std::string& backend) {
  if (backend == "gloo") return true;
#ifdef TILLER_CUDA
  if (backend == "nccl") return true;
#endif
  return false;
}

std::unique_ptr<ProcessGroup> ProcessGroup::create(const ProcessGroupOptions& options) {
  check_options(options);
  const auto device = device_for(options);
  const auto address = options.store_host + ":" + std::to_string(options.store_port);
  std::unique_ptr<ProcessGroup> group(new ProcessGroup());
  group->rank_ = options.rank;
  group->world_size_ = options.world_size;
  group->backend_name_ = options.backend;
  group->store_address_ = address;
  group->device_ = device;
  group->timeout_ = options.timeout;
  group->connection_ = std::make_unique<Connection>();
  for (int r = 0; r < options.world_size; ++r) group->parent_ranks_.push_back(r);
  auto& connection = *group->connection_;
  connection.store_host = options.store_host;
  connection.device = options.device;
  connection.store = open_store(options, address);
  join(*connection.store, options, address);
  // The backend's keys live under their own prefix so that they never meet our join keys.
  auto backend_store = c10::make_intrusive<c10d::PrefixStore>("tiller/" + options.backend, connection.store);
  const auto where = "process group (" + options.backend + ", rank " + std::to_string(options.rank) + " of " +
                     std::to_string(options.world_size) + ", store " + address + ")";
  try {
    if (options.backend == "gloo") {
      connection.backend = make_gloo(backend_store, options);
    } else {
#ifdef TILLER_CUDA
      connection.backend = make_nccl(backend_store, options, device);
#endif
    }
  } catch (const c10::Error& e) {
    throw std::runtime_error(where + ": connecting the ranks failed within " + ms(options.timeout) + ": " +
                             message_of(e));
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(where + ": connecting the ranks failed within " + ms(options.timeout) + ": " +
                             e.what());
  }
  return group;
}

std::unique_ptr<ProcessGroup> ProcessGroup::subgroup(const std::vector<int>& ranks, const std::string& name) const {
  if (ranks.empty()) throw std::invalid_argument("subgroup " + name + ": no ranks");
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] < 0 || ranks[i] >= world_size_ || (i > 0 && ranks[i] <= ranks[i - 1])) {
      throw std::invalid_argument("subgroup " + name + ": ranks must be ascending ranks of 0.." +
                                  std::to_string(world_size_ - 1));
    }
  }
  const auto self = std::find(ranks.begin(), ranks.end(), rank_);
  if (self == ranks.end()) {
    throw std::invalid_argument("subgroup " + name + ": rank " + std::to_string(rank_) + " is not among its ranks");
  }
  std::unique_ptr<ProcessGroup> group(new ProcessGroup());
  group->rank_ = static_cast<int>(self - ranks.begin());
  group->world_size_ = static_cast<int>(ranks.size());
  group->backend_name_ = backend_name_;
  group->store_address_ = store_address_;
  group->device_ = device_;
  group->timeout_ = timeout_;
  group->name_ = name;
  for (auto r : ranks) group->parent_ranks_.push_back(parent_ranks_[static_cast<size_t>(r)]);
  group->connection_ = std::make_unique<Connection>();
  auto& connection = *group->connection_;
  connection.store = connection_->store;
  connection.store_host = connection_->store_host;
  connection.device = connection_->device;
  if (ranks.size() == 1) return group;
  ProcessGroupOptions options;
  options.store_host = connection.store_host;
  options.rank = group->rank_;
  options.world_size = group->world_size_;
  options.backend = backend_name_;
  options.timeout = timeout_;
  options.device = connection.device;
  auto store = c10::make_intrusive<c10d::PrefixStore>("tiller/group/" + name, connection.store);
  try {
    if (backend_name_ == "gloo") {
      connection.backend = make_gloo(store, options);
    } else {
#ifdef TILLER_CUDA
      connection.backend = make_nccl(store, options, device_);
#endif
    }
  } catch (const c10::Error& e) {
    throw std::runtime_error("subgroup " + name + " (rank " + std::to_string(group->rank_) + " of " +
                             std::to_string(group->world_size_) + "): connecting failed within " + ms(timeout_) +
                             ": " + message_of(e));
  }
  return group;
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::check_tensor(const at::Tensor& t, const char* field) const {
  if (!t.defined()) throw std::invalid_argument(std::string(field) + ": undefined tensor");
  if (t.device() != device_) {
    throw std::invalid_argument(std::string(field) + ": is on " + t.device().str() + ", but this " + backend_name_ +
                                " group works on " + device_.str());
  }
  if (!t.is_contiguous()) throw std::invalid_argument(std::string(field) + ": must be contiguous");
}

std::string ProcessGroup::describe(const char* collective) const {
  const auto group = name_ == "world" ? std::string() : "group " + name_ + ", ";
  return std::string(collective) + " on rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) +
         " (" + group + backend_name_ + ", store " + store_address_ + ", timeout " + ms(timeout_) + ") failed: ";
}

std::map<std::string, ProcessGroup::Traffic> ProcessGroup::traffic() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return traffic_;
}

void ProcessGroup::reset_traffic() {
  std::lock_guard<std::mutex> lock(mutex_);
  traffic_.clear();
}

void ProcessGroup::run(const char* collective, int64_t bytes, const std::function<void()>& issue_and_wait) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& t = traffic_[collective];
  ++t.calls;
  t.bytes += bytes;
  try {
#ifdef TILLER_CUDA
    std::optional<c10::cuda::CUDAGuard> guard;
    if (device_.is_cuda()) guard.emplace(device_);
#endif
    const auto started = std::chrono::steady_clock::now();
    issue_and_wait();
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  } catch (const c10::Error& e) {
    throw std::runtime_error(describe(collective) + message_of(e));
  } catch (const std::exception& e) {
    // gloo's own exceptions (e.g. a peer that closed its connection) are not c10::Error.
    throw std::runtime_error(describe(collective) + e.what());
  }
}

// gloo has no AVG; sum then divide, in the tensor's own dtype (bf16 rounds once more than NCCL's
// native avg would).
void ProcessGroup::all_reduce(at::Tensor& tensor, ReduceOp op) {
  check_tensor(tensor, "tensor");
  if (op == ReduceOp::kAvg && !at::isFloatingType(tensor.scalar_type())) {
    throw std::invalid_argument(std::string("op: avg needs a floating dtype, got ") +
                                c10::toString(tensor.scalar_type()));
  }
  if (!connection_->backend) return;  // one rank: the sum (or avg, max, min) of one tensor is itself
  const bool emulate_avg = op == ReduceOp::kAvg && backend_name_ == "gloo";
  run("allReduce", static_cast<int64_t>(tensor.nbytes()), [&] {
    c10d::AllreduceOptions options;
    options.reduceOp = to_c10d(emulate_avg ? ReduceOp::kSum : op);
    options.timeout = timeout_;
    std::vector<at::Tensor> tensors{tensor};
    connection_->backend->allreduce(tensors, options)->wait();
    if (emulate_avg) tensor.div_(world_size_);
  });
}

void ProcessGroup::broadcast(at::Tensor& tensor, int root) {
  check_tensor(tensor, "tensor");
  if (root < 0 || root >= world_size_) {
    throw std::invalid_argument("root: " + std::to_string(root) + " is out of range for worldSize " +
                                std::to_string(world_size_));
  }
  if (!connection_->backend) return;
  run("broadcast", static_cast<int64_t>(tensor.nbytes()), [&] {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = timeout_;
    std::vector<at::Tensor> tensors{tensor};
    connection_->backend->broadcast(tensors, options)->wait();
  });
}

void ProcessGroup::all_gather_into(at::Tensor& out, const at::Tensor& in) {
  check_tensor(out, "out");
  check_tensor(in, "in");
  if (out.scalar_type() != in.scalar_type()) throw std::invalid_argument("out: dtype differs from in's");
  if (in.dim() == 0 || out.dim() != in.dim() || out.size(0) != in.size(0) * world_size_ ||
      out.sizes().slice(1) != in.sizes().slice(1)) {
    throw std::invalid_argument("out: shape " + c10::str(out.sizes()) + " must be in's " + c10::str(in.sizes()) +
                                " with the first dimension times worldSize " + std::to_string(world_size_));
  }
  if (!connection_->backend) {
    out.copy_(in);
    return;
  }
  run("allGather", static_cast<int64_t>(out.nbytes()), [&] {
    c10d::AllgatherOptions options;
    options.timeout = timeout_;
    auto input = in;
    connection_->backend->_allgather_base(out, input, options)->wait();
  });
}

void ProcessGroup::reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) {
  check_tensor(out, "out");
  check_tensor(in, "in");
  if (out.scalar_type() != in.scalar_type()) throw std::invalid_argument("out: dtype differs from in's");
  if (in.dim() == 0 || out.dim() != in.dim() || in.size(0) != out.size(0) * world_size_ ||
      out.sizes().slice(1) != in.sizes().slice(1)) {
    throw std::invalid_argument("in: shape " + c10::str(in.sizes()) + " must be out's " + c10::str(out.sizes()) +
                                " with the first dimension times worldSize " + std::to_string(world_size_));
  }
  if (op == ReduceOp::kAvg && !at::isFloatingType(in.scalar_type())) {
    throw std::invalid_argument(std::string("op: avg needs a floating dtype, got ") +
                                c10::toString(in.scalar_type()));
  }
  if (!connection_->backend) {
    out.copy_(in);
    return;
  }
  const bool emulate_avg = op == ReduceOp::kAvg && backend_name_ == "gloo";
  run("reduceScatter", static_cast<int64_t>(in.nbytes()), [&] {
    c10d::ReduceScatterOptions options;
    options.reduceOp = to_c10d(emulate_avg ? ReduceOp::kSum : op);
    options.timeout = timeout_;
    auto input = in;
    connection_->backend->_reduce_scatter_base(out, input, options)->wait();
    if (emulate_avg) out.div_(world_size_);
  });
}

void ProcessGroup::all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& out_splits,
                              const std::vector<int64_t>& in_splits) {
  check_tensor(out, "out");
  check_tensor(in, "in");
  if (out.scalar_type() != in.scalar_type()) throw std::invalid_argument("out: dtype differs from in's");
  const auto size = static_cast<size_t>(world_size_);
  if (in_splits.size() != size || out_splits.size() != size) {
    throw std::invalid_argument("all-to-all: " + std::to_string(in_splits.size()) + " input and " +
                                std::to_string(out_splits.size()) + " output splits for " + std::to_string(size) +
                                " ranks");
  }
  int64_t in_rows = 0, out_rows = 0;
  for (size_t r = 0; r < size; ++r) {
    if (in_splits[r] < 0 || out_splits[r] < 0) throw std::invalid_argument("all-to-all: negative split");
    in_rows += in_splits[r];
    out_rows += out_splits[r];
  }
  if (in.dim() == 0 || in.size(0) != in_rows || out.dim() != in.dim() || out.size(0) != out_rows ||
      out.sizes().slice(1) != in.sizes().slice(1)) {
    throw std::invalid_argument("all-to-all: in " + c10::str(in.sizes()) + " and out " + c10::str(out.sizes()) +
                                " do not hold " + std::to_string(in_rows) + " and " + std::to_string(out_rows) +
                                " rows of the same shape");
  }
  if (!connection_->backend) {
    out.copy_(in);
    return;
  }
  run("allToAll", static_cast<int64_t>(in.nbytes()), [&] {
    c10d::AllToAllOptions options;
    options.timeout = timeout_;
    auto input = in;
    auto output_splits = out_splits;
    auto input_splits = in_splits;
    connection_->backend->alltoall_base(out, input, output_splits, input_splits, options)->wait();
  });
}

void ProcessGroup::barrier() {
  if (!connection_->backend) return;
  run("barrier", 0, [&] {
    c10d::BarrierOptions options;
    options.timeout = timeout_;
    if (device_.is_cuda()) options.device = device_;
    connection_->backend->barrier(options)->wait();
  });
}

void ProcessGroup::exchange(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives) {
  int64_t bytes = 0;
  for (const auto* list : {&sends, &receives}) {
    for (const auto& t : *list) {
      check_tensor(t.tensor, list == &sends ? "send" : "receive");
      if (t.peer < 0 || t.peer >= world_size_ || t.peer == rank_) {
        throw std::invalid_argument("exchange: peer " + std::to_string(t.peer) + " is not another rank of " +
                                    std::to_string(world_size_));
      }
    }
  }
  for (const auto& t : sends) bytes += static_cast<int64_t>(t.tensor.nbytes());
  if (sends.empty() && receives.empty()) return;
  run("sendRecv", bytes, [&] {
    auto& backend = *connection_->backend;
    constexpr int kTag = 0;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    // NCCL runs point-to-point kernels on one stream: a send waits for its receive, so sends and
    // receives between two ranks must be issued as one group or they wait on each other.
    const bool group = backend_name_ == "nccl";
    if (group) backend.startCoalescing();
    for (const auto& t : sends) {
      std::vector<at::Tensor> one{t.tensor};
      works.push_back(backend.send(one, t.peer, kTag));
    }
    for (const auto& t : receives) {
      std::vector<at::Tensor> one{t.tensor};
      works.push_back(backend.recv(one, t.peer, kTag));
    }
    if (group) {
      backend.endCoalescing()->wait(timeout_);
    } else {
      for (auto& w : works) w->wait(timeout_);
    }
  });
}

}  // namespace tiller::parallel
