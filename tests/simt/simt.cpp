// The SIMT emulator's runtime: fibers, the block scheduler, the synchronisation checks, the
// launch and the fault handler. Interface and rationale: simt.h.
#include "simt.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <deque>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "simt_memory.h"

// ---- fibers: a minimal x86-64 context switch (callee-saved registers, MXCSR, x87 control) -----
// ucontext's swapcontext makes two system calls per switch; this is ~20 instructions, and the
// emulator switches at every shuffle of every thread.
#if !defined(__x86_64__)
#error "the SIMT emulator's context switch is written for x86-64"
#endif
extern "C" void simt_switch(void** save_sp, void* load_sp);
extern "C" void simt_fiber_start();
asm(R"(
  .text
  .globl simt_switch
  .hidden simt_switch
  .type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch, .-simt_switch

  .globl simt_fiber_start
  .hidden simt_fiber_start
  .type simt_fiber_start,@function
simt_fiber_start:
  movq %rbx, %rdi
  callq *%r12
  ud2
  .size simt_fiber_start, .-simt_fiber_start
)");


namespace simt {

uint3 g_block_idx;
dim3 g_block_dim, g_grid_dim;

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::kInOrder: return "inorder";
    case Schedule::kReverse: return "reverse";
    case Schedule::kRandom: return "random";
    case Schedule::kRunAhead: return "runahead";
  }
  return "?";
}

Config& config() {
  static Config c;
  return c;
}

namespace {

enum class St : uint8_t { kReady, kBarrier, kWarp, kDone };

constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kPage = 4096;

}  // namespace

// One cp.async in flight: its source bytes (read when it was issued) and where they land.
struct AsyncCopy {
  void* dst;
  int bytes;
  unsigned char data[16];
};

struct Thread {
  void* sp = nullptr;
  uint3 tid{};
  int lin = 0, warp = 0, lane = 0;
  St st = St::kReady;
  const char* at_what = "";
  std::source_location at;
  std::vector<AsyncCopy> cp_open;               // cp.async issued since the last commit_group
  std::deque<std::vector<AsyncCopy>> cp_groups;  // committed groups, oldest first
};

