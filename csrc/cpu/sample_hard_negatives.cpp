// CPU kernel for blipx::sample_hard_negatives: one categorical draw per row of sim with
// P(j) proportional to exp(sim[i, j]) over the columns that are neither positive nor NaN.
//
// Algorithm (per row, rows split across threads with at::parallel_for):
//   1. one pass over the row: the max over valid finite logits and the number of valid +inf columns;
//   2. if a valid +inf exists, the limit of the softmax is uniform over the +inf columns: pick one;
//   3. else weights w_j = exp(x_j - max) (one exp per element, <= 1, the max column has w = 1, so
//      the total never underflows) and an inverse-CDF draw with a single uniform.
// Inverse CDF costs one exp per element; a Gumbel race would cost two logs per element, which is
// ~5x slower on a CPU (the CUDA kernel uses the race because it needs no scan there).
//
// Randomness: the CPU generator is locked once to draw a 64-bit seed; row i then uses the
// counter-based Philox stream (seed, subsequence = i). Results are therefore reproducible for a
// seeded generator and independent of the thread count and of the scheduling.
#include <ATen/Parallel.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "checks.h"

namespace blipx {
namespace {

// Uniform in [0, 1) with 53 random bits from two 32-bit Philox outputs.
inline double uniform01(at::philox_engine& eng) {
  const uint64_t hi = eng(), lo = eng();
  const uint64_t r = ((hi << 32) | lo) >> 11;
  return static_cast<double>(r) * (1.0 / 9007199254740992.0);  // 2^-53
}

template <typename scalar_t>
int64_t sample_row(const scalar_t* row, int64_t col_stride, const bool* mask, int64_t mask_stride, int64_t diag,
                   int64_t n, uint64_t seed, int64_t row_index, std::vector<float>& logits) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  // Pass 1: gather valid logits (excluded columns -> -inf, so exp() gives exactly 0 later),
  // the row max over finite ones and the count of valid +inf columns.
  const auto excluded_at = [&](int64_t j, acc_t v) {
    return j == diag || (mask != nullptr && mask[j * mask_stride]) || std::isnan(v);
  };
  acc_t mx = -std::numeric_limits<acc_t>::infinity();
  int64_t n_inf = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(row[j * col_stride]);
    if (excluded_at(j, v)) {
      logits[j] = kNegInf;
      continue;
    }
    if (std::isinf(v) && v > 0) {
      ++n_inf;
      logits[j] = kNegInf;  // +inf columns are handled by the uniform branch below
      continue;
    }
    logits[j] = static_cast<float>(v);  // may be -inf: probability 0 (float64 rows re-read below)
    if (v > mx) mx = v;
  }
  at::philox_engine eng(seed, static_cast<uint64_t>(row_index), 0);
  const double u = uniform01(eng);
  if (n_inf > 0) {
    // softmax with k entries at +inf -> 1/k on each of them, 0 elsewhere.
    int64_t k = static_cast<int64_t>(u * static_cast<double>(n_inf));
    if (k >= n_inf) k = n_inf - 1;
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = static_cast<acc_t>(row[j * col_stride]);
      if (!excluded_at(j, v) && std::isinf(v) && v > 0 && k-- == 0) return j;
    }
    return -1;  // unreachable
  }
  if (!(mx > -std::numeric_limits<acc_t>::infinity())) return -1;  // nothing with positive mass

  // Pass 2: weights in place (exp(x - max) in (0, 1], exactly 0 for excluded/-inf) and total.
  // For float64 input the subtraction runs in double, so huge-but-finite values stay finite.
  double total = 0.0;
  if constexpr (std::is_same_v<scalar_t, double>) {
    for (int64_t j = 0; j < n; ++j) {
      const double v = static_cast<double>(row[j * col_stride]);
      const bool zero = excluded_at(j, v) || std::isinf(v);  // +inf cannot occur here (n_inf == 0)
      const double d = v - mx;
      const float w = (zero || d < -80.0) ? 0.f : static_cast<float>(std::exp(d));
      logits[j] = w;
      total += w;
    }
  } else {
    const float fmx = static_cast<float>(mx);
    for (int64_t j = 0; j < n; ++j) {
      // Below -80 the weight (< 2e-35 of the max column's) would be a denormal, which costs
      // ~100 cycles per exp on x86 and is common with logits = sim / 0.07; it is taken as 0.
      const float d = logits[j] - fmx;
      const float w = d > -80.f ? std::exp(d) : 0.f;
      logits[j] = w;
      total += w;
    }
  }
  // Pass 3: inverse CDF. `target < total` always, and the max column has w = 1, so the scan
  // ends on a column with w > 0; the fallback only guards against rounding in the running sum.
  const double target = u * total;
  double run = 0.0;
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (logits[j] <= 0.f) continue;
    run += logits[j];
    last = j;
    if (run > target) return j;
  }
  return last;
}

at::Tensor sample_hard_negatives_cpu(const at::Tensor& sim, const std::optional<at::Tensor>& positive_mask,
                                     std::optional<at::Generator> generator) {
  const auto shape = check_sample_hard_negatives_args(sim, positive_mask, generator);
  const int64_t b = shape.rows, n = shape.cols;
  auto out = at::empty({b}, sim.options().dtype(at::kLong));
  if (b == 0) return out;

  // One 64-bit seed per call from the (locked) generator; rows draw from Philox(seed, row).
  uint64_t seed;
  {
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }

  const bool has_mask = positive_mask.has_value() && positive_mask->defined();
  const bool* mask_ptr = has_mask ? positive_mask->const_data_ptr<bool>() : nullptr;
  const int64_t m_row = has_mask ? positive_mask->stride(0) : 0;
  const int64_t m_col = has_mask ? positive_mask->stride(1) : 0;
  int64_t* out_ptr = out.data_ptr<int64_t>();
  // Strides are used directly: a transposed or sliced sim (e.g. sim_t2i = sim_i2t.t()) needs no copy.
  const int64_t s_row = sim.stride(0), s_col = sim.stride(1);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sim.scalar_type(), "sample_hard_negatives_cpu", [&] {
    const scalar_t* base = sim.const_data_ptr<scalar_t>();
    // Grain: ~16K elements per task so tiny batches stay on one thread.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(n, 1));
    at::parallel_for(0, b, grain, [&](int64_t lo, int64_t hi) {
      std::vector<float> buf(static_cast<size_t>(n));
      for (int64_t i = lo; i < hi; ++i) {
        const bool* mrow = mask_ptr == nullptr ? nullptr : mask_ptr + i * m_row;
        // Without a mask sim is square (checked) and column i is row i's positive.
        const int64_t diag = mask_ptr == nullptr ? i : -1;
        out_ptr[i] = sample_row<scalar_t>(base + i * s_row, s_col, mrow, m_col, diag, n, seed, i, buf);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_IMPL(blipx, CPU, m) { m.impl("sample_hard_negatives", &blipx::sample_hard_negatives_cpu); }
