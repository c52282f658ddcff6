// Kernels that exercise blipx/mma.cuh's instructions on the emulator, one at a time and composed
// as the tensor-core kernels compose them, for tests/simt/test_mma.py (ops blipx_simt::mma_*).
// The Python side checks each against a plain matrix product / load and the PTX ISA's layouts.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "blipx/launch.cuh"
#include "blipx/mma.cuh"
#include "simt_memory.h"

namespace {

using blipx::mma::cp_async_16;
using blipx::mma::cp_async_commit;
using blipx::mma::cp_async_wait;
using blipx::mma::ldmatrix_x4;
using blipx::mma::ldmatrix_x4_trans;
using blipx::mma::mma_16816;

// One warp: every lane builds its A, B, C fragments from global memory by the PTX layouts
// (written out here independently of the emulator's decoder), then d = a * b + c.
template <typename T>
__global__ void mma_fragments_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  const int l = threadIdx.x, g = l / 4, t = l % 4;
  uint32_t af[4], bf[2];
  float acc[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);  // a[r] holds (row, col), (row, col + 1)
    af[r] = a[row * 16 + col] | (static_cast<uint32_t>(a[row * 16 + col + 1]) << 16);
  }
  for (int r = 0; r < 2; ++r) {
    const int k = 2 * t + 8 * r;  // b[r] holds (k, g), (k + 1, g) of the 16 x 8 B
    bf[r] = b[k * 8 + g] | (static_cast<uint32_t>(b[(k + 1) * 8 + g]) << 16);
  }
  for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  mma_16816<T>(acc, af, bf[0], bf[1]);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
}

// One warp: each lane passes row `l` of a [32][8] b16 block staged in shared memory (matrix l / 8,
// row l % 8) and writes the four registers it receives.
__global__ void ldmatrix_kernel(const uint16_t* m, bool trans, uint32_t* out) {
  BLIPX_DYNAMIC_SHARED(uint16_t, s);
  const int l = threadIdx.x;
  for (int i = 0; i < 8; ++i) s[l * 8 + i] = m[l * 8 + i];
  __syncwarp();
  uint32_t r[4];
  if (trans) {
    ldmatrix_x4_trans(r, s + l * 8);
  } else {
    ldmatrix_x4(r, s + l * 8);
  }
  for (int i = 0; i < 4; ++i) out[l * 4 + i] = r[i];
}

// d [16, N] = a [16, K] @ B with the tensor-core kernels' data path: cp.async into padded shared
// tiles, A by ldmatrix, B by ldmatrix from a [N, K] buffer (as K in Q K^T) or by ldmatrix.trans
// from a [K, N] buffer (as V in P V), m16n8k16 products, D stored by the C layout.
template <typename T>
__global__ void gemm_kernel(const T* a, const T* b, int k_dim, int n_dim, bool b_is_kn, float* d) {
  BLIPX_DYNAMIC_SHARED(T, smem);
  constexpr int kMaxNT = 8;  // N <= 64
  const int l = threadIdx.x;
  const int lda = k_dim + 8, b_rows = b_is_kn ? k_dim : n_dim, b_cols = b_is_kn ? n_dim : k_dim, ldb = b_cols + 8;
  T* as = smem;
  T* bs = smem + 16 * lda;
  for (int i = l; i < 16 * (k_dim / 8); i += 32) {
    cp_async_16(as + (i / (k_dim / 8)) * lda + (i % (k_dim / 8)) * 8, a + i * 8, true);
  }
  for (int i = l; i < b_rows * (b_cols / 8); i += 32) {
    cp_async_16(bs + (i / (b_cols / 8)) * ldb + (i % (b_cols / 8)) * 8, b + i * 8, true);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  float acc[kMaxNT][4] = {};
  for (int kk = 0; kk < k_dim / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, as + (l % 16) * lda + kk * 16 + (l / 16) * 8);
    for (int nn = 0; nn < n_dim / 16; ++nn) {
      uint32_t bf[4];
      if (b_is_kn) {
        ldmatrix_x4_trans(bf, bs + (kk * 16 + l % 16) * ldb + nn * 16 + (l / 16) * 8);
      } else {
        ldmatrix_x4(bf, bs + (nn * 16 + l % 8 + (l / 16) * 8) * ldb + kk * 16 + ((l / 8) % 2) * 8);
      }
      mma_16816<T>(acc[2 * nn], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * nn + 1], af, bf[2], bf[3]);
    }
  }
  const int g = l / 4, t = l % 4;
  for (int j = 0; j < n_dim / 8; ++j) {
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * n_dim + 8 * j + 2 * t + i % 2] = acc[j][i];
  }
}