namespace {

struct Warp {
  std::array<WarpOp*, 32> pending;  // the op each lane waits at (valid for lanes in `arrived`)
  unsigned arrived = 0, exited = 0, at_barrier = 0;
};

struct Block {
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  int live = 0, exited = 0, at_barrier = 0;
  int first_exited = -1;
  std::source_location bar_loc;
};

struct State {
  std::mutex mu;  // one launch at a time: __shared__ statics and the globals below are per process
  const LaunchSpec* spec = nullptr;
  std::string kernel;
  Block block;
  Thread* cur = nullptr;
  void* sched_sp = nullptr;
  bool aborted = false;
  std::string error;
  uint64_t rng = 0;
  void* dyn = nullptr;
  // fiber stacks: one mapping, a PROT_NONE guard page below each stack
  char* stacks = nullptr;
  size_t n_stacks = 0;
  // dynamic shared memory: its end touches a guard page
  char* dyn_map = nullptr;
  size_t dyn_map_bytes = 0;
  std::map<const void*, int> max_dyn_smem;  // cudaFuncSetAttribute
  cudaError_t last_error = cudaSuccess;
  std::string last_message;
  sigjmp_buf jmp;
  bool in_launch = false;
  uint32_t mxcsr_fpcw[2] = {0, 0};
};

State g_state;  // constructed before any launch: launches happen after the library is loaded
inline State& S() { return g_state; }

std::string loc_str(const std::source_location& l) {
  const char* f = l.file_name();
  const char* slash = std::strrchr(f, '/');
  std::ostringstream o;
  o << (slash ? slash + 1 : f) << ":" << l.line() << ":" << l.column();
  return o.str();
}

bool same_loc(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

std::string dim_str(const uint3& d) {
  std::ostringstream o;
  o << "(" << d.x << "," << d.y << "," << d.z << ")";
  return o.str();
}

std::string thread_str(const Thread& t) {
  std::ostringstream o;
  o << "thread " << dim_str(t.tid) << " (warp " << t.warp << " lane " << t.lane << ")";
  return o.str();
}

std::string where() {
  State& s = S();
  std::ostringstream o;
  o << "simt: kernel " << s.kernel << ", block " << dim_str(g_block_idx);
  if (s.cur) o << ", " << thread_str(*s.cur);
  o << " [schedule " << schedule_name(config().schedule) << "]: ";
  return o.str();
}

std::string mask_str(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

void yield() {
  State& s = S();
  Thread* t = s.cur;
  simt_switch(&t->sp, s.sched_sp);
}

uint64_t next_rand() {
  uint64_t z = (S().rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename V>
void shuffle_in_place(V& v) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_rand() % i]);
}

[[noreturn]] void abort_run() {
  State& s = S();
  s.aborted = true;
  simt_switch(&s.cur->sp, s.sched_sp);
  __builtin_unreachable();
}

void thread_exit();

void fiber_main(Thread* t) {
  (void)t;
  State& s = S();
  try {
    s.spec->body(s.spec->ctx);
  } catch (const std::exception& e) {
    fail(std::string("C++ exception escaped the kernel: ") + e.what());
  }
  thread_exit();
}

void* init_stack(char* top, Thread* t) {
  auto* sp = reinterpret_cast<uint64_t*>(top - 64);
  std::memcpy(&sp[0], S().mxcsr_fpcw, 8);
  sp[1] = sp[2] = sp[3] = 0;                                 // r15, r14, r13
  sp[4] = reinterpret_cast<uint64_t>(&fiber_main);      // r12: entry
  sp[5] = reinterpret_cast<uint64_t>(t);                     // rbx: its argument
  sp[6] = 0;                                                 // rbp
  sp[7] = reinterpret_cast<uint64_t>(&simt_fiber_start);     // return address
  return sp;
}

void ensure_stacks(size_t n) {
  State& s = S();
  if (n <= s.n_stacks) return;
  if (s.stacks) munmap(s.stacks, s.n_stacks * (kStackBytes + kPage));
  const size_t bytes = n * (kStackBytes + kPage);
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw std::runtime_error("simt: cannot map fiber stacks");
  s.stacks = static_cast<char*>(m);
  s.n_stacks = n;
  for (size_t i = 0; i < n; ++i) mprotect(s.stacks + i * (kStackBytes + kPage), kPage, PROT_NONE);
}

char* stack_top(size_t i) { return S().stacks + (i + 1) * (kStackBytes + kPage); }

void ensure_dyn(size_t smem) {
  State& s = S();
  const size_t need = (smem + kPage - 1) / kPage * kPage + kPage;
  if (need > s.dyn_map_bytes) {
    if (s.dyn_map) munmap(s.dyn_map, s.dyn_map_bytes);
    void* m = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("simt: cannot map dynamic shared memory");
    s.dyn_map = static_cast<char*>(m);
    s.dyn_map_bytes = need;
    mprotect(s.dyn_map + need - kPage, kPage, PROT_NONE);
  }
  char* guard = s.dyn_map + s.dyn_map_bytes - kPage;
  s.dyn = guard - (smem + 15) / 16 * 16;
}

// ---- the fault handler: guard pages of stacks, dynamic shared memory and device buffers -------
struct sigaction g_old_segv, g_old_bus;
stack_t g_old_altstack;
std::vector<char> g_altstack(1 << 16);

std::string describe_fault(uintptr_t a) {
  State& s = S();
  const uintptr_t st = reinterpret_cast<uintptr_t>(s.stacks);
  if (s.stacks && a >= st && a < st + s.n_stacks * (kStackBytes + kPage)) {
    const size_t i = (a - st) / (kStackBytes + kPage);
    if ((a - st) % (kStackBytes + kPage) < kPage) {
      return "stack overflow (fiber stack of linear thread " + std::to_string(i) + ", " +
             std::to_string(kStackBytes / 1024) + " KB)";
    }
  }
  const uintptr_t dg = reinterpret_cast<uintptr_t>(s.dyn_map) + s.dyn_map_bytes - kPage;
  if (s.dyn_map && a >= dg && a < dg + kPage) {
    return "dynamic shared memory read/written " + std::to_string(a - reinterpret_cast<uintptr_t>(s.dyn)) +
           " bytes from its start, beyond the " + std::to_string(s.spec->smem) + " bytes the launch requested";
  }
  return describe_device_fault(a);
}

void on_fault(int sig, siginfo_t* si, void* uc) {
  State& s = S();
  if (s.in_launch && s.cur) {
    std::string what = describe_fault(reinterpret_cast<uintptr_t>(si->si_addr));
    if (!what.empty()) {
      s.error = where() + what;
      siglongjmp(s.jmp, 1);
    }
  }
  // Not ours: put the previous handler back and let the access fault again.
  sigaction(SIGSEGV, &g_old_segv, nullptr);
  sigaction(SIGBUS, &g_old_bus, nullptr);
  (void)sig;
  (void)uc;
}

struct FaultHandler {
  FaultHandler() {
    stack_t ss{};
    ss.ss_sp = g_altstack.data();
    ss.ss_size = g_altstack.size();
    sigaltstack(&ss, &g_old_altstack);
    struct sigaction sa {};
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
  }
  ~FaultHandler() {
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    sigaltstack(&g_old_altstack, nullptr);
  }
};

// ---- scheduling ---------------------------------------------------------------------------------
void run_thread(Thread& t) {
  State& s = S();
  s.cur = &t;
  simt_switch(&s.sched_sp, t.sp);
  s.cur = nullptr;
}

std::string deadlock_report(const Block& b) {
  std::ostringstream o;
  o << "deadlock: no thread can proceed;";
  std::vector<std::pair<std::string, int>> groups;  // "state at site" -> count
  std::vector<const Thread*> first;
  for (const Thread& t : b.threads) {
    if (t.st == St::kDone || t.st == St::kReady) continue;
    std::string key = std::string(t.at_what) + " (" + loc_str(t.at) + ")";
    auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == key; });
    if (it == groups.end()) {
      groups.emplace_back(key, 1);
      first.push_back(&t);
    } else {
      ++it->second;
    }
  }
  for (size_t i = 0; i < groups.size() && i < 6; ++i) {
    o << " " << groups[i].second << " thread(s) wait at " << groups[i].first << ", first " << thread_str(*first[i]) << ";";
  }
  o << " " << b.exited << " thread(s) exited";
  return o.str();
}

