// SIMT emulator: runs blipx's CUDA kernels (csrc/include/blipx/*.cuh), unchanged, as host C++.
//
// Force-included (g++ -include simt.h) before any kernel header. It supplies what nvcc would:
// __shared__ storage, the built-in index variables, __syncthreads, the warp collectives with
// shfl.sync semantics, atomics, and a launch (BLIPX_LAUNCH in blipx/launch.cuh) that enforces the
// launch limits of a real device. CUDA's own headers supply dim3, half/bfloat16 conversions and
// curand's Philox (their host paths).
//
// Execution: every CUDA thread is a fiber; a block's fibers run on one OS thread and switch only
// at a synchronisation point (barrier, warp collective, exit), so between two such points a
// thread runs alone and the schedule decides who runs first. The schedules (in-order, reverse,
// seeded random, run-ahead) and the shared/global memory poison patterns are chosen per launch
// through simt::Config; tests run every op under two of them and compare the results bitwise.
//
// Checks (each an error naming the kernel, the block and the thread, thrown from the launch):
// barrier reached from different call sites or after a thread exited, a thread exiting while
// others wait at a barrier, warp collectives whose mask names an exited, absent or
// non-participating lane, lanes meeting at different collectives, deadlock, out-of-bounds
// dynamic shared memory and guarded global buffers (guard pages, see simt_device.h), fiber
// stack overflow, launch limits (block size, grid size, dynamic shared memory over 48 KB without
// cudaFuncSetAttribute, kernel parameter size).
//
// Warp collectives share one mechanism (warp_collective): each lane posts a WarpOp pointing at
// its operands, the last lane of the mask to arrive runs the op's `complete` over all lanes. The
// tensor-core instructions of blipx/mma.cuh (mma.sync m16n8k16, ldmatrix) are two more kinds,
// implemented with the PTX ISA's fragment layouts (simt_mma.cpp); cp.async keeps a queue of
// pending copies per thread that lands in shared memory only at cp.async.wait_group (simt.cpp).
#pragma once

#if defined(__CUDACC__)
#error "simt.h is for host compilers (the emulated build); nvcc builds the real kernels"
#endif

#define BLIPX_SIMT 1

// Storage classes, defined before CUDA's host_defines.h (which keeps existing definitions):
// __shared__ variables are function-scope statics, so a block's threads share them; blocks run
// one at a time, so one copy suffices. The emulator finds each kernel's statics in the library's
// symbol table (their names are "<kernel>::<variable>") and poisons them before every block.
#define __shared__ __attribute__((aligned(16))) static

// Launch bounds only matter to the register allocator.
#define __launch_bounds__(...)

#include <cuda_runtime.h>
#if __has_include(<curand_kernel.h>)
// Before the index macros below: curand's MTGP header declares blockDim/threadIdx variables.
#include <curand_kernel.h>
#endif

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace simt {

enum class Schedule : int { kInOrder = 0, kReverse = 1, kRandom = 2, kRunAhead = 3 };
const char* schedule_name(Schedule s);

// Per-launch settings, process-wide (set by the test harness between op calls).
struct Config {
  Schedule schedule = Schedule::kInOrder;
  uint64_t seed = 1;           // kRandom: thread and block order
  uint8_t poison = 0xff;       // shared memory and fresh global buffers
  int sm_count = 16;           // emulated device (sm_80-like opt-in shared memory)
  int smem_optin = 166912;     // sharedMemPerBlockOptin
  int max_param_bytes = 32764; // CUDA >= 12.1 on sm_70+
};
Config& config();

struct Thread;
Thread* current();
const uint3& thread_idx();
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;
void* dynamic_smem();

// ---- block barrier and warp collectives --------------------------------------------------------
void syncthreads(const std::source_location& loc);

enum class WarpKind : int { kShfl = 0, kBallot = 1, kSyncwarp = 2, kMatchAny = 3, kMma = 4, kLdmatrix = 5 };
enum class ShflMode : int { kIdx = 0, kUp = 1, kDown = 2, kXor = 3 };

struct WarpOp;
using WarpComplete = void (*)(WarpOp* const* ops, unsigned mask);  // ops[lane] for lanes in mask
struct WarpOp {
  WarpKind kind;
  const char* name;
  std::source_location loc;
  unsigned mask;
  int width;       // shuffles: segment width; others 32
  int bytes;       // operand size (all lanes must agree)
  int arg;         // shuffles: srcLane / delta / laneMask (may differ per lane)
  ShflMode mode;
  const void* in;
  void* out;
  WarpComplete complete;
};
// Posts `op` for the calling lane, blocks until every lane of op.mask has posted a matching op,
// and returns after `complete` has written every lane's result.
void warp_collective(WarpOp& op);
void shfl_complete(WarpOp* const* ops, unsigned mask);
void ballot_complete(WarpOp* const* ops, unsigned mask);
void noop_complete(WarpOp* const* ops, unsigned mask);
unsigned lane_id();
[[noreturn]] void fail(const std::string& what);  // error in the running thread: ends the launch

template <typename T>
T shfl(unsigned mask, T var, int arg, int width, ShflMode mode, const char* name, const std::source_location& loc) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle of an unsupported type");
  T out = var;
  WarpOp op{WarpKind::kShfl, name, loc, mask, width, static_cast<int>(sizeof(T)), arg, mode, &var, &out, &shfl_complete};
  warp_collective(op);
  return out;
}

