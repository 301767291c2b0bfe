// Shared buffers: memory every local rank maps, so `shm` and `hier` can reduce straight from
// the other ranks' inputs into their outputs. A staged `shm` moves each byte through its
// segment, 4S of memory traffic per rank for S bytes where a memcpy moves 2S; here it is 2S.
// Also how the ranks agree, call by call, that every one of them passed one.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "comm_state.hpp"

namespace mpirt {
namespace {

bool same_buffers(const ShmCallDesc& a, const ShmCallDesc& b) {
  return a.send_id == b.send_id && a.send_off == b.send_off && a.recv_id == b.recv_id && a.recv_off == b.recv_off &&
         a.count == b.count;
}

}  // namespace

void* shared_alloc(MPI_Comm comm, size_t bytes) {
  CommState& st = comm_state(comm);
  // Every rank maps the others' parts at the offsets it uses in its own: the sizes must match.
  unsigned long long v[2] = {bytes, ~static_cast<unsigned long long>(bytes)};
  MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_UNSIGNED_LONG_LONG, MPI_MAX, st.node_comm);
  if (v[0] != ~v[1])
    throw std::invalid_argument("shared buffers differ in size between the ranks of a node (" + std::to_string(bytes) +
                                " bytes on this one); allocate the same size on every rank");
  SharedAlloc a;
  a.bytes = bytes;
  char* mine = nullptr;
  MPI_Info info;
  MPI_Info_create(&info);
  MPI_Info_set(info, "alloc_shared_noncontig", "true");  // each part on its own pages, near its rank
  const int err = MPI_Win_allocate_shared(static_cast<MPI_Aint>(std::max<size_t>(bytes, 64)), 1, info,
                                          st.node_comm, &mine, &a.win);
  MPI_Info_free(&info);
  if (err != MPI_SUCCESS)
    throw std::runtime_error("MPI_Win_allocate_shared failed for a " + std::to_string(bytes) +
                             "-byte shared buffer: is /dev/shm large enough?");
  a.part.resize(static_cast<size_t>(st.layout.local_size));
  for (int j = 0; j < st.layout.local_size; ++j) {
    MPI_Aint got;
    int disp;
    MPI_Win_shared_query(a.win, j, &got, &disp, &a.part[static_cast<size_t>(j)]);
  }
  a.id = ++st.shared_made;
  st.shared.push_back(std::move(a));
  return mine;
}

void shared_free(MPI_Comm comm, void* part) {
  CommState& st = comm_state(comm);
  const int r = st.layout.local_rank;
  auto it = std::find_if(st.shared.begin(), st.shared.end(), [&](const SharedAlloc& a) { return a.part[r] == part; });
  if (it == st.shared.end()) throw std::invalid_argument("shared_free: not a shared buffer of this communicator");
  MPI_Win_free(&it->win);
  st.shared.erase(it);
}

const SharedAlloc* shared_find(const CommState& st, const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  const size_t r = static_cast<size_t>(st.layout.local_rank);
  for (const SharedAlloc& a : st.shared)
    if (c >= a.part[r] && c + bytes <= a.part[r] + a.bytes) return &a;
  return nullptr;
}

std::optional<SharedCall> agree_shared(const Call& c, CommState& st, ShmSegment& seg, const char* algo) {
  const int n = st.layout.local_size, r = st.layout.local_rank;
  const size_t bytes = c.count * dtype_size(c.dtype);
  const SharedAlloc* in = shared_find(st, c.send, bytes);
  const SharedAlloc* out = shared_find(st, c.recv, bytes);
  const bool direct = in != nullptr && out != nullptr;
  const size_t in_off = direct ? static_cast<const char*>(c.send) - in->part[r] : 0;
  const size_t out_off = direct ? static_cast<char*>(c.recv) - out->part[r] : 0;
  seg.calls[r] = ShmCallDesc{direct ? in->id : 0, in_off, direct ? out->id : 0, out_off, c.count};
  seg.barrier->wait(n, seg.spin_limit);
  int differs = -1, shared = 0;
  for (int j = 0; j < n; ++j) {
    shared += seg.calls[j].send_id != 0;
    if (differs < 0 && !same_buffers(seg.calls[j], seg.calls[0])) differs = j;
  }
  if (shared == 0) return std::nullopt;
  if (differs >= 0) {
    seg.barrier->wait(n, seg.spin_limit);  // all have read the descriptions before any is rewritten
    throw std::invalid_argument(
        std::string(algo) + ": local ranks 0 and " + std::to_string(differs) +
        " passed different buffers (" +
        (shared < n ? "a shared buffer on some ranks and not on others" : "other shared buffers, offsets or counts") +
        "); pass every rank's shared buffer at the same offsets and count, or none");
  }
  return SharedCall{in, in_off, out, out_off};
}

}  // namespace mpirt