// Runs one block to completion (or to the first error, leaving s.aborted / s.error set).
void run_block() {
  State& s = S();
  Block& b = s.block;
  const Config& cfg = config();
  const int n = static_cast<int>(b.threads.size());
  const int nw = (n + 31) / 32;
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.st = St::kReady;
    t.sp = init_stack(stack_top(i), &t);
    t.at_what = "";
    t.cp_open.clear();  // copies a thread left in flight when it exited never land
    t.cp_groups.clear();
  }
  for (auto& w : b.warps) w = Warp{};
  b.live = n;
  b.exited = 0;
  b.at_barrier = 0;
  b.first_exited = -1;

  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (cfg.schedule == Schedule::kReverse) std::reverse(order.begin(), order.end());
  for (;;) {
    bool progressed = false;
    if (cfg.schedule == Schedule::kRunAhead) {
      // Each warp runs as far as it can (through its own shuffles) before the next one starts.
      for (int w = 0; w < nw; ++w) {
        for (bool any = true; any;) {
          any = false;
          for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
            if (b.threads[i].st != St::kReady) continue;
            run_thread(b.threads[i]);
            if (s.aborted) return;
            any = progressed = true;
          }
        }
      }
    } else {
      if (cfg.schedule == Schedule::kRandom) shuffle_in_place(order);
      for (int i : order) {
        if (b.threads[i].st != St::kReady) continue;
        run_thread(b.threads[i]);
        if (s.aborted) return;
        progressed = true;
      }
    }
    if (!progressed) break;
  }
  if (b.live > 0) {
    s.error = where() + deadlock_report(b);
    s.aborted = true;
  }
}

