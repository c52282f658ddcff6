// CUDA entry point for blipx::momentum_update_: checks, groups pairs by (ema, param) dtype,
// packs each group's tensor table into kernel parameters and launches on the current stream.
#include <vector>

#include "blipx/momentum_update.cuh"
#include "checks.h"
#include "device.h"

namespace blipx {
namespace {

template <typename T>
struct CudaType { using type = T; };
template <>
struct CudaType<at::Half> { using type = __half; };
template <>
struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename E, typename P>
void launch_group(const std::vector<at::Tensor>& emas, const std::vector<at::Tensor>& srcs, float m) {
  using CE = typename CudaType<E>::type;
  using CP = typename CudaType<P>::type;
  auto stream = device::stream();
  // ~8 resident 256-thread blocks per SM saturate HBM for a streaming kernel.
  const int max_blocks = device::limits().sm_count * 8;
  EmaLaunchTable table;
  table.num_tensors = 0;
  table.num_chunks = 0;
  auto flush = [&]() {
    if (table.num_tensors == 0) return;
    device::check(momentum_update_launch<CE, CP>(table, m, max_blocks, stream));
    table.num_tensors = 0;
    table.num_chunks = 0;
  };
  for (size_t i = 0; i < emas.size(); ++i) {
    if (table.num_tensors == kEmaMaxTensorsPerLaunch) flush();
    auto& d = table.t[table.num_tensors++];
    d.ema = emas[i].data_ptr();
    d.param = srcs[i].const_data_ptr();
    d.numel = emas[i].numel();
    d.chunk_begin = table.num_chunks;
    table.num_chunks += ceil_div(d.numel, kEmaChunk);
  }
  flush();
}

void momentum_update_cuda(at::TensorList ema_params, at::TensorList params, double momentum) {
  check_momentum_update_args(ema_params, params, momentum);
  if (ema_params.empty()) return;
  BLIPX_CHECK(device::holds(ema_params[0]), "momentum_update_", "ema_params[0] must be a CUDA tensor for the CUDA kernel");
  const device::Guard guard(ema_params[0].device());
  const auto m = static_cast<float>(momentum);

  // Groups by dtype pair, keeping order: float/float, float/bf16, float/half, bf16/bf16, half/half.
  std::vector<at::Tensor> emas[5], srcs[5];
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
  for (size_t i = 0; i < ema_params.size(); ++i) {
    if (ema_params[i].numel() == 0) continue;
    at::Tensor e = ema_params[i];
    if (!e.is_contiguous()) {
      // Rare (EMA tensors are created contiguous); a contiguous copy is updated, then written back.
      e = e.contiguous();
      write_back.emplace_back(ema_params[i], e);
    }
    const auto et = e.scalar_type(), pt = params[i].scalar_type();
    const int g = et == at::kFloat ? (pt == at::kFloat ? 0 : pt == at::kBFloat16 ? 1 : 2) : (et == at::kBFloat16 ? 3 : 4);
    emas[g].push_back(e);
    srcs[g].push_back(params[i].contiguous());
  }
  launch_group<float, float>(emas[0], srcs[0], m);
  launch_group<float, at::BFloat16>(emas[1], srcs[1], m);
  launch_group<float, at::Half>(emas[2], srcs[2], m);
  launch_group<at::BFloat16, at::BFloat16>(emas[3], srcs[3], m);
  launch_group<at::Half, at::Half>(emas[4], srcs[4], m);
  for (auto& [orig, copy] : write_back) orig.copy_(copy);
}

}  // namespace
}  // namespace blipx

BLIPX_DEVICE_KERNELS(m) { BLIPX_DEVICE_KERNEL(m, "momentum_update_", &blipx::momentum_update_cuda); }
