// CPU kernels for blipx::cross_attention_fwd / cross_attention_bwd: text queries over image K/V
// where G query rows (beams) share one K/V row.
//
// One task per (K/V row b, head h), spread with at::parallel_for. A task converts its K/V slice
// to the accumulation type once and serves all G*Lq query rows of the image with it (the "read
// once" property of the CUDA kernel, here a cache property). Keys are processed in blocks of
// kBlockN with an online softmax, so scratch is O((G*Lq + Lk) * D + G*Lq * kBlockN), never the
// whole [G*Lq, Lk] score matrix. The two products per block are BLAS sgemm/dgemm calls (MKL in
// torch wheels, single-threaded inside the parallel region); the softmax is a vectorisable loop
// with a polynomial exp, compiled for AVX-512 / AVX2 / baseline and picked at load time.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"

// Fortran BLAS exported by libtorch_cpu (MKL, LP64); ATen's cpublas::gemm is not exported.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha, const float* a,
            const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace blipx {
namespace {

constexpr int64_t kBlockN = 256;  // keys per block: 2-3 blocks at Lk = 577, scores stay in L2

// Column-major C[m, n] = alpha * op(A) @ op(B) + beta * C (the BLAS convention). A row-major
// X[r, c] is the column-major X^T, which is how the callers below express their products.
inline void gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
                 float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                 int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// exp(x) for x <= ~0 (every caller subtracts a running max or the logsumexp): 2^(x*log2e) as
// 2^n * poly(f), branch-free so the loops vectorise (std::exp does not without -ffast-math).
// Degree-7 Taylor of 2^f on |f| <= 0.5: relative error < 1e-8. x = -inf gives exactly 0.
// always_inline: it must be inlined into each target clone below for the loops to vectorise.
__attribute__((always_inline)) inline float exp_neg(float x) {
  float t = x * 1.4426950408889634f;
  // Ternaries, not std::min/max: those would not inline into the target clones.
  t = t < -127.0f ? -127.0f : (t > 127.0f ? 127.0f : t);
  // Round to nearest via the 1.5 * 2^23 trick: vectorises on every ISA (nearbyint needs SSE4.1).
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float f = t - n;
  float p = 1.5252733804059840e-5f;
  p = p * f + 1.5403530393381609e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  // n = -127 builds the zero exponent field: 0 * p = 0, which is what exp(-inf) must be.
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_neg(double x) { return std::exp(x); }

// ISA levels, not CPU models: "arch=skylake-avx512" would test the CPU model and miss AMD parts.
#define BLIPX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// Online-softmax step for one row of a score block (float): s += bias (0 / -inf), then s = exp(s -
// m_new) in place; updates the running max m and sum l. Returns the factor for the row's output
// accumulator (0 when nothing was accumulated yet, 1 while every key so far is masked).
BLIPX_MULTIVERSION float softmax_block_row(float* __restrict__ s, const float* __restrict__ bias, int64_t nb, float& m,
                                           float& l) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < nb; ++j) {
    s[j] += bias[j];
    mx = s[j] > mx ? s[j] : mx;
  }
  const float m_new = mx > m ? mx : m;
  if (m_new == -std::numeric_limits<float>::infinity()) {  // all keys so far masked
#pragma omp simd
    for (int64_t j = 0; j < nb; ++j) s[j] = 0.0f;
    return 1.0f;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < nb; ++j) {
    s[j] = exp_neg(s[j] - m_new);
    sum += s[j];
  }
  const float alpha = exp_neg(m - m_new);
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}
double softmax_block_row(double* s, const double* bias, int64_t nb, double& m, double& l) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < nb; ++j) {
    s[j] += bias[j];
    mx = std::max(mx, s[j]);
  }
  const double m_new = std::max(m, mx);
  if (m_new == -std::numeric_limits<double>::infinity()) {
    for (int64_t j = 0; j < nb; ++j) s[j] = 0.0;
    return 1.0;
  }
  double sum = 0.0;
  for (int64_t j = 0; j < nb; ++j) sum += (s[j] = std::exp(s[j] - m_new));
  const double alpha = std::exp(m - m_new);
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

