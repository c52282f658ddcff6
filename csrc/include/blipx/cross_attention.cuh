// CUDA kernels of blipx::cross_attention (forward and backward), torch-free: raw pointers and
// element strides. Text queries attend to image K/V; G query rows (beams) share one K/V row.
//
// Layout of the work: kRowThreads = 4 threads own one query row (or, in the dk/dv kernel, one
// key); each holds a kPer = kD/4 slice of the head dim, interleaved (dim = i*4 + lane) so the 4
// lanes read consecutive shared-memory words. Dot products are per-lane partial sums reduced
// with two xor-shuffles. Plain fp32 FMA, no tensor cores: this code has not been run yet, so it
// favours the simplest structure that is plausibly right; mma.sync is the next step.
//
//  * forward: one CTA per (K/V row b, head h) serving all G*Lq query rows of image b, 64 rows at
//    a time; K/V tiles of kTileK keys are staged in shared memory once per 64 rows (so exactly
//    once for G*Lq <= 64: training Lq = 35, decoding with <= 64 beams). Online softmax in the
//    log2 domain, fp32 accumulators; writes out and lse (natural log, -inf for a query whose
//    keys are all masked, whose output is then 0).
//    With G*Lq <= 32 (decoding) a variant splits each tile's keys over the otherwise idle row
//    slots and merges the partial softmax states at the end.
//  * backward, FlashAttention-2 style with P recomputed from lse:
//      dq kernel: the forward's structure; also writes delta = rowsum(dout * out).
//      dkdv kernel: one CTA per (64-key block, h, b); rows of all G groups stream through
//      shared memory, so dk/dv are summed over the groups without atomics.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "blipx/launch.cuh"
#include "blipx/vec.cuh"

