// The host side shared by the CUDA entry points of the cross-attention kernels
// (cross_attention.cu: FMA kernels; cross_attention_mma.cu: tensor-core kernels): output layout,
// strides into CrossAttnParams, dtype and head-dim dispatch, and the forward / backward bodies
// (checks done by the caller, device guard, allocation, launch on the current stream). No host
// sync. Kernels: blipx/cross_attention.cuh, blipx/cross_attention_mma.cuh.
#pragma once
#include <tuple>
#include <type_traits>

#include "blipx/cross_attention.cuh"
#include "checks.h"
#include "device.h"

namespace blipx::xattn {

constexpr const char* kOp = "cross_attention";
constexpr int kMaxHeadDim = 128;

// The kernels need unit stride on D only; anything else gets a copy.
inline at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

inline Strides3 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// Same layout as the CPU kernels (and the fake kernels): [N0, L, H, D] storage viewed as
// [N0, H, L, D], so merging heads is a view.
inline at::Tensor empty_bhld(const at::Tensor& like, int64_t n0, int64_t h, int64_t l, int64_t d) {
  return at::empty({n0, l, h, d}, like.options()).transpose(1, 2);
}

// Head dims are compiled for 32, 64, 80, 96 and 128; any other D <= 128 runs the next larger
// instantiation with the extra dims zero-padded inside the kernel (exact, only slower).
template <typename F>
void dispatch_head_dim(int64_t d, F&& f) {
  BLIPX_CHECK(d <= kMaxHeadDim, kOp, "head dim D = ", d, " is not supported by the CUDA kernel (D <= ", kMaxHeadDim,
              ")");
  if (d <= 32) f(std::integral_constant<int, 32>{});
  else if (d <= 64) f(std::integral_constant<int, 64>{});
  else if (d <= 80) f(std::integral_constant<int, 80>{});
  else if (d <= 96) f(std::integral_constant<int, 96>{});
  else f(std::integral_constant<int, 128>{});
}

template <typename F>
void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "blipx.cross_attention: unsupported dtype ", st);
  }
}

inline CrossAttnParams base_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& mask, double scale, const CrossAttentionShape& sh) {
  CrossAttnParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.mask = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  p.mask_s0 = mask.defined() ? mask.stride(0) : 0;
  p.mask_s1 = mask.defined() ? mask.stride(1) : 0;
  p.sq = strides_of(q);
  p.sk = strides_of(k);
  p.sv = strides_of(v);
  // Grid dims and row indices are ints; shapes here are far below these limits.
  BLIPX_CHECK(sh.batch * sh.heads < (int64_t{1} << 31) && sh.groups * sh.q_len < (int64_t{1} << 31) &&
                  sh.k_len < (int64_t{1} << 31),
              kOp, "shape too large for the CUDA kernel");
  p.batch = static_cast<int>(sh.batch);
  p.groups = static_cast<int>(sh.groups);
  p.heads = static_cast<int>(sh.heads);
  p.q_len = static_cast<int>(sh.q_len);
  p.k_len = static_cast<int>(sh.k_len);
  p.head_dim = static_cast<int>(sh.head_dim);
  p.scale = static_cast<float>(scale);
  return p;
}

// (out, lse) of the forward for checked arguments `sh`; launch(T{}, integral_constant<kD>{}, p,
// stream) runs the kernel for dtype T and head-dim instantiation kD and returns its error.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> run_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                           const std::optional<at::Tensor>& key_padding_mask, double scale,
                                           const CrossAttentionShape& sh, Launch&& launch) {
  BLIPX_CHECK(device::holds(q_in), kOp, "q must be a CUDA tensor for the CUDA kernel");
  const device::Guard guard(q_in.device());
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const at::Tensor mask = key_padding_mask.has_value() ? *key_padding_mask : at::Tensor();
  const int64_t bg = sh.batch * sh.groups;
  at::Tensor out = empty_bhld(q, bg, sh.heads, sh.q_len, sh.head_dim);
  at::Tensor lse = at::empty({bg, sh.heads, sh.q_len}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  CrossAttnParams p = base_params(q, k, v, mask, scale, sh);
  p.out = out.data_ptr();
  p.so = strides_of(out);
  p.lse = lse.data_ptr<float>();
  auto stream = device::stream();
  dispatch_dtype(q.scalar_type(), [&](auto t) {
    dispatch_head_dim(sh.head_dim, [&](auto kd) { device::check(launch(t, kd, p, stream)); });
  });
  return {out, lse};
}

// (dq, dk, dv) of the backward for checked arguments; launch as for run_fwd. `delta`
// (rowsum(dout * out), fp32 [B*G, H, Lq]) is scratch the kernels share.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_bwd(const at::Tensor& dout_in, const at::Tensor& q_in,
                                                       const at::Tensor& k_in, const at::Tensor& v_in,
                                                       const std::optional<at::Tensor>& key_padding_mask,
                                                       const at::Tensor& out_in, const at::Tensor& lse_in,
                                                       double scale, const CrossAttentionShape& sh, Launch&& launch) {
  BLIPX_CHECK(device::holds(q_in), kOp, "q must be a CUDA tensor for the CUDA kernel");
  const device::Guard guard(q_in.device());
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const at::Tensor dout = unit_last_stride(dout_in), out = unit_last_stride(out_in), lse = lse_in.contiguous();
  const at::Tensor mask = key_padding_mask.has_value() ? *key_padding_mask : at::Tensor();
  const int64_t bg = sh.batch * sh.groups;
  at::Tensor dq = empty_bhld(q, bg, sh.heads, sh.q_len, sh.head_dim);
  at::Tensor dk = empty_bhld(k, sh.batch, sh.heads, sh.k_len, sh.head_dim);
  at::Tensor dv = empty_bhld(v, sh.batch, sh.heads, sh.k_len, sh.head_dim);
  if (dk.numel() == 0) return {dq, dk, dv};
  // The dk/dv grids are (key blocks, H, B): gridDim.y and .z stop at 65535.
  BLIPX_CHECK(sh.heads <= 65535 && sh.batch <= 65535, kOp, "the CUDA backward supports B, H <= 65535, got B = ",
              sh.batch, ", H = ", sh.heads);
  at::Tensor delta = at::empty({bg, sh.heads, sh.q_len}, q.options().dtype(at::kFloat));
  CrossAttnParams p = base_params(q, k, v, mask, scale, sh);
  p.out = const_cast<void*>(out.data_ptr());
  p.so = strides_of(out);
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  p.dout = dout.data_ptr();
  p.sdo = strides_of(dout);
  p.dq = dq.data_ptr();
  p.sdq = strides_of(dq);
  p.dk = dk.data_ptr();
  p.sdk = strides_of(dk);
  p.dv = dv.data_ptr();
  p.sdv = strides_of(dv);
  p.delta = delta.data_ptr<float>();
  auto stream = device::stream();
  dispatch_dtype(q.scalar_type(), [&](auto t) {
    dispatch_head_dim(sh.head_dim, [&](auto kd) { device::check(launch(t, kd, p, stream)); });
  });
  return {dq, dk, dv};
}

}  // namespace blipx::xattn
