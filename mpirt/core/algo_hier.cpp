// `hier`: for several ranks on each of several nodes, where the network is the bottleneck. The
// k ranks of a node reduce-scatter the buffer among themselves through `shm`'s shared segment,
// each allreduces what it holds with the same local rank of every other node around a `ring`,
// and the node allgathers the results through the segment again. A node's link then carries
// 2(N-1)/N of the buffer each way (N nodes), where a flat ring over all N·k ranks carries
// 2(Nk-1)/(Nk) of it across every node boundary it crosses: 1.5 against 1.0 buffer-lengths for
// 2 nodes of 2 ranks, 1.9 against 1.0 for 2 of 8. The node's k rings run side by side.
//
// Both node phases go in `shm`'s rounds, one barrier each: a round's staging is reused two
// rounds later, and every rank has passed the barrier between them only after it was done
// reading. Rank r keeps its reduced slice of every round, back to back, in a part of its own:
// the contiguous buffer its ring reduces. Where every local rank passes shared buffers (as for
// `shm`), each reads its slices straight from the others' inputs and writes its results into
// their outputs: nothing staged, one barrier at each end. The part, and so the ring between
// nodes, is the same either way.
#include <cstring>
#include <optional>
#include <vector>

#include "comm_state.hpp"

namespace mpirt {

void allreduce_hier(const Call& c) {
  CommState& st = comm_state(c.comm);
  const NodeLayout& L = st.layout;
  ShmSegment& seg = shm_segment(st);
  const int n = L.local_size, r = L.local_rank;
  const size_t es = dtype_size(c.dtype);
  const size_t block = seg.chunk_bytes / es;
  auto slices = [&](size_t off, int j) {  // byte offset of local rank j's slice in a round at `off`
    return Split(std::min(block, c.count - off), n).lo(j) * es;
  };
  auto length = [&](size_t off, int j) { return Split(std::min(block, c.count - off), n).len(j) * es; };
  const Op across = c.op == Op::avg ? Op::sum : c.op;  // divided once, by the whole world, below
  std::vector<char>& part = st.scratch;  // free here: the ring keeps its own on the cross-node state
  const size_t rounds = (c.count + block - 1) / block;  // each may give this rank one element over count/n
  part.resize(std::max(part.size(), (c.count / n + rounds) * es));
  thread_local std::vector<const void*> srcs;
  srcs.resize(n);
  const char* send = static_cast<const char*>(c.send);
  char* recv = static_cast<char*>(c.recv);
  const std::optional<SharedCall> shared = st.shared.empty() ? std::nullopt : agree_shared(c, st, seg, "hier");

  size_t held = 0;  // bytes of this rank's part so far
  int parity = 0;
  for (size_t off = 0; off < c.count; off += block, parity ^= 1) {  // reduce-scatter within the node
    const char* in = send + off * es;
    if (shared) {
      for (int j = 0; j < n; ++j) srcs[j] = shared->in->part[j] + shared->in_off + off * es + slices(off, r);
    } else {
      char* mine = seg.input(parity, r, n);
      for (int j = 0; j < n; ++j)
        if (j != r) std::memcpy(mine + slices(off, j), in + slices(off, j), length(off, j));
      seg.barrier->wait(n, seg.spin_limit);
      for (int j = 0; j < n; ++j) srcs[j] = (j == r ? in : seg.input(parity, j, n)) + slices(off, r);
    }
    const size_t bytes = length(off, r);
    reduce_n(part.data() + held, srcs.data(), n, bytes / es, c.dtype, across);
    held += bytes;
  }
  allreduce_ring(Call{part.data(), part.data(), held / es, c.dtype, across, st.cross_comm});
  if (c.op == Op::avg) {
    int world;
    MPI_Comm_size(c.comm, &world);
    scale_avg(part.data(), held / es, c.dtype, world);
  }
  held = 0;
  parity = 0;
  for (size_t off = 0; off < c.count; off += block, parity ^= 1) {  // allgather within the node
    const size_t bytes = length(off, r);
    if (shared) {
      for (int j = 0; j < n; ++j)
        std::memcpy(shared->out->part[j] + shared->out_off + off * es + slices(off, r), part.data() + held, bytes);
      held += bytes;
      continue;
    }
    char* result = seg.result(parity, n);
    std::memcpy(result + slices(off, r), part.data() + held, bytes);
    held += bytes;
    seg.barrier->wait(n, seg.spin_limit);
    char* out = recv + off * es;
    for (int j = 0; j < n; ++j) std::memcpy(out + slices(off, j), result + slices(off, j), length(off, j));
  }
  if (shared) seg.barrier->wait(n, seg.spin_limit);  // every result written everywhere before anyone returns
}

}  // namespace mpirt