namespace blipx {

constexpr int kAttnThreads = 256;
constexpr int kRowThreads = 4;                            // threads per query row / key
constexpr int kAttnRows = kAttnThreads / kRowThreads;     // 64 rows (or keys) per pass
constexpr int kTileK = 32;                                // keys per shared-memory tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Row r of an [N0, H, L, D] tensor (unit stride on D) given its three outer strides.
struct Strides3 {
  int64_t s0, s1, s2;
  __device__ __forceinline__ int64_t at(int64_t i0, int64_t i1, int64_t i2) const { return i0 * s0 + i1 * s1 + i2 * s2; }
};

struct CrossAttnParams {
  const void* q;
  const void* k;
  const void* v;
  const bool* mask;  // [B, Lk], True = ignore; may be null
  int64_t mask_s0, mask_s1;
  Strides3 sq, sk, sv;
  int batch, groups, heads, q_len, k_len, head_dim;
  float scale;  // softmax scale (natural)
  // forward
  void* out;
  Strides3 so;
  float* lse;  // contiguous [B*G, H, Lq]
  // backward
  const void* dout;
  Strides3 sdo;
  void* dq;
  Strides3 sdq;
  void* dk;
  Strides3 sdk;
  void* dv;
  Strides3 sdv;
  float* delta;  // contiguous [B*G, H, Lq] scratch
};

__device__ __forceinline__ float quad_sum(float x) {
  // The 4 lanes of a row are consecutive lanes (tid % 4), so xor 1 and 2 stay inside the quad.
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// Loads rows [row0, row0 + kRowsT) of one (n0, h) slice of an [N0, H, L, D] tensor into shared
// memory as fp32 [kRowsT][kD], zero outside L and D (zero-padded dims add nothing to dot
// products). `row_of(r)` maps a tile row to (n0, l) for the grouped query layout.
template <typename T, int kD, int kRowsT, typename RowOf>
__device__ __forceinline__ void load_tile(float (*dst)[kD], const T* base, const Strides3& s, int h, int rows, int d,
                                          int row0, RowOf row_of) {
  for (int idx = threadIdx.x; idx < kRowsT * kD; idx += blockDim.x) {
    const int r = idx / kD, c = idx % kD;
    float val = 0.0f;
    if (row0 + r < rows && c < d) {
      int n0, l;
      row_of(row0 + r, n0, l);
      val = to_float(base[s.at(n0, h, l) + c]);
    }
    dst[r][c] = val;
  }
}

// A query row's forward epilogue, shared by both forward kernels: out = acc / sum (zeros when
// every key was masked, sum == 0) and lse = ln(sum) + max (-inf then). ``m2`` is the row max in
// log2 units, as the kernels keep it.
template <typename T, int kPer>
__device__ __forceinline__ void store_row(const CrossAttnParams& p, int b, int g, int h, int l, int lane,
                                          const float (&acc)[kPer], float sum, float m2) {
  const bool empty = sum == 0.0f;
  const float inv = empty ? 0.0f : 1.0f / sum;
  T* out = static_cast<T*>(p.out);
  const int64_t n = static_cast<int64_t>(b) * p.groups + g;
  const int64_t ooff = p.so.at(n, h, l);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = i * kRowThreads + lane;
    if (c < p.head_dim) out[ooff + c] = from_float<T>(acc[i] * inv);
  }
  if (lane == 0) p.lse[(n * p.heads + h) * p.q_len + l] = empty ? -INFINITY : (m2 + log2f(sum)) * kLn2;
}

// blipx-design: occupancy >= 25% -- qr, acc (kD/4 each) and s[kTileK] live in registers: ~128 regs at kD = 128, 2 blocks/SM
template <typename T, int kD>
__global__ void __launch_bounds__(kAttnThreads) cross_attn_fwd_kernel(CrossAttnParams p) {
  constexpr int kPer = kD / kRowThreads;
  __shared__ float ks[kTileK][kD];
  __shared__ float vs[kTileK][kD];
  __shared__ float bias[kTileK];
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int lane = threadIdx.x % kRowThreads;
  const int rows = p.groups * p.q_len;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const float qscale = p.scale * kLog2e;  // scores in the log2 domain: exp2f is one instruction
  auto kv_row = [&](int j, int& n0, int& l) { n0 = b, l = j; };

  for (int row0 = 0; row0 < rows; row0 += kAttnRows) {
    const int r = row0 + threadIdx.x / kRowThreads;
    const bool valid = r < rows;
    const int g = valid ? r / p.q_len : 0, l = valid ? r % p.q_len : 0;
    const int64_t qoff = p.sq.at(static_cast<int64_t>(b) * p.groups + g, h, l);
    float qr[kPer], acc[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = i * kRowThreads + lane;
      qr[i] = (valid && c < p.head_dim) ? to_float(q[qoff + c]) * qscale : 0.0f;
      acc[i] = 0.0f;
    }
    float m = -INFINITY, lsum = 0.0f;
    for (int j0 = 0; j0 < p.k_len; j0 += kTileK) {
      __syncthreads();  // the previous tile is no longer read
      load_tile<T, kD, kTileK>(ks, k, p.sk, h, p.k_len, p.head_dim, j0, kv_row);
      load_tile<T, kD, kTileK>(vs, v, p.sv, h, p.k_len, p.head_dim, j0, kv_row);
      for (int j = threadIdx.x; j < kTileK; j += blockDim.x) {
        const int key = j0 + j;
        const bool keep = key < p.k_len && !(p.mask && p.mask[b * p.mask_s0 + key * p.mask_s1]);
        bias[j] = keep ? 0.0f : -INFINITY;
      }
      __syncthreads();
      float s[kTileK];
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kTileK; ++j) {
        float part = 0.0f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) part = fmaf(qr[i], ks[j][i * kRowThreads + lane], part);
        s[j] = quad_sum(part) + bias[j];  // every lane of the warp shuffles, valid row or not
        mx = fmaxf(mx, s[j]);
      }
      const float m_new = fmaxf(m, mx);
      if (m_new != -INFINITY) {  // else: every key so far masked, nothing to accumulate
        const float alpha = exp2f(m - m_new);  // m = -inf -> 0
        lsum *= alpha;
#pragma unroll
        for (int i = 0; i < kPer; ++i) acc[i] *= alpha;
#pragma unroll
        for (int j = 0; j < kTileK; ++j) {
          const float pj = exp2f(s[j] - m_new);
          lsum += pj;
#pragma unroll
          for (int i = 0; i < kPer; ++i) acc[i] = fmaf(pj, vs[j][i * kRowThreads + lane], acc[i]);
        }
        m = m_new;
      }
    }
    if (valid) store_row<T>(p, b, g, h, l, lane, acc, lsum, m);
  }
}