// ---- tensor-core and asynchronous-copy instructions (blipx/mma.cuh's emulated branch) ----------
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: every lane of the warp passes its A (4 regs),
// B (2 regs) and C (4 floats) fragments and receives its D fragment (simt_mma.cpp).
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, bool bf16,
                  const std::source_location& loc);
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: lane i passes the address of row i % 8
// of matrix i / 8 (16 bytes of shared memory, 16-byte aligned); r[j] receives matrix j's pair.
void ldmatrix(uint32_t* r, int num, bool trans, const void* row, const std::source_location& loc);
// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: src is read now (src_size bytes,
// the rest of cp_size zero-filled) and lands in dst only when a cp.async.wait_group retires its
// group; cp.async.commit_group closes the group of the copies issued since the last one.
void cp_async(void* dst, const void* src, int cp_size, int src_size, const std::source_location& loc);
void cp_async_commit(const std::source_location& loc);
void cp_async_wait(int pending, const std::source_location& loc);
// Whether [p, p + bytes) lies in the running kernel's shared memory (dynamic, or one __shared__).
bool is_shared(const void* p, size_t bytes);

// ---- launch ------------------------------------------------------------------------------------
struct LaunchSpec {
  const char* what;          // kernel expression as written at the launch site
  const void* fn;            // kernel address (name lookup, cudaFuncSetAttribute)
  dim3 grid, block;
  size_t smem;
  size_t param_bytes;
  void (*body)(void* ctx);   // runs the kernel for the current thread
  void* ctx;
};
// Runs the grid; returns the launch-configuration error (sticky in cudaGetLastError) or throws
// std::runtime_error for an error found while the kernel ran.
cudaError_t launch(const LaunchSpec& spec);
void record_launch_error(cudaError_t err);  // for cudaGetLastError
std::string last_message();                // why the last launch configuration was refused

template <typename... P>
constexpr size_t param_bytes() {
  size_t off = 0;
  ((off = (off + alignof(P) - 1) / alignof(P) * alignof(P) + sizeof(P)), ...);
  return off;
}

template <typename... P, typename... A>
void launch_kernel(const char* what, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // The arguments are converted to the parameter types once, as a real launch does; every
  // thread then receives its own copy of the parameter block.
  struct Ctx {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  LaunchSpec spec{what, reinterpret_cast<const void*>(kernel), grid, block, smem, param_bytes<std::decay_t<P>...>(),
                  [](void* c) {
                    auto* x = static_cast<Ctx*>(c);
                    std::apply(x->k, x->params);
                  },
                  &ctx};
  const cudaError_t err = launch(spec);
  if (err != cudaSuccess) record_launch_error(err);
}

}  // namespace simt

// ---- CUDA built-ins --------------------------------------------------------------------------
// Device code calls the classification functions unqualified, as CUDA's math headers allow.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

#define threadIdx (::simt::thread_idx())
#define blockIdx (static_cast<const uint3&>(::simt::g_block_idx))
#define blockDim (static_cast<const dim3&>(::simt::g_block_dim))
#define gridDim (static_cast<const dim3&>(::simt::g_grid_dim))
#define warpSize 32

