// CPU kernel for blipx::momentum_update_. The work list is split into fixed-size chunks across
// all tensors so that one at::parallel_for (OpenMP in torch builds) balances many small and a
// few large tensors; the inner loop is a plain fp32 FMA loop the compiler vectorizes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"

namespace blipx {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per task: ~32K keeps every core busy on small tensors

template <typename E, typename P>
void ema_span(E* __restrict__ ema, const P* __restrict__ param, int64_t n, float m, float one_minus_m) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    ema[i] = static_cast<E>(m * static_cast<float>(ema[i]) + one_minus_m * static_cast<float>(param[i]));
  }
}

void ema_span_dispatch(const at::Tensor& e, const at::Tensor& p, int64_t begin, int64_t end, float m, float om) {
  const int64_t n = end - begin;
  const auto et = e.scalar_type();
  const auto pt = p.scalar_type();
  if (et == at::kFloat && pt == at::kFloat) {
    ema_span(e.data_ptr<float>() + begin, p.const_data_ptr<float>() + begin, n, m, om);
  } else if (et == at::kFloat && pt == at::kBFloat16) {
    ema_span(e.data_ptr<float>() + begin, p.const_data_ptr<at::BFloat16>() + begin, n, m, om);
  } else if (et == at::kFloat && pt == at::kHalf) {
    ema_span(e.data_ptr<float>() + begin, p.const_data_ptr<at::Half>() + begin, n, m, om);
  } else if (et == at::kBFloat16) {
    ema_span(e.data_ptr<at::BFloat16>() + begin, p.const_data_ptr<at::BFloat16>() + begin, n, m, om);
  } else {
    ema_span(e.data_ptr<at::Half>() + begin, p.const_data_ptr<at::Half>() + begin, n, m, om);
  }
}

void momentum_update_cpu(at::TensorList ema_params, at::TensorList params, double momentum) {
  check_momentum_update_args(ema_params, params, momentum);
  const auto m = static_cast<float>(momentum);
  const float om = 1.0f - m;

  // Non-contiguous pairs run on contiguous copies; the EMA copy is written back afterwards.
  std::vector<at::Tensor> emas, srcs;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (original ema, contiguous copy)
  emas.reserve(ema_params.size());
  srcs.reserve(params.size());
  for (size_t i = 0; i < ema_params.size(); ++i) {
    if (ema_params[i].numel() == 0) continue;
    at::Tensor e = ema_params[i];
    if (!e.is_contiguous()) {
      e = e.contiguous();
      write_back.emplace_back(ema_params[i], e);
    }
    emas.push_back(e);
    srcs.push_back(params[i].contiguous());
  }

  struct Task {
    size_t tensor;
    int64_t begin, end;
  };
  std::vector<Task> tasks;
  for (size_t t = 0; t < emas.size(); ++t) {
    const int64_t n = emas[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) tasks.push_back({t, b, std::min(n, b + kChunk)});
  }
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const Task& task = tasks[k];
      ema_span_dispatch(emas[task.tensor], srcs[task.tensor], task.begin, task.end, m, om);
    }
  });
  for (auto& [orig, copy] : write_back) orig.copy_(copy);
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_IMPL(blipx, CPU, m) { m.impl("momentum_update_", &blipx::momentum_update_cpu); }
