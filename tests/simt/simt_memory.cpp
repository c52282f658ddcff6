// Guarded device buffers of the emulated build (see simt_memory.h).
#include "simt_memory.h"

#include <sys/mman.h>

#include <cstring>
#include <map>
#include <mutex>
#include <new>

namespace simt {
namespace {

constexpr size_t kPage = 4096;
constexpr uint8_t kCanary = 0xc5;

struct Buffer {
  char* map;
  size_t map_bytes;
  char* data;
  size_t bytes;
};

struct Registry {
  std::mutex mu;
  std::map<uintptr_t, Buffer> by_map;  // keyed by mapping start
  std::string freed_violation;
};

Registry& R() {
  static Registry r;
  return r;
}

std::string canary_violation(const Buffer& b) {
  const char* lo = b.map + kPage;
  const char* hi = b.map + b.map_bytes - kPage;
  for (const char* p = lo; p < b.data; ++p) {
    if (static_cast<uint8_t>(*p) != kCanary) {
      return "a kernel wrote " + std::to_string(b.data - p) + " bytes before the start of a " + std::to_string(b.bytes) +
             "-byte device buffer";
    }
  }
  for (const char* p = b.data + b.bytes; p < hi; ++p) {
    if (static_cast<uint8_t>(*p) != kCanary) {
      return "a kernel wrote " + std::to_string(p - (b.data + b.bytes)) + " bytes past the end of a " +
             std::to_string(b.bytes) + "-byte device buffer";
    }
  }
  return "";
}

}  // namespace

void* device_alloc(size_t bytes, uint8_t fill) {
  const size_t body = (bytes + 255 + kPage - 1) / kPage * kPage;  // room for the alignment slack
  const size_t total = body + 2 * kPage;
  void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  char* map = static_cast<char*>(m);
  mprotect(map, kPage, PROT_NONE);
  mprotect(map + total - kPage, kPage, PROT_NONE);
  char* end = map + total - kPage;
  char* data = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(end) - bytes) & ~uintptr_t{255});
  std::memset(map + kPage, kCanary, body);
  std::memset(data, fill, bytes);
  std::lock_guard<std::mutex> lock(R().mu);
  R().by_map[reinterpret_cast<uintptr_t>(map)] = Buffer{map, total, data, bytes};
  return data;
}

void device_free(void* data) {
  if (!data) return;
  Registry& r = R();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.by_map.upper_bound(reinterpret_cast<uintptr_t>(data));
  if (it == r.by_map.begin()) return;
  --it;
  const Buffer b = it->second;
  if (r.freed_violation.empty()) r.freed_violation = canary_violation(b);
  r.by_map.erase(it);
  munmap(b.map, b.map_bytes);
}

bool is_device_ptr(const void* p) {
  Registry& r = R();
  std::lock_guard<std::mutex> lock(r.mu);
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = r.by_map.upper_bound(a);
  if (it == r.by_map.begin()) return false;
  --it;
  return a >= reinterpret_cast<uintptr_t>(it->second.data) &&
         a <= reinterpret_cast<uintptr_t>(it->second.data) + it->second.bytes;
}

std::string check_canaries() {
  Registry& r = R();
  std::lock_guard<std::mutex> lock(r.mu);
  std::string v = r.freed_violation;
  r.freed_violation.clear();
  for (auto& [k, b] : r.by_map) {
    if (!v.empty()) break;
    v = canary_violation(b);
  }
  return v;
}

std::string describe_device_fault(uintptr_t a) {
  // Called from the fault handler of a faulting kernel thread; the registry is not being
  // modified then (allocation happens outside launches), so no lock is taken.
  Registry& r = R();
  auto it = r.by_map.upper_bound(a);
  if (it == r.by_map.begin()) return "";
  --it;
  const Buffer& b = it->second;
  const auto lo = reinterpret_cast<uintptr_t>(b.map), hi = lo + b.map_bytes;
  if (a < lo || a >= hi) return "";
  const auto d = reinterpret_cast<uintptr_t>(b.data);
  if (a >= lo + kPage && a < hi - kPage) return "";  // inside the buffer's pages: not a guard fault
  if (a >= d) {
    return "global memory access " + std::to_string(a - (d + b.bytes)) + " bytes past the end of a " +
           std::to_string(b.bytes) + "-byte device buffer (guard page)";
  }
  return "global memory access " + std::to_string(d - a) + " bytes before the start of a " + std::to_string(b.bytes) +
         "-byte device buffer (guard page)";
}

}  // namespace simt
