// CUDA entry point for blipx::sample_hard_negatives: checks, Philox state from the CUDA
// generator, then the single launch of blipx/sample_hard_negatives.cuh on the current stream.
// Nothing is read back to the host, and the Philox state is taken through
// philox_cuda_state(), which hands out device pointers while a CUDA graph is being captured.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "blipx/sample_hard_negatives.cuh"
#include "checks.h"
#include "device.h"

namespace blipx {
namespace {


at::Tensor sample_hard_negatives_cuda(const at::Tensor& sim, const std::optional<at::Tensor>& positive_mask,
                                      std::optional<at::Generator> generator) {
  const auto shape = check_sample_hard_negatives_args(sim, positive_mask, generator);
  const device::Guard guard(sim.device());
  const int64_t b = shape.rows, n = shape.cols;
  BLIPX_CHECK(b <= int64_t{0x7fffffff}, "sample_hard_negatives", "sim has ", b, " rows; at most 2^31 - 1 are supported");
  auto out = at::empty({b}, sim.options().dtype(at::kLong));
  if (b == 0) return out;

  const int threads = hard_negative_threads(n);
  const PhiloxArgs rng = device::philox(generator, sim.device(), hard_negative_philox_increment(n, threads));

  const bool has_mask = positive_mask.has_value() && positive_mask->defined();
  const bool* mask_ptr = has_mask ? positive_mask->const_data_ptr<bool>() : nullptr;
  const int64_t m_row = has_mask ? positive_mask->stride(0) : 0;
  const int64_t m_col = has_mask ? positive_mask->stride(1) : 0;
  auto stream = device::stream();
  cudaError_t err = cudaSuccess;
  // Strided reads: a transposed sim (sim_t2i = sim_i2t.t()) is sampled without a copy.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sim.scalar_type(), "sample_hard_negatives_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // float for half/bf16/float, double for double
    err = sample_hard_negatives_launch<scalar_t, acc_t>(sim.const_data_ptr<scalar_t>(), sim.stride(0), sim.stride(1),
                                                        mask_ptr, m_row, m_col, !has_mask, b, n,
                                                        out.data_ptr<int64_t>(), rng, threads, stream);
  });
  device::check(err);
  return out;
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) { BLIPX_DEVICE_KERNEL(m, "sample_hard_negatives", &blipx::sample_hard_negatives_cuda); }
