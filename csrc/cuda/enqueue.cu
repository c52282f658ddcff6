// CUDA entry point for blipx::enqueue_: checks, then the two-launch ring write of
// blipx/enqueue.cuh on the current stream. The pointer never leaves the device.
#include <ATen/Dispatch.h>

#include "blipx/enqueue.cuh"
#include "checks.h"
#include "device.h"

namespace blipx {
namespace {

void enqueue_cuda(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& feats) {
  const auto shape = check_enqueue_args(queue, ptr, feats);
  const device::Guard guard(queue.device());
  if (!queue.is_contiguous()) {
    // Strided queue: same semantics via ATen, still on the device and sync-free.
    const auto start = at::remainder(ptr.reshape({1}), shape.queue_size);
    const auto idx = at::remainder(start + at::arange(shape.rows, ptr.options()), shape.queue_size);
    queue.index_copy_(0, idx, feats);
    ptr.copy_(at::remainder(start + shape.rows, shape.queue_size).reshape(ptr.sizes()));
    return;
  }
  const at::Tensor src = feats.contiguous();
  auto stream = device::stream();
  // Byte-width dispatch: a ring write only moves bits, so every dtype maps to a same-size word.
  const auto elem = queue.element_size();
  const int64_t w = shape.width;
  cudaError_t err = cudaSuccess;
  switch (elem) {
    case 1: err = enqueue_launch(static_cast<uint8_t*>(queue.data_ptr()), ptr.data_ptr<int64_t>(),
                                 static_cast<const uint8_t*>(src.const_data_ptr()), shape.queue_size, w, shape.rows, stream); break;
    case 2: err = enqueue_launch(static_cast<uint16_t*>(queue.data_ptr()), ptr.data_ptr<int64_t>(),
                                 static_cast<const uint16_t*>(src.const_data_ptr()), shape.queue_size, w, shape.rows, stream); break;
    case 4: err = enqueue_launch(static_cast<uint32_t*>(queue.data_ptr()), ptr.data_ptr<int64_t>(),
                                 static_cast<const uint32_t*>(src.const_data_ptr()), shape.queue_size, w, shape.rows, stream); break;
    case 8: err = enqueue_launch(static_cast<uint64_t*>(queue.data_ptr()), ptr.data_ptr<int64_t>(),
                                 static_cast<const uint64_t*>(src.const_data_ptr()), shape.queue_size, w, shape.rows, stream); break;
    default: BLIPX_CHECK(false, "enqueue_", "unsupported queue element size ", elem, " bytes (dtype ", queue.scalar_type(), ")");
  }
  device::check(err);
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) { BLIPX_DEVICE_KERNEL(m, "enqueue_", &blipx::enqueue_cuda); }
