// Tensor-core (mma.sync m16n8k16) forward and backward of blipx::cross_attention for bf16 / fp16,
// in the FlashAttention-2 structure; same parameters (CrossAttnParams), output layouts and
// semantics as the FMA kernels of blipx/cross_attention.cuh: out [B*G, H, Lq, D] in T, lse
// [B*G, H, Lq] fp32 (natural log; -inf and a zero output for a query whose keys are all masked);
// dq, dk, dv with dk/dv summed over the G groups. Every PTX instruction comes from blipx/mma.cuh
// (fragment addressing: its load_a / load_b_nk / load_b_kn / c_to_a), so the kernels also run on
// the SIMT emulator. The backward is described above its kernels, further down.
//
// Forward work layout: one CTA of 4 warps per (image b, head h, block of query rows). The query
// rows of image b are all G*Lq rows of its G groups (row r = group r / Lq, position r % Lq), so
// the K/V tiles of image b are read once per CTA for every group (G beams share each load). K/V
// stream through shared memory in tiles of kBlockN keys, double-buffered with cp.async (the
// next tile's copies are in flight while the warps compute on this one). Each warp owns a 16-row
// slice of the queries (kWm row slices) and a kBlockN / kWn key slice of every tile:
//  * kWm = 4, kWn = 1 (more than 16 rows: training, Lq = 35): 64 rows per CTA, every warp all
//    keys of the tile; a warp whose 16 rows are all padding skips the math;
//  * kWm = 1, kWn = 4 (at most 16 rows: decoding, Lq = 1 with G <= 16 beams): the 4 warps share
//    the 16 rows and split each tile's keys, flash-decoding style, merging their partial
//    softmax states in the epilogue -- else 3 of 4 warps would idle.
// Per warp and tile: S = Q K^T by mma (Q and K fragments by ldmatrix; K rows are the B operand's
// columns), the online softmax of FlashAttention-2 in fp32 in the log2 domain (row max over the
// 4 lanes of a quad by two xor-shuffles; the row sum kept per lane and reduced once at the end),
// then O += P V with P re-packed from the S accumulators as the A operand (the C and A fragment
// layouts line up: no shared-memory round trip) and V by ldmatrix.trans.
// Epilogue: the unnormalised O, row max and row sum of every warp go to shared memory; the CTA
// merges the kWn partial states of each row, divides, and writes 16-byte vectors of out.
// Shared rows are padded by 8 elements (16 bytes), which makes the 8 row addresses of every
// ldmatrix phase hit distinct banks for every head dim here.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "blipx/cross_attention.cuh"
#include "blipx/launch.cuh"
#include "blipx/mma.cuh"
#include "blipx/vec.cuh"

namespace blipx {

constexpr int kMmaThreads = 128;  // 4 warps

// How the 128 threads cover a tile row of kD / 8 16-byte chunks: a fixed chunk per thread (lane
// groups of kSlots >= kD / 8 consecutive threads per row, the spare slots idle), kRowsPerPass rows
// per pass. No division in the loops; consecutive threads copy consecutive 16 bytes of a row.
template <int kD>
struct RowCopy {
  static constexpr int kChunks = kD / 8;
  static constexpr int kSlots = kChunks <= 4 ? 4 : kChunks <= 8 ? 8 : 16;
  static constexpr int kRowsPerPass = kMmaThreads / kSlots;
};

// cp.async of rows [row0, row0 + kRows) of image b's G*Lq query rows of `src` (q, dout: row r is
// group r / Lq, position r % Lq) into dst[kRows][kD + 8]; zero-filled beyond the rows and the
// head dim (zero dims add nothing to a dot product; zero rows keep 0 * garbage out of sums).
template <typename T, int kD, int kRows>
__device__ __forceinline__ void load_query_rows_async(T* dst, const T* src, const Strides3& s, const CrossAttnParams& p,
                                                      int b, int h, int row0) {
  using RC = RowCopy<kD>;
  const int c = (threadIdx.x % RC::kSlots) * 8;
  if (c >= kD) return;  // a spare slot (no barrier in here)
  const int rows = p.groups * p.q_len;
#pragma unroll
  for (int r = threadIdx.x / RC::kSlots; r < kRows; r += RC::kRowsPerPass) {
    const int row = row0 + r;
    const bool in = row < rows && c < p.head_dim;
    const T* from = in ? src + s.at(static_cast<int64_t>(b) * p.groups + row / p.q_len, h, row % p.q_len) + c : src;
    mma::cp_async_16(dst + r * (kD + 8) + c, from, in);
  }
}

// The same for keys [key0, key0 + kRows) of K or V row b.
template <typename T, int kD, int kRows>
__device__ __forceinline__ void load_key_rows_async(T* dst, const T* src, const Strides3& s, const CrossAttnParams& p,
                                                    int b, int h, int key0) {
  using RC = RowCopy<kD>;
  const int c = (threadIdx.x % RC::kSlots) * 8;
  if (c >= kD) return;
#pragma unroll
  for (int r = threadIdx.x / RC::kSlots; r < kRows; r += RC::kRowsPerPass) {
    const int key = key0 + r;
    const bool in = key < p.k_len && c < p.head_dim;
    mma::cp_async_16(dst + r * (kD + 8) + c, in ? src + s.at(b, h, key) + c : src, in);
  }
}

__device__ __forceinline__ bool key_kept(const CrossAttnParams& p, int b, int key) {
  return key < p.k_len && !(p.mask && p.mask[b * p.mask_s0 + key * p.mask_s1]);
}

// Stores a 16 x 8 accumulator tile (rows row0 + g, + 8; dims col0 + 2t, + 1) of a warp scaled by
// `mul` into rows of `dst`, via row_ptr(r) -> element 0 of row r or nullptr for a row not kept;
// pairs of elements as one 4-byte store where aligned, elements beyond head_dim dropped.
template <typename T, typename RowPtr>
__device__ __forceinline__ void store_c_tile(const float (&c)[4], int row0, int col0, int head_dim, float mul,
                                             int lane, RowPtr row_ptr) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    T* dst = row_ptr(row0 + lane / 4 + 8 * r);
    const int col = col0 + 2 * (lane % 4);
    if (dst == nullptr || col >= head_dim) continue;
    dst += col;
    if (col + 1 < head_dim && is_aligned(dst, 4)) {
      *reinterpret_cast<uint32_t*>(dst) = mma::pack2<T>(c[2 * r] * mul, c[2 * r + 1] * mul);
    } else {
      dst[0] = from_float<T>(c[2 * r] * mul);
      if (col + 1 < head_dim) dst[1] = from_float<T>(c[2 * r + 1] * mul);
    }
  }
}

