// The two spots where kernel source depends on the compiler: the launch and the dynamic
// shared-memory declaration. nvcc gets <<<...>>> and `extern __shared__`; the SIMT emulator's
// test build (tests/simt, BLIPX_SIMT) gets its own launch and shared memory, so the kernels
// themselves compile unchanged for both. Also the device limits the launch set-up reads, as a
// torch-free struct. `kernel` must be one token (a function or function-pointer name): bind a
// template instantiation to a local first (its commas would split the macro's arguments).
#pragma once
#include <cuda_runtime.h>

namespace blipx {

struct DeviceLimits {
  int sm_count;    // multiProcessorCount
  int smem_optin;  // sharedMemPerBlockOptin, bytes
};

}  // namespace blipx

#if defined(BLIPX_SIMT)
#define BLIPX_LAUNCH(kernel, grid, block, smem, stream, ...) SIMT_LAUNCH(kernel, grid, block, smem, stream, __VA_ARGS__)
#define BLIPX_DYNAMIC_SHARED(type, name) SIMT_DYNAMIC_SHARED(type, name)
#else
#define BLIPX_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define BLIPX_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
