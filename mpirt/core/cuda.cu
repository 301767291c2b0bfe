// Device side of the core: reduction kernels (16-bit floats accumulate in fp32) and the
// allocation/copy helpers used for device buffers and pinned staging.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <stdexcept>
#include <string>

#include "memops.hpp"

namespace mpirt::cuda {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(err));
}

// The core's own stream on the calling thread's current device, one per thread and device:
// non-blocking, so its copies and kernels neither wait for nor hold up the training's work on
// the default stream (a bucket's copy would otherwise queue behind the rest of backward).
// Callers hand over finished buffers (an event or a stream synchronised before the call), and
// every operation here finishes on its stream before it returns.
struct Streams {
  std::map<int, cudaStream_t> by_device;
  ~Streams() {
    for (auto& [device, s] : by_device) cudaStreamDestroy(s);
  }
};

cudaStream_t stream() {
  thread_local Streams streams;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaStream_t& s = streams.by_device[device];
  if (s == nullptr) check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return s;
}

void finish(cudaStream_t s, const char* what) {
  check(cudaGetLastError(), what);
  check(cudaStreamSynchronize(s), what);
}

template <class T>
struct Conv {
  __device__ static float load(T v) { return static_cast<float>(v); }
  __device__ static T store(float a) { return static_cast<T>(a); }
};
template <>
struct Conv<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float a) { return __float2half_rn(a); }
};
template <>
struct Conv<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float a) { return __float2bfloat16_rn(a); }
};

__device__ inline bool negative(float x) { return signbit(x); }
__device__ inline bool negative(double x) { return signbit(x); }
__device__ inline bool negative(int x) { return x < 0; }

// min and max as on the host: for floats IEEE 754-2019 minimum/maximum (a NaN wins, -0 < +0).
template <class T, class Acc>
__device__ Acc apply(Acc a, Acc b, int op) {
  if (op == 1 || op == 2) {
    if (a != a) return a;
    if (b != b) return b;
    if (b == a) return (op == 1) == negative(b) ? b : a;
    return (op == 1) == (b < a) ? b : a;
  }
  return a + b;  // sum and avg
}

template <class T, class Acc>
__global__ void reduce_kernel(T* dst, const T* src, size_t n, int op) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<T, double> || std::is_same_v<T, int32_t>)
      dst[i] = apply<T, T>(dst[i], src[i], op);
    else
      dst[i] = Conv<T>::store(apply<T, Acc>(Conv<T>::load(dst[i]), Conv<T>::load(src[i]), op));
  }
}

template <class T>
__global__ void scale_kernel(T* buf, size_t n, int div) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<T, int32_t>)
      buf[i] = buf[i] / div;
    else if constexpr (std::is_same_v<T, double>)
      buf[i] = buf[i] / div;
    else
      buf[i] = Conv<T>::store(Conv<T>::load(buf[i]) / static_cast<float>(div));
  }
}

dim3 grid_for(size_t n) {
  size_t blocks = (n + 255) / 256;
  return dim3(static_cast<unsigned>(blocks > 4096 ? 4096 : (blocks ? blocks : 1)));
}

void device_reduce_into(void* dst, const void* src, size_t n, DType t, Op o) {
  if (n == 0) return;
  const int op = static_cast<int>(o);
  cudaStream_t st = stream();
  switch (t) {
    case DType::f32:
      reduce_kernel<float, float><<<grid_for(n), 256, 0, st>>>(static_cast<float*>(dst), static_cast<const float*>(src), n, op);
      break;
    case DType::f64:
      reduce_kernel<double, double><<<grid_for(n), 256, 0, st>>>(static_cast<double*>(dst), static_cast<const double*>(src), n, op);
      break;
    case DType::f16:
      reduce_kernel<__half, float><<<grid_for(n), 256, 0, st>>>(static_cast<__half*>(dst), static_cast<const __half*>(src), n, op);
      break;
    case DType::bf16:
      reduce_kernel<__nv_bfloat16, float><<<grid_for(n), 256, 0, st>>>(static_cast<__nv_bfloat16*>(dst), static_cast<const __nv_bfloat16*>(src), n, op);
      break;
    case DType::i32:
      reduce_kernel<int32_t, int32_t><<<grid_for(n), 256, 0, st>>>(static_cast<int32_t*>(dst), static_cast<const int32_t*>(src), n, op);
      break;
  }
  finish(st, "reduce kernel");  // the next MPI call reads this memory: finish first
}

void device_scale(void* buf, size_t n, DType t, int div) {
  if (n == 0 || div == 1) return;
  cudaStream_t st = stream();
  switch (t) {
    case DType::f32: scale_kernel<float><<<grid_for(n), 256, 0, st>>>(static_cast<float*>(buf), n, div); break;
    case DType::f64: scale_kernel<double><<<grid_for(n), 256, 0, st>>>(static_cast<double*>(buf), n, div); break;
    case DType::f16: scale_kernel<__half><<<grid_for(n), 256, 0, st>>>(static_cast<__half*>(buf), n, div); break;
    case DType::bf16: scale_kernel<__nv_bfloat16><<<grid_for(n), 256, 0, st>>>(static_cast<__nv_bfloat16*>(buf), n, div); break;
    case DType::i32: scale_kernel<int32_t><<<grid_for(n), 256, 0, st>>>(static_cast<int32_t*>(buf), n, div); break;
  }
  finish(st, "scale kernel");
}

void copy_on_stream(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what) {
  if (bytes == 0) return;
  cudaStream_t st = stream();
  check(cudaMemcpyAsync(dst, src, bytes, kind, st), what);
  finish(st, what);
}

void device_copy(void* dst, const void* src, size_t bytes) {
  copy_on_stream(dst, src, bytes, cudaMemcpyDeviceToDevice, "cudaMemcpy D2D");
}

}  // namespace

bool built() { return true; }

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

bool available() { return device_count() > 0; }

std::string describe() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  // No driver reads as "driver version is insufficient": say what a container usually lacks.
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice)
    return std::string("no usable CUDA device (") + cudaGetErrorString(err) +
           ": is the NVIDIA driver mounted in this container? it needs a GPU resource request and "
           "NVIDIA_VISIBLE_DEVICES not blank)";
  if (err != cudaSuccess) return std::string("no usable CUDA device (") + cudaGetErrorString(err) + ")";
  if (n == 0) return "no CUDA device is visible";
  int dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, dev);
  return std::string(prop.name);
}

const MemOps& device_ops() {
  static const MemOps ops = {device_copy, device_reduce_into, device_scale};
  return ops;
}

void* alloc_device(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  return p;
}
void free_device(void* p) { cudaFree(p); }
void* alloc_pinned(size_t bytes) {
  void* p = nullptr;
  // portable: pinned for every device's context, whichever device a later call works on
  check(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable), "cudaHostAlloc");
  return p;
}
void free_pinned(void* p) { cudaFreeHost(p); }
void to_host(void* dst, const void* src, size_t bytes) {
  copy_on_stream(dst, src, bytes, cudaMemcpyDeviceToHost, "cudaMemcpy D2H");
}
void to_device(void* dst, const void* src, size_t bytes) {
  copy_on_stream(dst, src, bytes, cudaMemcpyHostToDevice, "cudaMemcpy H2D");
}
void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
void set_device(int index) { check(cudaSetDevice(index), "cudaSetDevice"); }
int current_device() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}
int device_of(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // clear it: not a pointer CUDA knows, so host memory
    return -1;
  }
  if (a.type == cudaMemoryTypeManaged) return -2;
  return a.type == cudaMemoryTypeDevice ? a.device : -1;
}

}  // namespace mpirt::cuda