template <int kD, int kWm>
struct MmaFwdConfig {
  static_assert(kD % 16 == 0 && kD <= 128, "head dims are multiples of 16 up to 128");
  static_assert(kWm == 1 || kWm == 2 || kWm == 4, "row warps divide the 4 warps");
  static constexpr int kWarps = kMmaThreads / 32;
  static constexpr int kWn = kWarps / kWm;  // warps splitting each tile's keys
  static constexpr int kBlockM = 16 * kWm;  // query rows per CTA
  // 64-key tiles up to D = 64, 32 beyond (shared memory); at least one 16-key mma k-step per warp.
  static constexpr int kKeysPerWarp = ((kD <= 64 ? 64 : 32) / kWn) < 16 ? 16 : (kD <= 64 ? 64 : 32) / kWn;
  static constexpr int kBlockN = kKeysPerWarp * kWn;
  static constexpr int kNT = kKeysPerWarp / 8;  // n8 tiles of S per warp
  static constexpr int kLd = kD + 8;            // shared row stride (elements)
  static constexpr int kChunks = kD / 8;        // 16-byte chunks per row
  // fp32 epilogue rows: stride = 8 (mod 32) words, so a quad's 8-byte stores hit distinct banks.
  static constexpr int kLdAcc = kD + ((8 - kD % 32) + 32) % 32;
  static constexpr int kQBytes = kBlockM * kLd * 2;
  static constexpr int kTileBytes = kBlockN * kLd * 2;  // one K (or V) stage
  static constexpr int kMainBytes = kQBytes + 4 * kTileBytes + 2 * kBlockN * 4;
  static constexpr int kEpiBytes = kWn * kBlockM * (kLdAcc + 2) * 4;
  static constexpr int kSmemBytes = kMainBytes > kEpiBytes ? kMainBytes : kEpiBytes;
};

