// The engine's process group: how ranks exchange tensors among themselves, through c10d (gloo on
// CPU, NCCL on CUDA), never through the controller. Rendezvous goes through a c10d TCPStore that
// one rank hosts (rank 0 by default) and every other rank connects to.
//
// Collectives must be called in the same order on every rank (c10d matches them by order). Calls
// from several threads on one group are serialised here, but their order is then the order in
// which they take the lock; callers that need a fixed order issue calls from one thread (the
// addon queues them in call order, see addon/dist.cc).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tiller::parallel {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

// "sum" | "avg" | "max" | "min"; throws naming `op` otherwise.
ReduceOp reduce_op_from_name(const std::string& name);

struct ProcessGroupOptions {
  std::string store_host = "127.0.0.1";
  int store_port = 29500;
  int rank = 0;
  int world_size = 1;
  std::string backend = "gloo";  // "gloo" | "nccl"
  // Bounds every blocking step: connecting to the store, waiting for the other ranks to join, and
  // each collective afterwards.
  std::chrono::milliseconds timeout{30000};
  // Whether this rank starts the TCPStore server on store_port. Default: rank 0 does. False on
  // every rank when the controller already runs a store at store_host:store_port.
  bool host_store = true;
  // NCCL only: the GPU this rank drives, "cuda:N". Ignored by gloo.
  std::string device = "cpu";
};

// Whether this build can create a group with that backend (nccl needs a TILLER_CUDA build).
bool backend_available(const std::string& backend);

class ProcessGroup {
 public:
  // Connects to (or hosts) the store and blocks until all world_size ranks have joined, then builds
  // the backend's connections. Throws std::invalid_argument for bad options (the message names the
  // field) and std::runtime_error naming host:port and the missing ranks on a timeout.
  static std::unique_ptr<ProcessGroup> create(const ProcessGroupOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  const std::string& backend() const { return backend_name_; }
  // Where tensors must live for this backend: cpu for gloo, this rank's GPU for nccl.
  at::Device device() const { return device_; }

  // In place on every rank. tensor: any shape, contiguous, on device(). avg needs a floating dtype.
  void all_reduce(at::Tensor& tensor, ReduceOp op);
  // In place: on return every rank holds root's tensor. tensor: same shape and dtype on all ranks.
  void broadcast(at::Tensor& tensor, int root);
  // out: [world_size * n, ...] receives every rank's in: [n, ...], rank r at rows [r*n, (r+1)*n).
  void all_gather_into(at::Tensor& out, const at::Tensor& in);
  // in: [world_size * n, ...] on every rank; out: [n, ...] on rank r = op over ranks of in's rows
  // [r*n, (r+1)*n).
  void reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op);
  // in: [sum(in_splits), ...]; rank r's rows [offset_r, offset_r + in_splits[r]) go to rank r.
  // out: [sum(out_splits), ...] receives out_splits[s] rows from each rank s, in rank order. Every
  // rank's in_splits[r] equals rank r's out_splits[this rank] (the caller exchanges counts first).
  void all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& out_splits,
                  const std::vector<int64_t>& in_splits);
  // Returns once every rank has called barrier().
  void barrier();
  // Point to point (pipeline stages): each send's tensor goes to rank `peer`, each receive's
  // tensor (allocated by the caller with the sender's shape and dtype) is filled from rank `peer`.
  // All are issued before any is waited on, so two stages sending to each other at once do not
  // deadlock; transfers between one pair in one direction match in call order.
  struct Transfer {
    at::Tensor tensor;
    int peer = 0;
  };
  void exchange(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives);

  // A group of some of this group's ranks on the same store, its keys under their own prefix
  // (`name`, unique per group: "tensor/0", "data/1", ...). `ranks`: ascending ranks of this group,
  // this rank among them; its rank in the new group is its place in `ranks`. Every listed rank
  // must create it, in the same order as its other subgroups (the backend connects all members
  // here); the others never do. A one-rank group has no backend: its collectives are local.
  std::unique_ptr<ProcessGroup> subgroup(const std::vector<int>& ranks, const std::string& name) const;
  // Collectives run on this group (one-rank groups run none): calls and payload bytes per rank,
  // by kind ("allReduce", "broadcast", "allGather", "reduceScatter", "allToAll", "sendRecv"; all-gather
  // counts the output, reduce-scatter and all-to-all the input, send/receive the bytes sent). For benchmarks and metrics; read and reset between steps.
  struct Traffic {
    int64_t calls = 0, bytes = 0;
    double seconds = 0;  // wall time issuing and waiting (waiting for the slowest peer included)
  };
  std::map<std::string, Traffic> traffic() const;
  void reset_traffic();

  // A number for the next family of subgroups made on this group (0, 1, ...): every rank makes the
  // same families in the same order, so the numbers agree, and a second mesh's subgroups get store
  // keys of their own instead of meeting the first mesh's stale ones.
  int next_generation() const { return generation_++; }

  // The group's ranks as ranks of the group it was made from (0..n-1 for a root group).
  const std::vector<int>& parent_ranks() const { return parent_ranks_; }
  const std::string& name() const { return name_; }

 private:
  struct Connection;  // the c10d store and backend, kept out of this header
  ProcessGroup() = default;
  void check_tensor(const at::Tensor& t, const char* field) const;
  // Waits for work and turns a c10d timeout into an error naming this group and the collective.
  void run(const char* collective, int64_t bytes, const std::function<void()>& issue_and_wait);
  std::string describe(const char* collective) const;  // "allReduce on rank r of n (...) failed: "

  mutable std::mutex mutex_;  // one collective at a time on this group
  mutable std::atomic<int> generation_{0};
  std::map<std::string, Traffic> traffic_;
  int rank_ = 0;
  int world_size_ = 1;
  std::string backend_name_;
  std::string store_address_;  // "host:port", for error messages
  std::string name_ = "world";
  std::vector<int> parent_ranks_;
  at::Device device_{at::kCPU};
  std::chrono::milliseconds timeout_{30000};
  std::unique_ptr<Connection> connection_;
};

}  // namespace tiller::parallel