inline void __syncthreads(const std::source_location& loc = std::source_location::current()) { ::simt::syncthreads(loc); }

inline void __syncwarp(unsigned mask = 0xffffffffu, const std::source_location& loc = std::source_location::current()) {
  ::simt::WarpOp op{::simt::WarpKind::kSyncwarp, "__syncwarp", loc, mask, 32, 0, 0, ::simt::ShflMode::kIdx,
                    nullptr, nullptr, &::simt::noop_complete};
  ::simt::warp_collective(op);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src, int width = 32,
              const std::source_location& loc = std::source_location::current()) {
  return ::simt::shfl(mask, var, src, width, ::simt::ShflMode::kIdx, "__shfl_sync", loc);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 const std::source_location& loc = std::source_location::current()) {
  return ::simt::shfl(mask, var, static_cast<int>(delta), width, ::simt::ShflMode::kUp, "__shfl_up_sync", loc);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const std::source_location& loc = std::source_location::current()) {
  return ::simt::shfl(mask, var, static_cast<int>(delta), width, ::simt::ShflMode::kDown, "__shfl_down_sync", loc);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const std::source_location& loc = std::source_location::current()) {
  return ::simt::shfl(mask, var, lane_mask, width, ::simt::ShflMode::kXor, "__shfl_xor_sync", loc);
}

inline unsigned simt_ballot(unsigned mask, int pred, const char* name, const std::source_location& loc) {
  unsigned out = 0;
  ::simt::WarpOp op{::simt::WarpKind::kBallot, name, loc, mask, 32, 4, 0, ::simt::ShflMode::kIdx,
                    &pred, &out, &::simt::ballot_complete};
  ::simt::warp_collective(op);
  return out;
}
inline unsigned __ballot_sync(unsigned mask, int pred, const std::source_location& loc = std::source_location::current()) {
  return simt_ballot(mask, pred != 0, "__ballot_sync", loc);
}
inline int __any_sync(unsigned mask, int pred, const std::source_location& loc = std::source_location::current()) {
  return simt_ballot(mask, pred != 0, "__any_sync", loc) != 0;
}
inline int __all_sync(unsigned mask, int pred, const std::source_location& loc = std::source_location::current()) {
  return (simt_ballot(mask, pred != 0, "__all_sync", loc) & mask) == mask;
}

// Bit casts and integer intrinsics.
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
inline double __longlong_as_double(long long i) { return std::bit_cast<double>(i); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
template <typename T>
T __ldg(const T* p) { return *p; }

// Atomics: blocks run one at a time on one OS thread, but atomic_ref keeps them honest anyway.
#define SIMT_ATOMIC_RMW(name, method) \
  template <typename T>                \
  T name(T* p, T v) {                  \
    return std::atomic_ref<T>(*p).method(v); \
  }
SIMT_ATOMIC_RMW(atomicAdd, fetch_add)
SIMT_ATOMIC_RMW(atomicSub, fetch_sub)
SIMT_ATOMIC_RMW(atomicOr, fetch_or)
SIMT_ATOMIC_RMW(atomicAnd, fetch_and)
SIMT_ATOMIC_RMW(atomicXor, fetch_xor)
SIMT_ATOMIC_RMW(atomicExch, exchange)
#undef SIMT_ATOMIC_RMW
template <typename T>
T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;
}
namespace simt {
template <typename T, typename Better>
T atomic_keep_best(T* p, T v, Better better) {  // stores v while better(v, current); returns the old value
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (better(v, old) && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
}  // namespace simt
template <typename T>
T atomicMax(T* p, T v) { return ::simt::atomic_keep_best(p, v, [](T x, T y) { return y < x; }); }
template <typename T>
T atomicMin(T* p, T v) { return ::simt::atomic_keep_best(p, v, [](T x, T y) { return x < y; }); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// cuda_runtime.h declares this overload for nvcc only.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// Launch and dynamic shared memory, as blipx/launch.cuh spells them for nvcc.
#define SIMT_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::simt::launch_kernel(#kernel, kernel, dim3(grid), dim3(block), (smem), (stream), __VA_ARGS__)
#define SIMT_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::simt::dynamic_smem())