// blipx-design: occupancy >= 12.5%, sm_90 occupancy >= 18.75%, mma -- 4 warps; 26-75 KB of shared memory (Q tile + double-buffered K/V tiles) bounds it at 2-4 blocks/SM; O (D/2 floats) and S (16-32 floats) accumulators in registers
template <typename T, int kD, int kWm>
__global__ void __launch_bounds__(kMmaThreads) cross_attn_mma_fwd_kernel(CrossAttnParams p) {
  using C = MmaFwdConfig<kD, kWm>;
  constexpr int kLd = C::kLd, kBlockN = C::kBlockN, kBlockM = C::kBlockM, kNT = C::kNT;
  BLIPX_DYNAMIC_SHARED(unsigned char, smem);
  T* qs = reinterpret_cast<T*>(smem);                                       // [kBlockM][kLd]
  T* ks = reinterpret_cast<T*>(smem + C::kQBytes);                          // [2][kBlockN][kLd]
  T* vs = reinterpret_cast<T*>(smem + C::kQBytes + 2 * C::kTileBytes);      // [2][kBlockN][kLd]
  float* bias = reinterpret_cast<float*>(smem + C::kQBytes + 4 * C::kTileBytes);  // [2][kBlockN]

  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int rows = p.groups * p.q_len;
  const int row0 = blockIdx.y * kBlockM;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp % kWm, wn = warp / kWm;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const float qscale = p.scale * kLog2e;  // scores in the log2 domain: exp2f is one instruction
  const int n_tiles = static_cast<int>(ceil_div(p.k_len, kBlockN));

  load_query_rows_async<T, kD, kBlockM>(qs, q, p.sq, p, b, h, row0);
  auto load_kv = [&](int tile, int stage) {
    const int key0 = tile * kBlockN;
    load_key_rows_async<T, kD, kBlockN>(ks + stage * kBlockN * kLd, k, p.sk, p, b, h, key0);
    load_key_rows_async<T, kD, kBlockN>(vs + stage * kBlockN * kLd, v, p.sv, p, b, h, key0);
    for (int j = tid; j < kBlockN; j += kMmaThreads) bias[stage * kBlockN + j] = key_kept(p, b, key0 + j) ? 0.0f : -INFINITY;
  };
  load_kv(0, 0);
  mma::cp_async_commit();  // group: Q and tile 0

  float o[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows lane/4 and lane/4 + 8
  const bool active = row0 + wm * 16 < rows;                   // warp-uniform
  const T* qw = qs + wm * 16 * kLd;

  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_tiles) load_kv(it + 1, stage ^ 1);  // into the stage the last iteration finished with
    mma::cp_async_commit();                            // (an empty group on the last tile keeps the count)
    mma::cp_async_wait<1>();                           // this thread's copies of tile `it` have landed
    __syncthreads();                                   // ... and everyone else's
    if (active) {
      const T* kw = ks + (stage * kBlockN + wn * C::kKeysPerWarp) * kLd;
      const T* vw = vs + (stage * kBlockN + wn * C::kKeysPerWarp) * kLd;
      const float* bw = bias + stage * kBlockN + wn * C::kKeysPerWarp;
      float s[kNT][4];
#pragma unroll
      for (int j = 0; j < kNT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      // S = Q K^T: A = 16 query rows x 16 dims; B = 16 dims x 8 keys, i.e. 8 rows of K.
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t a[4];
        mma::load_a(a, qw + kk * 16, kLd, lane);
#pragma unroll
        for (int jj = 0; jj < kNT / 2; ++jj) {
          uint32_t bk[4];  // keys jj*16 + 0..7 (dims +0, +8), keys + 8..15 (dims +0, +8)
          mma::load_b_nk(bk, kw + jj * 16 * kLd + kk * 16, kLd, lane);
          mma::mma_16816<T>(s[2 * jj], a, bk[0], bk[1]);
          mma::mma_16816<T>(s[2 * jj + 1], a, bk[2], bk[3]);
        }
      }
      // Online softmax. Lane holds S[row g][keys 8j + 2t, +1] (s[j][0..1]) and row g + 8 (s[j][2..3]).
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = fmaf(s[j][e], qscale, bw[8 * j + 2 * (lane % 4) + (e & 1)]);
          mx[e / 2] = fmaxf(mx[e / 2], s[j][e]);
        }
      }
      float mu[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], mx[r]);
        mu[r] = m_new == -INFINITY ? 0.0f : m_new;  // every key so far masked: p = exp2(-inf) = 0
        const float alpha = exp2f(m[r] - mu[r]);    // m = -inf -> 0
        m[r] = m_new;
        l[r] *= alpha;