// One thread, three 16-byte slots of shared memory holding a pattern: the snapshots show what
// each cp.async.wait_group retires (the bytes land only then; uncommitted copies never do).
__global__ void cp_async_kernel(const uint4* src, uint4* out) {
  BLIPX_DYNAMIC_SHARED(uint4, s);
  for (int i = 0; i < 3; ++i) s[i] = make_uint4(0xa5a5a5a5u, 0xa5a5a5a5u, 0xa5a5a5a5u, 0xa5a5a5a5u);
  auto snap = [&](int k) {
    for (int i = 0; i < 3; ++i) out[k * 3 + i] = s[i];
  };
  cp_async_16(&s[0], &src[0], true);
  cp_async_commit();                                                   // group 0
  ::simt::cp_async(&s[1], &src[1], 16, 8, std::source_location::current());  // 8 bytes, 8 zero-filled
  cp_async_commit();                                                   // group 1
  cp_async_16(&s[2], &src[2], false);                                  // zero-fill, not committed yet
  snap(0);                                                             // nothing has landed
  cp_async_wait<1>();
  snap(1);  // group 0 only
  cp_async_wait<0>();
  snap(2);  // groups 0 and 1; the uncommitted copy is no group's
  cp_async_commit();
  cp_async_wait<0>();
  snap(3);
}

__global__ void ldmatrix_from_global(const uint16_t* g, uint32_t* out) {
  uint32_t r[4];
  ldmatrix_x4(r, g + threadIdx.x * 8);
  out[threadIdx.x] = r[0];
}

__global__ void ldmatrix_misaligned(uint32_t* out) {
  BLIPX_DYNAMIC_SHARED(uint16_t, s);
  for (int i = 0; i < 8; ++i) s[threadIdx.x * 8 + i] = 0;
  __syncwarp();
  uint32_t r[4];
  ldmatrix_x4(r, s + threadIdx.x * 8 + 4);  // 8 bytes off a row boundary
  out[threadIdx.x] = r[0];
}

__global__ void mma_divergent(float* out) {
  float acc[4] = {0, 0, 0, 0};
  const uint32_t a[4] = {0, 0, 0, 0};
  if (threadIdx.x < 16) mma_16816<__nv_bfloat16>(acc, a, 0u, 0u);  // half a warp: undefined on hardware
  out[threadIdx.x] = acc[0];
}

__global__ void cp_async_to_global(const uint4* src, uint4* dst) {
  cp_async_16(dst, src, true);
  cp_async_commit();
  cp_async_wait<0>();
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    cudaGetLastError();  // the failed launch's sticky error: not the next test's
    return e.what();
  }
  return "";
}

at::Tensor mma_fragments(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 16}) && b.sizes() == at::IntArrayRef({16, 8}) &&
                  c.sizes() == at::IntArrayRef({16, 8}) && a.scalar_type() == b.scalar_type() &&
                  c.scalar_type() == at::kFloat && a.is_contiguous() && b.is_contiguous() && c.is_contiguous(),
              "mma_fragments: a [16,16], b [16,8] (bf16/f16), c [16,8] float, contiguous");
  at::Tensor d = at::empty({16, 8}, c.options());
  const auto* ap = static_cast<const uint16_t*>(a.data_ptr());
  const auto* bp = static_cast<const uint16_t*>(b.data_ptr());
  if (a.scalar_type() == at::kBFloat16) {
    const auto k = mma_fragments_kernel<__nv_bfloat16>;
    SIMT_LAUNCH(k, 1, 32, 0, nullptr, ap, bp, c.data_ptr<float>(), d.data_ptr<float>());
  } else {
    const auto k = mma_fragments_kernel<__half>;
    SIMT_LAUNCH(k, 1, 32, 0, nullptr, ap, bp, c.data_ptr<float>(), d.data_ptr<float>());
  }
  return d;
}

at::Tensor mma_ldmatrix(const at::Tensor& m, bool trans) {
  TORCH_CHECK(m.sizes() == at::IntArrayRef({32, 8}) && m.element_size() == 2 && m.is_contiguous(),
              "mma_ldmatrix: m must be a contiguous [32, 8] 16-bit tensor");
  at::Tensor out = at::empty({32, 4}, m.options().dtype(at::kInt));
  SIMT_LAUNCH(ldmatrix_kernel, 1, 32, 32 * 8 * 2, nullptr, static_cast<const uint16_t*>(m.data_ptr()), trans,
              static_cast<uint32_t*>(out.data_ptr()));
  return out;
}

