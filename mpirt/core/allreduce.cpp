// The algorithm table, `auto`'s choice, and the device policy: CUDA buffers go straight to a
// CUDA-aware MPI (mpi, ring with CUDA reduction kernels) or are staged through pinned host
// memory and reduced there by the host algorithm.
#include "allreduce.hpp"

#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // after mpi.h: Open MPI's MPIX_Query_cuda_support
#endif

#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm_state.hpp"
#include "memops.hpp"

namespace mpirt {

void allreduce_ring_with(const Call& c, const MemOps& mem, char* scratch);
size_t ring_scratch_bytes(const Call& c);

namespace {

void allreduce_auto(const Call& c) { algorithm(choose_algorithm(c)).run(c); }

size_t env_bytes(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  unsigned long long x = std::strtoull(v, &end, 10);
  if (*end != '\0')
    throw std::invalid_argument(std::string(name) + "=" + v + " is not a byte count; unset it");
  return static_cast<size_t>(x);
}

// Pinned staging for device buffers when the MPI cannot take them, and device scratch for the
// ring, grown on demand; one set per thread (and per device), so that calls from two threads
// never share them, freed when the thread ends.
template <void* (*Alloc)(size_t), void (*Free)(void*)>
struct Grown {
  void* ptr = nullptr;
  size_t bytes = 0;
  char* get(size_t want) {
    if (want > bytes) {
      if (ptr) Free(ptr);
      ptr = nullptr;
      bytes = 0;
      ptr = Alloc(want);
      bytes = want;
    }
    return static_cast<char*>(ptr);
  }
  ~Grown() {
    if (ptr) Free(ptr);
  }
};
using Pinned = Grown<cuda::alloc_pinned, cuda::free_pinned>;
using DeviceScratch = Grown<cuda::alloc_device, cuda::free_device>;

void check_device_buffer(const void* p, const char* which, int device) {
  const int holder = cuda::device_of(p);
  if (holder == device || holder == -2) return;
  throw std::invalid_argument(std::string("the ") + which + " buffer is " +
                              (holder == -1 ? std::string("host memory") : "on CUDA device " + std::to_string(holder)) +
                              ", not on CUDA device " + std::to_string(device) +
                              " as the call says; pass both buffers on the device named");
}

Algo run_on_device(const Call& c, Algo chosen, int device_index) {
  if (!cuda::available())
    throw std::runtime_error("CUDA buffers were given but " + cuda::describe() +
                             "; use --device cpu or run on a machine with a GPU");
  const int visible = cuda::device_count();
  if (device_index >= visible)
    throw std::invalid_argument("CUDA device " + std::to_string(device_index) + " was named but this process sees " +
                                std::to_string(visible) + (visible == 1 ? " device" : " devices") +
                                "; check the tensors' device and CUDA_VISIBLE_DEVICES");
  // Made current and left so: setting device 0 back would create a context there (CUDA 12),
  // the stray context on GPU 0 that every rank of a node would otherwise own.
  if (device_index >= 0 && cuda::current_device() != device_index) cuda::set_device(device_index);
  const int device = cuda::current_device();
  check_device_buffer(c.send, "send", device);
  check_device_buffer(c.recv, "receive", device);
  const size_t bytes = c.count * dtype_size(c.dtype);
  const bool half = c.dtype == DType::f16 || c.dtype == DType::bf16;  // host user op in MPI
  if (mpi_cuda_aware() && (chosen == Algo::ring || (chosen == Algo::mpi && !half))) {
    int n;
    MPI_Comm_size(c.comm, &n);
    if (chosen == Algo::ring) {
      thread_local std::map<int, DeviceScratch> scratch;
      allreduce_ring_with(c, cuda::device_ops(), scratch[device].get(ring_scratch_bytes(c)));
    } else {
      MPI_Datatype type;
      MPI_Op op;
      mpi_type_op(c.dtype, c.op, &type, &op);
      MPI_Allreduce(c.send == c.recv ? MPI_IN_PLACE : c.send, c.recv, static_cast<int>(c.count),
                    type, op, c.comm);
      if (c.op == Op::avg) cuda::device_ops().scale_avg(c.recv, c.count, c.dtype, n);
    }
    return chosen;  // every kernel and copy finished on the core's stream; MPI's data is in place
  }
  thread_local Pinned staging;
  void* host = staging.get(bytes);
  cuda::to_host(host, c.send, bytes);
  Call staged = c;
  staged.send = host;
  staged.recv = host;
  algorithm(chosen).run(staged);
  cuda::to_device(c.recv, host, bytes);
  return chosen;
}

}  // namespace

const std::vector<AlgoPlugin>& algorithms() {
  static const std::vector<AlgoPlugin> table = {
      {Algo::mpi, "mpi", "MPI_Allreduce (the baseline)", allreduce_mpi},
      {Algo::ring, "ring", "pipelined ring reduce-scatter + allgather over point-to-point",
       allreduce_ring},
      {Algo::shm, "shm", "node-local shared-memory reduction, cache-sized rounds", allreduce_shm},
      {Algo::automatic, "auto", "per size and layout: shm within a node; across nodes mpi, or ring/hier from a set size",
       allreduce_auto},
      {Algo::ordered, "ordered", "every element folded in rank order: the same bits for any split, layout or run",
       allreduce_ordered},
      {Algo::hier, "hier", "node-aware: reduce-scatter in each node, a ring per local rank across nodes, allgather",
       allreduce_hier},
  };
  return table;
}

const AlgoPlugin& algorithm(Algo a) { return algorithms().at(static_cast<size_t>(a)); }

bool parse_algo(const std::string& s, Algo* out) {
  for (const auto& p : algorithms())
    if (s == p.name) {
      *out = p.id;
      return true;
    }
  return false;
}

Algo choose_algorithm(const Call& c) {
  // From benchmarks/results (docs/allreduce.md): on one node shm overtakes MPI_Allreduce from
  // about 2 KiB while each rank has a core (below, Open MPI's tuned small-message path is as
  // fast or faster); oversubscribed, shm's barriers cost a scheduler round trip and pay off from
  // 4 KiB. Across nodes MPI's own algorithms stay in charge unless MPIRT_AUTO_RING_MIN_BYTES
  // says from which size `ring` wins: the launcher sets it on the TCP tier, where Open MPI 4.1
  // picked an algorithm up to 2.9 times slower than `ring` for large buffers on 3 and 4 hosts;
  // with several ranks on every node, `hier` instead, whose node link carries 2(N-1)/N of the
  // buffer where the ring's carries 2(Nk-1)/(Nk): 1.26-1.38 times faster than `ring` from 1 to
  // 64 MiB on 2 namespace hosts of 2 ranks over 1 Gbit/s (docs/allreduce.md).
  static const size_t shm_min = env_bytes("MPIRT_AUTO_SHM_MIN_BYTES", 2048);
  static const size_t shm_min_oversubscribed = env_bytes("MPIRT_AUTO_SHM_MIN_BYTES_OVERSUBSCRIBED", 4096);
  const NodeLayout& L = node_layout(c.comm);
  const size_t bytes = c.count * dtype_size(c.dtype);
  if (L.node_count == 1 && L.local_size > 1 && bytes >= (L.oversubscribed ? shm_min_oversubscribed : shm_min))
    return Algo::shm;
  if (L.node_count > 1 && bytes >= auto_ring_min_bytes(c.comm))
    return L.local_size > 1 && L.uniform ? Algo::hier : Algo::ring;
  return Algo::mpi;
}

const NodeLayout& node_layout(MPI_Comm comm) { return comm_state(comm).layout; }

Algo allreduce(const Call& c, Algo algo, Device device, int device_index) {
  if (c.count > 0 && (c.send == nullptr || c.recv == nullptr))
    throw std::invalid_argument("allreduce got a null buffer");
  Algo chosen = algo == Algo::automatic ? choose_algorithm(c) : algo;
  if ((chosen == Algo::shm || chosen == Algo::hier) && !node_layout(c.comm).uniform)
    throw std::invalid_argument(std::string("algorithm ") + algorithm(chosen).name +
                                " needs the same number of ranks on every node; use ring, mpi or auto");
  if (c.count == 0) return chosen;
  if (device == Device::cuda) return run_on_device(c, chosen, device_index);
  algorithm(chosen).run(c);
  return chosen;
}

bool mpi_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#elif defined(MPICH_NUMVERSION) && MPICH_NUMVERSION >= 40000000
  int supported = 0;
  MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &supported);
  return supported != 0;
#else
  return false;
#endif
}

std::string mpi_library_version() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(buf, &len);
  std::string s(buf, static_cast<size_t>(len));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

const MemOps& host_ops() {
  static const MemOps ops = {
      [](void* d, const void* s, size_t b) {
        if (b) std::memcpy(d, s, b);
      },
      reduce_into, scale_avg};
  return ops;
}

}  // namespace mpirt
