// CPU kernel for blipx::sample_tokens: temperature -> top-k -> top-p -> one draw per row, with
// HF's semantics (blipx/ops/reference.py: sample_tokens_ref) but without sorting the vocabulary.
//
// Per row (rows split across threads with at::parallel_for):
//   1. one pass: max / first argmax of the raw logits (greedy rows stop here), scaled values
//      y = x / temperature (NaN -> -inf, -0 -> +0 so that equal values compare equal);
//   2. top-k: the k-th largest y by a k-element min-heap (k <= 1024) or std::nth_element on a
//      copy; y >= kth is kept, so ties with the k-th value stay in, as HF's
//      `scores < topk(...)[-1]` test does;
//   3. weights w = exp(y - max) over the kept set (the max has w = 1, so the total is >= 1),
//      with a vectorisable exp (exp_nonpos below);
//   4. top-p: the smallest weight threshold t with mass(w > t) < p * total, by a three-way
//      quickselect that carries the mass above the current range (expected O(V), no sort);
//      w >= t is kept -- the token that crosses p stays in, as in HF;
//   5. inverse-CDF draw with one uniform over the kept weights (double accumulation).
// Rows with a +inf logit draw uniformly among the +inf tokens (the softmax's limit); rows with no
// finite or +inf logit return -1.
//
// Randomness: the CPU generator is locked once to draw a 64-bit seed; row i then uses the
// counter-based Philox stream (seed, subsequence = i), so a seeded generator reproduces the
// draws whatever the thread count.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/core/PhiloxRNGEngine.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <vector>

#include "checks.h"
#include "cpu/fast_math.h"

