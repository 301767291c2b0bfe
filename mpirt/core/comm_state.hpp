// Per-communicator state (node layout, shared-memory segment, scratch), cached on the
// communicator as an MPI attribute so it lives exactly as long as the communicator does.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstdint>
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

struct ShmSegment {
  MPI_Win win = MPI_WIN_NULL;
  ShmBarrier* barrier = nullptr;
  char* base = nullptr;      // first staging byte, after the barrier
  size_t chunk_bytes = 0;    // staging bytes per rank per round
  int spin_limit = 0;        // pauses before yielding: none when ranks outnumber cores
  // Staging for round parity p: inputs of each local rank, then the reduced block.
  char* input(int parity, int local_rank, int local_size) const {
    return base + (static_cast<size_t>(parity) * (local_size + 1) + local_rank) * chunk_bytes;
  }
  char* result(int parity, int local_size) const { return input(parity, local_size, local_size); }
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
  size_t shm_chunk = 0;                 // `shm` staging per rank per round (MPIRT_SHM_CHUNK or by cache size)
};

CommState& comm_state(MPI_Comm comm);
// Frees every cached state (shared windows, private communicators) while MPI is fully up.
// Call it before MPI_Finalize: MPICH 4.0 hangs in MPI_Finalize when a shared window is freed
// from the attribute callback that otherwise cleans up there. Collective, in the same order
// on every rank; a no-op when nothing is cached.
void release_all();
// Collective over the node: allocates the shared segment the first time it is needed.
ShmSegment& shm_segment(CommState& st);

}  // namespace mpirt