// Backward step for one row of a block: p = exp(s - lse) for unmasked keys, ds = p * (dp - delta).
BLIPX_MULTIVERSION void softmax_grad_row(float* __restrict__ s, float* __restrict__ dp, const float* __restrict__ bias,
                                         int64_t nb, float lse, float delta) {
#pragma omp simd
  for (int64_t j = 0; j < nb; ++j) {
    const float p = exp_neg(s[j] + bias[j] - lse);
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
}
void softmax_grad_row(double* s, double* dp, const double* bias, int64_t nb, double lse, double delta) {
  for (int64_t j = 0; j < nb; ++j) {
    const double p = std::exp(s[j] + bias[j] - lse);
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
}

// A [N0, N1, L, D] tensor with unit stride on D, addressed row by row.
template <typename T>
struct Rows {
  T* p;
  int64_t s0, s1, s2;
  explicit Rows(const at::Tensor& t)
      : p(static_cast<T*>(t.data_ptr())), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)) {}
  T* row(int64_t i0, int64_t i1, int64_t i2) const { return p + i0 * s0 + i1 * s1 + i2 * s2; }
};

template <typename A, typename T>
inline void load_row(A* __restrict__ dst, const T* __restrict__ src, int64_t d, A mul = A(1)) {
  for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<A>(src[i]) * mul;
}
template <typename A, typename T>
inline void store_row(T* __restrict__ dst, const A* __restrict__ src, int64_t d, A mul = A(1)) {
  for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(src[i] * mul);
}

// Rows [0, n) of slice (i0, i1) as a row-major matrix in the accumulation type, with its leading
// dimension: the tensor's own memory when it already is that type and its rows do not overlap
// (fp32 K/V of a split_heads view have ld = H*D, which BLAS takes as is), else a copy into buf.
template <typename A, typename T>
const A* rows_as_acc(const Rows<const T>& x, int64_t i0, int64_t i1, int64_t n, int64_t d, std::vector<A>& buf,
                     int& ld) {
  if constexpr (std::is_same_v<T, A>) {
    if (x.s2 >= d && x.s2 <= std::numeric_limits<int>::max()) {
      ld = static_cast<int>(x.s2);
      return x.row(i0, i1, 0);
    }
  }
  for (int64_t j = 0; j < n; ++j) load_row(&buf[j * d], x.row(i0, i1, j), d);
  ld = static_cast<int>(d);
  return buf.data();
}

// The kernels need unit stride on D only; anything else gets a copy.
at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// Fills bias[j] with 0 (attend) or -inf (ignore) for image b's keys.
template <typename A>
void load_bias(A* bias, const bool* mask, int64_t mask_s0, int64_t mask_s1, int64_t b, int64_t lk) {
  const A ninf = -std::numeric_limits<A>::infinity();
  for (int64_t j = 0; j < lk; ++j) bias[j] = (mask && mask[b * mask_s0 + j * mask_s1]) ? ninf : A(0);
}

template <typename T, typename A>
void fwd_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* mask, A scale,
                const CrossAttentionShape& sh, const at::Tensor& out, const at::Tensor& lse) {
  const int64_t G = sh.groups, H = sh.heads, Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, M = G * Lq;
  const Rows<const T> Q(q), K(k), V(v);
  const Rows<T> O(out);
  A* lse_p = lse.data_ptr<A>();  // contiguous [B*G, H, Lq]
  const bool* mk = mask ? mask->data_ptr<bool>() : nullptr;
  const int64_t ms0 = mask ? mask->stride(0) : 0, ms1 = mask ? mask->stride(1) : 0;
  const int64_t nbmax = std::min(kBlockN, Lk);
  at::parallel_for(0, sh.batch * H, 1, [&](int64_t lo, int64_t hi) {
    // Scratch reused by every task of this chunk.
    std::vector<A> kf(Lk * D), vf(Lk * D), qf(M * D), acc(M * D), s(M * nbmax), bias(Lk), m(M), l(M);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / H, h = task % H;
      int ldk, ldv;
      const A* kp = rows_as_acc(K, b, h, Lk, D, kf, ldk);
      const A* vp = rows_as_acc(V, b, h, Lk, D, vf, ldv);
      for (int64_t r = 0; r < M; ++r) load_row(&qf[r * D], Q.row(b * G + r / Lq, h, r % Lq), D, scale);
      load_bias(bias.data(), mk, ms0, ms1, b, Lk);
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<A>::infinity());
      std::fill(l.begin(), l.end(), A(0));
      for (int64_t j0 = 0; j0 < Lk; j0 += kBlockN) {
        const int nb = static_cast<int>(std::min(kBlockN, Lk - j0));
        // S[M, nb] = (scale * Q) @ K_blk^T
        gemm('T', 'N', nb, M, D, A(1), kp + j0 * ldk, ldk, qf.data(), D, A(0), s.data(), nb);
        for (int64_t r = 0; r < M; ++r) {
          const A alpha = softmax_block_row(&s[r * nb], &bias[j0], nb, m[r], l[r]);
          if (alpha != A(1)) {
            for (int64_t i = 0; i < D; ++i) acc[r * D + i] *= alpha;
          }
        }
        // acc[M, D] += P @ V_blk
        gemm('N', 'N', D, M, nb, A(1), vp + j0 * ldv, ldv, s.data(), nb, A(1), acc.data(), D);
      }
      for (int64_t r = 0; r < M; ++r) {
        const int64_t row = b * G + r / Lq, i = r % Lq;
        // A row with every key masked has l = 0: output zeros (the reference's nan_to_num) and
        // lse = -inf, which the backward reads as "no key contributes".
        const bool empty = l[r] == A(0);
        store_row(O.row(row, h, i), &acc[r * D], D, empty ? A(0) : A(1) / l[r]);
        lse_p[(row * H + h) * Lq + i] = empty ? -std::numeric_limits<A>::infinity() : m[r] + std::log(l[r]);
      }
    }
  });
}

