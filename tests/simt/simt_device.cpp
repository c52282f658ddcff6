// The emulated build's device: Philox streams on CPU generators, guarded "device" allocations,
// and the control ops tests/simt/backend.py drives (configure, to_device, begin/end_call, ...).
#include "simt_device.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/CPUAllocator.h>

#include <cstring>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "simt_memory.h"

namespace blipx::device {
namespace {

struct Stream {
  uint64_t seed, offset;
};

// Philox streams by the hash of the generator state they leave behind: the next call on the
// same generator finds its stream and continues it; a reseeded (or otherwise used) generator
// starts a new one. Keyed by state rather than by generator object, so the harness can replay a
// call (restore the state, call again) and get the same numbers.
std::unordered_map<uint64_t, Stream>& streams() {
  static std::unordered_map<uint64_t, Stream> m;
  return m;
}

uint64_t state_hash(const at::CPUGeneratorImpl& gen) {
  const auto st = gen.get_state();
  const auto* p = static_cast<const char*>(st->storage().data());
  return std::hash<std::string_view>{}(std::string_view(p, st->storage().nbytes()));
}

}  // namespace

PhiloxArgs philox(const std::optional<at::Generator>& generator, const at::Device&, uint64_t increment) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  auto& table = streams();
  const auto it = table.find(state_hash(*gen));
  Stream s{0, 0};
  if (it != table.end()) {
    s = it->second;
    gen->random64();  // every call moves the generator on, so a reseed is never mistaken for it
  } else {
    s = Stream{gen->random64(), 0};
  }
  table[state_hash(*gen)] = Stream{s.seed, s.offset + increment};
  PhiloxArgs a;
  a.seed = s.seed;
  a.offset = s.offset;
  return a;
}

void check(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, simt::last_message().empty() ? "simt: launch failed" : simt::last_message());
}

}  // namespace blipx::device

namespace {

void free_device(void* p) { simt::device_free(p); }

struct GuardedAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* p = simt::device_alloc(n, simt::config().poison);
    return {p, p, &free_device, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_device; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

GuardedAllocator g_guarded;
c10::Allocator* g_previous = nullptr;

void configure(int64_t schedule, int64_t seed, int64_t poison, int64_t sm_count, int64_t smem_optin) {
  TORCH_CHECK(schedule >= 0 && schedule <= 3, "simt: schedule must be 0..3");
  auto& c = simt::config();
  c.schedule = static_cast<simt::Schedule>(schedule);
  c.seed = static_cast<uint64_t>(seed);
  c.poison = static_cast<uint8_t>(poison);
  c.sm_count = static_cast<int>(sm_count);
  c.smem_optin = static_cast<int>(smem_optin);
}

// A copy of t whose whole storage lives in a guarded device buffer, same sizes, strides and
// storage offset (so strided and expanded views keep their layout).
at::Tensor to_device(const at::Tensor& t) {
  const auto& st = t.storage();
  const size_t nbytes = st.nbytes();
  void* p = simt::device_alloc(nbytes, simt::config().poison);
  if (nbytes) std::memcpy(p, st.data(), nbytes);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes,
                       c10::DataPtr(p, p, &free_device, c10::Device(c10::DeviceType::CPU)), nullptr, false);
  return at::empty({0}, t.options().requires_grad(false)).set_(storage, t.storage_offset(), t.sizes(), t.strides());
}

// Between begin_call and end_call every CPU allocation (the entry points' outputs and scratch)
// is a poisoned, guarded device buffer.
void begin_call() {
  TORCH_CHECK(g_previous == nullptr, "simt: begin_call twice");
  g_previous = c10::GetCPUAllocator();
  c10::SetCPUAllocator(&g_guarded, /*priority=*/255);
}

std::string end_call() {
  if (g_previous) c10::SetCPUAllocator(g_previous, /*priority=*/255);
  g_previous = nullptr;
  return simt::check_canaries();
}

bool storage_equal(const at::Tensor& a, const at::Tensor& b) {
  const auto &sa = a.storage(), &sb = b.storage();
  return sa.nbytes() == sb.nbytes() && (sa.nbytes() == 0 || std::memcmp(sa.data(), sb.data(), sa.nbytes()) == 0);
}

bool is_device(const at::Tensor& t) { return simt::is_device_ptr(t.storage().data()); }

void reset() { blipx::device::streams().clear(); }

}  // namespace

TORCH_LIBRARY(blipx_simt, m) {
  m.def("configure", &configure);
  m.def("to_device", &to_device);
  m.def("begin_call", &begin_call);
  m.def("end_call", &end_call);
  m.def("storage_equal", &storage_equal);
  m.def("is_device", &is_device);
  m.def("reset", &reset);
}
