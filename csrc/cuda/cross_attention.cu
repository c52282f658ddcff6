// CUDA entry points for blipx::cross_attention_fwd / cross_attention_bwd (the FMA kernels):
// argument checks, then the shared host side (cross_attention_entry.h: output allocation, strides
// into CrossAttnParams, dispatch over dtype x head dim, launch on the current stream). No host
// sync. Kernels: blipx/cross_attention.cuh.
#include "blipx/cross_attention.cuh"
#include "checks.h"
#include "cross_attention_entry.h"
#include "device.h"

namespace blipx {
namespace {

std::tuple<at::Tensor, at::Tensor> cross_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v,
                                                            const std::optional<at::Tensor>& key_padding_mask,
                                                            double scale) {
  const auto sh = check_cross_attention_args(q, k, v, key_padding_mask, scale, /*allow_double=*/false);
  return xattn::run_fwd(q, k, v, key_padding_mask, scale, sh, [](auto t, auto kd, const CrossAttnParams& p, auto stream) {
    return cross_attn_fwd_launch<decltype(t), decltype(kd)::value>(p, stream);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const auto sh = check_cross_attention_args(q, k, v, key_padding_mask, scale, /*allow_double=*/false);
  check_cross_attention_bwd_args(dout, q, out, lse);
  return xattn::run_bwd(dout, q, k, v, key_padding_mask, out, lse, scale, sh,
                        [](auto t, auto kd, const CrossAttnParams& p, auto stream) {
                          return cross_attn_bwd_launch<decltype(t), decltype(kd)::value>(p, stream);
                        });
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) {
  BLIPX_DEVICE_KERNEL(m, "cross_attention_fwd", &blipx::cross_attention_fwd_cuda);
  BLIPX_DEVICE_KERNEL(m, "cross_attention_bwd", &blipx::cross_attention_bwd_cuda);
}
