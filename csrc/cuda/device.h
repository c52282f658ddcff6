// The device-specific half of the CUDA entry points (csrc/cuda/*.cu): which tensors the kernels
// take, the device guard, the stream, the device limits the launch set-up reads, the Philox state
// of the generator, the launch-error check and the kernel registration. The SIMT emulator's test
// build (tests/simt) compiles these same .cu files as host C++ with BLIPX_SIMT defined and its
// own version of this interface (tests/simt/simt_device.h), so the emulated kernels run behind
// the very entry code -- checks, allocation, strides, dispatch, launch configuration -- that
// the GPU runs.
#pragma once
#if defined(BLIPX_SIMT)
#include "simt_device.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <mutex>
#include <optional>

#include "blipx/launch.cuh"
#include "blipx/philox.cuh"
#include "philox_state.h"

namespace blipx::device {

inline bool holds(const at::Tensor& t) { return t.is_cuda(); }

using Guard = c10::cuda::CUDAGuard;

inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

inline DeviceLimits limits() {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  return {prop->multiProcessorCount, static_cast<int>(prop->sharedMemPerBlockOptin)};
}

// Takes `increment` 32-bit outputs per thread from the generator (ATen's philox_cuda_state);
// under CUDA-graph capture the state comes as device pointers.
inline PhiloxArgs philox(const std::optional<at::Generator>& generator, const at::Device& device, uint64_t increment) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
  std::lock_guard<std::mutex> lock(gen->mutex_);  // ATen's note "Acquire lock when using random generators"
  return to_philox_args(gen->philox_cuda_state(increment));
}

inline void check(cudaError_t err) { C10_CUDA_CHECK(err); }

}  // namespace blipx::device

#define BLIPX_DEVICE_KERNELS(m) TORCH_LIBRARY_IMPL(blipx, CUDA, m)
#define BLIPX_DEVICE_KERNEL(m, name, fn) m.impl(name, fn)
#endif