void check_not_awaited_by_warp(const Thread& t, const std::string& doing) {
  const Warp& w = S().block.warps[t.warp];
  for (unsigned rest = w.arrived; rest; rest &= rest - 1) {
    const int j = __builtin_ctz(rest);
    const WarpOp* op = w.pending[j];
    if ((op->mask >> t.lane) & 1u) {
      fail(doing + " while lane " + std::to_string(j) + " waits for it at " +
           op->name + " (" + loc_str(op->loc) + ") with mask " + mask_str(op->mask));
    }
  }
}

void thread_exit() {
  State& s = S();
  Block& b = s.block;
  Thread& t = *s.cur;
  t.st = St::kDone;
  b.warps[t.warp].exited |= 1u << t.lane;
  --b.live;
  ++b.exited;
  if (b.first_exited < 0) b.first_exited = t.lin;
  if (b.at_barrier > 0) {
    fail("exited while " + std::to_string(b.at_barrier) + " thread(s) wait at __syncthreads (" + loc_str(b.bar_loc) +
         ")");
  }
  check_not_awaited_by_warp(t, "exited");
  simt_switch(&t.sp, s.sched_sp);
  __builtin_unreachable();
}

std::string op_str(const WarpOp& op) {
  return std::string(op.name) + " (" + loc_str(op.loc) + ", mask " + mask_str(op.mask) + ")";
}

bool ops_match(const WarpOp& a, const WarpOp& b) {
  if (a.kind != b.kind || a.mask != b.mask) return false;
  if (a.kind == WarpKind::kSyncwarp) return true;  // sm_70+: any __syncwarp of the same mask
  return a.width == b.width && a.bytes == b.bytes && a.mode == b.mode && same_loc(a.loc, b.loc);
}

}  // namespace

Thread* current() { return S().cur; }
const uint3& thread_idx() { return S().cur->tid; }
void* dynamic_smem() { return S().dyn; }
unsigned lane_id() { return static_cast<unsigned>(S().cur->lane); }

void fail(const std::string& what) {
  State& s = S();
  if (!s.cur) throw std::runtime_error("simt: " + what);
  s.error = where() + what;
  abort_run();
}

void syncthreads(const std::source_location& loc) {
  State& s = S();
  Block& b = s.block;
  Thread& t = *s.cur;
  if (b.exited > 0) {
    const Thread& gone = b.threads[b.first_exited];
    fail("__syncthreads (" + loc_str(loc) + ") reached after " + std::to_string(b.exited) + " thread(s) exited, first " +
         thread_str(gone));
  }
  if (b.at_barrier == 0) {
    b.bar_loc = loc;
  } else if (!same_loc(loc, b.bar_loc)) {
    fail("barrier divergence: __syncthreads at " + loc_str(loc) + " while " + std::to_string(b.at_barrier) +
         " thread(s) wait at __syncthreads at " + loc_str(b.bar_loc));
  }
  check_not_awaited_by_warp(t, "entered __syncthreads (" + loc_str(loc) + ")");
  t.st = St::kBarrier;
  t.at_what = "__syncthreads";
  t.at = loc;
  b.warps[t.warp].at_barrier |= 1u << t.lane;
  if (++b.at_barrier == b.live) {
    for (Thread& u : b.threads) {
      if (u.st == St::kBarrier) u.st = St::kReady;
    }
    for (Warp& w : b.warps) w.at_barrier = 0;
    b.at_barrier = 0;
  }
  yield();  // even the last arrival yields, so the schedule decides who leaves the barrier first
}

