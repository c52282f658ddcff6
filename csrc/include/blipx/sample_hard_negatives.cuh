// One categorical draw per row of a similarity matrix, in one launch, without a host sync:
// the exponential (Gumbel-max) race argmax_j(sim[i, j] - log E_j), E_j ~ Exp(1), which samples
// exactly from softmax(sim[i, :]) over the columns that take part, needs no normalisation and
// no scan, and tolerates any logit range. One block per row; each thread races over a strided
// slice of the columns, then the block reduces (key, index) pairs.
//
// Special values: NaN and masked columns never take part; -inf columns have probability 0; if a
// row has +inf candidates it draws uniformly among them (a second race with logit 0 that wins
// over the finite one); a row where nothing takes part returns -1.
//
// Randomness is counter-based Philox (curand): (seed, subsequence = row * blockDim + thread,
// offset). Seed and offset come either by value or, under CUDA-graph capture, through device
// pointers read by the kernel (the same contract as ATen's PhiloxCudaState), so replays draw
// fresh numbers. Torch-free: the .cu converts ATen's state into PhiloxArgs.
#pragma once
#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <cstdint>

#include "blipx/launch.cuh"
#include "blipx/philox.cuh"

namespace blipx {

// Threads per block for N columns: a power of two in [32, 512], about one column per thread for
// the typical N = B <= 512, a strided loop beyond.
inline int hard_negative_threads(int64_t n) {
  int t = 32;
  while (t < 512 && t < n) t <<= 1;
  return t;
}

// 32-bit Philox outputs each thread consumes (one per visited column), rounded up to a multiple
// of 4 as ATen's philox_cuda_state requires: the generator's offset increment per launch.
inline uint64_t hard_negative_philox_increment(int64_t n, int threads) {
  const uint64_t per_thread = n <= 0 ? 0 : static_cast<uint64_t>((n + threads - 1) / threads);
  const uint64_t rounded = (per_thread + 3) / 4 * 4;
  return rounded == 0 ? 4 : rounded;
}

template <typename Acc>
struct RaceEntry {
  Acc key;
  int64_t idx;  // -1: empty
};

// True when a beats b: higher key, ties to the lower column so the result is deterministic.
template <typename Acc>
__device__ __forceinline__ bool race_better(const RaceEntry<Acc>& a, const RaceEntry<Acc>& b) {
  if (a.idx < 0) return false;
  if (b.idx < 0) return true;
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

template <typename Acc>
__device__ __forceinline__ RaceEntry<Acc> warp_race(RaceEntry<Acc> e) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    RaceEntry<Acc> o;
    o.key = __shfl_down_sync(0xffffffffu, e.key, d);
    o.idx = __shfl_down_sync(0xffffffffu, e.idx, d);
    if (race_better(o, e)) e = o;
  }
  return e;
}

// Gumbel noise -log(-log(u)) from one 32-bit draw. u = (k + 0.5) * 2^-23 with k in [0, 2^23):
// strictly inside (0, 1) and exact in fp32, so both logs are finite; the truncated tails
// (|noise| beyond ~16.6 / ~-2.8) have probability < 1e-7.
template <typename Acc>
__device__ __forceinline__ Acc gumbel_from_bits(uint32_t x) {
  const Acc u = (static_cast<Acc>(x >> 9) + Acc(0.5)) * Acc(1.0 / 8388608.0);
  return -log(-log(u));
}

// blipx-design: occupancy >= 50% -- Philox state and two race entries per thread (~55 regs): 2 blocks of 512 threads/SM
template <typename T, typename Acc>
__global__ void sample_hard_negatives_kernel(const T* __restrict__ sim, int64_t s_row, int64_t s_col,
                                             const bool* __restrict__ mask, int64_t m_row, int64_t m_col,
                                             bool diag_positive, int64_t n, int64_t* __restrict__ out,
                                             PhiloxArgs rng) {
  const int64_t row = blockIdx.x;
  uint64_t seed, offset;
  philox_unpack(rng, seed, offset);
  curandStatePhilox4_32_10_t state;
  curand_init(seed, static_cast<uint64_t>(row) * blockDim.x + threadIdx.x, offset, &state);

  const T* srow = sim + row * s_row;
  const bool* mrow = mask == nullptr ? nullptr : mask + row * m_row;
  RaceEntry<Acc> fin{Acc(0), -1}, inf{Acc(0), -1};
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const uint32_t bits = curand(&state);  // drawn for every column: a column's noise does not depend on masking
    const Acc v = static_cast<Acc>(srow[j * s_col]);
    const bool excluded = (diag_positive && j == row) || (mrow != nullptr && mrow[j * m_col]) || isnan(v);
    if (excluded) continue;
    if (isinf(v)) {
      if (v < 0) continue;  // -inf: probability 0
      const RaceEntry<Acc> e{gumbel_from_bits<Acc>(bits), j};
      if (race_better(e, inf)) inf = e;
    } else {
      const RaceEntry<Acc> e{v + gumbel_from_bits<Acc>(bits), j};
      if (race_better(e, fin)) fin = e;
    }
  }

  // Block reduction: warp shuffles, then the first warp over the per-warp winners.
  __shared__ RaceEntry<Acc> s_fin[32], s_inf[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
  fin = warp_race(fin);
  inf = warp_race(inf);
  if (lane == 0) {
    s_fin[warp] = fin;
    s_inf[warp] = inf;
  }
  __syncthreads();
  if (warp == 0) {
    fin = lane < n_warps ? s_fin[lane] : RaceEntry<Acc>{Acc(0), -1};
    inf = lane < n_warps ? s_inf[lane] : RaceEntry<Acc>{Acc(0), -1};
    fin = warp_race(fin);
    inf = warp_race(inf);
    if (lane == 0) out[row] = inf.idx >= 0 ? inf.idx : fin.idx;
  }
}

// Launches the kernel on `stream`: rows * (threads) threads, B blocks. mask may be null (then
// diag_positive selects the diagonal rule). Returns the launch error, if any.
template <typename T, typename Acc>
cudaError_t sample_hard_negatives_launch(const T* sim, int64_t s_row, int64_t s_col, const bool* mask, int64_t m_row,
                                         int64_t m_col, bool diag_positive, int64_t rows, int64_t n, int64_t* out,
                                         PhiloxArgs rng, int threads, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const auto kernel = sample_hard_negatives_kernel<T, Acc>;
  BLIPX_LAUNCH(kernel, static_cast<unsigned>(rows), threads, 0, stream, sim, s_row, s_col, mask, m_row, m_col,
               diag_positive, n, out, rng);
  return cudaGetLastError();
}

}  // namespace blipx
