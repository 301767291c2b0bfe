// `shm`: ranks on a node exchange through one shared segment, in rounds small enough to
// stay in the shared cache. Per round each rank publishes the parts of its block that the
// others reduce, reduces its own 1/n slice (its own part read straight from its buffer) a
// tile at a time, copying each tile out while it is in L1, and copies the other reduced
// slices out: per rank one read and one write of the buffer in DRAM, like a memcpy. Two
// barriers per round; rounds alternate between two staging areas so the next round's publish
// never waits for readers of the last one.
// Within a node every element is folded in local rank order, so the result does not depend on
// the count or the rounds. Across nodes, each local rank allreduces its slice with the same
// local rank elsewhere.
// Where every local rank passes a shared buffer (shared_alloc) there is nothing to stage: each
// rank reduces its slice from all inputs and writes it into all outputs, between two barriers.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "comm_state.hpp"

namespace mpirt {
namespace {

constexpr size_t kStreamBytes = 8u << 20;
constexpr size_t kTileBytes = 16u << 10;
constexpr size_t kMeasuredBytes = 256u << 10;  // calls from this size choose their stores by measurement

void plain_copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

// memcpy with non-temporal stores where the ISA has them (SSE2 on x86-64).
void stream_copy(void* dst_v, const void* src_v, size_t bytes) {
#if defined(__SSE2__)
  char* dst = static_cast<char*>(dst_v);
  const char* src = static_cast<const char*>(src_v);
  const size_t head = std::min(bytes, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 64 <= bytes; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  std::memcpy(dst + i, src + i, bytes - i);
#else
  std::memcpy(dst_v, src_v, bytes);
#endif
}

void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
}

// Every input read once, every output written once, by the rank whose slice it is: 2S of
// memory traffic per rank, as a memcpy. Large outputs are written with streaming stores
// except a rank's own in place, which its reduction has just read into the cache.
void run_direct(const Call& c, CommState& st, ShmSegment& seg, const SharedCall& shared) {
  const SharedAlloc &in = *shared.in, &out = *shared.out;
  const size_t in_off = shared.in_off, out_off = shared.out_off;
  const int n = st.layout.local_size, r = st.layout.local_rank;
  int world;
  MPI_Comm_size(c.comm, &world);
  const size_t es = dtype_size(c.dtype);
  const bool big = c.count * es >= kStreamBytes, in_place = c.send == c.recv;
  const bool cross = st.layout.node_count > 1;
  thread_local std::vector<const void*> srcs;
  srcs.resize(n);
  thread_local std::vector<char> tile_buf(kTileBytes);
  // Within a node: one round, a tile at a time, each written out while it is in L1. Across
  // nodes: in the staged rounds, each rank's slice of a round reduced whole and allreduced with
  // the same local rank elsewhere, so that the calls between nodes are the same whether or not
  // the other nodes' ranks passed shared buffers.
  const size_t block = cross ? seg.chunk_bytes / es : c.count;
  char* sum = tile_buf.data();
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op op = MPI_OP_NULL;
  if (cross) {
    st.scratch.resize(std::max(st.scratch.size(), seg.chunk_bytes));
    sum = st.scratch.data();
    mpi_type_op(c.dtype, c.op, &type, &op);
  }
  for (size_t off = 0; off < c.count; off += block) {
    const Split sl(std::min(block, c.count - off), n);
    const size_t lo = (off + sl.lo(r)) * es, bytes = sl.len(r) * es;
    const size_t tile = cross ? bytes : kTileBytes / es * es;
    for (size_t t = 0; t < bytes; t += tile) {
      const size_t tb = std::min(tile, bytes - t);
      for (int j = 0; j < n; ++j) srcs[j] = in.part[j] + in_off + lo + t;  // local rank order, as staged
      reduce_n(sum, srcs.data(), n, tb / es, c.dtype, c.op);
      if (cross) MPI_Allreduce(MPI_IN_PLACE, sum, static_cast<int>(tb / es), type, op, st.cross_comm);
      if (c.op == Op::avg) scale_avg(sum, tb / es, c.dtype, world);
      for (int j = 0; j < n; ++j)
        (big && !(in_place && j == r) ? stream_copy : plain_copy)(out.part[j] + out_off + lo + t, sum, tb);
    }
  }
  if (big) stream_fence();
  seg.barrier->wait(n, seg.spin_limit);  // every slice written everywhere before anyone returns
}

}  // namespace

void allreduce_shm(const Call& c) {
  CommState& st = comm_state(c.comm);
  const NodeLayout& L = st.layout;
  ShmSegment& seg = shm_segment(st);
  if (!st.shared.empty()) {
    if (const auto shared = agree_shared(c, st, seg, "shm")) {
      run_direct(c, st, seg, *shared);
      ++st.shm_stores.used;
      ++st.shm_stores.direct;
      return;
    }
  }
  const int n = L.local_size, r = L.local_rank;
  int world;
  MPI_Comm_size(c.comm, &world);
  const size_t es = dtype_size(c.dtype);
  const size_t block = seg.chunk_bytes / es;
  const bool cross = L.node_count > 1;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op op = MPI_OP_NULL;
  if (cross) mpi_type_op(c.dtype, c.op, &type, &op);

  thread_local std::vector<const void*> srcs;
  srcs.resize(n);
  const char* send = static_cast<const char*>(c.send);
  char* recv = static_cast<char*>(c.recv);
  // Large outputs bypass the cache on the way out: no read-for-ownership of the destination.
  // In place the output is the input this round just read, still cached: plain stores (16 MiB
  // in place here: 11.1-12.4 GB/s against 7.8-8.4 streaming).
  const auto copy_out = c.count * es >= kStreamBytes && c.send != c.recv ? stream_copy : plain_copy;
  // Staging with streaming stores: the others then read it from DRAM, not from this core's cache.
  const bool measured = st.shm_policy == ShmStores::kAuto && !cross && c.count * es >= kMeasuredBytes;
  const bool streaming =
      st.shm_policy == ShmStores::kStreaming || (measured && st.shm_stores.pick(c.count * es));
  const auto stage = streaming ? stream_copy : plain_copy;
  thread_local std::vector<char> tile_buf(kTileBytes);
  const auto t0 = measured ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  int parity = 0;
  for (size_t off = 0; off < c.count; off += block, parity ^= 1) {
    const size_t m = std::min(block, c.count - off);
    const Split sl(m, n);
    auto lo = [&](int j) { return sl.lo(j) * es; };  // bytes
    const char* in = send + off * es;
    char* out = recv + off * es;
    char* mine = seg.input(parity, r, n);
    for (int j = 0; j < n; ++j)
      if (j != r) stage(mine + lo(j), in + lo(j), lo(j + 1) - lo(j));
    if (streaming) stream_fence();
    seg.barrier->wait(n, seg.spin_limit);

    const size_t bytes = lo(r + 1) - lo(r);
    // Within a node the slice goes a tile at a time, so its own copy out reads the tile from L1.
    const size_t tile = cross ? bytes : kTileBytes / es * es;
    for (size_t t = 0; t < bytes; t += tile) {
      const size_t tb = std::min(tile, bytes - t);
      // in local rank order, own part straight from its buffer: every element is folded in
      // the same order whichever slice it falls in (`ordered` relies on it within a node)
      for (int j = 0; j < n; ++j) srcs[j] = (j == r ? in : seg.input(parity, j, n)) + lo(r) + t;
      char* res = seg.result(parity, n) + lo(r) + t;
      char* sum = streaming && !cross ? tile_buf.data() : res;
      reduce_n(sum, srcs.data(), n, tb / es, c.dtype, c.op);
      if (cross) MPI_Allreduce(MPI_IN_PLACE, sum, static_cast<int>(tb / es), type, op, st.cross_comm);
      if (c.op == Op::avg) scale_avg(sum, tb / es, c.dtype, world);
      if (sum != res) stream_copy(res, sum, tb);
      copy_out(out + lo(r) + t, sum, tb);
    }
    if (streaming) stream_fence();
    seg.barrier->wait(n, seg.spin_limit);
    const char* result = seg.result(parity, n);
    for (int j = 0; j < n; ++j)
      if (j != r) copy_out(out + lo(j), result + lo(j), lo(j + 1) - lo(j));
  }
  stream_fence();
  ++st.shm_stores.used;
  st.shm_stores.streamed += streaming;
  if (measured) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.shm_stores.record(c.count * es, streaming, seconds / static_cast<double>(c.count * es));
  }
}

}  // namespace mpirt
