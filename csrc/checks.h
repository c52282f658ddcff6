// Argument checks shared by every op's CPU and CUDA entry points. Messages always name the op
// and the argument, so users see "blipx.momentum_update_: params[3] ..." rather than an
// anonymous shape mismatch from deep inside ATen.
#pragma once
#include <ATen/ATen.h>

// Each check is also registered as an op, blipx::_check_<op> (bottom of checks.cpp), so the
// pure-PyTorch references and the fake kernels run the same rules as the kernels.
#define BLIPX_CHECK(cond, op, ...) TORCH_CHECK((cond), "blipx.", op, ": ", __VA_ARGS__)

namespace blipx {

// Validates momentum_update_'s arguments (lists, shapes, dtypes, devices, momentum range) and that
// no EMA tensor shares memory with another EMA tensor or with any param (params may share).
void check_momentum_update_args(at::TensorList ema_params, at::TensorList params, double momentum);

// Validates enqueue_'s arguments (shapes, dtypes, devices, N <= Q, no memory shared between
// queue, ptr and feats); returns (queue rows Q, row width D, rows to write N).
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

// Validates sample_tokens' arguments: logits a floating [B, V] matrix (V >= 1); scalar
// temperature >= 0, top_k >= 0, top_p in [0, 1]; per-row tensors, when given, 1-D [B] on the
// logits' device (temperatures/top_ps floating, top_ks integral); generator of the logits'
// device type. Per-row values are not inspected (that would be a host sync). Returns (B, V).
struct SampleTokensShape {
  int64_t rows;
  int64_t vocab;
};
SampleTokensShape check_sample_tokens_args(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                                           const std::optional<at::Tensor>& temperatures,
                                           const std::optional<at::Tensor>& top_ks,
                                           const std::optional<at::Tensor>& top_ps,
                                           const std::optional<at::Generator>& generator);

// Validates beam_search_step's arguments: logits floating [B*K, V] with V >= 2, beam_scores
// float32 [B*K], sequences int64 [B*K, T], num_beams >= 1 dividing the rows, repetition_penalty
// > 0, all on one device. cur_len, when given, is an int64 tensor of one element on that device;
// its value (0 <= cur_len <= T) is checked only where reading it is free, on the CPU: on a GPU
// it is never read on the host (that would be a sync), and the kernel clamps it to [0, T].
// Returns (B, K, V).
struct BeamStepShape {
  int64_t batch;
  int64_t beams;
  int64_t vocab;
};
BeamStepShape check_beam_search_step_args(const at::Tensor& logits, const at::Tensor& beam_scores,
                                          const at::Tensor& sequences, const std::optional<at::Tensor>& cur_len,
                                          int64_t eos_token_id, int64_t min_length, double repetition_penalty,
                                          int64_t num_beams);

}  // namespace blipx

namespace blipx {

// Validates cross_attention's arguments: q [B*G, H, Lq, D], k and v [B, H, Lk, D] of one
// floating dtype (float64 only where `allow_double`, i.e. on the CPU), G >= 1, Lk >= 1, D >= 1;
// key_padding_mask, when given, bool [B, Lk]; scale finite; all on q's device. Returns the sizes.
struct CrossAttentionShape {
  int64_t batch;   // B: K/V rows (images)
  int64_t groups;  // G: query rows per K/V row
  int64_t heads;
  int64_t q_len;
  int64_t k_len;
  int64_t head_dim;
};
CrossAttentionShape check_cross_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const std::optional<at::Tensor>& key_padding_mask, double scale,
                                               bool allow_double);

// The backward's extra tensors: dout and out shaped and typed as q, lse [B*G, H, Lq] in float32
// (float64 for float64 inputs).
void check_cross_attention_bwd_args(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out,
                                    const at::Tensor& lse);

// The tensor-core op (cross_attention_mma_fwd): cross_attention's rules (no float64), and q must
// be float16 or bfloat16 (float32 stays on the FMA kernels of cross_attention_fwd).
CrossAttentionShape check_cross_attention_mma_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const std::optional<at::Tensor>& key_padding_mask, double scale);

}  // namespace blipx