// dq (and delta) for all G*Lq rows of one (b, h): the forward's loop with P = exp(s - lse),
// dP = dout . v_j, dS = P * (dP - delta), dq += dS * k_j.
// blipx-design: occupancy >= 12.5% -- qr, dor, dq (kD/4 each) live in registers: > 128 regs at kD = 128, 1 block/SM
template <typename T, int kD>
__global__ void __launch_bounds__(kAttnThreads) cross_attn_bwd_dq_kernel(CrossAttnParams p) {
  constexpr int kPer = kD / kRowThreads;
  __shared__ float ks[kTileK][kD];
  __shared__ float vs[kTileK][kD];
  __shared__ float bias[kTileK];
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int lane = threadIdx.x % kRowThreads;
  const int rows = p.groups * p.q_len;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* out = static_cast<const T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  const float qscale = p.scale * kLog2e;
  auto kv_row = [&](int j, int& n0, int& l) { n0 = b, l = j; };

  for (int row0 = 0; row0 < rows; row0 += kAttnRows) {
    const int r = row0 + threadIdx.x / kRowThreads;
    const bool valid = r < rows;
    const int g = valid ? r / p.q_len : 0, l = valid ? r % p.q_len : 0;
    const int64_t n0 = static_cast<int64_t>(b) * p.groups + g;
    const int64_t stat = (n0 * p.heads + h) * p.q_len + l;
    float qr[kPer], dor[kPer], dq[kPer];
    float dsum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = i * kRowThreads + lane;
      const bool in = valid && c < p.head_dim;
      qr[i] = in ? to_float(q[p.sq.at(n0, h, l) + c]) * qscale : 0.0f;
      dor[i] = in ? to_float(dout[p.sdo.at(n0, h, l) + c]) : 0.0f;
      dsum = fmaf(dor[i], in ? to_float(out[p.so.at(n0, h, l) + c]) : 0.0f, dsum);
      dq[i] = 0.0f;
    }
    const float delta = quad_sum(dsum);
    const float lse2 = valid ? p.lse[stat] * kLog2e : -INFINITY;
    // A row whose keys are all masked has lse = -inf and contributes nothing (its output was 0).
    const bool dead = lse2 == -INFINITY;
    if (valid && lane == 0) p.delta[stat] = delta;
    for (int j0 = 0; j0 < p.k_len; j0 += kTileK) {
      __syncthreads();
      load_tile<T, kD, kTileK>(ks, k, p.sk, h, p.k_len, p.head_dim, j0, kv_row);
      load_tile<T, kD, kTileK>(vs, v, p.sv, h, p.k_len, p.head_dim, j0, kv_row);
      for (int j = threadIdx.x; j < kTileK; j += blockDim.x) {
        const int key = j0 + j;
        const bool keep = key < p.k_len && !(p.mask && p.mask[b * p.mask_s0 + key * p.mask_s1]);
        bias[j] = keep ? 0.0f : -INFINITY;
      }
      __syncthreads();
      // Not unrolled: with 3 * kD/4 live row registers, unrolling the key loop made ptxas cap dq at
      // 128 registers and spill (kD 80/96 on sm_80: 16-56 B; blipx info --kernels); unrolled by 1 it
      // fits in the same 128 with no spill on sm_80 and sm_90.
#pragma unroll 1
      for (int j = 0; j < kTileK; ++j) {
        float sp = 0.0f, dpp = 0.0f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          sp = fmaf(qr[i], ks[j][i * kRowThreads + lane], sp);
          dpp = fmaf(dor[i], vs[j][i * kRowThreads + lane], dpp);
        }
        const float s = quad_sum(sp) + bias[j];
        const float dp = quad_sum(dpp);
        const float pj = dead ? 0.0f : exp2f(s - lse2);
        const float ds = pj * (dp - delta);
#pragma unroll
        for (int i = 0; i < kPer; ++i) dq[i] = fmaf(ds, ks[j][i * kRowThreads + lane], dq[i]);
      }
    }
    if (valid) {
      T* dqp = static_cast<T*>(p.dq);
      const int64_t off = p.sdq.at(n0, h, l);
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int c = i * kRowThreads + lane;
        if (c < p.head_dim) dqp[off + c] = from_float<T>(dq[i] * p.scale);
      }
    }
  }
}