void warp_collective(WarpOp& op) {
  State& s = S();
  Block& b = s.block;
  Thread& t = *s.cur;
  const int n = static_cast<int>(b.threads.size());
  const int size = std::min(32, n - t.warp * 32);
  const unsigned present = size == 32 ? 0xffffffffu : (1u << size) - 1u;
  if (!((op.mask >> t.lane) & 1u)) fail(op_str(op) + ": the calling lane is not in the mask");
  if (op.mask & ~present) {
    fail(op_str(op) + ": the mask names lanes that do not exist (this warp has " + std::to_string(size) + " threads)");
  }
  if (op.kind == WarpKind::kShfl && (op.width < 1 || op.width > 32 || (op.width & (op.width - 1)))) {
    fail(op_str(op) + ": width " + std::to_string(op.width) + " is not a power of two in [1, 32]");
  }
  Warp& w = b.warps[t.warp];
  const unsigned others = op.mask & ~(1u << t.lane);
  if (const unsigned gone = others & w.exited) {
    fail(op_str(op) + ": the mask names lane " + std::to_string(__builtin_ctz(gone)) + ", which has exited");
  }
  if (const unsigned waiting = others & w.at_barrier) {
    const int j = __builtin_ctz(waiting);
    fail(op_str(op) + ": the mask names lane " + std::to_string(j) + ", which waits at __syncthreads (" +
         loc_str(b.threads[t.warp * 32 + j].at) + ")");
  }
  // Every lane already waiting in this mask matched the first one that arrived: compare with it.
  if (const unsigned came = others & w.arrived) {
    const int j = __builtin_ctz(came);
    if (!ops_match(*w.pending[j], op)) {
      fail("lanes of one mask meet at different warp collectives: this lane at " + op_str(op) + ", lane " +
           std::to_string(j) + " at " + op_str(*w.pending[j]));
    }
  }
  w.pending[t.lane] = &op;
  w.arrived |= 1u << t.lane;
  t.st = St::kWarp;
  t.at_what = op.name;
  t.at = op.loc;
  if ((w.arrived & op.mask) == op.mask) {
    op.complete(w.pending.data(), op.mask);
    w.arrived &= ~op.mask;
    for (unsigned rest = op.mask; rest; rest &= rest - 1) b.threads[t.warp * 32 + __builtin_ctz(rest)].st = St::kReady;
  }
  yield();
}

void shfl_complete(WarpOp* const* ops, unsigned mask) {
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const WarpOp& o = *ops[l];
    // PTX shfl.sync: c = ((32 - width) << 8) | (up ? 0 : 31); segmask = c[12:8].
    const int segmask = (32 - o.width) & 0x1f;
    const int cval = o.mode == ShflMode::kUp ? 0 : 0x1f;
    const int max_lane = (l & segmask) | (cval & ~segmask);
    const int min_lane = l & segmask;
    const int b = o.arg;
    int j = l;
    bool ok = false;
    switch (o.mode) {
      case ShflMode::kUp: j = l - b; ok = j >= max_lane; break;
      case ShflMode::kDown: j = l + b; ok = j <= max_lane; break;
      case ShflMode::kXor: j = l ^ b; ok = j <= max_lane; break;
      case ShflMode::kIdx: j = min_lane | ((b & 0x1f) & ~segmask); ok = j <= max_lane; break;
    }
    if (!ok) j = l;  // outside the segment: the lane keeps its own value
    if (!((mask >> j) & 1u)) {
      fail(op_str(o) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(j) +
           ", which is not in the mask (undefined value)");
    }
    std::memcpy(o.out, ops[j]->in, static_cast<size_t>(o.bytes));
  }
}

