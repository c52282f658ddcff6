// CUDA entry point for blipx::beam_search_step: checks, a [B*K, 2K] candidate buffer from the
// caching allocator, then the two launches of blipx/beam_search_step.cuh on the current stream.
// No host sync; capturable in a CUDA graph, and since the current length is a device tensor, one
// captured step replays correctly at every length.
#include <algorithm>
#include <tuple>

#include "blipx/beam_search_step.cuh"
#include "checks.h"
#include "device.h"

namespace blipx {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_step_cuda(const at::Tensor& logits, const at::Tensor& beam_scores,
                                                                      const at::Tensor& sequences, int64_t num_beams,
                                                                      const std::optional<at::Tensor>& cur_len,
                                                                      int64_t eos_token_id, int64_t min_length,
                                                                      double repetition_penalty) {
  constexpr const char* op = "beam_search_step";
  const auto shape = check_beam_search_step_args(logits, beam_scores, sequences, cur_len, eos_token_id, min_length,
                                                 repetition_penalty, num_beams);
  BLIPX_CHECK(device::holds(logits), op, "logits must be a CUDA tensor for the CUDA kernel");
  const device::Guard guard(logits.device());
  const int64_t b = shape.batch, k = shape.beams, v = shape.vocab, n2k = 2 * k;
  BLIPX_CHECK(b * k <= int64_t{0x7fffffff}, op, "too many rows: ", b * k);
  const auto opts = logits.options();
  auto scores = at::empty({b, n2k}, opts.dtype(at::kFloat));
  auto tokens = at::empty({b, n2k}, opts.dtype(at::kLong));
  auto beams = at::empty({b, n2k}, opts.dtype(at::kLong));
  if (b == 0) return {scores, tokens, beams};

  const int64_t per_beam = std::min(n2k, v);
  auto cand_scores = at::empty({b * k, per_beam}, opts.dtype(at::kFloat));
  auto cand_tokens = at::empty({b * k, per_beam}, opts.dtype(at::kInt));
  const at::Tensor bs = beam_scores.contiguous();

  const int max_smem = device::limits().smem_optin - 1024;
  BLIPX_CHECK((v + 31) / 32 * 4 <= max_smem, op, "vocabulary of ", v, " tokens is too large for the token bitmask");

  BeamStepParams p;
  p.logits = logits.const_data_ptr();
  p.row_stride = logits.stride(0);
  p.col_stride = logits.stride(1);
  p.beam_scores = bs.const_data_ptr<float>();
  p.sequences = sequences.const_data_ptr<int64_t>();
  p.seq_row_stride = sequences.stride(0);
  p.seq_col_stride = sequences.stride(1);
  p.seq_len = sequences.size(1);
  // The length stays on the device: the kernel reads it (never the host: no sync per step).
  p.cur_len = (cur_len.has_value() && cur_len->defined()) ? cur_len->const_data_ptr<int64_t>() : nullptr;
  p.eos = eos_token_id;
  p.min_length = min_length;
  p.penalty = static_cast<float>(repetition_penalty);  // torch multiplies fp32 by an fp32 scalar
  p.rows = static_cast<int>(b * k);
  p.beams = static_cast<int>(k);
  p.vocab = static_cast<int>(v);
  p.per_beam = static_cast<int>(per_beam);
  p.cand_scores = cand_scores.data_ptr<float>();
  p.cand_tokens = cand_tokens.data_ptr<int>();
  p.out_scores = scores.data_ptr<float>();
  p.out_tokens = tokens.data_ptr<int64_t>();
  p.out_beams = beams.data_ptr<int64_t>();

  auto stream = device::stream();
  cudaError_t err = cudaSuccess;
  switch (logits.scalar_type()) {
    case at::kFloat: err = beam_search_step_launch<float>(p, max_smem, stream); break;
    case at::kHalf: err = beam_search_step_launch<__half>(p, max_smem, stream); break;
    default: err = beam_search_step_launch<__nv_bfloat16>(p, max_smem, stream); break;
  }
  device::check(err);
  return {scores, tokens, beams};
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) { BLIPX_DEVICE_KERNEL(m, "beam_search_step", &blipx::beam_search_step_cuda); }
