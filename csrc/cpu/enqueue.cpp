// CPU kernel for blipx::enqueue_: at most two contiguous block copies (before and after the
// wrap-around point). Reading the pointer is free on the CPU; on CUDA it stays on the device.
#include <torch/library.h>

#include <cstring>

#include "checks.h"

namespace blipx {
namespace {

void enqueue_cpu(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& feats) {
  const auto shape = check_enqueue_args(queue, ptr, feats);
  const int64_t q = shape.queue_size, n = shape.rows;
  int64_t* p = ptr.data_ptr<int64_t>();
  const int64_t start = ((*p % q) + q) % q;  // tolerate a pointer outside [0, Q)
  if (n > 0) {
    if (queue.is_contiguous()) {
      const at::Tensor src = feats.contiguous();
      const int64_t row_bytes = shape.width * static_cast<int64_t>(queue.element_size());
      auto* dst = static_cast<char*>(queue.data_ptr());
      const auto* from = static_cast<const char*>(src.const_data_ptr());
      const int64_t first = std::min(n, q - start);
      std::memcpy(dst + start * row_bytes, from, first * row_bytes);
      if (first < n) std::memcpy(dst, from + first * row_bytes, (n - first) * row_bytes);
    } else {
      // A strided queue (e.g. the official [D, Q] layout viewed as [Q, D]) takes the indexed path.
      const auto idx = at::remainder(at::arange(start, start + n, ptr.options()), q);
      queue.index_copy_(0, idx, feats);
    }
  }
  *p = (start + n) % q;
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_IMPL(blipx, CPU, m) { m.impl("enqueue_", &blipx::enqueue_cpu); }
