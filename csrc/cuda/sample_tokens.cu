// CUDA entry point for blipx::sample_tokens: checks, per-row parameter tensors in one dtype each,
// Philox state from the CUDA generator, then the single launch of blipx/sample_tokens.cuh on
// the current stream. Nothing is read back to the host; philox_cuda_state() hands out device
// pointers while a CUDA graph is being captured, so a captured sampler draws fresh numbers on
// every replay.
#include "blipx/sample_tokens.cuh"
#include "checks.h"
#include "device.h"

namespace blipx {
namespace {


at::Tensor sample_tokens_cuda(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                              const std::optional<at::Tensor>& temperatures, const std::optional<at::Tensor>& top_ks,
                              const std::optional<at::Tensor>& top_ps, std::optional<at::Generator> generator) {
  constexpr const char* op = "sample_tokens";
  const auto shape = check_sample_tokens_args(logits, temperature, top_k, top_p, temperatures, top_ks, top_ps, generator);
  BLIPX_CHECK(device::holds(logits), op, "logits must be a CUDA tensor for the CUDA kernel");
  const device::Guard guard(logits.device());
  const int64_t b = shape.rows, v = shape.vocab;
  BLIPX_CHECK(b <= int64_t{0x7fffffff}, op, "logits has ", b, " rows; at most 2^31 - 1 are supported");
  auto out = at::empty({b}, logits.options().dtype(at::kLong));
  if (b == 0) return out;

  // Small [B] conversions on the device (asynchronous; no-ops when already in that dtype).
  auto given = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const at::Tensor temps = given(temperatures) ? temperatures->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor ks = given(top_ks) ? top_ks->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor ps = given(top_ps) ? top_ps->to(at::kFloat).contiguous() : at::Tensor();

  const int threads = sample_tokens_threads(v);

  SampleTokensParams p;
  p.logits = logits.const_data_ptr();
  p.row_stride = logits.stride(0);  // strided reads: a sliced or transposed logits needs no copy
  p.col_stride = logits.stride(1);
  p.rows = b;
  p.vocab = static_cast<int>(v);
  p.temps = temps.defined() ? temps.const_data_ptr<float>() : nullptr;
  p.temperature = static_cast<float>(temperature);
  p.top_ks = ks.defined() ? ks.const_data_ptr<int64_t>() : nullptr;
  p.top_k = top_k;
  p.top_ps = ps.defined() ? ps.const_data_ptr<float>() : nullptr;
  p.top_p = static_cast<float>(top_p);
  p.out = out.data_ptr<int64_t>();
  p.rng = device::philox(generator, logits.device(), sample_tokens_philox_increment(v, threads));

  // Opt-in shared memory per block, less a margin for the kernel's static reduction buffers.
  const int max_smem = device::limits().smem_optin - 1024;
  auto stream = device::stream();
  cudaError_t err = cudaSuccess;
  switch (logits.scalar_type()) {
    case at::kFloat: err = sample_tokens_launch<float>(p, threads, max_smem, stream); break;
    case at::kHalf: err = sample_tokens_launch<__half>(p, threads, max_smem, stream); break;
    default: err = sample_tokens_launch<__nv_bfloat16>(p, threads, max_smem, stream); break;
  }
  device::check(err);
  return out;
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) { BLIPX_DEVICE_KERNEL(m, "sample_tokens", &blipx::sample_tokens_cuda); }
