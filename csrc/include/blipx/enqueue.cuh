// Feature-queue ring write with the pointer kept on the device: rows (ptr + i) % Q <- feats[i],
// then ptr = (ptr + N) % Q. Two launches on one stream (the copy must finish reading ptr before
// it advances), both capturable in a CUDA graph; no host sync.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "blipx/launch.cuh"

namespace blipx {

// blipx-design: occupancy >= 75% -- grid-stride copy with one element in flight per thread: needs many warps (<= 40 regs)
template <typename T>
__global__ void enqueue_rows_kernel(T* __restrict__ queue, const int64_t* __restrict__ ptr, const T* __restrict__ feats,
                                    int64_t queue_size, int64_t width, int64_t rows) {
  const int64_t start = ((*ptr % queue_size) + queue_size) % queue_size;
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width;
    const int64_t c = i - r * width;
    int64_t dst = start + r;
    if (dst >= queue_size) dst -= queue_size;
    queue[dst * width + c] = feats[i];
  }
}

// blipx-design: occupancy >= 0% -- a single thread (<<<1, 1>>>) advancing the pointer: occupancy is moot
template <typename I>
__global__ void enqueue_advance_kernel(I* ptr, int64_t queue_size, int64_t rows) {
  const int64_t start = ((*ptr % queue_size) + queue_size) % queue_size;
  *ptr = (start + rows) % queue_size;
}

template <typename T>
cudaError_t enqueue_launch(T* queue, int64_t* ptr, const T* feats, int64_t queue_size, int64_t width, int64_t rows,
                           cudaStream_t stream) {
  const int64_t total = rows * width;
  if (total > 0) {
    constexpr int threads = 256;
    const int64_t want = (total + threads - 1) / threads;
    const unsigned blocks = static_cast<unsigned>(want < 4096 ? want : 4096);
    const auto rows_kernel = enqueue_rows_kernel<T>;
    BLIPX_LAUNCH(rows_kernel, blocks, threads, 0, stream, queue, ptr, feats, queue_size, width, rows);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  const auto advance_kernel = enqueue_advance_kernel<int64_t>;
  BLIPX_LAUNCH(advance_kernel, 1, 1, 0, stream, ptr, queue_size, rows);
  return cudaGetLastError();
}

}  // namespace blipx
