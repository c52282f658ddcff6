// Small kernels that each commit one error the emulator must report (or, for the *_ok cases,
// check its CUDA semantics), run by tests/simt/test_emulator.py through blipx_simt::selftest.
#include <torch/library.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "blipx/launch.cuh"
#include "simt_memory.h"

namespace {

__global__ void barrier_divergence(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void barrier_after_exit(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void shfl_divergent(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shfl_full(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f * threadIdx.x, 1);
}

__global__ void shfl_mismatch(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 2) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __shfl_down_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

__global__ void shfl_outside_mask(float* out) {
  // Lanes 0..15 shuffle among themselves, but xor 16 reads lanes 16..31.
  float v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_xor_sync(0x0000ffffu, v, 16);
  out[threadIdx.x] = v;
}

__global__ void exit_before_barrier(int* out) {
  if (threadIdx.x >= 32) return;  // warp 1 leaves, warp 0 waits for it at the barrier
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void shared_race(int* out) {
  // No barrier between the write and the read of a neighbour's slot.
  __shared__ int s[64];
  s[threadIdx.x] = threadIdx.x;
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void shared_unwritten(int* out) {
  __shared__ int never_written[4];
  // A store the compiler cannot rule out: else it folds the reads of a never-written static to 0.
  if (out[threadIdx.x] == 12345) never_written[0] = 1;
  out[threadIdx.x] = never_written[threadIdx.x % 4];
}

__global__ void dyn_smem_oob(int n, int* out) {
  BLIPX_DYNAMIC_SHARED(int, s);
  s[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x + n];
}

__global__ void global_oob(const float* x, int n, float* out) {
  out[threadIdx.x] = x[threadIdx.x + n];  // reads n floats too far
}

__global__ void just_write(int* out) { out[threadIdx.x] = 1; }

__global__ void big_static_smem(int* out) {
  __shared__ int tile[10000];  // 40000 bytes of static shared memory
  tile[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 32];
}

struct Big {
  char bytes[40000];
};
__global__ void big_params(Big b, int* out) { out[threadIdx.x] = b.bytes[0]; }

// The shuffle semantics of shfl.sync: widths, clamping at segment ends, idx modulo width.
__global__ void shfl_semantics(int* out) {
  const int l = threadIdx.x;
  out[0 * 32 + l] = __shfl_sync(0xffffffffu, l, l + 3, 8);    // (l & ~7) | ((l + 3) & 7)
  out[1 * 32 + l] = __shfl_up_sync(0xffffffffu, l, 3, 16);    // l - 3 unless below the segment
  out[2 * 32 + l] = __shfl_down_sync(0xffffffffu, l, 5, 32);  // l + 5 unless beyond lane 31
  out[3 * 32 + l] = __shfl_xor_sync(0xffffffffu, l, 6, 4);    // xor into a later segment: own value
  out[4 * 32 + l] = static_cast<int>(__ballot_sync(0xffffffffu, l % 3 == 0));
  out[5 * 32 + l] = __any_sync(0xffffffffu, l == 31) + 2 * __all_sync(0xffffffffu, l < 32);
}

int expect_semantics(int row, int l) {
  switch (row) {
    case 0: return (l & ~7) | ((l + 3) & 7);
    case 1: return l % 16 >= 3 ? l - 3 : l;
    case 2: return l + 5 <= 31 ? l + 5 : l;
    case 3: return (l ^ 6) <= ((l & ~3) | 3) ? (l ^ 6) : l;  // earlier segments are readable, later ones not
    case 4: {
      unsigned b = 0;
      for (int j = 0; j < 32; j += 3) b |= 1u << j;
      return static_cast<int>(b);
    }
    default: return 3;
  }
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    cudaGetLastError();  // the failed launch's sticky error: not the next test's
    return e.what();
  }
  return "";
}

std::string selftest(const std::string& name) {
  std::vector<int> ibuf(1024, 0);
  std::vector<float> fbuf(1024, 0.f);
  int* out = ibuf.data();
  if (name == "barrier_divergence") return error_of([&] { SIMT_LAUNCH(barrier_divergence, 1, 64, 0, nullptr, out); });
  if (name == "barrier_after_exit") return error_of([&] { SIMT_LAUNCH(barrier_after_exit, 1, 64, 0, nullptr, out); });
  if (name == "shfl_divergent") return error_of([&] { SIMT_LAUNCH(shfl_divergent, 1, 64, 0, nullptr, fbuf.data()); });
  if (name == "shfl_mismatch") return error_of([&] { SIMT_LAUNCH(shfl_mismatch, 1, 32, 0, nullptr, fbuf.data()); });
  if (name == "shfl_outside_mask") {
    return error_of([&] { SIMT_LAUNCH(shfl_outside_mask, 1, 32, 0, nullptr, fbuf.data()); });
  }
  if (name == "shfl_partial_warp") {  // a full mask in a 48-thread block names lanes 16..31 of warp 1
    return error_of([&] { SIMT_LAUNCH(shfl_full, 1, 48, 0, nullptr, fbuf.data()); });
  }
  if (name == "exit_before_barrier") return error_of([&] { SIMT_LAUNCH(exit_before_barrier, 1, 64, 0, nullptr, out); });
  if (name == "shared_race") {
    // Whether the race shows depends on the schedule: report the values a thread read.
    SIMT_LAUNCH(shared_race, 1, 64, 0, nullptr, out);
    std::string r;
    for (int i = 0; i < 64; ++i) r += std::to_string(out[i]) + ",";
    return r;
  }
  if (name == "shared_poison") {  // reports the bytes a block finds in never-written shared memory
    SIMT_LAUNCH(shared_unwritten, 1, 32, 0, nullptr, out);
    return std::to_string(static_cast<unsigned>(out[0]));
  }
  if (name == "dyn_smem_oob") return error_of([&] { SIMT_LAUNCH(dyn_smem_oob, 1, 64, 64 * 4, nullptr, 64, out); });
  if (name == "global_oob") {
    float* x = static_cast<float*>(simt::device_alloc(64 * sizeof(float), 0));
    auto msg = error_of([&] { SIMT_LAUNCH(global_oob, 1, 64, 0, nullptr, x, 1024, fbuf.data()); });
    simt::device_free(x);
    return msg;
  }
  if (name == "smem_over_48k") {
    SIMT_LAUNCH(dyn_smem_oob, 1, 64, 64 * 1024, nullptr, 0, out);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? "" : simt::last_message();
  }
  if (name == "smem_over_48k_with_attribute") {
    const auto k = dyn_smem_oob;
    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    SIMT_LAUNCH(k, 1, 64, 64 * 1024, nullptr, 0, out);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? "" : simt::last_message();
  }
  if (name == "static_plus_dynamic_smem") {  // fits the opt-in limit alone, not with the static 40000 B
    const auto k = big_static_smem;
    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 140000);
    SIMT_LAUNCH(k, 1, 32, 140000, nullptr, out);
    return cudaGetLastError() == cudaSuccess ? "" : simt::last_message();
  }
  if (name == "too_many_threads") {
    SIMT_LAUNCH(just_write, 1, 2048, 0, nullptr, out);
    return cudaGetLastError() == cudaSuccess ? "" : simt::last_message();
  }
  if (name == "param_too_big") {
    static Big big{};
    SIMT_LAUNCH(big_params, 1, 1, 0, nullptr, big, out);
    return cudaGetLastError() == cudaSuccess ? "" : simt::last_message();
  }
  if (name == "shfl_semantics") {
    SIMT_LAUNCH(shfl_semantics, 1, 32, 0, nullptr, out);
    for (int row = 0; row < 6; ++row) {
      for (int l = 0; l < 32; ++l) {
        if (out[row * 32 + l] != expect_semantics(row, l)) {
          return "row " + std::to_string(row) + " lane " + std::to_string(l) + ": got " +
                 std::to_string(out[row * 32 + l]) + ", want " + std::to_string(expect_semantics(row, l));
        }
      }
    }
    return "";
  }
  throw std::invalid_argument("simt selftest: unknown case " + name);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blipx_simt, m) { m.def("selftest", &selftest); }