at::Tensor mma_gemm(const at::Tensor& a, const at::Tensor& b, bool b_is_kn) {
  const int64_t k = a.size(1), n = b_is_kn ? b.size(1) : b.size(0);
  TORCH_CHECK(a.dim() == 2 && a.size(0) == 16 && k % 16 == 0 && n % 16 == 0 && n <= 64 && b.dim() == 2 &&
                  (b_is_kn ? b.size(0) : b.size(1)) == k && a.scalar_type() == b.scalar_type() && a.is_contiguous() &&
                  b.is_contiguous(),
              "mma_gemm: a [16, K], b [K, N] (b_is_kn) or [N, K], K and N multiples of 16, N <= 64");
  at::Tensor d = at::empty({16, n}, a.options().dtype(at::kFloat));
  const size_t smem = (16 * (k + 8) + (b_is_kn ? k * (n + 8) : n * (k + 8))) * 2;
  const int ki = static_cast<int>(k), ni = static_cast<int>(n);
  if (a.scalar_type() == at::kBFloat16) {
    const auto kern = gemm_kernel<__nv_bfloat16>;
    SIMT_LAUNCH(kern, 1, 32, smem, nullptr, static_cast<const __nv_bfloat16*>(a.data_ptr()),
                static_cast<const __nv_bfloat16*>(b.data_ptr()), ki, ni, b_is_kn, d.data_ptr<float>());
  } else {
    const auto kern = gemm_kernel<__half>;
    SIMT_LAUNCH(kern, 1, 32, smem, nullptr, static_cast<const __half*>(a.data_ptr()),
                static_cast<const __half*>(b.data_ptr()), ki, ni, b_is_kn, d.data_ptr<float>());
  }
  return d;
}

at::Tensor mma_cp_async(const at::Tensor& src) {
  TORCH_CHECK(src.numel() == 12 && src.scalar_type() == at::kInt && src.is_contiguous(), "mma_cp_async: 12 int32");
  void* dev = simt::device_alloc(48, 0);  // 256-byte aligned, as cp.async's 16-byte source must be
  std::memcpy(dev, src.data_ptr(), 48);
  at::Tensor out = at::empty({4, 12}, src.options());
  const std::string err = error_of([&] {
    SIMT_LAUNCH(cp_async_kernel, 1, 1, 48, nullptr, static_cast<const uint4*>(dev), static_cast<uint4*>(out.data_ptr()));
  });
  simt::device_free(dev);
  TORCH_CHECK(err.empty(), err);
  return out;
}

std::string mma_errors(const std::string& name) {
  std::vector<uint16_t> h(32 * 8, 0);
  std::vector<uint32_t> u(32, 0);
  std::vector<float> f(32, 0.f);
  if (name == "ldmatrix_from_global") {
    auto* g = static_cast<uint16_t*>(simt::device_alloc(32 * 8 * 2, 0));
    auto msg = error_of([&] { SIMT_LAUNCH(ldmatrix_from_global, 1, 32, 0, nullptr, g, u.data()); });
    simt::device_free(g);
    return msg;
  }
  if (name == "ldmatrix_misaligned") {
    return error_of([&] { SIMT_LAUNCH(ldmatrix_misaligned, 1, 32, 32 * 8 * 2 + 16, nullptr, u.data()); });
  }
  if (name == "mma_divergent") return error_of([&] { SIMT_LAUNCH(mma_divergent, 1, 32, 0, nullptr, f.data()); });
  if (name == "mma_partial_warp") return error_of([&] { SIMT_LAUNCH(mma_divergent, 1, 16, 0, nullptr, f.data()); });
  if (name == "cp_async_to_global") {
    auto* g = static_cast<uint4*>(simt::device_alloc(32, 0));
    auto msg = error_of([&] { SIMT_LAUNCH(cp_async_to_global, 1, 1, 0, nullptr, g, g + 1); });
    simt::device_free(g);
    return msg;
  }
  throw std::invalid_argument("simt mma_errors: unknown case " + name);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blipx_simt, m) {
  m.def("mma_fragments", &mma_fragments);
  m.def("mma_ldmatrix", &mma_ldmatrix);
  m.def("mma_gemm", &mma_gemm);
  m.def("mma_cp_async", &mma_cp_async);
  m.def("mma_errors", &mma_errors);
}
