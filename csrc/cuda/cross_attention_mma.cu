// CUDA entry points for blipx::cross_attention_mma_fwd / cross_attention_mma_bwd, the tensor-core
// kernels (bf16 / fp16): the same schemas, outputs and semantics as cross_attention_fwd / _bwd (so
// either backward is the gradient of either forward). Argument checks, aligned inputs for
// cp.async, then the shared host side (cross_attention_entry.h). No host sync. Kernels:
// blipx/cross_attention_mma.cuh.
#include <type_traits>

#include "blipx/cross_attention_mma.cuh"
#include "checks.h"
#include "cross_attention_entry.h"
#include "device.h"

namespace blipx {
namespace {

// cp.async moves 16-byte chunks, so every row the kernel reads must start 16-byte aligned: base
// pointer, and each stride of a dim with more than one index, multiples of 16 bytes (8 elements),
// and D a multiple of 8 (else the last chunk would run past the row). Inputs that are not so (a
// head dim like 36, a sliced view) get an aligned copy, the head dim zero-padded; the kernel
// reads only chunks below the true head dim plus those zeros.
at::Tensor aligned_rows(const at::Tensor& t) {
  const int64_t d = t.size(-1);
  bool ok = d % 8 == 0 && t.stride(-1) == 1 && is_aligned(t.data_ptr(), 16);
  for (int i = 0; i < 3 && ok; ++i) ok = t.size(i) <= 1 || t.stride(i) % 8 == 0;
  if (ok) return t;
  if (d % 8 == 0) return t.clone(at::MemoryFormat::Contiguous);
  return at::constant_pad_nd(t, {0, (d + 7) / 8 * 8 - d}, 0);
}

// The checks both entry points add to cross_attention's.
CrossAttentionShape check_mma_entry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const auto sh = check_cross_attention_mma_args(q, k, v, key_padding_mask, scale);
  BLIPX_CHECK(device::holds(q), xattn::kOp, "q must be a CUDA tensor for the CUDA kernel");
  BLIPX_CHECK(sh.head_dim <= xattn::kMaxHeadDim, xattn::kOp, "head dim D = ", sh.head_dim,
              " is not supported by the CUDA kernel (D <= ", xattn::kMaxHeadDim, ")");
  // Query-row blocks of 64 are gridDim.y.
  BLIPX_CHECK(sh.groups * sh.q_len <= int64_t{65535} * 64, xattn::kOp, "G * Lq = ", sh.groups * sh.q_len,
              " query rows per image exceed the tensor-core kernels' grid (", int64_t{65535} * 64, ")");
  return sh;
}

std::tuple<at::Tensor, at::Tensor> cross_attention_mma_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& v,
                                                                const std::optional<at::Tensor>& key_padding_mask,
                                                                double scale) {
  const auto sh = check_mma_entry(q, k, v, key_padding_mask, scale);
  const device::Guard guard(q.device());
  return xattn::run_fwd(aligned_rows(q), aligned_rows(k), aligned_rows(v), key_padding_mask, scale, sh,
                        [](auto t, auto kd, const CrossAttnParams& p, auto stream) {
                          using T = decltype(t);
                          if constexpr (std::is_same_v<T, float>) {
                            return cudaErrorInvalidValue;  // refused by the checks above
                          } else {
                            return cross_attn_mma_fwd_launch<T, decltype(kd)::value>(p, stream);
                          }
                        });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_mma_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const auto sh = check_mma_entry(q, k, v, key_padding_mask, scale);
  check_cross_attention_bwd_args(dout, q, out, lse);
  const device::Guard guard(q.device());
  // out is read element by element (for delta), so it needs no aligned copy.
  return xattn::run_bwd(aligned_rows(dout), aligned_rows(q), aligned_rows(k), aligned_rows(v), key_padding_mask, out,
                        lse, scale, sh, [](auto t, auto kd, const CrossAttnParams& p, auto stream) {
                          using T = decltype(t);
                          if constexpr (std::is_same_v<T, float>) {
                            return cudaErrorInvalidValue;  // refused by the checks above
                          } else {
                            return cross_attn_mma_bwd_launch<T, decltype(kd)::value>(p, stream);
                          }
                        });
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) {
  BLIPX_DEVICE_KERNEL(m, "cross_attention_mma_fwd", &blipx::cross_attention_mma_fwd_cuda);
  BLIPX_DEVICE_KERNEL(m, "cross_attention_mma_bwd", &blipx::cross_attention_mma_bwd_cuda);
}