void ballot_complete(WarpOp* const* ops, unsigned mask) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) && *static_cast<const int*>(ops[l]->in)) bits |= 1u << l;
  }
  for (int l = 0; l < 32; ++l) {
    if ((mask >> l) & 1u) *static_cast<unsigned*>(ops[l]->out) = bits;
  }
}

void noop_complete(WarpOp* const*, unsigned) {}

void record_launch_error(cudaError_t err) { S().last_error = err; }

std::string last_message() { return S().last_message; }

namespace {

// The symbol table of the library this code is linked into: function names by address, and the
// function-scope statics (= __shared__ variables) by the function that owns them.
struct Symbols {
  std::map<uintptr_t, std::string> funcs;                                      // demangled
  std::map<std::string, std::vector<std::pair<char*, size_t>>> shared_by_owner;  // owner: demangled, no return type
};

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name);
}

Symbols read_symbols() {
  Symbols out;
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&read_symbols), &info) || !info.dli_fname) return out;
  const int fd = open(info.dli_fname, O_RDONLY);
  if (fd < 0) return out;
  struct stat st {};
  fstat(fd, &st);
  void* m = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return out;
  const auto* file = static_cast<const char*>(m);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(file);
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(file + eh->e_shoff);
  const uintptr_t base = eh->e_type == ET_DYN ? reinterpret_cast<uintptr_t>(info.dli_fbase) : 0;
  int want = SHT_SYMTAB;  // the full table (static functions too); .dynsym if stripped
  bool has_symtab = false;
  for (int i = 0; i < eh->e_shnum; ++i) has_symtab |= sh[i].sh_type == SHT_SYMTAB;
  if (!has_symtab) want = SHT_DYNSYM;
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (static_cast<int>(sh[i].sh_type) != want) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(file + sh[i].sh_offset);
    const char* strs = file + sh[sh[i].sh_link].sh_offset;
    const size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < n; ++k) {
      const Elf64_Sym& s = syms[k];
      if (s.st_shndx == SHN_UNDEF || s.st_value == 0) continue;
      const int type = ELF64_ST_TYPE(s.st_info);
      const char* name = strs + s.st_name;
      if (type == STT_FUNC) {
        out.funcs[base + s.st_value] = demangle(name);
      } else if (type == STT_OBJECT && s.st_size > 0 && std::strncmp(name, "_ZZ", 3) == 0) {
        const std::string d = demangle(name);  // "<function>::<variable>"
        const size_t cut = d.rfind("::");
        if (cut == std::string::npos) continue;
        out.shared_by_owner[d.substr(0, cut)].emplace_back(reinterpret_cast<char*>(base + s.st_value),
                                                            static_cast<size_t>(s.st_size));
      }
    }
  }
  munmap(m, static_cast<size_t>(st.st_size));
  return out;
}

const Symbols& symbols() {
  static const Symbols s = read_symbols();
  return s;
}

std::string kernel_name(const LaunchSpec& spec) {
  const auto& f = symbols().funcs;
  const auto it = f.find(reinterpret_cast<uintptr_t>(spec.fn));
  if (it == f.end()) return spec.what;
  const std::string& n = it->second;
  return n.rfind("void ", 0) == 0 ? n.substr(5) : n;  // template functions carry their return type
}

const std::vector<std::pair<char*, size_t>>& kernel_shared(const std::string& kernel) {
  static const std::vector<std::pair<char*, size_t>> none;
  const auto& by = symbols().shared_by_owner;
  const auto it = by.find(kernel);
  return it == by.end() ? none : it->second;
}

}  // namespace

bool is_shared(const void* p, size_t bytes) {
  State& s = S();
  const auto a = reinterpret_cast<uintptr_t>(p);
  const auto in = [&](const void* base, size_t n) {
    const auto b = reinterpret_cast<uintptr_t>(base);
    return a >= b && a + bytes <= b + n;
  };
  if (s.spec && s.spec->smem && in(s.dyn, s.spec->smem)) return true;
  for (const auto& [base, n] : kernel_shared(s.kernel)) {
    if (in(base, n)) return true;
  }
  return false;
}