template <typename T, typename A>
void bwd_kernel(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor* mask, const at::Tensor& out, const at::Tensor& lse, A scale,
                const CrossAttentionShape& sh, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
  const int64_t G = sh.groups, H = sh.heads, Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, M = G * Lq;
  const Rows<const T> Q(q), K(k), V(v), dO(dout), O(out);
  const Rows<T> dQ(dq), dK(dk), dV(dv);
  const Rows<const A> LSE(lse.view({lse.size(0), lse.size(1), lse.size(2), 1}));
  const bool* mk = mask ? mask->data_ptr<bool>() : nullptr;
  const int64_t ms0 = mask ? mask->stride(0) : 0, ms1 = mask ? mask->stride(1) : 0;
  const int64_t nbmax = std::min(kBlockN, Lk);
  at::parallel_for(0, sh.batch * H, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> kf(Lk * D), vf(Lk * D), qf(M * D), dof(M * D), dqf(M * D), dkf(Lk * D), dvf(Lk * D), p(M * nbmax),
        dp(M * nbmax), bias(Lk), lse_r(M), delta(M), orow(D);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / H, h = task % H;
      int ldk, ldv;
      const A* kp = rows_as_acc(K, b, h, Lk, D, kf, ldk);
      const A* vp = rows_as_acc(V, b, h, Lk, D, vf, ldv);
      for (int64_t r = 0; r < M; ++r) {
        const int64_t row = b * G + r / Lq, i = r % Lq;
        load_row(&qf[r * D], Q.row(row, h, i), D);
        load_row(&dof[r * D], dO.row(row, h, i), D);
        load_row(orow.data(), O.row(row, h, i), D);
        A dsum = 0;  // delta_r = dout_r . out_r  (= sum_j P_rj dP_rj)
        for (int64_t d = 0; d < D; ++d) dsum += dof[r * D + d] * orow[d];
        delta[r] = dsum;
        lse_r[r] = *LSE.row(row, h, i);
      }
      load_bias(bias.data(), mk, ms0, ms1, b, Lk);
      std::fill(dqf.begin(), dqf.end(), A(0));
      std::fill(dkf.begin(), dkf.end(), A(0));
      std::fill(dvf.begin(), dvf.end(), A(0));
      for (int64_t j0 = 0; j0 < Lk; j0 += kBlockN) {
        const int nb = static_cast<int>(std::min(kBlockN, Lk - j0));
        gemm('T', 'N', nb, M, D, scale, kp + j0 * ldk, ldk, qf.data(), D, A(0), p.data(), nb);   // S = scale Q K^T
        gemm('T', 'N', nb, M, D, A(1), vp + j0 * ldv, ldv, dof.data(), D, A(0), dp.data(), nb);  // dP = dO V^T
        for (int64_t r = 0; r < M; ++r) {
          if (lse_r[r] == -std::numeric_limits<A>::infinity()) {
            // Every key masked: the output was a constant zero, nothing flows back. (exp(s - lse)
            // would be exp(-inf + inf) = NaN here.)
            std::fill_n(&p[r * nb], nb, A(0));
            std::fill_n(&dp[r * nb], nb, A(0));
          } else {
            softmax_grad_row(&p[r * nb], &dp[r * nb], &bias[j0], nb, lse_r[r], delta[r]);
          }
        }
        // dV_blk += P^T dO; dK_blk += scale dS^T Q; dQ += scale dS K_blk. Summing over all M rows
        // is what accumulates dk/dv over the G query groups.
        gemm('N', 'T', D, nb, M, A(1), dof.data(), D, p.data(), nb, A(1), &dvf[j0 * D], D);
        gemm('N', 'T', D, nb, M, scale, qf.data(), D, dp.data(), nb, A(1), &dkf[j0 * D], D);
        gemm('N', 'N', D, M, nb, scale, kp + j0 * ldk, ldk, dp.data(), nb, A(1), dqf.data(), D);
      }
      for (int64_t r = 0; r < M; ++r) store_row(dQ.row(b * G + r / Lq, h, r % Lq), &dqf[r * D], D);
      for (int64_t j = 0; j < Lk; ++j) {
        store_row(dK.row(b, h, j), &dkf[j * D], D);
        store_row(dV.row(b, h, j), &dvf[j * D], D);
      }
    }
  });
}

