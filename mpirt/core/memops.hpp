// The three memory operations an algorithm needs, for host or CUDA device memory, so that
// `ring` and `mpi` run unchanged on device buffers when the MPI is CUDA-aware.
#pragma once

#include <cstddef>
#include <string>

#include "dtype.hpp"

namespace mpirt {

struct MemOps {
  void (*copy)(void* dst, const void* src, size_t bytes);
  void (*reduce_into)(void* dst, const void* src, size_t count, DType t, Op o);
  void (*scale_avg)(void* buf, size_t count, DType t, int n);
};

const MemOps& host_ops();

namespace cuda {
// Built with CUDA: device kernels. Built without: available() is false, the rest throws.
bool built();
bool available();  // built and at least one device visible
std::string describe();  // device name or why CUDA is unavailable
const MemOps& device_ops();
void* alloc_device(size_t bytes);
void free_device(void* p);
void* alloc_pinned(size_t bytes);
void free_pinned(void* p);
void to_host(void* dst, const void* src, size_t bytes);
void to_device(void* dst, const void* src, size_t bytes);
void synchronize();  // the whole device: for timing (the core's own work finishes on its stream)
void set_device(int index);
int current_device();  // of the calling thread: each thread has its own (device 0 at first)
int device_of(const void* p);  // the device holding p, or -1 for host memory (managed: -2)
int device_count();
}  // namespace cuda

}  // namespace mpirt