void cp_async(void* dst, const void* src, int cp_size, int src_size, const std::source_location& loc) {
  const std::string at = " (" + loc_str(loc) + ")";
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) fail("cp.async" + at + ": cp-size " + std::to_string(cp_size) + " is not 4, 8 or 16");
  if (src_size < 0 || src_size > cp_size) {
    fail("cp.async" + at + ": src-size " + std::to_string(src_size) + " outside [0, " + std::to_string(cp_size) + "]");
  }
  if (reinterpret_cast<uintptr_t>(dst) % cp_size || !is_shared(dst, cp_size)) {
    fail("cp.async" + at + ": destination " + std::to_string(reinterpret_cast<uintptr_t>(dst) % 1024) +
         " (mod 1024) is not " + std::to_string(cp_size) + "-byte aligned shared memory of this kernel");
  }
  if (src_size > 0 && reinterpret_cast<uintptr_t>(src) % cp_size) {
    fail("cp.async" + at + ": source address is not " + std::to_string(cp_size) + "-byte aligned");
  }
  AsyncCopy c{dst, cp_size, {}};
  if (src_size > 0) std::memcpy(c.data, src, static_cast<size_t>(src_size));  // an out-of-bounds source faults here
  S().cur->cp_open.push_back(c);
}

void cp_async_commit(const std::source_location&) {
  Thread& t = *S().cur;
  t.cp_groups.push_back(std::move(t.cp_open));
  t.cp_open.clear();
}

void cp_async_wait(int pending, const std::source_location& loc) {
  if (pending < 0) fail("cp.async.wait_group (" + loc_str(loc) + "): negative group count");
  Thread& t = *S().cur;
  while (t.cp_groups.size() > static_cast<size_t>(pending)) {
    for (const AsyncCopy& c : t.cp_groups.front()) std::memcpy(c.dst, c.data, static_cast<size_t>(c.bytes));
    t.cp_groups.pop_front();
  }
}

