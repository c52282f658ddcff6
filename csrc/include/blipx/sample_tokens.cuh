// Fused temperature + top-k + top-p sampling, one block per row of logits [B, V], one launch,
// no sort and no host sync. Semantics: blipx/ops/reference.py (sample_tokens_probs_ref).
//
// Per row:
//   1. one pass: raw max / first argmax (greedy rows stop there) and y = x / temperature
//      (NaN -> -inf, -0 -> +0), cached in shared memory when the row fits;
//   2. top-k: the k-th largest y exactly, by bisection over the order-preserving uint32 key of
//      the float (32 rounds of "count of keys >= candidate", each a block reduction); y >= kth
//      is kept, ties included, as HF's `scores < kth` test keeps them;
//   3. weights w = exp(y - max) over the kept set (the max has w = 1; replaces y in the cache);
//   4. top-p: the smallest threshold t (bisection over the bits of non-negative floats, ~30
//      rounds) with mass(w > t) < p * total; w >= t is kept, so the token that crosses p stays;
//   5. the draw: an exponential race argmax_j w_j / E_j, E_j ~ Exp(1), exact for a categorical
//      over the kept weights and free of any scan or normalisation.
// Block reductions use a fixed shuffle tree, so a row's decisions are deterministic; counts and
// masses are exact/fp32. The race reads one Philox uniform per (thread, visited column):
// (seed, subsequence = row * blockDim + thread, offset), with seed/offset by value or, under
// CUDA-graph capture, through device pointers (ATen's PhiloxCudaState contract), so replays draw
// fresh numbers. Torch-free: the .cu converts ATen's state into PhiloxArgs.
#pragma once
#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <cstdint>

#include "blipx/launch.cuh"
#include "blipx/philox.cuh"
#include "blipx/vec.cuh"

namespace blipx {

struct SampleTokensParams {
  const void* logits;
  int64_t row_stride, col_stride;
  int64_t rows;
  int vocab;
  const float* temps;  // [B] or null: use temperature
  float temperature;
  const int64_t* top_ks;  // [B] or null: use top_k
  int64_t top_k;
  const float* top_ps;  // [B] or null: use top_p
  float top_p;
  int64_t* out;
  PhiloxArgs rng;
};

namespace sample_tokens_detail {

constexpr unsigned kFull = 0xffffffffu;
constexpr float kInf = __builtin_huge_valf();

// Order-preserving map float -> uint32 (no NaN reaches it).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Sum over the block, result in every thread. `smem` holds 32 partials; the leading
// __syncthreads keeps a reuse from overwriting partials that slower warps still read.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* smem) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  v = (threadIdx.x & 31) < (blockDim.x >> 5) ? smem[threadIdx.x & 31] : T(0);
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);
  return v;
}

struct ArgBest {
  float v;
  int idx;  // -1: none
};

// a beats b: larger value, ties to the lower index.
__device__ __forceinline__ bool beats(const ArgBest& a, const ArgBest& b) {
  if (a.idx < 0) return false;
  if (b.idx < 0) return true;
  return a.v > b.v || (a.v == b.v && a.idx < b.idx);
}

__device__ __forceinline__ ArgBest warp_best(ArgBest a) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    ArgBest o{__shfl_xor_sync(kFull, a.v, d), __shfl_xor_sync(kFull, a.idx, d)};
    if (beats(o, a)) a = o;
  }
  return a;
}

__device__ __forceinline__ ArgBest block_best(ArgBest a, float* sv, int* si) {
  a = warp_best(a);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    sv[threadIdx.x >> 5] = a.v;
    si[threadIdx.x >> 5] = a.idx;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  a = lane < (blockDim.x >> 5) ? ArgBest{sv[lane], si[lane]} : ArgBest{-kInf, -1};
  return warp_best(a);
}

}  // namespace sample_tokens_detail

