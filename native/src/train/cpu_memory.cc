#include "train/cpu_memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace tiller::train {
namespace {

std::atomic<int64_t> g_current{0}, g_peak{0};
std::atomic<bool> g_counting{false};

void add(int64_t bytes) {
  const auto now = g_current.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  auto peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

// Sizes of the live allocations, by address: the deleter gets the address only. Allocations keep
// the default allocator's own address as their context, so raw_allocate / raw_deallocate (which
// need data == context and a raw deleter) work as with the default allocator.
std::mutex g_mutex;
std::unordered_map<void*, int64_t> g_sizes;
c10::DeleterFnPtr g_base_deleter = nullptr;

void free_counted(void* data) {
  int64_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    const auto it = g_sizes.find(data);
    if (it != g_sizes.end()) {
      bytes = it->second;
      g_sizes.erase(it);
    }
  }
  g_current.fetch_sub(bytes, std::memory_order_relaxed);
  g_base_deleter(data);
}

class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) { g_base_deleter = base->raw_deleter(); }

  c10::DataPtr allocate(size_t n) override {
    auto inner = base_->allocate(n);
    // Only what the default allocator hands out as a plain pointer is counted (all of it, in practice).
    if (n == 0 || !inner.get() || inner.get() != inner.get_context() || inner.get_deleter() != g_base_deleter) {
      return inner;
    }
    const auto device = inner.device();
    void* data = inner.release_context();
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_sizes[data] = static_cast<int64_t>(n);
    }
    add(static_cast<int64_t>(n));
    return {data, data, &free_counted, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_counted; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  c10::Allocator* base_;
};

}  // namespace

void install_counting_cpu_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    static CountingCpuAllocator counting(c10::GetDefaultCPUAllocator());
    // Above the default's registration priority (0), so every later CPU allocation goes through it.
    c10::SetCPUAllocator(&counting, /*priority=*/1);
    g_counting.store(true);
  });
}

CpuTensorBytes cpu_tensor_bytes() {
  return {g_counting.load(), g_current.load(std::memory_order_relaxed), g_peak.load(std::memory_order_relaxed)};
}

void reset_cpu_tensor_peak() { g_peak.store(g_current.load(std::memory_order_relaxed), std::memory_order_relaxed); }

}  // namespace tiller::train
