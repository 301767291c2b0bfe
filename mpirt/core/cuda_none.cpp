// Built when CUDA is off: every device entry point says why it cannot run.
#include <stdexcept>

#include "memops.hpp"

namespace mpirt::cuda {
namespace {
[[noreturn]] void unavailable() {
  throw std::runtime_error("this mpirt core was built without CUDA (no nvcc at build time); "
                           "rebuild with nvcc on PATH or -DMPIRT_CUDA=ON");
}
}  // namespace

bool built() { return false; }
bool available() { return false; }
std::string describe() { return "this mpirt core was built without CUDA"; }
const MemOps& device_ops() { unavailable(); }
void* alloc_device(size_t) { unavailable(); }
void free_device(void*) {}
void* alloc_pinned(size_t) { unavailable(); }
void free_pinned(void*) {}
void to_host(void*, const void*, size_t) { unavailable(); }
void to_device(void*, const void*, size_t) { unavailable(); }
void synchronize() {}
void set_device(int) { unavailable(); }
int current_device() { unavailable(); }
int device_of(const void*) { unavailable(); }
int device_count() { return 0; }

}  // namespace mpirt::cuda