namespace {

cudaError_t config_error(cudaError_t e, const std::string& msg) {
  S().last_message = "simt: launch of " + S().kernel + ": " + msg;
  return e;
}

cudaError_t check_launch(const LaunchSpec& spec) {
  State& s = S();
  const Config& cfg = config();
  const dim3 b = spec.block, g = spec.grid;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0) {
    return config_error(cudaErrorInvalidConfiguration, "a grid or block dimension is 0");
  }
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024) {
    return config_error(cudaErrorInvalidConfiguration, "block " + dim_str(uint3{b.x, b.y, b.z}) +
                                                           " exceeds 1024 threads (x, y <= 1024, z <= 64)");
  }
  if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
    return config_error(cudaErrorInvalidConfiguration, "grid " + dim_str(uint3{g.x, g.y, g.z}) + " exceeds (2^31-1, 65535, 65535)");
  }
  if (spec.param_bytes > static_cast<size_t>(cfg.max_param_bytes)) {
    return config_error(cudaErrorInvalidValue, "kernel parameters take " + std::to_string(spec.param_bytes) +
                                                   " bytes, more than " + std::to_string(cfg.max_param_bytes));
  }
  size_t static_smem = 0;
  for (const auto& v : kernel_shared(s.kernel)) static_smem += v.second;
  if (static_smem + spec.smem > static_cast<size_t>(cfg.smem_optin)) {
    return config_error(cudaErrorInvalidValue, std::to_string(static_smem) + " bytes of static plus " +
                                                   std::to_string(spec.smem) + " of dynamic shared memory exceed the device's " +
                                                   std::to_string(cfg.smem_optin));
  }
  if (spec.smem > 48 * 1024) {
    auto it = s.max_dyn_smem.find(spec.fn);
    const int allowed = it == s.max_dyn_smem.end() ? 48 * 1024 : std::max(48 * 1024, it->second);
    if (spec.smem > static_cast<size_t>(allowed)) {
      return config_error(cudaErrorInvalidValue,
                          std::to_string(spec.smem) + " bytes of dynamic shared memory, but " +
                              (it == s.max_dyn_smem.end() ? std::string("cudaFuncSetAttribute(MaxDynamicSharedMemorySize) was not called")
                                                          : "the attribute allows only " + std::to_string(allowed)));
    }
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch(const LaunchSpec& spec) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  s.spec = &spec;
  s.kernel = kernel_name(spec);
  if (const cudaError_t e = check_launch(spec); e != cudaSuccess) return e;
  const Config& cfg = config();
  const dim3 bd = spec.block, gd = spec.grid;
  const int n = static_cast<int>(bd.x * bd.y * bd.z);
  ensure_stacks(static_cast<size_t>(n));
  ensure_dyn(spec.smem);
  {
    uint32_t m = 0;
    uint16_t cw = 0;
    asm volatile("stmxcsr %0" : "=m"(m));
    asm volatile("fnstcw %0" : "=m"(cw));
    s.mxcsr_fpcw[0] = m;
    s.mxcsr_fpcw[1] = cw;
  }
  Block& b = s.block;
  b.threads.assign(n, Thread{});
  b.warps.assign((n + 31) / 32, Warp{});
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.lin = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.tid = uint3{static_cast<unsigned>(i % bd.x), static_cast<unsigned>((i / bd.x) % bd.y),
                  static_cast<unsigned>(i / (bd.x * bd.y))};
  }
  g_block_dim = bd;
  g_grid_dim = gd;
  const uint64_t nblocks = uint64_t(gd.x) * gd.y * gd.z;
  std::vector<uint64_t> order(nblocks);
  std::iota(order.begin(), order.end(), 0);
  s.rng = cfg.seed * 0x2545f4914f6cdd1dull + nblocks;
  if (cfg.schedule == Schedule::kReverse) std::reverse(order.begin(), order.end());
  if (cfg.schedule == Schedule::kRandom) shuffle_in_place(order);
  const auto& shared = kernel_shared(s.kernel);

  s.aborted = false;
  s.error.clear();
  s.cur = nullptr;
  {
    FaultHandler fh;
    s.in_launch = true;
    if (sigsetjmp(s.jmp, 1) == 0) {
      for (uint64_t o : order) {
        g_block_idx = uint3{static_cast<unsigned>(o % gd.x), static_cast<unsigned>((o / gd.x) % gd.y),
                            static_cast<unsigned>(o / (uint64_t(gd.x) * gd.y))};
        // Fresh shared memory holds whatever the last block left: poison it.
        for (const auto& [p, bytes] : shared) std::memset(p, cfg.poison, bytes);
        if (spec.smem) std::memset(s.dyn, cfg.poison, spec.smem);
        run_block();
        if (s.aborted) break;
      }
    } else {
      s.aborted = true;  // a fault: s.error is set
    }
    s.in_launch = false;
    s.cur = nullptr;
  }
  s.spec = nullptr;
  if (s.aborted) {
    s.last_error = cudaErrorLaunchFailure;
    throw std::runtime_error(s.error);
  }
  return cudaSuccess;
}

}  // namespace simt

// ---- the CUDA runtime calls the kernel headers make ------------------------------------------
extern "C" cudaError_t cudaGetLastError() {
  auto& s = simt::S();
  const cudaError_t e = s.last_error;
  s.last_error = cudaSuccess;
  return e;
}

extern "C" cudaError_t cudaPeekAtLastError() { return simt::S().last_error; }

extern "C" cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  auto& s = simt::S();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > simt::config().smem_optin) {
    s.last_message = "simt: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(value) +
                     ") exceeds the device's " + std::to_string(simt::config().smem_optin) + " bytes";
    return cudaErrorInvalidValue;
  }
  s.max_dyn_smem[func] = value;
  return cudaSuccess;
}
