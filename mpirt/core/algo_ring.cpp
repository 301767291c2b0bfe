// `ring`: reduce-scatter then allgather around a ring of ranks, each step's chunk split into
// segments (MPIRT_RING_SEGMENT_BYTES, 256 KiB unless set) that are all in flight at once so
// the reduction of one segment overlaps the transfer of the next. Moves 2(n-1)/n of the
// buffer per rank: bandwidth-optimal. With MPIRT_RING_WAIT_US it waits by testing and
// sleeping instead of polling inside MPI, leaving the core to the training thread and the
// kernel's network work while a slow link drains (the socket buffers keep it busy meanwhile).
#include <time.h>

#include <algorithm>
#include <vector>

#include "comm_state.hpp"
#include "memops.hpp"

namespace mpirt {
namespace {

void post_segments(char* buf, size_t bytes, size_t seg, int peer, MPI_Comm comm, bool recv,
                   std::vector<MPI_Request>& reqs) {
  for (size_t off = 0; off < bytes; off += seg) {
    const int n = static_cast<int>(std::min(seg, bytes - off));
    reqs.emplace_back();
    if (recv)
      MPI_Irecv(buf + off, n, MPI_BYTE, peer, 0, comm, &reqs.back());
    else
      MPI_Isend(buf + off, n, MPI_BYTE, peer, 0, comm, &reqs.back());
  }
}

// MPI_Waitall, or with `sleep_us` a test every `sleep_us` microseconds.
void wait_all(int n, MPI_Request* reqs, unsigned sleep_us) {
  if (sleep_us == 0) {
    MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE);
    return;
  }
  const timespec pause{0, static_cast<long>(sleep_us) * 1000};
  for (int done = 0;;) {
    MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
    if (done) return;
    nanosleep(&pause, nullptr);
  }
}

}  // namespace

// `scratch` holds one chunk: at least ring_scratch_bytes(call) bytes, in the buffers' memory.
void allreduce_ring_with(const Call& c, const MemOps& mem, char* scratch) {
  CommState& st = comm_state(c.comm);
  int n, r;
  MPI_Comm_size(c.comm, &n);
  MPI_Comm_rank(c.comm, &r);
  const size_t es = dtype_size(c.dtype);
  char* out = static_cast<char*>(c.recv);
  if (c.send != c.recv) mem.copy(out, c.send, c.count * es);
  if (n == 1) return;

  const Split ch(c.count, n);
  const size_t seg = std::max(es, st.ring_segment / es * es);
  const int right = (r + 1) % n, left = (r + n - 1) % n;
  std::vector<MPI_Request> sends, recvs;

  for (int s = 0; s < n - 1; ++s) {  // reduce-scatter
    const int si = (r - s + n) % n, ri = (r - s - 1 + n) % n;
    sends.clear();
    recvs.clear();
    post_segments(scratch, ch.len(ri) * es, seg, left, st.ring_comm, true, recvs);
    post_segments(out + ch.lo(si) * es, ch.len(si) * es, seg, right, st.ring_comm, false, sends);
    for (size_t k = 0; k < recvs.size(); ++k) {
      wait_all(1, &recvs[k], st.ring_wait_us);
      const size_t off = k * seg;
      const size_t elems = std::min(seg, ch.len(ri) * es - off) / es;
      mem.reduce_into(out + ch.lo(ri) * es + off, scratch + off, elems, c.dtype, c.op);
    }
    wait_all(static_cast<int>(sends.size()), sends.data(), st.ring_wait_us);
  }
  const int owned = (r + 1) % n;
  if (c.op == Op::avg) mem.scale_avg(out + ch.lo(owned) * es, ch.len(owned), c.dtype, n);

  for (int s = 0; s < n - 1; ++s) {  // allgather
    const int si = (r + 1 - s + n) % n, ri = (r - s + n) % n;
    sends.clear();  // receives and sends alike: nothing to do between them
    post_segments(out + ch.lo(ri) * es, ch.len(ri) * es, seg, left, st.ring_comm, true, sends);
    post_segments(out + ch.lo(si) * es, ch.len(si) * es, seg, right, st.ring_comm, false, sends);
    wait_all(static_cast<int>(sends.size()), sends.data(), st.ring_wait_us);
  }
}

size_t ring_scratch_bytes(const Call& c) {
  int n;
  MPI_Comm_size(c.comm, &n);
  return (c.count / n + 1) * dtype_size(c.dtype);
}

void allreduce_ring(const Call& c) {
  std::vector<char>& scratch = comm_state(c.comm).scratch;
  scratch.resize(std::max(scratch.size(), ring_scratch_bytes(c)));
  allreduce_ring_with(c, host_ops(), scratch.data());
}

}  // namespace mpirt
