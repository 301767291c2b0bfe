// `ordered`: every element is reduced in rank order, 0 to n-1, as one left fold (16-bit
// floats in fp32, rounded once), whatever the count, its split into calls or blocks, the
// node layout or the run: the same bits as a serial fold over the ranks' buffers. Other
// algorithms add in an order that depends on where an element falls in its chunk (ring,
// shm) or on the MPI's choice, so fusing gradients into other buckets changes the result.
// On one node that is `shm`, which folds in rank order too. Across nodes, per block each rank
// gathers its slice from every rank (all-to-all), folds the slices in rank order and shares
// its result (allgather): 2(n-1)/n of the buffer moved, like ring.
#include <algorithm>
#include <cstring>
#include <vector>

#include "comm_state.hpp"

namespace mpirt {
namespace {

constexpr size_t kBlockBytes = 4u << 20;

}  // namespace

void allreduce_ordered(const Call& c) {
  CommState& st = comm_state(c.comm);
  int n, r;
  MPI_Comm_size(c.comm, &n);
  MPI_Comm_rank(c.comm, &r);
  const size_t es = dtype_size(c.dtype);
  const char* in = static_cast<const char*>(c.send);
  char* out = static_cast<char*>(c.recv);
  if (n == 1) {
    if (out != in) std::memcpy(out, in, c.count * es);
    return;
  }
  if (st.layout.node_count == 1) return allreduce_shm(c);  // local ranks are these ranks, in order
  const size_t block = std::max<size_t>(n, kBlockBytes / es);
  const size_t slice = block / n + 1;
  st.scratch.resize(std::max(st.scratch.size(), (n + 1) * slice * es));
  char* gathered = st.scratch.data();    // n slices, one from each rank, in rank order
  char* folded = gathered + n * slice * es;
  thread_local std::vector<int> scount, sdispl, rcount, rdispl;
  thread_local std::vector<const void*> srcs;
  scount.resize(n), sdispl.resize(n), rcount.resize(n), rdispl.resize(n), srcs.resize(n);
  for (size_t off = 0; off < c.count; off += block) {
    const Split sl(std::min(block, c.count - off), n);
    const size_t mine = sl.len(r);
    for (int j = 0; j < n; ++j) {
      scount[j] = static_cast<int>(sl.len(j) * es);
      sdispl[j] = static_cast<int>(sl.lo(j) * es);
      rcount[j] = static_cast<int>(mine * es);
      rdispl[j] = static_cast<int>(j * mine * es);
      srcs[j] = gathered + rdispl[j];
    }
    MPI_Alltoallv(in + off * es, scount.data(), sdispl.data(), MPI_BYTE, gathered, rcount.data(), rdispl.data(),
                  MPI_BYTE, st.ring_comm);
    if (mine > 0) {
      reduce_n(folded, srcs.data(), n, mine, c.dtype, c.op);
      if (c.op == Op::avg) scale_avg(folded, mine, c.dtype, n);
    }
    // what each rank folded lands where its slice lies in the block
    MPI_Allgatherv(folded, static_cast<int>(mine * es), MPI_BYTE, out + off * es, scount.data(), sdispl.data(),
                   MPI_BYTE, st.ring_comm);
  }
}

}  // namespace mpirt