// dk, dv for 64 keys of one (b, h); every query row of image b (all G groups) streams through
// shared memory: dv_j += P_rj dout_r, dk_j += dS_rj q_r. Needs delta from the dq kernel.
// blipx-design: occupancy >= 12.5% -- kr, vr, dk, dv (kD/4 each) live in registers: ~255 regs at kD = 128, 1 block/SM
template <typename T, int kD>
__global__ void __launch_bounds__(kAttnThreads) cross_attn_bwd_dkdv_kernel(CrossAttnParams p) {
  constexpr int kPer = kD / kRowThreads;
  constexpr int kTileQ = kTileK;
  __shared__ float qs[kTileQ][kD];
  __shared__ float dos[kTileQ][kD];
  __shared__ float lse2s[kTileQ];
  __shared__ float deltas[kTileQ];
  const int h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x % kRowThreads;
  const int key = blockIdx.x * kAttnRows + threadIdx.x / kRowThreads;
  const bool keep = key < p.k_len && !(p.mask && p.mask[b * p.mask_s0 + key * p.mask_s1]);
  const int rows = p.groups * p.q_len;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  const float qscale = p.scale * kLog2e;
  auto q_row = [&](int r, int& n0, int& l) { n0 = b * p.groups + r / p.q_len, l = r % p.q_len; };

  float kr[kPer], vr[kPer], dk[kPer], dv[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = i * kRowThreads + lane;
    const bool in = key < p.k_len && c < p.head_dim;
    kr[i] = in ? to_float(k[p.sk.at(b, h, key) + c]) : 0.0f;
    vr[i] = in ? to_float(v[p.sv.at(b, h, key) + c]) : 0.0f;
    dk[i] = dv[i] = 0.0f;
  }
  for (int r0 = 0; r0 < rows; r0 += kTileQ) {
    __syncthreads();
    load_tile<T, kD, kTileQ>(qs, q, p.sq, h, rows, p.head_dim, r0, q_row);
    load_tile<T, kD, kTileQ>(dos, dout, p.sdo, h, rows, p.head_dim, r0, q_row);
    for (int t = threadIdx.x; t < kTileQ; t += blockDim.x) {
      float lse2 = -INFINITY, delta = 0.0f;
      if (r0 + t < rows) {
        int n0, l;
        q_row(r0 + t, n0, l);
        const int64_t stat = (static_cast<int64_t>(n0) * p.heads + h) * p.q_len + l;
        lse2 = p.lse[stat] * kLog2e;
        delta = p.delta[stat];
      }
      lse2s[t] = lse2;
      deltas[t] = delta;
    }
    __syncthreads();
#pragma unroll 4
    for (int t = 0; t < kTileQ; ++t) {
      float sp = 0.0f, dpp = 0.0f;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        sp = fmaf(kr[i], qs[t][i * kRowThreads + lane], sp);
        dpp = fmaf(vr[i], dos[t][i * kRowThreads + lane], dpp);
      }
      const float s = quad_sum(sp) * qscale;
      const float dp = quad_sum(dpp);
      // Padding rows and rows with every key masked have lse = -inf: no contribution. A masked
      // key gets none either (its dk/dv stay 0).
      const float pj = (keep && lse2s[t] != -INFINITY) ? exp2f(s - lse2s[t]) : 0.0f;
      const float ds = pj * (dp - deltas[t]);
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        dv[i] = fmaf(pj, dos[t][i * kRowThreads + lane], dv[i]);
        dk[i] = fmaf(ds, qs[t][i * kRowThreads + lane], dk[i]);
      }
    }
  }
  if (key < p.k_len) {
    T* dkp = static_cast<T*>(p.dk);
    T* dvp = static_cast<T*>(p.dv);
    const int64_t ko = p.sdk.at(b, h, key), vo = p.sdv.at(b, h, key);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = i * kRowThreads + lane;
      if (c < p.head_dim) {
        dkp[ko + c] = from_float<T>(dk[i] * p.scale);
        dvp[vo + c] = from_float<T>(dv[i]);
      }
    }
  }
}