#pragma unroll
        for (int j = 0; j < kD / 8; ++j) {
          o[j][2 * r] *= alpha;
          o[j][2 * r + 1] *= alpha;
        }
      }
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = exp2f(s[j][e] - mu[e / 2]);
          l[e / 2] += s[j][e];
        }
      }
      // O += P V: A = P (16 rows x 16 keys) straight from the S fragments of n-tiles 2kk, 2kk+1;
      // B = 16 keys x 8 dims of V (row-major in shared memory, hence .trans).
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        uint32_t a[4];
        mma::c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kD / 16; ++dd) {
          uint32_t bv[4];  // dims dd*16 + 0..7 (keys +0, +8), dims + 8..15 (keys +0, +8)
          mma::load_b_kn(bv, vw + kk * 16 * kLd + dd * 16, kLd, lane);
          mma::mma_16816<T>(o[2 * dd], a, bv[0], bv[1]);
          mma::mma_16816<T>(o[2 * dd + 1], a, bv[2], bv[3]);
        }
      }
    }
    __syncthreads();  // stage `it & 1` is free for tile it + 2
  }
  mma::cp_async_wait<0>();  // only the empty last group is left; the epilogue reuses the tiles

  float* eacc = reinterpret_cast<float*>(smem);            // [kWn][kBlockM][kLdAcc]
  float* em = eacc + C::kWn * kBlockM * C::kLdAcc;         // [kWn][kBlockM] row max (log2 units)
  float* el = em + C::kWn * kBlockM;                        // [kWn][kBlockM] row sum
  if (active) {
    const int g = lane / 4, t = lane % 4;
    float* ew = eacc + (wn * kBlockM + wm * 16) * C::kLdAcc;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
#pragma unroll
      for (int j = 0; j < kD / 8; ++j) {
        *reinterpret_cast<float2*>(ew + (g + 8 * r) * C::kLdAcc + 8 * j + 2 * t) = make_float2(o[j][2 * r], o[j][2 * r + 1]);
      }
      if (t == 0) {
        em[wn * kBlockM + wm * 16 + g + 8 * r] = m[r];
        el[wn * kBlockM + wm * 16 + g + 8 * r] = l[r];
      }
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out);
  const int valid = rows - row0 < kBlockM ? rows - row0 : kBlockM;
  for (int i = tid; i < valid * C::kChunks; i += kMmaThreads) {
    const int r = i / C::kChunks, c = (i % C::kChunks) * 8, row = row0 + r;
    if (c >= p.head_dim) continue;
    float mmax = -INFINITY;
#pragma unroll
    for (int w = 0; w < C::kWn; ++w) mmax = fmaxf(mmax, em[w * kBlockM + r]);
    float wgt[C::kWn], total = 0.0f;
#pragma unroll
    for (int w = 0; w < C::kWn; ++w) {
      wgt[w] = mmax == -INFINITY ? 0.0f : exp2f(em[w * kBlockM + r] - mmax);  // a warp with no key: 0
      total = fmaf(el[w * kBlockM + r], wgt[w], total);
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // every key masked: zeros
    float vals[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float acc = 0.0f;
#pragma unroll
      for (int w = 0; w < C::kWn; ++w) acc = fmaf(eacc[(w * kBlockM + r) * C::kLdAcc + c + e], wgt[w], acc);
      vals[e] = acc * inv;
    }
    const int64_t n = static_cast<int64_t>(b) * p.groups + row / p.q_len;
    const int lq = row % p.q_len;
    T* dst = out + p.so.at(n, h, lq) + c;
    if (c + 8 <= p.head_dim && is_aligned(dst, 16)) {
      uint4 pk;
      pk.x = mma::pack2<T>(vals[0], vals[1]);
      pk.y = mma::pack2<T>(vals[2], vals[3]);
      pk.z = mma::pack2<T>(vals[4], vals[5]);
      pk.w = mma::pack2<T>(vals[6], vals[7]);
      *reinterpret_cast<uint4*>(dst) = pk;
    } else {
      for (int e = 0; e < 8 && c + e < p.head_dim; ++e) dst[e] = from_float<T>(vals[e]);
    }
    if (c == 0) p.lse[(n * p.heads + h) * p.q_len + lq] = total > 0.0f ? (mmax + log2f(total)) * kLn2 : -INFINITY;
  }
}

template <typename T, int kD, int kWm>
cudaError_t cross_attn_mma_fwd_launch_rows(const CrossAttnParams& p, cudaStream_t stream) {
  using C = MmaFwdConfig<kD, kWm>;
  const auto kernel = cross_attn_mma_fwd_kernel<T, kD, kWm>;
  if (C::kSmemBytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(p.batch * p.heads), static_cast<unsigned>(ceil_div(p.groups * p.q_len, C::kBlockM)));
  BLIPX_LAUNCH(kernel, grid, kMmaThreads, C::kSmemBytes, stream, p);
  return cudaGetLastError();
}

// Host-side launcher (T = __half or __nv_bfloat16; kD in {32, 64, 80, 96, 128}). The caller
// guarantees 16-byte aligned rows: q/k/v base pointers 16-byte aligned, strides multiples of 8
// elements, and head_dim a multiple of 8 or zero-padded to one (cross_attention_mma.cu copies
// inputs that are not so). Grid: (B*H, row blocks), row blocks <= 65535.
template <typename T, int kD>
cudaError_t cross_attn_mma_fwd_launch(const CrossAttnParams& p, cudaStream_t stream) {
  if (p.groups * p.q_len <= 16) return cross_attn_mma_fwd_launch_rows<T, kD, 1>(p, stream);
  return cross_attn_mma_fwd_launch_rows<T, kD, 4>(p, stream);
}

