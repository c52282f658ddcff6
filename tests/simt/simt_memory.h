// "Device" memory of the emulated build: every buffer a kernel may touch lives in its own
// mapping between two PROT_NONE guard pages, so an out-of-bounds global access faults and the
// emulator's fault handler names the kernel, the thread and the buffer. The data starts 256-byte
// aligned (as cudaMalloc's does) as close to the trailing guard page as that allows; the < 256
// slack bytes around it hold a canary that check_canaries() verifies (out-of-bounds writes that
// stay within the slack). Fresh buffers are filled with the launch's poison byte. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace simt {

void* device_alloc(size_t bytes, uint8_t fill);
void device_free(void* data);
bool is_device_ptr(const void* p);
// Verifies the canaries of every live buffer (and of buffers freed since the last call);
// returns a description of the first violation, or "".
std::string check_canaries();
// For the fault handler: what lies at address a ("" when it is no guard page of ours).
std::string describe_device_fault(uintptr_t a);

}  // namespace simt
