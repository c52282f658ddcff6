// One fused beam-search step (HF's vectorised beam search, blipx/ops/reference.py:
// beam_search_step_ref) in two launches, without the [B, K*V] score matrix.
//
// Stage 1: one block per beam row (B*K blocks). The current length is read on the device (a
// decode loop's position tensor: no host value per step, so one captured graph serves every
// step). The row's distinct tokens of sequences[:, :cur_len] are marked in a shared-memory
// bitmask (atomicOr, so duplicates count once); a max pass and a sum-of-exp pass give
// log-softmax's log(Z) in fp32; then each column's processed score -- (x - max) - log Z, the
// repetition penalty for marked tokens (multiply negative, divide positive), -inf for EOS while
// banned, plus the running beam score -- is computed once (cached in shared memory when the row
// fits) and the row's top 2K are picked by 2K rounds of block argmax, each taking the best
// candidate ranked strictly after the previous one (score descending, ties to the lower token).
// Output: [B*K, 2K] candidates.
// Stage 2: one thread per batch row merges its K sorted lists into the top 2K. This is exact:
// scores of all beams live in one space, so the global top 2K over K*V lies in the union of the
// per-beam top 2K (TensorRT-LLM's beam kernels rely on the same fact).
// Torch-free: raw pointers and strides.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "blipx/launch.cuh"
#include "blipx/vec.cuh"

namespace blipx {

struct BeamStepParams {
  const void* logits;
  int64_t row_stride, col_stride;
  const float* beam_scores;  // [B*K], contiguous
  const int64_t* sequences;
  int64_t seq_row_stride, seq_col_stride;
  int64_t seq_len;         // T, the columns of sequences
  const int64_t* cur_len;  // device-side current length (one int64, clamped to [0, T]); null: T
  int64_t eos;             // EOS id, banned while cur_len < min_length; -1: none
  int64_t min_length;
  float penalty;
  int rows;      // B*K
  int beams;     // K
  int vocab;     // V
  int per_beam;  // min(2K, V) candidates kept per beam row
  float* cand_scores;  // [B*K, per_beam]
  int* cand_tokens;    // [B*K, per_beam]; -1 = none
  float* out_scores;   // [B, 2K]
  int64_t* out_tokens;
  int64_t* out_beams;
};

namespace beam_step_detail {

constexpr unsigned kFull = 0xffffffffu;
constexpr float kInf = __builtin_huge_valf();

struct Cand {
  float v;
  int idx;  // -1: none
};

// a ranks before b: higher score, ties to the lower index; NaN never reaches here.
__device__ __forceinline__ bool before(const Cand& a, const Cand& b) {
  if (a.idx < 0) return false;
  if (b.idx < 0) return true;
  return a.v > b.v || (a.v == b.v && a.idx < b.idx);
}

__device__ __forceinline__ Cand warp_best(Cand a) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    Cand o{__shfl_xor_sync(kFull, a.v, d), __shfl_xor_sync(kFull, a.idx, d)};
    if (before(o, a)) a = o;
  }
  return a;
}

__device__ __forceinline__ Cand block_best(Cand a, float* sv, int* si) {
  a = warp_best(a);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    sv[threadIdx.x >> 5] = a.v;
    si[threadIdx.x >> 5] = a.idx;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  a = lane < (blockDim.x >> 5) ? Cand{sv[lane], si[lane]} : Cand{-kInf, -1};
  return warp_best(a);
}

template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* smem) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const float o = __shfl_xor_sync(kFull, v, d);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  v = lane < (blockDim.x >> 5) ? smem[lane] : (kMax ? -kInf : 0.f);
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const float o = __shfl_xor_sync(kFull, v, d);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  return v;
}

}  // namespace beam_step_detail