// ---- backward --------------------------------------------------------------------------------
// FlashAttention-2's backward with P recomputed from lse, in two kernels and without atomics:
//  * dq kernel: the forward's structure (4 warps x 16 query rows, K/V tiles of 32 keys double-
//    buffered): S = Q K^T and dP = dO V^T by mma, P = exp2(S - lse), dS = P (dP - delta),
//    dQ += dS K (dS re-packed as A operands, K by ldmatrix.trans). Also writes
//    delta = rowsum(dO * O), which the dk/dv kernel reads. dS is a difference of near-equal
//    terms: rounded once to bf16 its error alone is about the whole bf16 reference's error, so it
//    enters the dQ (and dK) products as hi + lo bf16 parts (mma::c_to_a_split; 2x those mma).
//  * dk/dv kernel: one CTA per (64 keys, h, b), each warp 16 keys whose K and V stay in shared
//    memory; the query rows of ALL G groups of image b stream through in double-buffered tiles of
//    32, so dK and dV are summed over the groups inside the CTA: S^T = K Q^T, dP^T = V dO^T,
//    dV += P^T dO, dK += dS^T Q (P^T, dS^T re-packed as A operands; dO and Q by ldmatrix.trans).
template <int kD>
struct MmaBwdConfig {
  static_assert(kD % 16 == 0 && kD <= 128, "head dims are multiples of 16 up to 128");
  static constexpr int kLd = kD + 8;
  static constexpr int kRowBytes = kLd * 2;
  static constexpr int kDqRows = 64, kDqKeys = 32;  // dq kernel: query rows per CTA, keys per tile
  static constexpr int kKvKeys = 64, kKvRows = 32;  // dk/dv kernel: keys per CTA, query rows per tile
  // dq: Q, dO [kDqRows][kLd]; K, V [2][kDqKeys][kLd]; key bias [2][kDqKeys]; lse2, delta [kDqRows]
  static constexpr int kDqSmem = 2 * kDqRows * kRowBytes + 4 * kDqKeys * kRowBytes + 2 * kDqKeys * 4 + 2 * kDqRows * 4;
  // dk/dv: K, V [kKvKeys][kLd]; Q, dO [2][kKvRows][kLd]; lse2, delta [2][kKvRows]
  static constexpr int kKvSmem = 2 * kKvKeys * kRowBytes + 4 * kKvRows * kRowBytes + 4 * kKvRows * 4;
};