namespace blipx {
namespace {

using cpu::exp_nonpos;
using cpu::kInf;
using cpu::sum8;

// Uniform in [0, 1) with 53 random bits from two 32-bit Philox outputs.
inline double uniform01(at::philox_engine& eng) {
  const uint64_t hi = eng(), lo = eng();
  return static_cast<double>(((hi << 32) | lo) >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

struct RowParams {
  float temperature;
  int64_t top_k;
  float top_p;
};

// Smallest t among the weights in buf[0, n) such that mass(w > t) < target (target > 0).
// Three-way quickselect: each round partitions the live range around a pivot v into
// [> v | == v | < v]; if the mass above the range plus the "> v" part already reaches the
// target, the threshold lies among the "> v" values, else v is kept and the search continues
// below it. `above` is the mass of the values already known to lie above the live range.
float top_p_threshold(float* buf, int64_t n, double target) {
  double above = 0.0;
  float best = 1.0f;  // the max (w = 1) always survives: mass(w > 1) = 0 < target
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    // Median of three as pivot keeps adversarial (e.g. sorted) rows near O(V).
    float a = buf[lo], b = buf[lo + (hi - lo) / 2], c = buf[hi - 1];
    const float v = std::max(std::min(a, b), std::min(std::max(a, b), c));
    int64_t lt = lo, i = lo, gt = hi;  // [lo, lt): > v, [lt, i): == v, [gt, hi): < v
    double sg = 0.0, se = 0.0;
    while (i < gt) {
      const float w = buf[i];
      if (w > v) {
        sg += w;
        std::swap(buf[i++], buf[lt++]);
      } else if (w < v) {
        std::swap(buf[i], buf[--gt]);
      } else {
        se += w;
        ++i;
      }
    }
    if (above + sg >= target) {
      hi = lt;  // non-empty: above < target, so sg > 0
    } else {
      best = v;
      above += sg + se;
      if (above >= target) break;
      lo = gt;
    }
  }
  return best;
}

template <typename T>
int64_t sample_row(const T* row, int64_t stride, int64_t v, RowParams prm, uint64_t seed, int64_t r,
                   std::vector<float>& y, std::vector<float>& w, std::vector<float>& buf) {
  // 1. raw max and first argmax (NaN never compares greater, so it is skipped).
  float mx = -kInf;
  int64_t amax = -1;
  for (int64_t j = 0; j < v; ++j) {
    const float x = static_cast<float>(row[j * stride]);
    if (x > mx) {
      mx = x;
      amax = j;
    }
  }
  if (amax < 0) return -1;                   // every logit is -inf or NaN
  if (!(prm.temperature > 0.f)) return amax;  // greedy (temperature <= 0 or NaN)
  const float t = prm.temperature;
  {
    float* yp = y.data();
    for (int64_t j = 0; j < v; ++j) {
      const float x = static_cast<float>(row[j * stride]);
      yp[j] = std::isnan(x) ? -kInf : x / t + 0.0f;  // + 0.0f turns -0 into +0
    }
  }
  const float m = mx / t;  // division is monotone, so max(x / t) == max(x) / t
  const bool inf_row = std::isinf(m);

  // 2. top-k threshold (k <= 0 or k >= V: off).
  const bool use_k = prm.top_k > 0 && prm.top_k < v;
  float kth = -kInf;
  if (use_k && prm.top_k <= 1024) {
    // Small k (HF's default is 50): a min-heap of the k largest; most columns fail the first
    // compare, so this is one predictable pass.
    buf.assign(y.begin(), y.begin() + prm.top_k);
    std::make_heap(buf.begin(), buf.end(), std::greater<float>());
    for (int64_t j = prm.top_k; j < v; ++j) {
      if (!(y[j] > buf.front())) continue;
      std::pop_heap(buf.begin(), buf.end(), std::greater<float>());
      buf.back() = y[j];
      std::push_heap(buf.begin(), buf.end(), std::greater<float>());
    }
    kth = buf.front();
  } else if (use_k) {
    buf.assign(y.begin(), y.begin() + v);
    std::nth_element(buf.begin(), buf.begin() + (prm.top_k - 1), buf.begin() + v, std::greater<float>());
    kth = buf[prm.top_k - 1];
  }

  // 3. weights relative to the max (kth = -inf without top-k keeps every y). The exp loop
  //    vectorises; the top-k mask is a separate, branchy but cheap pass.
  float* yp = y.data();
  float* wp = w.data();
  if (inf_row) {
    for (int64_t j = 0; j < v; ++j) wp[j] = (yp[j] >= kth && yp[j] == kInf) ? 1.f : 0.f;
  } else {
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) wp[j] = exp_nonpos(yp[j] - m);
    if (use_k)
      for (int64_t j = 0; j < v; ++j)
        if (!(yp[j] >= kth)) wp[j] = 0.f;
  }
  const double total = sum8(wp, v);

  // 4. top-p threshold (p >= 1 or NaN: off; p <= 0: the max and its ties only).
  float thr = std::numeric_limits<float>::denorm_min();  // > 0: zero weights are never drawn
  if (prm.top_p < 1.f) {
    if (!(prm.top_p > 0.f)) {
      thr = 1.f;
    } else {
      // Only weights >= (1 - p) * total / V can be kept: everything at or below a smaller w_j
      // weighs less than (1 - p) * total, so the mass above w_j exceeds p * total. Dropping
      // them first (branch-free compaction) shrinks the quickselect to the plausible tail.
      const float floor_w = static_cast<float>((1.0 - prm.top_p) * total / static_cast<double>(v));
      int64_t n = 0;
      buf.resize(static_cast<size_t>(v));
      float* bp = buf.data();
      for (int64_t j = 0; j < v; ++j) {
        bp[n] = wp[j];
        n += (wp[j] > 0.f) & (wp[j] >= floor_w);
      }
      thr = std::max(thr, top_p_threshold(bp, n, static_cast<double>(prm.top_p) * total));
    }
  }

  // 5. inverse CDF over the kept weights.
  double kept = 0.0;
  for (int64_t j = 0; j < v; ++j) kept += wp[j] >= thr ? wp[j] : 0.f;
  at::philox_engine eng(seed, static_cast<uint64_t>(r), 0);
  const double target = uniform01(eng) * kept;
  double run = 0.0;
  int64_t last = amax;
  for (int64_t j = 0; j < v; ++j) {
    if (!(w[j] >= thr)) continue;
    run += w[j];
    last = j;
    if (run > target) return j;
  }
  return last;  // only reached through rounding of the running sum
}

at::Tensor sample_tokens_cpu(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                             const std::optional<at::Tensor>& temperatures, const std::optional<at::Tensor>& top_ks,
                             const std::optional<at::Tensor>& top_ps, std::optional<at::Generator> generator) {
  const auto shape = check_sample_tokens_args(logits, temperature, top_k, top_p, temperatures, top_ks, top_ps, generator);
  const int64_t b = shape.rows, v = shape.vocab;
  auto out = at::empty({b}, logits.options().dtype(at::kLong));
  if (b == 0) return out;

  uint64_t seed;
  {
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }
  // Per-row parameters in one dtype each (small [B] copies).
  auto given = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const at::Tensor temps = given(temperatures) ? temperatures->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor ks = given(top_ks) ? top_ks->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor ps = given(top_ps) ? top_ps->to(at::kFloat).contiguous() : at::Tensor();
  const float* temp_ptr = temps.defined() ? temps.const_data_ptr<float>() : nullptr;
  const int64_t* k_ptr = ks.defined() ? ks.const_data_ptr<int64_t>() : nullptr;
  const float* p_ptr = ps.defined() ? ps.const_data_ptr<float>() : nullptr;

  int64_t* out_ptr = out.data_ptr<int64_t>();
  // Strides are used directly: a sliced or expanded logits tensor needs no copy.
  const int64_t s_row = logits.stride(0), s_col = logits.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_tokens_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / v);  // ~16K elements per task
    at::parallel_for(0, b, grain, [&](int64_t lo, int64_t hi) {
      std::vector<float> y(static_cast<size_t>(v)), w(static_cast<size_t>(v)), buf;
      for (int64_t i = lo; i < hi; ++i) {
        const RowParams prm{temp_ptr ? temp_ptr[i] : static_cast<float>(temperature), k_ptr ? k_ptr[i] : top_k,
                            p_ptr ? p_ptr[i] : static_cast<float>(top_p)};
        out_ptr[i] = sample_row<scalar_t>(base + i * s_row, s_col, v, prm, seed, i, y, w, buf);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_IMPL(blipx, CPU, m) { m.impl("sample_tokens", &blipx::sample_tokens_cpu); }
