// Bytes of live CPU tensors, counted: the CPU analogue of CUDA's caching-allocator statistics.
// The engine installs a counting allocator in front of libtorch's default CPU allocator once (at
// addon load); every CPU tensor allocated after that is counted until it is freed. On CPU runs
// this is what memory_of reports as the device's allocated and peak bytes (the whole process's
// CPU tensors, as CUDA's figures cover the whole device).
#pragma once

#include <cstdint>

namespace tiller::train {

void install_counting_cpu_allocator();

struct CpuTensorBytes {
  bool counting = false;  // install_counting_cpu_allocator ran
  int64_t current = 0, peak = 0;
};
CpuTensorBytes cpu_tensor_bytes();

// The peak restarts from the current bytes (as CUDA's resetPeakStats).
void reset_cpu_tensor_peak();

}  // namespace tiller::train
