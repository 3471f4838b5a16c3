#include "train/cpu_memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstring>
#include <mutex>

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

// What a counted allocation carries: the default allocator's own pointer (freed with it) and its size.
struct Counted {
  c10::DataPtr inner;
  int64_t bytes;
};

void free_counted(void* context) {
  auto* counted = static_cast<Counted*>(context);
  g_current.fetch_sub(counted->bytes, std::memory_order_relaxed);
  delete counted;  // frees the memory through the default allocator's deleter
}

class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    auto inner = base_->allocate(n);
    void* data = inner.get();
    const auto device = inner.device();
    auto* counted = new Counted{std::move(inner), static_cast<int64_t>(n)};
    add(counted->bytes);
    return {data, counted, &free_counted, device};
  }

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
