// Philox seed/offset for blipx's random kernels, torch-free. Seed and offset come by value or,
// under CUDA-graph capture, through device pointers read by the kernel (the contract of ATen's
// PhiloxCudaState), so graph replays draw fresh numbers. csrc/cuda/philox_state.h fills it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace blipx {

struct PhiloxArgs {
  uint64_t seed = 0;
  uint64_t offset = 0;
  const int64_t* seed_ptr = nullptr;    // captured: seed lives on the device
  const int64_t* offset_ptr = nullptr;  // captured: base offset on the device ...
  uint64_t offset_intragraph = 0;       // ... plus this per-kernel increment
  bool captured = false;
};

__device__ __forceinline__ void philox_unpack(const PhiloxArgs& a, uint64_t& seed, uint64_t& offset) {
  if (a.captured) {
    seed = static_cast<uint64_t>(*a.seed_ptr);
    offset = static_cast<uint64_t>(*a.offset_ptr) + a.offset_intragraph;
  } else {
    seed = a.seed;
    offset = a.offset;
  }
}

}  // namespace blipx