// kCache: the row (y, then w) lives in dynamic shared memory (V floats); otherwise every pass
// re-reads the logits (L2-resident for decoding-sized batches) and recomputes.
// blipx-design: occupancy >= 50% -- 1024 threads at <= 64 regs (launch bounds): 1 block/SM; so does the cached row (119 KB at V = 30524)
template <typename T, bool kCache>
__global__ void __launch_bounds__(1024) sample_tokens_kernel(const SampleTokensParams p) {
  using namespace sample_tokens_detail;
  BLIPX_DYNAMIC_SHARED(float, cache);
  __shared__ float red_f[32];
  __shared__ int red_i[32];
  const int64_t row = blockIdx.x;
  const int v = p.vocab, tid = threadIdx.x, nt = blockDim.x;
  const T* lg = static_cast<const T*>(p.logits) + row * p.row_stride;
  const int64_t cs = p.col_stride;
  const float t = p.temps ? p.temps[row] : p.temperature;
  const bool greedy = !(t > 0.f);
  auto scaled = [&](float x) { return isnan(x) ? -kInf : x / t + 0.0f; };  // + 0 turns -0 into +0

  // 1. raw max and first argmax (NaN never compares greater); cache y.
  ArgBest best{-kInf, -1};
  for (int j = tid; j < v; j += nt) {
    const float x = to_float(lg[j * cs]);
    if (x > best.v) best = {x, j};
    if (kCache && !greedy) cache[j] = scaled(x);
  }
  best = block_best(best, red_f, red_i);
  if (best.idx < 0 || greedy) {  // uniform over the block: everyone leaves together
    if (tid == 0) p.out[row] = best.idx;  // -1 when every logit is -inf or NaN
    return;
  }
  const float m = best.v / t;  // division is monotone: max(x / t) == max(x) / t
  const bool inf_row = isinf(m);
  auto y_at = [&](int j) { return kCache ? cache[j] : scaled(to_float(lg[j * cs])); };

  // 2. top-k: the largest key K with count(key >= K) >= k is the k-th largest value's key.
  const int64_t k = p.top_ks ? p.top_ks[row] : p.top_k;
  const bool use_k = k > 0 && k < v;
  uint32_t kth_key = 0;
  if (use_k) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = kth_key | (1u << bit);
      int cnt = 0;
      for (int j = tid; j < v; j += nt) cnt += order_key(y_at(j)) >= cand;
      if (block_sum(cnt, red_i) >= k) kth_key = cand;
    }
  }
  auto weight = [&](float y) {
    if (use_k && order_key(y) < kth_key) return 0.f;
    return inf_row ? (y == kInf ? 1.f : 0.f) : expf(y - m);
  };

  // 3. weights and their total.
  float part = 0.f;
  for (int j = tid; j < v; j += nt) {
    const float w = weight(y_at(j));
    if (kCache) cache[j] = w;  // each j is read and written by its own thread only
    part += w;
  }
  const float total = block_sum(part, red_f);
  auto w_at = [&](int j) { return kCache ? cache[j] : weight(scaled(to_float(lg[j * cs]))); };

  // 4. top-p: smallest bit pattern T in [1, bits(1.0)] with mass(w > T) < p * total
  //    (mass(w > 1) = 0, so T = bits(1.0) always qualifies: the max and its ties survive).
  const float pp = p.top_ps ? p.top_ps[row] : p.top_p;
  uint32_t thr = 1;  // the smallest positive float: zero weights are never drawn
  if (pp < 1.f) {
    uint32_t lo = 1, hi = 0x3f800000u;
    if (!(pp > 0.f)) lo = hi;
    const float target = pp * total;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      float s = 0.f;
      for (int j = tid; j < v; j += nt) {
        const float w = w_at(j);
        s += __float_as_uint(w) > mid ? w : 0.f;
      }
      if (block_sum(s, red_f) < target) hi = mid; else lo = mid + 1;
    }
    thr = lo;
  }

  // 5. exponential race over the kept weights: one uniform per visited column, kept or not,
  //    so the Philox offset increment does not depend on the data.
  uint64_t seed, offset;
  philox_unpack(p.rng, seed, offset);
  curandStatePhilox4_32_10_t st;
  curand_init(seed, static_cast<uint64_t>(row) * nt + tid, offset, &st);
  ArgBest race{-kInf, -1};
  for (int j = tid; j < v; j += nt) {
    const float u = curand_uniform(&st);  // (0, 1]
    const float w = w_at(j);
    if (__float_as_uint(w) >= thr) {
      const float e = -logf(u);  // Exp(1)
      const float key = e > 0.f ? w / e : kInf;  // u == 1 (p = 2^-32): a certain win
      if (race.idx < 0 || key > race.v) race = {key, j};
    }
  }
  race = block_best(race, red_f, red_i);
  if (tid == 0) p.out[row] = race.idx;
}

// Threads per row: about 8 columns per thread, a power of two in [64, 1024].
inline int sample_tokens_threads(int64_t v) {
  int t = 64;
  while (t < 1024 && int64_t(t) * 8 < v) t <<= 1;
  return t;
}

// 32-bit Philox outputs per thread (one per visited column), rounded up to a multiple of 4 as
// ATen's philox_cuda_state requires: the generator's offset increment per launch.
inline uint64_t sample_tokens_philox_increment(int64_t v, int threads) {
  const uint64_t per_thread = static_cast<uint64_t>((v + threads - 1) / threads);
  const uint64_t rounded = (per_thread + 3) / 4 * 4;
  return rounded == 0 ? 4 : rounded;
}

// One launch on `stream`; `max_dynamic_smem` is the per-block opt-in limit in bytes.
template <typename T>
cudaError_t sample_tokens_launch(const SampleTokensParams& p, int threads, int max_dynamic_smem, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(p.vocab) * sizeof(float);
  if (smem <= static_cast<size_t>(max_dynamic_smem)) {
    auto kernel = sample_tokens_kernel<T, true>;
    if (smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    BLIPX_LAUNCH(kernel, static_cast<unsigned>(p.rows), threads, smem, stream, p);
  } else {
    const auto kernel = sample_tokens_kernel<T, false>;
    BLIPX_LAUNCH(kernel, static_cast<unsigned>(p.rows), threads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace blipx