// Forward for few query rows per image (G*Lq <= 32: decoding, Lq = 1 with G beams), where the
// kernel above would leave most of its 64 row slots idle. The slots are split as R rows x
// S = 64 / R key splits: split s takes keys s, s + S, ... of every tile (the same count for every
// thread, so the quad shuffles stay converged), keeping its own online-softmax state with a
// per-key update; the S states of a row are merged through shared memory at the end. K/V are
// still staged once per (b, h) for all rows. R is a power of two in [2, 32], so S <= kTileK.
// blipx-design: occupancy >= 25% -- qr, acc (kD/4 each) live in registers: ~100 regs at kD = 128, 2 blocks/SM
template <typename T, int kD>
__global__ void __launch_bounds__(kAttnThreads) cross_attn_fwd_small_kernel(CrossAttnParams p, int R) {
  constexpr int kPer = kD / kRowThreads;
  __shared__ float kv[2 * kTileK * kD];  // K tile, V tile; then the [kAttnRows][kD] merge buffer
  __shared__ float bias[kTileK];
  __shared__ float ms[kAttnRows], ls[kAttnRows];
  static_assert(2 * kTileK == kAttnRows, "the merge buffer reuses the K/V tiles");
  float (*ks)[kD] = reinterpret_cast<float (*)[kD]>(kv);
  float (*vs)[kD] = reinterpret_cast<float (*)[kD]>(kv + kTileK * kD);
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int lane = threadIdx.x % kRowThreads, slot = threadIdx.x / kRowThreads;
  const int S = kAttnRows / R, rl = slot % R, split = slot / R;
  const int rows = p.groups * p.q_len;  // <= R
  const bool valid = rl < rows;
  const int g = valid ? rl / p.q_len : 0, l = valid ? rl % p.q_len : 0;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const float qscale = p.scale * kLog2e;
  auto kv_row = [&](int j, int& n0, int& lk) { n0 = b, lk = j; };
  const int64_t qoff = p.sq.at(static_cast<int64_t>(b) * p.groups + g, h, l);
  float qr[kPer], acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = i * kRowThreads + lane;
    qr[i] = (valid && c < p.head_dim) ? to_float(q[qoff + c]) * qscale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, lsum = 0.0f;
  for (int j0 = 0; j0 < p.k_len; j0 += kTileK) {
    __syncthreads();
    load_tile<T, kD, kTileK>(ks, k, p.sk, h, p.k_len, p.head_dim, j0, kv_row);
    load_tile<T, kD, kTileK>(vs, v, p.sv, h, p.k_len, p.head_dim, j0, kv_row);
    for (int j = threadIdx.x; j < kTileK; j += blockDim.x) {
      const int key = j0 + j;
      const bool keep = key < p.k_len && !(p.mask && p.mask[b * p.mask_s0 + key * p.mask_s1]);
      bias[j] = keep ? 0.0f : -INFINITY;
    }
    __syncthreads();
    for (int j = split; j < kTileK; j += S) {
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < kPer; ++i) part = fmaf(qr[i], ks[j][i * kRowThreads + lane], part);
      const float sj = quad_sum(part) + bias[j];
      if (sj != -INFINITY) {  // masked / padding key: no update (and no exp2(-inf - -inf))
        const float m_new = fmaxf(m, sj);
        const float alpha = exp2f(m - m_new);  // m = -inf -> 0
        const float pj = exp2f(sj - m_new);
        lsum = fmaf(lsum, alpha, pj);
#pragma unroll
        for (int i = 0; i < kPer; ++i) acc[i] = fmaf(pj, vs[j][i * kRowThreads + lane], acc[i] * alpha);
        m = m_new;
      }
    }
  }
  __syncthreads();  // the last tile is no longer read: kv becomes the merge buffer
  float (*accs)[kD] = reinterpret_cast<float (*)[kD]>(kv);
#pragma unroll
  for (int i = 0; i < kPer; ++i) accs[slot][i * kRowThreads + lane] = acc[i];
  if (lane == 0) {
    ms[slot] = m;
    ls[slot] = lsum;
  }
  __syncthreads();
  if (split != 0 || !valid) return;  // no barrier follows
  float mmax = -INFINITY;
  for (int t = 0; t < S; ++t) mmax = fmaxf(mmax, ms[t * R + rl]);
  float total = 0.0f, o[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) o[i] = 0.0f;
  if (mmax != -INFINITY) {  // else every key masked
    for (int t = 0; t < S; ++t) {
      const float w = exp2f(ms[t * R + rl] - mmax);  // an empty split (m = -inf) weighs 0
      total = fmaf(ls[t * R + rl], w, total);
#pragma unroll
      for (int i = 0; i < kPer; ++i) o[i] = fmaf(accs[t * R + rl][i * kRowThreads + lane], w, o[i]);
    }
  }
  store_row<T>(p, b, g, h, l, lane, o, total, mmax);
}

// Host-side launchers (current stream passed in); return the launch error.
template <typename T, int kD>
cudaError_t cross_attn_fwd_launch(const CrossAttnParams& p, cudaStream_t stream) {
  const int rows = p.groups * p.q_len;
  if (rows <= kTileK) {  // few rows per image (decoding): split the keys over the idle row slots
    int r = 2;
    while (r < rows) r *= 2;
    const auto kernel = cross_attn_fwd_small_kernel<T, kD>;
    BLIPX_LAUNCH(kernel, p.batch * p.heads, kAttnThreads, 0, stream, p, r);
  } else {
    const auto kernel = cross_attn_fwd_kernel<T, kD>;
    BLIPX_LAUNCH(kernel, p.batch * p.heads, kAttnThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

template <typename T, int kD>
cudaError_t cross_attn_bwd_launch(const CrossAttnParams& p, cudaStream_t stream) {
  const auto dq_kernel = cross_attn_bwd_dq_kernel<T, kD>;
  BLIPX_LAUNCH(dq_kernel, p.batch * p.heads, kAttnThreads, 0, stream, p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.k_len, kAttnRows)), p.heads, p.batch);
  const auto dkdv_kernel = cross_attn_bwd_dkdv_kernel<T, kD>;
  BLIPX_LAUNCH(dkdv_kernel, grid, kAttnThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace blipx
