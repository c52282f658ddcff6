// The tensor-core warp collectives of the SIMT emulator: mma.sync m16n8k16 (bf16/f16 inputs, f32
// accumulate) and ldmatrix m8n8 (x1/x2/x4, optionally .trans), each a WarpOp whose `complete`
// gathers every lane's fragment, does the warp's work, and scatters the results.
//
// The lane -> (row, column) maps are the PTX ISA's ("Matrix Fragments for mma.m16n8k16 with
// floating point type"; "Warp-level matrix load instruction: ldmatrix"), the same ones CUTLASS
// encodes as layouts (NVIDIA/cutlass include/cute/atom/mma_traits_sm80.hpp, SM80_16x8x16_*_TN:
// A ((4,8),(2,2,2)):((32,1),(16,8,128)), B ((4,8),(2,2)):((16,1),(8,64)), C SM80_16x8_Row;
// include/cute/atom/copy_traits_sm75.hpp, SM75_U32x4_LDSM_N and SM75_U16x8_LDSM_T). With
// groupID = lane / 4 and t = lane % 4:
//   A (16 x 16, row-major; regs a0..a3, each two b16, the lower element in the low half):
//     element i = 0..7 of the lane: row groupID + 8 * ((i / 2) % 2), col 2t + (i % 2) + 8 * (i / 4)
//   B (16 x 8, "col": stored k-contiguous per column; regs b0, b1):
//     element i = 0..3: row (k) 2t + (i % 2) + 8 * (i / 2), col (n) groupID
//   C, D (16 x 8 f32, 4 regs): element i = 0..3: row groupID + 8 * (i / 2), col 2t + (i % 2)
//   ldmatrix: lane j supplies the address of row j % 8 of matrix j / 8; register r of lane l holds
//     matrix r's elements (row l / 4, cols 2 (l % 4), 2 (l % 4) + 1); with .trans, its elements
//     (rows 2 (l % 4) and 2 (l % 4) + 1, col l / 4) -- the transposed matrix's fragment.
#include <bit>
#include <cstring>
#include <string>

#include "simt.h"

namespace simt {
namespace {

struct MmaOperands {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

float b16_to_float(uint16_t bits, bool bf16) {
  if (bf16) return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
  return static_cast<float>(std::bit_cast<_Float16>(bits));
}

float element(uint32_t reg, int half, bool bf16) {
  return b16_to_float(static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu), bf16);
}

std::string lane_str(int l) { return "lane " + std::to_string(l); }

void mma_complete(WarpOp* const* ops, unsigned mask) {
  (void)mask;  // the full warp (checked when issued)
  const bool bf16 = ops[0]->arg != 0;
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    if ((ops[l]->arg != 0) != bf16) {
      fail(std::string("mma.sync: ") + lane_str(l) + " multiplies " + (bf16 ? "f16" : "bf16") + " while lane 0 " +
           "multiplies " + (bf16 ? "bf16" : "f16"));
    }
    const auto* o = static_cast<const MmaOperands*>(ops[l]->in);
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 8; ++i) A[g + 8 * ((i / 2) % 2)][2 * t + (i % 2) + 8 * (i / 4)] = element(o->a[i / 2], i % 2, bf16);
    for (int i = 0; i < 4; ++i) B[2 * t + (i % 2) + 8 * (i / 2)][g] = element(o->b[i / 2], i % 2, bf16);
    for (int i = 0; i < 4; ++i) C[g + 8 * (i / 2)][2 * t + (i % 2)] = o->c[i];
  }
  // Products of two 8-bit (bf16) or 11-bit (f16) significands are exact in double, and so is
  // their sum of 16 here up to the final rounding to f32: one rounding, in a fixed order. (The
  // hardware's internal rounding differs in the last bits; results are judged by tolerance.)
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    auto* d = static_cast<float*>(ops[l]->out);
    for (int i = 0; i < 4; ++i) {
      const int r = g + 8 * (i / 2), c = 2 * t + (i % 2);
      double acc = C[r][c];
      for (int k = 0; k < 16; ++k) acc += static_cast<double>(A[r][k]) * B[k][c];
      d[i] = static_cast<float>(acc);
    }
  }
}

void ldmatrix_complete(WarpOp* const* ops, unsigned mask) {
  (void)mask;
  const int num = ops[0]->arg & 0xf;
  const bool trans = (ops[0]->arg >> 4) & 1;
  const unsigned char* rows[32];
  for (int l = 0; l < 32; ++l) {
    if (ops[l]->arg != ops[0]->arg) fail("ldmatrix: " + lane_str(l) + " asks for another shape (.x or .trans) than lane 0");
    rows[l] = *static_cast<const unsigned char* const*>(ops[l]->in);
  }
  for (int j = 0; j < 8 * num; ++j) {  // only these lanes' addresses are read
    if (reinterpret_cast<uintptr_t>(rows[j]) % 16 || !is_shared(rows[j], 16)) {
      fail("ldmatrix: " + lane_str(j) + " passes an address (" + std::to_string(reinterpret_cast<uintptr_t>(rows[j]) % 1024) +
           " mod 1024) that is not a 16-byte aligned row of this kernel's shared memory");
    }
  }
  for (int l = 0; l < 32; ++l) {
    auto* r = static_cast<uint32_t*>(ops[l]->out);
    for (int m = 0; m < num; ++m) {
      if (!trans) {
        std::memcpy(&r[m], rows[8 * m + l / 4] + 4 * (l % 4), 4);
      } else {
        uint16_t lo, hi;
        std::memcpy(&lo, rows[8 * m + 2 * (l % 4)] + 2 * (l / 4), 2);
        std::memcpy(&hi, rows[8 * m + 2 * (l % 4) + 1] + 2 * (l / 4), 2);
        r[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
      }
    }
  }
}

}  // namespace

void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, bool bf16,
                  const std::source_location& loc) {
  MmaOperands in{};
  std::memcpy(in.a, a, sizeof in.a);
  std::memcpy(in.b, b, sizeof in.b);
  std::memcpy(in.c, c, sizeof in.c);  // by value: d may alias c
  float out[4];
  WarpOp op{WarpKind::kMma, "mma.sync.m16n8k16", loc, 0xffffffffu, 32, static_cast<int>(sizeof in), bf16 ? 1 : 0,
            ShflMode::kIdx, &in, out, &mma_complete};
  warp_collective(op);
  std::memcpy(d, out, sizeof out);
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* row, const std::source_location& loc) {
  if (num != 1 && num != 2 && num != 4) fail("ldmatrix: .x" + std::to_string(num) + " is not .x1, .x2 or .x4");
  uint32_t out[4] = {0, 0, 0, 0};
  WarpOp op{WarpKind::kLdmatrix, trans ? "ldmatrix.trans" : "ldmatrix", loc, 0xffffffffu, 32,
            static_cast<int>(sizeof row), num | (trans ? 16 : 0), ShflMode::kIdx, &row, out, &ldmatrix_complete};
  warp_collective(op);
  std::memcpy(r, out, sizeof(uint32_t) * num);
}

}  // namespace simt