// lse in log2 units for P = exp2(S * scale * log2e - lse2): +inf for a padding row or a row whose
// keys are all masked (its lse is -inf and its output 0), so that its P is exp2(-inf) = 0.
__device__ __forceinline__ float lse2_of(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

// blipx-design: occupancy >= 12.5%, mma -- 4 warps; 21-70 KB of shared memory (Q, dO tiles + double-buffered K/V tiles); dQ (D/2 floats), S and dP (16 floats each) accumulators: 90-180 registers, 2-5 blocks/SM
template <typename T, int kD>
__global__ void __launch_bounds__(kMmaThreads, 2) cross_attn_mma_bwd_dq_kernel(CrossAttnParams p) {
  using C = MmaBwdConfig<kD>;
  constexpr int kLd = C::kLd, kRows = C::kDqRows, kKeys = C::kDqKeys, kNT = kKeys / 8;
  BLIPX_DYNAMIC_SHARED(unsigned char, smem);
  T* qs = reinterpret_cast<T*>(smem);                     // [kRows][kLd]
  T* dos = qs + kRows * kLd;                              // [kRows][kLd]
  T* ks = dos + kRows * kLd;                              // [2][kKeys][kLd]
  T* vs = ks + 2 * kKeys * kLd;                           // [2][kKeys][kLd]
  float* bias = reinterpret_cast<float*>(vs + 2 * kKeys * kLd);  // [2][kKeys]
  float* lse2s = bias + 2 * kKeys;                        // [kRows]
  float* deltas = lse2s + kRows;                          // [kRows]

  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int rows = p.groups * p.q_len;
  const int row0 = blockIdx.y * kRows;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* out = static_cast<const T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  const float qscale = p.scale * kLog2e;
  const int n_tiles = static_cast<int>(ceil_div(p.k_len, kKeys));

  load_query_rows_async<T, kD, kRows>(qs, q, p.sq, p, b, h, row0);
  load_query_rows_async<T, kD, kRows>(dos, dout, p.sdo, p, b, h, row0);
  auto load_kv = [&](int tile, int stage) {
    const int key0 = tile * kKeys;
    load_key_rows_async<T, kD, kKeys>(ks + stage * kKeys * kLd, k, p.sk, p, b, h, key0);
    load_key_rows_async<T, kD, kKeys>(vs + stage * kKeys * kLd, v, p.sv, p, b, h, key0);
    for (int j = tid; j < kKeys; j += kMmaThreads) bias[stage * kKeys + j] = key_kept(p, b, key0 + j) ? 0.0f : -INFINITY;
  };
  load_kv(0, 0);
  mma::cp_async_commit();

  {  // delta = rowsum(dO * O) and lse2 of the block's rows, while the copies are in flight
    constexpr int kPerRow = kMmaThreads / kRows;  // consecutive lanes: xor-shuffles stay in the row
    const int r = tid / kPerRow, sub = tid % kPerRow, row = row0 + r;
    const int64_t n0 = static_cast<int64_t>(b) * p.groups + (row < rows ? row / p.q_len : 0);
    const int l = row < rows ? row % p.q_len : 0;
    float acc = 0.0f;
    if (row < rows) {
      const T* orow = out + p.so.at(n0, h, l);
      const T* drow = dout + p.sdo.at(n0, h, l);
      for (int c = sub; c < p.head_dim; c += kPerRow) acc = fmaf(to_float(orow[c]), to_float(drow[c]), acc);
    }
#pragma unroll
    for (int o = 1; o < kPerRow; o *= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (sub == 0) {
      float l2 = INFINITY;
      if (row < rows) {
        const int64_t stat = (n0 * p.heads + h) * p.q_len + l;
        l2 = lse2_of(p.lse[stat]);
        p.delta[stat] = acc;
      }
      lse2s[r] = l2;
      deltas[r] = acc;
    }
  }

  float dq[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
  const bool active = row0 + warp * 16 < rows;  // warp-uniform
  const T* qw = qs + warp * 16 * kLd;
  const T* dow = dos + warp * 16 * kLd;
  const int g = lane / 4, t = lane % 4;

  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_tiles) load_kv(it + 1, stage ^ 1);
    mma::cp_async_commit();
    mma::cp_async_wait<1>();
    __syncthreads();
    if (active) {
      const T* kt = ks + stage * kKeys * kLd;
      const T* vt = vs + stage * kKeys * kLd;
      const float* bt = bias + stage * kKeys;
      float s[kNT][4], dp[kNT][4];
#pragma unroll
      for (int j = 0; j < kNT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
      // S = Q K^T and dP = dO V^T (V's rows are the B operand's columns, as K's).
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t aq[4], ado[4];
        mma::load_a(aq, qw + kk * 16, kLd, lane);
        mma::load_a(ado, dow + kk * 16, kLd, lane);
#pragma unroll
        for (int jj = 0; jj < kNT / 2; ++jj) {
          uint32_t bk[4], bv[4];
          mma::load_b_nk(bk, kt + jj * 16 * kLd + kk * 16, kLd, lane);
          mma::load_b_nk(bv, vt + jj * 16 * kLd + kk * 16, kLd, lane);
          mma::mma_16816<T>(s[2 * jj], aq, bk[0], bk[1]);
          mma::mma_16816<T>(s[2 * jj + 1], aq, bk[2], bk[3]);
          mma::mma_16816<T>(dp[2 * jj], ado, bv[0], bv[1]);
          mma::mma_16816<T>(dp[2 * jj + 1], ado, bv[2], bv[3]);
        }
      }
      const float l2[2] = {lse2s[warp * 16 + g], lse2s[warp * 16 + g + 8]};
      const float dl[2] = {deltas[warp * 16 + g], deltas[warp * 16 + g + 8]};
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pj = exp2f(fmaf(s[j][e], qscale, bt[8 * j + 2 * t + (e & 1)]) - l2[e / 2]);
          s[j][e] = pj * (dp[j][e] - dl[e / 2]);  // dS
        }
      }
      // dQ += dS K: B = 16 keys x 8 dims of K, k-major rows in shared memory (ldmatrix.trans);
      // dS as hi + lo parts (c_to_a_split), or its rounding to T would dominate dQ's error.
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        uint32_t a[4], a_lo[4];
        mma::c_to_a_split<T>(a, a_lo, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kD / 16; ++dd) {
          uint32_t bk[4];
          mma::load_b_kn(bk, kt + kk * 16 * kLd + dd * 16, kLd, lane);
          mma::mma_16816<T>(dq[2 * dd], a, bk[0], bk[1]);
          mma::mma_16816<T>(dq[2 * dd + 1], a, bk[2], bk[3]);
          mma::mma_16816<T>(dq[2 * dd], a_lo, bk[0], bk[1]);
          mma::mma_16816<T>(dq[2 * dd + 1], a_lo, bk[2], bk[3]);
        }
      }
    }
    __syncthreads();
  }
  mma::cp_async_wait<0>();
  if (!active) return;  // no barrier follows
  T* dqp = static_cast<T*>(p.dq);
  auto row_ptr = [&](int r) -> T* {
    const int row = row0 + r;
    if (row >= rows) return nullptr;
    return dqp + p.sdq.at(static_cast<int64_t>(b) * p.groups + row / p.q_len, h, row % p.q_len);
  };
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) store_c_tile<T>(dq[j], warp * 16, 8 * j, p.head_dim, p.scale, lane, row_ptr);
}

