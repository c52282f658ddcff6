// The emulated build's version of csrc/cuda/device.h: the CUDA entry points compiled as host
// C++ take CPU tensors, launch on the SIMT emulator and register as ops of the `blipx_simt`
// library (schemas inferred from the C++ signatures), which tests/simt/backend.py routes
// blipx's ops to.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "blipx/launch.cuh"
#include "blipx/philox.cuh"
#include "simt.h"

namespace blipx::device {

inline bool holds(const at::Tensor& t) { return t.is_cpu(); }

struct Guard {
  explicit Guard(const at::Device&) {}
};

inline cudaStream_t stream() { return nullptr; }

inline DeviceLimits limits() { return {simt::config().sm_count, simt::config().smem_optin}; }

// CUDA generator semantics on a CPU generator: a stream keeps its seed and advances its offset by
// `increment` per call, so a kernel that ignores the offset, or an increment that is too small,
// shows up as repeated or overlapping draws (see simt_device.cpp).
PhiloxArgs philox(const std::optional<at::Generator>& generator, const at::Device& device, uint64_t increment);

void check(cudaError_t err);

}  // namespace blipx::device

#define BLIPX_DEVICE_KERNELS(m) TORCH_LIBRARY_FRAGMENT(blipx_simt, m)
#define BLIPX_DEVICE_KERNEL(m, name, fn) m.def(name, fn)
