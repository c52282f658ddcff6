// Every PTX instruction blipx's tensor-core kernels use, as small device functions: mma.sync
// m16n8k16 (bf16 / f16 inputs, f32 accumulate), ldmatrix m8n8 .x4 (and .trans), and cp.async
// 16-byte copies with commit_group / wait_group. Needs sm_80 (all three exist from sm_80 on).
//
// Under nvcc each is one inline-asm statement. The SIMT emulator's build (tests/simt,
// BLIPX_SIMT) gets the same functions implemented by the emulator: mma and ldmatrix as warp
// collectives with the PTX ISA's fragment layouts (lane -> rows/columns; tests/simt/simt_mma.cpp
// spells them out), cp.async as a per-thread queue whose bytes reach shared memory only at the
// wait_group that retires their group. So a kernel written against this header runs unchanged in
// `make test` on a CPU, and a wrong fragment index or a missing wait shows up there.
//
// Fragment layouts (groupID = lane / 4, t = lane % 4), for reference while indexing:
//   A 16x16 row-major, a[0..3]: a[0] = (row g, cols 2t, 2t+1), a[1] = row g+8, a[2] = row g,
//     cols +8, a[3] = row g+8, cols +8 (each register two b16, the lower column in the low half);
//   B 16x8 (K x N) "col", b[0] = (rows 2t, 2t+1, col g), b[1] = rows +8;
//   C/D 16x8 f32, c[0..1] = (row g, cols 2t, 2t+1), c[2..3] = row g+8.
//   ldmatrix .x4: lane j addresses row j % 8 of matrix j / 8; r[m] = matrix m's (row l/4, cols
//     2(l%4), +1); .trans: matrix m's (rows 2(l%4), +1, col l/4).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "blipx/vec.cuh"

namespace blipx::mma {

template <typename T>
inline constexpr bool kIsBf16 = std::is_same_v<T, __nv_bfloat16>;

// Two floats rounded to T and packed as one fragment register (lo in the low 16 bits).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint16_t a, b;
  if constexpr (kIsBf16<T>) {
    a = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    b = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  } else {
    a = __half_as_ushort(__float2half_rn(lo));
    b = __half_as_ushort(__float2half_rn(hi));
  }
  return static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
}

#if defined(BLIPX_SIMT)

// d = a * b + d over one 16x8x16 tile (a warp collective: every lane of the warp calls it).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                          const std::source_location& loc = std::source_location::current()) {
  const uint32_t b[2] = {b0, b1};
  ::simt::mma_m16n8k16(d, a, b, d, kIsBf16<T>, loc);
}

// Four 8x8 b16 matrices from shared memory; `row` is this lane's row address (lane j: row j % 8
// of matrix j / 8, 16 bytes, 16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row,
                                            const std::source_location& loc = std::source_location::current()) {
  ::simt::ldmatrix(r, 4, false, row, loc);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row,
                                                  const std::source_location& loc = std::source_location::current()) {
  ::simt::ldmatrix(r, 4, true, row, loc);
}

// 16 bytes global -> shared, asynchronously; `full` false zero-fills dst without reading src.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool full,
                                            const std::source_location& loc = std::source_location::current()) {
  ::simt::cp_async(smem, gmem, 16, full ? 16 : 0, loc);
}
__device__ __forceinline__ void cp_async_commit(const std::source_location& loc = std::source_location::current()) {
  ::simt::cp_async_commit(loc);
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait(const std::source_location& loc = std::source_location::current()) {
  ::simt::cp_async_wait(N, loc);
}

#else  // nvcc

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kIsBf16<T>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// .cg: L2 only (each K/V byte is read once per CTA; no reuse in L1). src-size 0 zero-fills.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool full) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(full ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif

// ---- fragment helpers: which row each lane addresses (no PTX of their own) ---------------------
// The A operand of a 16x16 product from a row-major tile (rows m hold k contiguously; row stride
// `ld` elements): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (8-15, 8-15).
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int ld, int lane) {
  ldmatrix_x4(a, tile + (lane % 16) * ld + (lane / 16) * 8);
}
// The B operands of two n8 tiles (16 k x 16 n) from an n-major tile (rows n hold k contiguously:
// K in Q K^T): b[0], b[1] for n 0-7 (k 0-7, 8-15), b[2], b[3] for n 8-15.
template <typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* tile, int ld, int lane) {
  ldmatrix_x4(b, tile + (lane % 8 + (lane / 16) * 8) * ld + ((lane / 8) % 2) * 8);
}
// The same from a k-major tile (rows k hold n contiguously: V in P V), by ldmatrix.trans:
// b[0], b[1] for n 0-7 (k 0-7, 8-15), b[2], b[3] for n 8-15.
template <typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* tile, int ld, int lane) {
  ldmatrix_x4_trans(b, tile + (lane % 16) * ld + (lane / 16) * 8);
}
// The A operand of a 16x16 product from the two 16x8 accumulators of its columns 0-7 and 8-15,
// rounded to T: the C layout (row g / g+8, cols 2t, 2t+1) is the A layout's, so no lane exchange.
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);  // row g, k 2t
  a[1] = pack2<T>(c0[2], c0[3]);  // row g + 8, k 2t
  a[2] = pack2<T>(c1[0], c1[1]);  // row g, k 2t + 8
  a[3] = pack2<T>(c1[2], c1[3]);  // row g + 8, k 2t + 8
}

// The same as two A operands, hi = round(c) and lo = round(c - hi), whose sum keeps about twice
// T's significand bits: for products whose operand must not be rounded to T once (the
// backward's dS = P (dP - delta), a difference of nearly equal terms), at twice the mma count.
template <typename T>
__device__ __forceinline__ void c_to_a_split(uint32_t (&hi)[4], uint32_t (&lo)[4], const float (&c0)[4],
                                             const float (&c1)[4]) {
  float r0[4], r1[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    r0[i] = c0[i] - to_float(from_float<T>(c0[i]));
    r1[i] = c1[i] - to_float(from_float<T>(c1[i]));
  }
  c_to_a<T>(hi, c0, c1);
  c_to_a<T>(lo, r0, r1);
}

}  // namespace blipx::mma