// [N0, H, L, D] outputs are allocated as [N0, L, H, D] and returned transposed: the layout the
// model's split_heads views have, so merge_heads (and the grads flowing into the Linear
// projections) need no copy. The fake kernels in blipx/ops/_fake.py mirror this.
at::Tensor empty_bhld(const at::Tensor& like, int64_t n0, int64_t h, int64_t l, int64_t d) {
  return at::empty({n0, l, h, d}, like.options()).transpose(1, 2);
}

// BLAS takes 32-bit sizes (LP64).
void check_blas_sizes(const CrossAttentionShape& sh) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  BLIPX_CHECK(sh.groups * sh.q_len <= kMax && sh.k_len <= kMax && sh.head_dim <= kMax &&
                  sh.groups * sh.q_len * std::max(sh.head_dim, std::min(kBlockN, sh.k_len)) <= kMax,
              "cross_attention", "G*Lq, Lk or D too large for the CPU kernel (32-bit BLAS sizes)");
}

template <typename F>
void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}, float{}); break;
    case at::kDouble: f(double{}, double{}); break;
    case at::kHalf: f(at::Half{}, float{}); break;
    case at::kBFloat16: f(at::BFloat16{}, float{}); break;
    default: TORCH_CHECK(false, "blipx.cross_attention: unsupported dtype ", st);
  }
}

std::tuple<at::Tensor, at::Tensor> cross_attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                           const at::Tensor& v_in,
                                                           const std::optional<at::Tensor>& key_padding_mask,
                                                           double scale) {
  const auto sh = check_cross_attention_args(q_in, k_in, v_in, key_padding_mask, scale, /*allow_double=*/true);
  check_blas_sizes(sh);
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const bool has_mask = key_padding_mask.has_value() && key_padding_mask->defined();
  const at::Tensor mask = has_mask ? *key_padding_mask : at::Tensor();
  const auto bg = sh.batch * sh.groups;
  at::Tensor out = empty_bhld(q, bg, sh.heads, sh.q_len, sh.head_dim);
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse = at::empty({bg, sh.heads, sh.q_len}, q.options().dtype(acc_type));
  if (bg * sh.q_len == 0) return {out, lse};
  dispatch_dtype(q.scalar_type(), [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    fwd_kernel<T, A>(q, k, v, has_mask ? &mask : nullptr, static_cast<A>(scale), sh, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd_cpu(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out_in, const at::Tensor& lse_in,
    double scale) {
  const auto sh = check_cross_attention_args(q_in, k_in, v_in, key_padding_mask, scale, /*allow_double=*/true);
  check_cross_attention_bwd_args(dout_in, q_in, out_in, lse_in);
  check_blas_sizes(sh);
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const at::Tensor dout = unit_last_stride(dout_in), out = unit_last_stride(out_in), lse = lse_in.contiguous();
  const bool has_mask = key_padding_mask.has_value() && key_padding_mask->defined();
  const at::Tensor mask = has_mask ? *key_padding_mask : at::Tensor();
  at::Tensor dq = empty_bhld(q, sh.batch * sh.groups, sh.heads, sh.q_len, sh.head_dim);
  at::Tensor dk = empty_bhld(k, sh.batch, sh.heads, sh.k_len, sh.head_dim);
  at::Tensor dv = empty_bhld(v, sh.batch, sh.heads, sh.k_len, sh.head_dim);
  if (sh.batch * sh.groups * sh.q_len == 0) {  // no query: nothing flows back to k and v
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  dispatch_dtype(q.scalar_type(), [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    bwd_kernel<T, A>(dout, q, k, v, has_mask ? &mask : nullptr, out, lse, static_cast<A>(scale), sh, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace blipx

TORCH_LIBRARY_IMPL(blipx, CPU, m) {
  m.impl("cross_attention_fwd", &blipx::cross_attention_fwd_cpu);
  m.impl("cross_attention_bwd", &blipx::cross_attention_bwd_cpu);
}