// blipx-design: occupancy >= 12.5%, mma -- 4 warps; 21-70 KB of shared memory (K, V of 64 keys + double-buffered Q/dO tiles); dK, dV (D/2 floats each), S^T and dP^T (16 floats each) accumulators: 110-240 registers, 2-4 blocks/SM
template <typename T, int kD>
__global__ void __launch_bounds__(kMmaThreads, 2) cross_attn_mma_bwd_dkdv_kernel(CrossAttnParams p) {
  using C = MmaBwdConfig<kD>;
  constexpr int kLd = C::kLd, kKeys = C::kKvKeys, kRows = C::kKvRows, kNT = kRows / 8;
  BLIPX_DYNAMIC_SHARED(unsigned char, smem);
  T* ks = reinterpret_cast<T*>(smem);                      // [kKeys][kLd]
  T* vs = ks + kKeys * kLd;                                // [kKeys][kLd]
  T* qs = vs + kKeys * kLd;                                // [2][kRows][kLd]
  T* dos = qs + 2 * kRows * kLd;                           // [2][kRows][kLd]
  float* lse2s = reinterpret_cast<float*>(dos + 2 * kRows * kLd);  // [2][kRows]
  float* deltas = lse2s + 2 * kRows;                       // [2][kRows]

  const int key0 = blockIdx.x * kKeys, h = blockIdx.y, b = blockIdx.z;
  const int rows = p.groups * p.q_len;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  const float qscale = p.scale * kLog2e;
  const int n_tiles = static_cast<int>(ceil_div(rows, kRows));

  load_key_rows_async<T, kD, kKeys>(ks, k, p.sk, p, b, h, key0);
  load_key_rows_async<T, kD, kKeys>(vs, v, p.sv, p, b, h, key0);
  auto load_rows = [&](int tile, int stage) {
    const int r0 = tile * kRows;
    load_query_rows_async<T, kD, kRows>(qs + stage * kRows * kLd, q, p.sq, p, b, h, r0);
    load_query_rows_async<T, kD, kRows>(dos + stage * kRows * kLd, dout, p.sdo, p, b, h, r0);
    for (int j = tid; j < kRows; j += kMmaThreads) {
      const int row = r0 + j;
      float l2 = INFINITY, dl = 0.0f;
      if (row < rows) {
        const int64_t stat = ((static_cast<int64_t>(b) * p.groups + row / p.q_len) * p.heads + h) * p.q_len + row % p.q_len;
        l2 = lse2_of(p.lse[stat]);
        dl = p.delta[stat];
      }
      lse2s[stage * kRows + j] = l2;
      deltas[stage * kRows + j] = dl;
    }
  };
  load_rows(0, 0);
  mma::cp_async_commit();  // group: K, V and row tile 0

  // This lane's keys (rows g, g + 8 of the warp's 16): a masked key gets no gradient.
  const bool keep[2] = {key_kept(p, b, key0 + warp * 16 + g), key_kept(p, b, key0 + warp * 16 + g + 8)};
  float dk[kD / 8][4], dv[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = dv[j][0] = dv[j][1] = dv[j][2] = dv[j][3] = 0.0f;
  const bool active = key0 + warp * 16 < p.k_len;  // warp-uniform
  const T* kw = ks + warp * 16 * kLd;
  const T* vw = vs + warp * 16 * kLd;

  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_tiles) load_rows(it + 1, stage ^ 1);
    mma::cp_async_commit();
    mma::cp_async_wait<1>();
    __syncthreads();
    if (active) {
      const T* qt = qs + stage * kRows * kLd;
      const T* dot = dos + stage * kRows * kLd;
      const float* l2 = lse2s + stage * kRows;
      const float* dl = deltas + stage * kRows;
      float st[kNT][4], dpt[kNT][4];
#pragma unroll
      for (int j = 0; j < kNT; ++j) st[j][0] = st[j][1] = st[j][2] = st[j][3] = dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.0f;
      // S^T = K Q^T and dP^T = V dO^T: A = 16 keys x 16 dims; B = 16 dims x 8 query rows.
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t ak[4], av[4];
        mma::load_a(ak, kw + kk * 16, kLd, lane);
        mma::load_a(av, vw + kk * 16, kLd, lane);
#pragma unroll
        for (int jj = 0; jj < kNT / 2; ++jj) {
          uint32_t bq[4], bdo[4];
          mma::load_b_nk(bq, qt + jj * 16 * kLd + kk * 16, kLd, lane);
          mma::load_b_nk(bdo, dot + jj * 16 * kLd + kk * 16, kLd, lane);
          mma::mma_16816<T>(st[2 * jj], ak, bq[0], bq[1]);
          mma::mma_16816<T>(st[2 * jj + 1], ak, bq[2], bq[3]);
          mma::mma_16816<T>(dpt[2 * jj], av, bdo[0], bdo[1]);
          mma::mma_16816<T>(dpt[2 * jj + 1], av, bdo[2], bdo[3]);
        }
      }
      // P^T[key][row] = exp2(S^T * scale log2e - lse2[row]); dS^T = P^T (dP^T - delta[row]).
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = 8 * j + 2 * t + (e & 1);
          const float pt = keep[e / 2] ? exp2f(st[j][e] * qscale - l2[r]) : 0.0f;
          st[j][e] = pt;
          dpt[j][e] = pt * (dpt[j][e] - dl[r]);
        }
      }
      // dV += P^T dO and dK += dS^T Q: B = 16 rows x 8 dims of dO / Q (k-major: ldmatrix.trans).
      // P^T rounded to T once (as the forward's P V); dS^T as hi + lo parts (see the dq kernel).
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        uint32_t ap[4], ads[4], ads_lo[4];
        mma::c_to_a<T>(ap, st[2 * kk], st[2 * kk + 1]);
        mma::c_to_a_split<T>(ads, ads_lo, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kD / 16; ++dd) {
          uint32_t bdo[4], bq[4];
          mma::load_b_kn(bdo, dot + kk * 16 * kLd + dd * 16, kLd, lane);
          mma::load_b_kn(bq, qt + kk * 16 * kLd + dd * 16, kLd, lane);
          mma::mma_16816<T>(dv[2 * dd], ap, bdo[0], bdo[1]);
          mma::mma_16816<T>(dv[2 * dd + 1], ap, bdo[2], bdo[3]);
          mma::mma_16816<T>(dk[2 * dd], ads, bq[0], bq[1]);
          mma::mma_16816<T>(dk[2 * dd + 1], ads, bq[2], bq[3]);
          mma::mma_16816<T>(dk[2 * dd], ads_lo, bq[0], bq[1]);
          mma::mma_16816<T>(dk[2 * dd + 1], ads_lo, bq[2], bq[3]);
        }
      }
    }
    __syncthreads();
  }
  mma::cp_async_wait<0>();
  if (!active) return;  // no barrier follows
  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
  auto dk_row = [&](int r) -> T* { return key0 + r < p.k_len ? dkp + p.sdk.at(b, h, key0 + r) : nullptr; };
  auto dv_row = [&](int r) -> T* { return key0 + r < p.k_len ? dvp + p.sdv.at(b, h, key0 + r) : nullptr; };
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) {
    store_c_tile<T>(dk[j], warp * 16, 8 * j, p.head_dim, p.scale, lane, dk_row);
    store_c_tile<T>(dv[j], warp * 16, 8 * j, p.head_dim, 1.0f, lane, dv_row);
  }
}

