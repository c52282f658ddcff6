// Argument checks shared by every op's CPU and CUDA entry points. Messages always name the op
// and the argument, so users see "blipx.momentum_update_: params[3] ..." rather than an
// anonymous shape mismatch from deep inside ATen.
#pragma once
#include <ATen/ATen.h>

#define BLIPX_CHECK(cond, op, ...) TORCH_CHECK((cond), "blipx.", op, ": ", __VA_ARGS__)

namespace blipx {

// Validates momentum_update_'s arguments (lists, shapes, dtypes, devices, momentum range).
void check_momentum_update_args(at::TensorList ema_params, at::TensorList params, double momentum);

// Validates enqueue_'s arguments; returns (queue rows Q, row width D, rows to write N).
struct EnqueueShape {
  int64_t queue_size;
  int64_t width;
  int64_t rows;
};
EnqueueShape check_enqueue_args(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& feats);

// True when `ema` is fp32 and `param` is fp16/bf16, or both have the same floating dtype.
bool ema_dtype_pair_supported(at::ScalarType ema, at::ScalarType param);

// Validates sample_hard_negatives' arguments: sim a floating [B, N] matrix; positive_mask, when
// given, bool [B, N] on sim's device (required unless sim is square); generator of sim's device
// type. Returns (B, N).
struct HardNegativeShape {
  int64_t rows;
  int64_t cols;
};
HardNegativeShape check_sample_hard_negatives_args(const at::Tensor& sim, const std::optional<at::Tensor>& positive_mask,
                                                   const std::optional<at::Generator>& generator);

}  // namespace blipx
