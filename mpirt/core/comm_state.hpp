// Per-communicator state (node layout, shared-memory segment, scratch), cached on the
// communicator as an MPI attribute so it lives exactly as long as the communicator does.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "allreduce.hpp"

namespace mpirt {

// A sense-reversing barrier in shared memory: spins briefly, then yields, so that ranks
// oversubscribed on fewer cores still make progress.
struct alignas(64) ShmBarrier {
  std::atomic<uint32_t> arrived;
  char pad0[60];
  std::atomic<uint32_t> generation;
  char pad1[60];
  void wait(int nranks, int spin_limit);
};

// What a local rank's `shm` call passed, published before its first barrier while shared
// buffers exist (below), so that every rank sees whether all of them can go direct.
struct alignas(64) ShmCallDesc {
  uint64_t send_id, send_off, recv_id, recv_off, count;  // id 0: not in a shared buffer
};

struct ShmSegment {
  MPI_Win win = MPI_WIN_NULL;
  ShmBarrier* barrier = nullptr;
  ShmCallDesc* calls = nullptr;  // one per local rank, after the barrier
  char* base = nullptr;      // first staging byte, after the barrier and the call descriptions
  size_t chunk_bytes = 0;    // staging bytes per rank per round
  int spin_limit = 0;        // pauses before yielding: none when ranks outnumber cores
  // Staging for round parity p: inputs of each local rank, then the reduced block.
  char* input(int parity, int local_rank, int local_size) const {
    return base + (static_cast<size_t>(parity) * (local_size + 1) + local_rank) * chunk_bytes;
  }
  char* result(int parity, int local_size) const { return input(parity, local_size, local_size); }
};

// How `shm` stages, chosen per rank by measurement (MPIRT_SHM_STORES=auto): with cached stores
// the other ranks read each staged line from the cache of the core that wrote it; with
// streaming (non-temporal) stores, from DRAM. The first is faster where the ranks share a cache,
// the second where moving a written line between their cores is slow. Each rank's choice is its
// own (the bytes staged are the same), so nothing needs to agree. Sizes are measured apart, by
// their power of two: a buffer in cache and one in DRAM favour different stores.
struct ShmStores {
  enum Policy { kAuto = 0, kCached = 1, kStreaming = 2 };
  static constexpr int kClasses = 12;  // 256 KiB, 512 KiB, ... 512 MiB and up
  struct Class {
    double recent[2][3] = {};  // seconds per byte of the last three calls: [0] cached, [1] streaming
    unsigned long long calls = 0;
    double cost(int streaming) const;  // their median: one slow call (a preempted rank) moves nothing
  };
  Class classes[kClasses];
  unsigned long long used = 0, streamed = 0, direct = 0;  // every `shm` call; those that streamed, went direct
  // For the next call of this size: cached twice, streaming twice (the first of each warms up and
  // is not counted), then the cheaper, and every 32nd call the other, whose figures then restart.
  bool pick(size_t bytes);
  void record(size_t bytes, bool streaming, double seconds_per_byte);
};

// A buffer the local ranks allocated together (shared_alloc): each maps every other's part,
// so `shm` reads the others' inputs and writes their results in place, with no staging.
struct SharedAlloc {
  MPI_Win win = MPI_WIN_NULL;
  uint64_t id = 0;           // the same on every local rank: allocations are collective
  size_t bytes = 0;          // each rank's part
  std::vector<char*> part;   // each local rank's part, mapped in this process
};

struct CommState {
  NodeLayout layout{};
  MPI_Comm node_comm = MPI_COMM_NULL;   // ranks sharing memory with this one
  MPI_Comm cross_comm = MPI_COMM_NULL;  // same local rank on every node
  MPI_Comm ring_comm = MPI_COMM_NULL;   // private duplicate: our messages never meet the user's
  ShmSegment shm;                       // allocated on first shm call
  std::vector<char> scratch;            // ring receive buffer, grown on demand
  size_t auto_ring_min = SIZE_MAX;      // MPIRT_AUTO_RING_MIN_BYTES, the same on every rank
  size_t ring_segment = 256 * 1024;     // MPIRT_RING_SEGMENT_BYTES, the same on every rank
  unsigned ring_wait_us = 0;            // MPIRT_RING_WAIT_US: 0 polls in MPI_Wait
  size_t shm_chunk = 0;                 // `shm` staging per rank per round (MPIRT_SHM_CHUNK, or by L3 size)
  int shm_policy = ShmStores::kAuto;    // MPIRT_SHM_STORES
  ShmStores shm_stores;
  std::vector<SharedAlloc> shared;      // live shared buffers, in allocation order
  uint64_t shared_made = 0;
};

CommState& comm_state(MPI_Comm comm);
// The CPUs the ranks of this node share: those online, capped by the smallest CPU quota up
// this process's cgroup tree (the container's, a pod's, a slice's). More ranks than these on
// any node makes a communicator's layout oversubscribed: the core's waits then yield.
long node_cpus();
// Frees every cached state (shared windows, private communicators) while MPI is fully up.
// Call it before MPI_Finalize: MPICH 4.0 hangs in MPI_Finalize when a shared window is freed
// from the attribute callback that otherwise cleans up there. Collective, in the same order
// on every rank; a no-op when nothing is cached.
void release_all();
// Collective over the node: allocates the shared segment the first time it is needed.
ShmSegment& shm_segment(CommState& st);

// Collective over the node of `comm`, the same `bytes` on every local rank: a buffer in shared
// memory that `shm` reduces without staging when every local rank passes its part at the same
// offsets (nccl-tests' registered buffers). Lives until shared_free or the communicator's end.
void* shared_alloc(MPI_Comm comm, size_t bytes);
// Collective over the node: frees what shared_alloc returned on this rank.
void shared_free(MPI_Comm comm, void* part);
// The shared buffer holding [p, p + bytes) on this rank, or nullptr.
const SharedAlloc* shared_find(const CommState& st, const void* p, size_t bytes);

// A call whose every local rank passed shared buffers, at the same offsets.
struct SharedCall {
  const SharedAlloc* in;
  size_t in_off;
  const SharedAlloc* out;
  size_t out_off;
};
// Collective over the node, for `shm` and `hier` while shared buffers exist (every local rank
// knows: they are made together): each rank publishes what it passed and waits for the others.
// All in shared buffers at the same offsets: the call, to run without staging. None: nullopt
// (staged, as always). Otherwise every rank throws the same error, decided from the same
// descriptions.
std::optional<SharedCall> agree_shared(const Call& c, CommState& st, ShmSegment& seg, const char* algo);

}  // namespace mpirt
