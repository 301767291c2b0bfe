// The core allreduce: one entry point, a table of algorithm plug-ins behind it.
//
// Each plug-in sees host memory only; device buffers are handled in allreduce.cpp, which
// hands CUDA pointers straight to a CUDA-aware MPI or stages them through pinned memory.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "dtype.hpp"

namespace mpirt {

enum class Algo : int { mpi = 0, ring = 1, shm = 2, automatic = 3, ordered = 4, hier = 5 };
enum class Device : int { cpu = 0, cuda = 1 };

struct Call {
  const void* send;  // equal to recv for in-place
  void* recv;
  size_t count;
  DType dtype;
  Op op;
  MPI_Comm comm;
};

// How `count` elements split into n parts: part j starts at lo(j), and the first count % n
// parts are one element longer. The ring's chunks; `shm`'s, `hier`'s and `ordered`'s slices.
struct Split {
  size_t base, rem;
  Split(size_t count, int n) : base(count / n), rem(count % n) {}
  size_t lo(int j) const { return j * base + std::min<size_t>(j, rem); }
  size_t len(int j) const { return lo(j + 1) - lo(j); }
};

// One algorithm: run() must leave the full reduction (avg already divided) in call.recv.
struct AlgoPlugin {
  Algo id;
  const char* name;
  const char* summary;
  void (*run)(const Call& call);
};

const std::vector<AlgoPlugin>& algorithms();  // mpi, ring, shm, auto, ordered, hier (in that order)
const AlgoPlugin& algorithm(Algo a);
bool parse_algo(const std::string& s, Algo* out);

// What `auto` resolves to for this call: decided from size, world and node layout only,
// so every rank makes the same choice without communicating.
Algo choose_algorithm(const Call& call);

// Runs one allreduce (MPI initialised, not finalised) and returns the algorithm that actually
// ran (auto resolved).
// Throws std::invalid_argument / std::runtime_error with a message meant for users.
// CUDA buffers live on `device_index`, which the call makes this thread's current device (each
// thread has its own, device 0 at first: a communication thread would otherwise launch kernels
// and stage on device 0, and own a context there); -1: the thread's current device.
Algo allreduce(const Call& call, Algo algo, Device device, int device_index = -1);

// Plug-in entry points (one file each).
void allreduce_mpi(const Call& call);
void allreduce_ring(const Call& call);
void allreduce_shm(const Call& call);
void allreduce_ordered(const Call& call);
void allreduce_hier(const Call& call);

// Node layout of a communicator, computed once per communicator and cached on it.
struct NodeLayout {
  int local_rank, local_size, node_count;
  bool uniform;         // every node holds local_size ranks
  bool oversubscribed;  // on some node more ranks than CPUs (online, within a cgroup quota)
};
const NodeLayout& node_layout(MPI_Comm comm);
// From which buffer size `auto` runs `ring` across nodes (MPIRT_AUTO_RING_MIN_BYTES; SIZE_MAX,
// never, when unset or "off"), agreed by every rank of the communicator when its state is made.
size_t auto_ring_min_bytes(MPI_Comm comm);

// MPI datatype for (dtype, op), creating the user op 16-bit floats need; plain MPI otherwise.
void mpi_type_op(DType t, Op o, MPI_Datatype* type, MPI_Op* op);

// Whether this MPI can take CUDA device pointers (MPIX_Query_cuda_support or equivalent).
bool mpi_cuda_aware();
std::string mpi_library_version();

}  // namespace mpirt