// Dynamic shared memory: the token bitmask ((V + 31) / 32 words), then V floats when kCache.
// blipx-design: occupancy >= 50% -- 1024 threads at <= 64 regs (launch bounds): 1 block/SM; so does the cached row (123 KB at V = 30524)
// (1024, 1): one resident block is the design; without the explicit 1, ptxas aimed at two per SM,
// capped the kernel at 32 registers and spilled 8 B (fp32, kCache = false, sm_80).
template <typename T, bool kCache>
__global__ void __launch_bounds__(1024, 1) beam_step_stage1_kernel(const BeamStepParams p) {
  using namespace beam_step_detail;
  BLIPX_DYNAMIC_SHARED(uint32_t, dyn);
  __shared__ float red_f[32];
  __shared__ int red_i[32];
  const int r = blockIdx.x, tid = threadIdx.x, nt = blockDim.x, v = p.vocab;
  const int words = (v + 31) / 32;
  uint32_t* mark = dyn;
  float* cache = reinterpret_cast<float*>(dyn + words);
  const T* lg = static_cast<const T*>(p.logits) + static_cast<int64_t>(r) * p.row_stride;
  const int64_t cs = p.col_stride;
  int64_t cur_len = p.seq_len;
  if (p.cur_len != nullptr) {
    const int64_t c = *p.cur_len;
    cur_len = c < 0 ? 0 : (c > p.seq_len ? p.seq_len : c);
  }
  const int banned = (cur_len < p.min_length && p.eos >= 0) ? static_cast<int>(p.eos) : -1;  // eos < V < 2^31

  const bool penalize = p.penalty != 1.f;
  if (penalize) {
    for (int w = tid; w < words; w += nt) mark[w] = 0u;
    __syncthreads();
    const int64_t* seq = p.sequences + static_cast<int64_t>(r) * p.seq_row_stride;
    for (int64_t c = tid; c < cur_len; c += nt) {
      const int64_t tok = seq[c * p.seq_col_stride];
      if (tok >= 0 && tok < v) atomicOr(&mark[tok >> 5], 1u << (tok & 31));  // ids outside [0, V) ignored
    }
  }  // the reductions below synchronise before the mask is read

  float mx = -kInf;
  for (int j = tid; j < v; j += nt) {
    const float x = to_float(lg[j * cs]);
    if (kCache) cache[j] = x;
    mx = fmaxf(mx, x);
  }
  const float m = block_reduce<true>(mx, red_f);
  float part = 0.f;
  for (int j = tid; j < v; j += nt) part += expf((kCache ? cache[j] : to_float(lg[j * cs])) - m);
  const float log_z = logf(block_reduce<false>(part, red_f));
  const float bs = p.beam_scores[r];
  auto score = [&](int j, float x) {
    float lp = (x - m) - log_z;  // torch's log_softmax form
    if (penalize && ((mark[j >> 5] >> (j & 31)) & 1u)) lp = lp < 0.f ? lp * p.penalty : lp / p.penalty;
    if (j == banned) lp = -kInf;
    const float s = lp + bs;
    return isnan(s) ? -kInf : s;
  };
  if (kCache) {
    for (int j = tid; j < v; j += nt) cache[j] = score(j, cache[j]);  // own columns only: no race
  }

  Cand prev{kInf, -1};  // idx -1: nothing taken yet
  float* out_s = p.cand_scores + static_cast<int64_t>(r) * p.per_beam;
  int* out_t = p.cand_tokens + static_cast<int64_t>(r) * p.per_beam;
  for (int round = 0; round < p.per_beam; ++round) {
    Cand best{-kInf, -1};
    for (int j = tid; j < v; j += nt) {
      const Cand c{kCache ? cache[j] : score(j, to_float(lg[j * cs])), j};
      if ((prev.idx < 0 || before(prev, c)) && before(c, best)) best = c;
    }
    best = block_best(best, red_f, red_i);
    if (tid == 0) {
      out_s[round] = best.v;
      out_t[round] = best.idx;
    }
    prev = best;  // idx -1 only if the row had fewer than per_beam columns (never: per_beam <= V)
  }
}

// One thread per batch row: K-way merge of the K sorted candidate lists.
// blipx-design: occupancy >= 50%, local <= 256 B -- one thread per batch row, few blocks; head[64] (K <= 64) is a local array
__global__ void beam_step_stage2_kernel(const BeamStepParams p) {
  using namespace beam_step_detail;
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  const int k = p.beams, n2k = 2 * k, per = p.per_beam;
  if (b >= p.rows / k) return;
  int head[64];  // K <= 64 (checked on the host)
  for (int i = 0; i < k; ++i) head[i] = 0;
  const float* cs = p.cand_scores + static_cast<int64_t>(b) * k * per;
  const int* ct = p.cand_tokens + static_cast<int64_t>(b) * k * per;
  for (int o = 0; o < n2k; ++o) {
    int pick = -1;
    Cand pc{-kInf, -1};
    for (int i = 0; i < k; ++i) {
      if (head[i] >= per) continue;
      const int t = ct[i * per + head[i]];
      // flat index beam * V + token orders ties across beams like the CPU kernel.
      const Cand c{cs[i * per + head[i]], t < 0 ? -1 : i * p.vocab + t};
      if (c.idx >= 0 && (pick < 0 || before(c, pc))) {
        pick = i;
        pc = c;
      }
    }
    const int64_t at = static_cast<int64_t>(b) * n2k + o;
    if (pick < 0) {  // unreachable for V >= 2: K * min(2K, V) >= 2K
      p.out_scores[at] = -kInf;
      p.out_tokens[at] = 0;
      p.out_beams[at] = 0;
      continue;
    }
    p.out_scores[at] = pc.v;
    p.out_tokens[at] = ct[pick * per + head[pick]];
    p.out_beams[at] = pick;
    ++head[pick];
  }
}

// Threads per beam row: about 16 columns per thread, a power of two in [64, 1024].
inline int beam_step_threads(int64_t v) {
  int t = 64;
  while (t < 1024 && int64_t(t) * 16 < v) t <<= 1;
  return t;
}

template <typename T>
cudaError_t beam_search_step_launch(const BeamStepParams& p, int max_dynamic_smem, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const size_t mask_bytes = static_cast<size_t>((p.vocab + 31) / 32) * sizeof(uint32_t);
  const size_t cached = mask_bytes + static_cast<size_t>(p.vocab) * sizeof(float);
  const int threads = beam_step_threads(p.vocab);
  cudaError_t e = cudaSuccess;
  auto launch = [&](auto kernel, size_t smem) {
    if (smem > 48 * 1024) {
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return;
    }
    BLIPX_LAUNCH(kernel, p.rows, threads, smem, stream, p);
    e = cudaGetLastError();
  };
  if (cached <= static_cast<size_t>(max_dynamic_smem)) {
    launch(beam_step_stage1_kernel<T, true>, cached);
  } else {
    launch(beam_step_stage1_kernel<T, false>, mask_bytes);
  }
  if (e != cudaSuccess) return e;
  const int batch = p.rows / p.beams;
  BLIPX_LAUNCH(beam_step_stage2_kernel, (batch + 127) / 128, 128, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace blipx