// Host-side launcher of the backward (dq kernel, then dk/dv kernel, on one stream); the same
// alignment contract as the forward's, for q, k, v and dout. Grids: (B*H, row blocks of 64) and
// (key blocks of 64, H, B).
template <typename T, int kD>
cudaError_t cross_attn_mma_bwd_launch(const CrossAttnParams& p, cudaStream_t stream) {
  using C = MmaBwdConfig<kD>;
  const auto dq_kernel = cross_attn_mma_bwd_dq_kernel<T, kD>;
  const auto dkdv_kernel = cross_attn_mma_bwd_dkdv_kernel<T, kD>;
  cudaError_t err = cudaSuccess;
  if (C::kDqSmem > 48 * 1024) err = cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kDqSmem);
  if (err == cudaSuccess && C::kKvSmem > 48 * 1024) {
    err = cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kKvSmem);
  }
  if (err != cudaSuccess) return err;
  const dim3 dq_grid(static_cast<unsigned>(p.batch * p.heads), static_cast<unsigned>(ceil_div(p.groups * p.q_len, C::kDqRows)));
  BLIPX_LAUNCH(dq_kernel, dq_grid, kMmaThreads, C::kDqSmem, stream, p);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const dim3 kv_grid(static_cast<unsigned>(ceil_div(p.k_len, C::kKvKeys)), p.heads, p.batch);
  BLIPX_LAUNCH(dkdv_kernel, kv_grid, kMmaThreads, C::kKvSmem, stream, p);
  return cudaGetLastError();
}

}  // namespace blipx
