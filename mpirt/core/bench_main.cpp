// mpirt-allreduce-perf: the nccl-tests-style timing harness over every core algorithm.
//
// Results are data first (JSON/CSV carry every figure); the table on rank 0 is a view.
// Per size, algorithm and mode: each iteration is timed alone after a barrier (excluded,
// as in OSU), time avg/min/max are across ranks of each rank's mean, p50/p99 are over
// iterations of the slowest rank's time, algbw = bytes/avg, busbw = algbw * 2(n-1)/n.
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "allreduce.hpp"
#include "comm_state.hpp"
#include "bench_options.hpp"
#include "bench_watchdog.hpp"
#include "memops.hpp"

#ifndef MPIRT_VERSION
#define MPIRT_VERSION "0.0.0"
#endif

namespace mpirt {
namespace {

struct Stats {
  double avg = 0, min = 0, max = 0, p50 = 0, p99 = 0;  // seconds
};

struct Row {
  size_t bytes, count;
  std::string algo, algo_used;  // algo_used: what `auto` resolved to
  Mode mode;
  int iters, warmup;
  Stats t;
  double algbw, busbw;
  long long wrong;  // -1: not checked
  double streamed = -1;  // share of timed `shm` calls that staged with streaming stores; -1: no `shm` call
  double direct = -1;    // share of them that reduced shared buffers without staging
};

struct World {
  MPI_Comm comm = MPI_COMM_WORLD;
  int rank = 0, size = 1;
  NodeLayout layout{};
};

// Seeded integer-valued inputs: sums stay exact in every dtype up to 64 ranks, so a check
// can demand bit-exact results (avg aside), as nccl-tests' verifiable inputs do.
double input_value(int rank, size_t i, int seed) {
  return static_cast<double>(static_cast<long long>((i * 7 + static_cast<size_t>(rank) * 13 +
                                                     static_cast<size_t>(seed) * 5) % 9)) - 4.0;
}

void store(void* buf, size_t i, DType t, double v) {
  switch (t) {
    case DType::f32: static_cast<float*>(buf)[i] = static_cast<float>(v); break;
    case DType::f64: static_cast<double*>(buf)[i] = v; break;
    case DType::f16: static_cast<uint16_t*>(buf)[i] = float_to_half(static_cast<float>(v)); break;
    case DType::bf16: static_cast<uint16_t*>(buf)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::i32: static_cast<int32_t*>(buf)[i] = static_cast<int32_t>(v); break;
  }
}

double load(const void* buf, size_t i, DType t) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(buf)[i];
    case DType::f64: return static_cast<const double*>(buf)[i];
    case DType::f16: return half_to_float(static_cast<const uint16_t*>(buf)[i]);
    case DType::bf16: return bf16_to_float(static_cast<const uint16_t*>(buf)[i]);
    case DType::i32: return static_cast<const int32_t*>(buf)[i];
  }
  return 0;
}

double expected_value(size_t i, int seed, int nranks, DType t, Op o) {
  double acc = input_value(0, i, seed);
  for (int r = 1; r < nranks; ++r) {
    const double v = input_value(r, i, seed);
    acc = o == Op::min ? std::min(acc, v) : o == Op::max ? std::max(acc, v) : acc + v;
  }
  if (o != Op::avg) return acc;
  return t == DType::i32 ? std::trunc(acc / nranks) : acc / nranks;
}

double tolerance(DType t, Op o, double expected) {
  if (o != Op::avg || t == DType::i32) return 0.0;  // exact
  const double eps = t == DType::f64 ? 2.2e-16 : t == DType::f32 ? 1.2e-7 : t == DType::f16 ? 9.8e-4 : 7.9e-3;
  return 2 * eps * std::max(1.0, std::fabs(expected));  // 2 ulp, as nccl-tests allows for avg
}

struct Buffers {
  Device dev;
  size_t bytes;
  MPI_Comm shared_comm;  // MPI_COMM_NULL: private buffers
  void* send = nullptr;
  void* recv = nullptr;
  std::vector<char> host;  // host image for filling and checking device buffers

  Buffers(Device d, size_t b, MPI_Comm shared) : dev(d), bytes(b), shared_comm(shared) {
    if (dev == Device::cuda) {
      send = cuda::alloc_device(bytes);
      recv = cuda::alloc_device(bytes);
    } else if (shared_comm != MPI_COMM_NULL) {
      send = shared_alloc(shared_comm, bytes);
      recv = shared_alloc(shared_comm, bytes);
    } else {
      if (posix_memalign(&send, 4096, bytes ? bytes : 1) || posix_memalign(&recv, 4096, bytes ? bytes : 1))
        throw std::runtime_error("out of memory allocating " + std::to_string(bytes) + "-byte buffers; lower -e");
    }
    host.resize(bytes);
  }
  ~Buffers() {
    if (dev == Device::cuda) {
      cuda::free_device(send);
      cuda::free_device(recv);
    } else if (shared_comm != MPI_COMM_NULL) {
      shared_free(shared_comm, recv);
      shared_free(shared_comm, send);
    } else {
      std::free(send);
      std::free(recv);
    }
  }
  void fill(void* dst, int rank, size_t count, DType t, int seed) {
    for (size_t i = 0; i < count; ++i) store(host.data(), i, t, input_value(rank, i, seed));
    upload(dst, count * dtype_size(t));
  }
  void upload(void* dst, size_t n) {
    if (dev == Device::cuda) cuda::to_device(dst, host.data(), n);
    else std::memcpy(dst, host.data(), n);
  }
  const void* download(const void* src, size_t n) {
    if (dev != Device::cuda) return src;
    cuda::to_host(host.data(), src, n);
    return host.data();
  }
};

Stats reduce_times(const World& w, std::vector<double>& times) {
  Stats s;
  double mean = 0;
  for (double t : times) mean += t;
  mean /= static_cast<double>(times.size());
  double v[3] = {mean, mean, -mean};
  MPI_Allreduce(MPI_IN_PLACE, v, 1, MPI_DOUBLE, MPI_SUM, w.comm);
  MPI_Allreduce(MPI_IN_PLACE, v + 1, 2, MPI_DOUBLE, MPI_MIN, w.comm);
  s.avg = v[0] / w.size;
  s.min = v[1];
  s.max = -v[2];
  MPI_Allreduce(MPI_IN_PLACE, times.data(), static_cast<int>(times.size()), MPI_DOUBLE, MPI_MAX, w.comm);
  std::sort(times.begin(), times.end());
  auto pct = [&](double p) {  // nearest rank
    size_t k = static_cast<size_t>(std::ceil(p / 100.0 * times.size()));
    return times[std::min(times.size() - 1, k > 0 ? k - 1 : 0)];
  };
  s.p50 = pct(50);
  s.p99 = pct(99);
  return s;
}

// How far apart the cores of local ranks 0 and 1 are: the round trip of one cache line between
// them, in ns (-1: fewer than two ranks on a node, or more ranks than cores). `shm` moves its
// data the same way, so where a VM or the scheduler puts the ranks shows in its figures (here:
// about 55 ns on cores that share an L3, about 330 on cores that do not). Collective.
double core_round_trip_ns(const World& w) {
  const CommState& st = comm_state(w.comm);  // its node communicator and layout
  const MPI_Comm node = st.node_comm;
  const int local_rank = st.layout.local_rank;
  double ns = -1;
  if (st.layout.local_size >= 2 && !st.layout.oversubscribed) {
    MPI_Win win;
    std::atomic<int>* flag = nullptr;
    void* mine = nullptr;
    MPI_Win_allocate_shared(local_rank == 0 ? 64 : 0, 1, MPI_INFO_NULL, node, &mine, &win);
    MPI_Aint size;
    int disp;
    MPI_Win_shared_query(win, 0, &size, &disp, &flag);
    if (local_rank == 0) new (flag) std::atomic<int>(0);
    MPI_Barrier(node);
    constexpr int kWarm = 1000, kTrips = 20000;
    if (local_rank < 2) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kWarm + kTrips; ++i) {
        if (i == kWarm) t0 = std::chrono::steady_clock::now();
        if (local_rank == 0) {
          flag->store(2 * i + 1, std::memory_order_release);
          while (flag->load(std::memory_order_acquire) != 2 * i + 2) {}
        } else {
          while (flag->load(std::memory_order_acquire) != 2 * i + 1) {}
          flag->store(2 * i + 2, std::memory_order_release);
        }
      }
      ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / kTrips;
    }
    MPI_Barrier(node);
    MPI_Win_free(&win);
  }
  MPI_Bcast(&ns, 1, MPI_DOUBLE, 0, w.comm);
  return ns;
}

class Bench {
 public:
  Bench(const BenchOptions& o, const World& w, const std::vector<std::string>& argv)
      : o_(o), w_(w), argv_(argv), watch_(o.timeout, w.rank) {}

  int run();

 private:
  Row measure(Buffers& b, size_t bytes, Algo algo, Mode mode);
  Row measure_memcpy(Buffers& b, size_t bytes);
  long long check(Buffers& b, size_t count, Algo algo, Mode mode);
  void print_header() const;
  void print_row(const Row& oop, const Row* ip) const;
  void write_json(const std::map<std::string, double>& avg_busbw, long long wrong, bool passed,
                  const std::vector<std::string>& failures) const;
  void write_csv() const;

  const BenchOptions& o_;
  World w_;
  std::vector<std::string> argv_;
  std::vector<Row> rows_, memcpy_rows_;
  std::string timestamp_;
  double round_trip_ns_[2] = {-1, -1};  // core_round_trip_ns before and after the sweep
  Watchdog watch_;
};

Row Bench::measure(Buffers& b, size_t bytes, Algo algo, Mode mode) {
  const size_t count = bytes / dtype_size(o_.dtype);
  Row row{bytes, count, algorithm(algo).name, "", mode, iters_for(o_, bytes), warmup_for(o_, bytes), {}, 0, 0, -1};
  b.fill(b.send, w_.rank, count, o_.dtype, 0);
  if (mode == Mode::in_place) b.fill(b.recv, w_.rank, count, o_.dtype, 0);
  watch_.tick();
  Call call{mode == Mode::in_place ? b.recv : b.send, b.recv, count, o_.dtype, o_.op, w_.comm};
  Algo used = algo;
  for (int i = 0; i < row.warmup; ++i) {
    used = allreduce(call, algo, o_.device);
    watch_.tick();
  }
  std::vector<double> times(static_cast<size_t>(row.iters));
  const ShmStores& stores = comm_state(w_.comm).shm_stores;
  double chose[3] = {-static_cast<double>(stores.used), -static_cast<double>(stores.streamed),
                     -static_cast<double>(stores.direct)};
  for (int i = 0; i < row.iters; ++i) {
    MPI_Barrier(w_.comm);
    const double t0 = MPI_Wtime();
    used = allreduce(call, algo, o_.device);
    times[static_cast<size_t>(i)] = MPI_Wtime() - t0;
    watch_.tick();
  }
  row.algo_used = algorithm(used).name;
  chose[0] += static_cast<double>(stores.used);
  chose[1] += static_cast<double>(stores.streamed);
  chose[2] += static_cast<double>(stores.direct);
  MPI_Allreduce(MPI_IN_PLACE, chose, 3, MPI_DOUBLE, MPI_SUM, w_.comm);
  if (chose[0] > 0) {
    row.streamed = chose[1] / chose[0];
    row.direct = chose[2] / chose[0];
  }
  row.t = reduce_times(w_, times);
  row.algbw = static_cast<double>(bytes) / 1e9 / row.t.avg;
  row.busbw = row.algbw * 2.0 * (w_.size - 1) / w_.size;
  if (o_.check > 0) row.wrong = check(b, count, algo, mode);
  return row;
}

long long Bench::check(Buffers& b, size_t count, Algo algo, Mode mode) {
  long long wrong = 0;
  for (int c = 0; c < o_.check; ++c) {
    const int seed = c + 1;
    b.fill(mode == Mode::in_place ? b.recv : b.send, w_.rank, count, o_.dtype, seed);
    Call call{mode == Mode::in_place ? b.recv : b.send, b.recv, count, o_.dtype, o_.op, w_.comm};
    allreduce(call, algo, o_.device);
    watch_.tick();
    const void* got = b.download(b.recv, count * dtype_size(o_.dtype));
    if (o_.corrupt && w_.rank == 0 && count > 0) {
      b.host.assign(static_cast<const char*>(got), static_cast<const char*>(got) + count * dtype_size(o_.dtype));
      store(b.host.data(), 0, o_.dtype, load(b.host.data(), 0, o_.dtype) + 100);
      got = b.host.data();
    }
    for (size_t i = 0; i < count; ++i) {
      if ((i & 0xfffff) == 0) watch_.tick();  // local work between calls, not a wait: not a hang
      const double want = expected_value(i, seed, w_.size, o_.dtype, o_.op);
      const double have = load(got, i, o_.dtype);
      if (!(std::fabs(have - want) <= tolerance(o_.dtype, o_.op, want))) ++wrong;
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG_LONG, MPI_SUM, w_.comm);
  return wrong;
}

Row Bench::measure_memcpy(Buffers& b, size_t bytes) {
  Row row{bytes, bytes / dtype_size(o_.dtype), "memcpy", "memcpy", Mode::out_of_place,
          iters_for(o_, bytes), warmup_for(o_, bytes), {}, 0, 0, -1};
  const MemOps& mem = o_.device == Device::cuda ? cuda::device_ops() : host_ops();
  // Real data: untouched pages all map the kernel's one zero page, which stays in cache and
  // would make the copy (and so the bound) look faster than DRAM allows.
  b.fill(b.send, w_.rank, row.count, o_.dtype, 0);
  for (int i = 0; i < row.warmup; ++i) {
    mem.copy(b.recv, b.send, bytes);
    watch_.tick();
  }
  std::vector<double> times(static_cast<size_t>(row.iters));
  for (int i = 0; i < row.iters; ++i) {
    MPI_Barrier(w_.comm);  // every rank copies at once: the bandwidth each gets when all are busy
    const double t0 = MPI_Wtime();
    mem.copy(b.recv, b.send, bytes);
    if (o_.device == Device::cuda) cuda::synchronize();
    times[static_cast<size_t>(i)] = MPI_Wtime() - t0;
    watch_.tick();
  }
  row.t = reduce_times(w_, times);
  row.algbw = static_cast<double>(bytes) / 1e9 / row.t.avg;
  row.busbw = row.algbw;
  return row;
}

std::string fmt_num(double v, int width) {
  char buf[32];
  for (int prec = 2; prec >= 0; --prec) {
    std::snprintf(buf, sizeof buf, "%.*f", prec, v);
    if (static_cast<int>(std::strlen(buf)) <= width) return buf;
  }
  std::snprintf(buf, sizeof buf, "%.0e", v);
  return buf;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string staging_note(Device d) {
  if (d != Device::cuda) return "none (host buffers)";
  return mpi_cuda_aware() ? "none: device buffers go to the CUDA-aware MPI (mpi, ring)"
                          : "pinned host memory (this MPI is not CUDA-aware)";
}

void Bench::print_header() const {
  std::printf("# mpirt-allreduce-perf %s\n", MPIRT_VERSION);
  std::printf("# Collective test starting: allreduce\n");
  std::printf("# MPI: %s\n", first_line(mpi_library_version()).c_str());
  std::printf("# CUDA-aware MPI: %s | core built with CUDA: %s | device: %s\n", mpi_cuda_aware() ? "yes" : "no",
              cuda::built() ? "yes" : "no",
              o_.device == Device::cuda ? ("cuda (" + cuda::describe() + ")").c_str() : "cpu");
  std::printf("# staging: %s\n", staging_note(o_.device).c_str());
  if (o_.shared_buffers) std::printf("# buffers: shared by the ranks of a node (-R): shm reduces them in place\n");
  std::printf("# world size %d on %d node(s), %d rank(s) and %ld CPU(s) on this node%s | dtype %s | op %s | check %d\n",
              w_.size, w_.layout.node_count, w_.layout.local_size, node_cpus(),
              w_.layout.oversubscribed ? " (oversubscribed: the core's waits yield)" : "", dtype_name(o_.dtype),
              op_name(o_.op), o_.check);
  std::string algos;
  for (Algo a : o_.algos) algos += std::string(algos.empty() ? "" : " ") + algorithm(a).name;
  std::printf("# algorithms: %s | sizes %zu..%zu B factor %g | iters %s warmup %s\n", algos.c_str(), o_.minbytes,
              o_.maxbytes, o_.factor, o_.iters > 0 ? std::to_string(o_.iters).c_str() : "by size",
              o_.warmup >= 0 ? std::to_string(o_.warmup).c_str() : "iters/10");
  const CommState& st = comm_state(w_.comm);  // made on every rank with the layout
  std::printf("# shm: %zu B rounds | ring: %zu B segments, %s | auto: ring across nodes %s\n", st.shm_chunk,
              st.ring_segment,
              st.ring_wait_us ? ("waits in " + std::to_string(st.ring_wait_us) + " us sleeps").c_str() : "polls",
              st.auto_ring_min == SIZE_MAX ? "never" : ("from " + std::to_string(st.auto_ring_min) + " B").c_str());
  std::printf("#\n");
  const char* half = "     time      p99   algbw   busbw  #wrong";
  std::printf("# %10s %12s %9s %5s %10s  %s  %s\n", "", "", "", "", "", "out-of-place / memcpy      ", "   in-place");
  std::printf("# %10s %12s %9s %5s %10s %s %s\n", "size", "count", "type", "redop", "algo", half, half);
  std::printf("# %10s %12s %9s %5s %10s %s %s\n", "(B)", "(elements)", "", "", "",
              "     (us)     (us)  (GB/s)  (GB/s)        ", "     (us)     (us)  (GB/s)  (GB/s)");
  std::fflush(stdout);
}

void Bench::print_row(const Row& a, const Row* b) const {
  std::string algo = a.algo == a.algo_used ? a.algo : a.algo + ">" + a.algo_used;
  auto cells = [](const Row& r) {
    char buf[128];
    std::snprintf(buf, sizeof buf, " %8s %8s %7s %7s %7s", fmt_num(r.t.avg * 1e6, 8).c_str(),
                  fmt_num(r.t.p99 * 1e6, 8).c_str(), fmt_num(r.algbw, 7).c_str(),
                  r.algo == "memcpy" ? "-" : fmt_num(r.busbw, 7).c_str(),
                  r.wrong < 0 ? "N/A" : std::to_string(r.wrong).c_str());
    return std::string(buf);
  };
  std::printf("  %10zu %12zu %9s %5s %10s%s%s\n", a.bytes, a.count, dtype_name(o_.dtype), op_name(o_.op),
              algo.c_str(), cells(a).c_str(), b ? cells(*b).c_str() : "");
  std::fflush(stdout);
}

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else out += c;
  }
  return out + "\"";
}

std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string row_json(const Row& r) {
  std::ostringstream s;
  s << "{\"size\": " << r.bytes << ", \"count\": " << r.count << ", \"algo\": " << json_str(r.algo)
    << ", \"algo_used\": " << json_str(r.algo_used)
    << ", \"mode\": " << json_str(r.mode == Mode::in_place ? "in-place" : "out-of-place") << ", \"iters\": " << r.iters
    << ", \"warmup\": " << r.warmup << ", \"time_us\": {\"avg\": " << json_num(r.t.avg * 1e6)
    << ", \"min\": " << json_num(r.t.min * 1e6) << ", \"max\": " << json_num(r.t.max * 1e6)
    << ", \"p50\": " << json_num(r.t.p50 * 1e6) << ", \"p99\": " << json_num(r.t.p99 * 1e6)
    << "}, \"algbw_gbs\": " << json_num(r.algbw) << ", \"busbw_gbs\": "
    << (r.algo == "memcpy" ? "null" : json_num(r.busbw)) << ", \"wrong\": "
    << (r.wrong < 0 ? "null" : std::to_string(r.wrong))
    << ", \"shm_streamed\": " << (r.streamed < 0 ? "null" : json_num(r.streamed))
    << ", \"shm_direct\": " << (r.direct < 0 ? "null" : json_num(r.direct)) << "}";
  return s.str();
}

// Written to FILE.tmp and renamed, so a reader never sees half a result file.
void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + path + ": check the directory exists and is writable");
    f << text;
    if (!f.flush()) throw std::runtime_error("cannot write " + path + ": disk full?");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

void Bench::write_json(const std::map<std::string, double>& avg_busbw, long long wrong, bool passed,
                       const std::vector<std::string>& failures) const {
  const CommState& st = comm_state(w_.comm);
  std::ostringstream s;
  std::string cmd = "mpirt-allreduce-perf";  // argv[0] without the install path
  for (size_t i = 1; i < argv_.size(); ++i) cmd += " " + argv_[i];
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  s << "{\n  \"schema\": \"mpirt.bench.allreduce/1\",\n  \"tool\": \"mpirt-allreduce-perf\",\n"
    << "  \"version\": " << json_str(MPIRT_VERSION) << ",\n  \"timestamp\": " << json_str(timestamp_) << ",\n"
    << "  \"command\": " << json_str(cmd) << ",\n  \"host\": " << json_str(host) << ",\n"
    << "  \"mpi\": {\"library\": " << json_str(first_line(mpi_library_version()))
    << ", \"cuda_aware\": " << (mpi_cuda_aware() ? "true" : "false") << "},\n"
    << "  \"core\": {\"cuda_built\": " << (cuda::built() ? "true" : "false") << "},\n"
    << "  \"device\": " << json_str(o_.device == Device::cuda ? "cuda" : "cpu")
    << ",\n  \"staging\": " << json_str(staging_note(o_.device)) << ",\n"
    << "  \"world\": {\"size\": " << w_.size << ", \"nodes\": " << w_.layout.node_count
    << ", \"ranks_per_node\": " << w_.layout.local_size << ", \"cpus_per_node\": " << node_cpus()
    << ", \"oversubscribed\": " << (w_.layout.oversubscribed ? "true" : "false") << "},\n"
    << "  \"config\": {\"dtype\": " << json_str(dtype_name(o_.dtype)) << ", \"op\": " << json_str(op_name(o_.op))
    << ", \"minbytes\": " << o_.minbytes << ", \"maxbytes\": " << o_.maxbytes << ", \"factor\": " << json_num(o_.factor)
    << ", \"iters\": " << (o_.iters > 0 ? std::to_string(o_.iters) : "null")
    << ", \"warmup\": " << (o_.warmup >= 0 ? std::to_string(o_.warmup) : "null") << ", \"check\": " << o_.check
    << ", \"min_busbw_gbs\": " << json_num(o_.min_busbw)
    << ", \"timeout_s\": " << (o_.timeout > 0 ? json_num(o_.timeout) : "null")
    << ", \"shared_buffers\": " << (o_.shared_buffers ? "true" : "false") << "},\n"
    << "  \"settings\": {\"shm_chunk_bytes\": " << st.shm_chunk << ", \"ring_segment_bytes\": " << st.ring_segment
    << ", \"ring_wait_us\": " << st.ring_wait_us
    << ", \"auto_ring_min_bytes\": " << (st.auto_ring_min == SIZE_MAX ? "null" : std::to_string(st.auto_ring_min))
    << "},\n  \"core_round_trip_ns\": "
    << (round_trip_ns_[0] < 0 ? "null" : "[" + json_num(round_trip_ns_[0]) + ", " + json_num(round_trip_ns_[1]) + "]")
    << ",\n  \"results\": [";
  for (size_t i = 0; i < rows_.size(); ++i) s << (i ? ",\n    " : "\n    ") << row_json(rows_[i]);
  s << "\n  ],\n  \"memcpy\": [";
  for (size_t i = 0; i < memcpy_rows_.size(); ++i) s << (i ? ",\n    " : "\n    ") << row_json(memcpy_rows_[i]);
  s << "\n  ],\n  \"summary\": {\"avg_busbw_gbs\": {";
  bool first = true;
  for (const auto& [k, v] : avg_busbw) s << (first ? "" : ", ") << json_str(k) << ": " << json_num(v), first = false;
  s << "}, \"wrong\": " << wrong << ", \"passed\": " << (passed ? "true" : "false") << ", \"failures\": [";
  for (size_t i = 0; i < failures.size(); ++i) s << (i ? ", " : "") << json_str(failures[i]);
  s << "]}\n}\n";
  if (o_.json == "-") {  // after the table, for a driver that reads rank 0's output from another host
    std::fputs(s.str().c_str(), stdout);
    std::fflush(stdout);
  } else {
    write_atomically(o_.json, s.str());
  }
}

void Bench::write_csv() const {
  std::ostringstream s;
  s << "size,count,dtype,op,algo,algo_used,mode,iters,time_avg_us,time_min_us,time_max_us,time_p50_us,"
       "time_p99_us,algbw_gbs,busbw_gbs,wrong\n";
  for (const auto* set : {&rows_, &memcpy_rows_})
    for (const Row& r : *set)
      s << r.bytes << ',' << r.count << ',' << dtype_name(o_.dtype) << ',' << op_name(o_.op) << ',' << r.algo << ','
        << r.algo_used << ',' << (r.mode == Mode::in_place ? "in-place" : "out-of-place") << ',' << r.iters << ','
        << json_num(r.t.avg * 1e6) << ',' << json_num(r.t.min * 1e6) << ',' << json_num(r.t.max * 1e6) << ','
        << json_num(r.t.p50 * 1e6) << ',' << json_num(r.t.p99 * 1e6) << ',' << json_num(r.algbw) << ','
        << (r.algo == "memcpy" ? "" : json_num(r.busbw)) << ',' << (r.wrong < 0 ? "" : std::to_string(r.wrong))
        << '\n';
  write_atomically(o_.csv, s.str());
}

int Bench::run() {
  std::time_t now = std::time(nullptr);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  timestamp_ = ts;
  if (o_.device == Device::cuda) cuda::set_device(w_.layout.local_rank % cuda::device_count());
  watch_.arm("the start (buffers, the core-to-core round trip)");
  Buffers b(o_.device, o_.maxbytes, o_.shared_buffers ? w_.comm : MPI_COMM_NULL);
  round_trip_ns_[0] = core_round_trip_ns(w_);
  if (w_.rank == 0) print_header();
  const std::string of = " (" + std::string(dtype_name(o_.dtype)) + ", " + op_name(o_.op) + ")";
  for (size_t bytes : sizes(o_)) {
    if (o_.memcpy_baseline) {
      watch_.arm("memcpy of " + std::to_string(bytes) + " bytes");
      memcpy_rows_.push_back(measure_memcpy(b, bytes));
      if (w_.rank == 0) print_row(memcpy_rows_.back(), nullptr);
    }
    for (Algo a : o_.algos) {
      std::vector<Row> pair;
      for (Mode m : o_.modes) {
        watch_.arm("the allreduce of " + std::to_string(bytes) + " bytes" + of + " by algo " + algorithm(a).name +
                  (m == Mode::in_place ? ", in place" : ", out of place"));
        pair.push_back(measure(b, bytes, a, m));
      }
      for (const Row& r : pair) rows_.push_back(r);
      if (w_.rank == 0) print_row(pair[0], pair.size() > 1 ? &pair[1] : nullptr);
    }
  }
  watch_.arm("the end (the core-to-core round trip, the totals)");
  round_trip_ns_[1] = core_round_trip_ns(w_);
  std::map<std::string, std::pair<double, int>> sums;
  long long wrong = 0;
  for (const Row& r : rows_) {
    sums[r.algo].first += r.busbw;
    sums[r.algo].second += 1;
    wrong += std::max(0LL, r.wrong);
  }
  std::map<std::string, double> avg_busbw;
  std::vector<std::string> failures;
  if (wrong > 0) failures.push_back(std::to_string(wrong) + " wrong values");
  for (const auto& [algo, sc] : sums) {
    avg_busbw[algo] = sc.first / sc.second;
    if (o_.min_busbw > 0 && avg_busbw[algo] < o_.min_busbw)
      failures.push_back(algo + " average busbw " + fmt_num(avg_busbw[algo], 9) + " GB/s is below --min-busbw " +
                         fmt_num(o_.min_busbw, 9));
  }
  const bool passed = failures.empty();
  watch_.arm("");  // what is left is rank 0 writing its files
  if (w_.rank == 0) {
    if (round_trip_ns_[1] >= 0)
      std::printf("# Core to core (local ranks 0 and 1): a cache line's round trip %.0f ns before, %.0f ns after\n",
                  round_trip_ns_[0], round_trip_ns_[1]);
    std::printf("# Out of bounds values : %lld %s\n", wrong, wrong ? "FAILED" : (o_.check ? "OK" : "N/A"));
    for (const auto& [algo, v] : avg_busbw) std::printf("# Avg bus bandwidth    : %s %s GB/s\n", algo.c_str(), fmt_num(v, 9).c_str());
    for (const auto& f : failures) std::printf("# FAILED: %s\n", f.c_str());
    std::printf("#\n# Collective test concluded: allreduce\n");
    std::fflush(stdout);
    if (!o_.json.empty()) write_json(avg_busbw, wrong, passed, failures);
    if (!o_.csv.empty()) write_csv();
  }
  return passed ? 0 : 1;
}

// What keeps rank 0 from writing --json or --csv (a directory that is not there or not writable),
// said before the run rather than after it; "" when nothing does.
std::string output_problem(const BenchOptions& o) {
  for (const std::string& path : {o.json, o.csv}) {
    if (path.empty() || path == "-") continue;
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    struct stat st;
    const char* why = stat(dir.c_str(), &st) != 0          ? std::strerror(errno)
                      : !S_ISDIR(st.st_mode)                ? std::strerror(ENOTDIR)
                      : access(dir.c_str(), W_OK) != 0     ? std::strerror(errno)
                                                            : nullptr;
    if (why) return path + ": cannot write into " + dir + " (" + why + "); give a file in an existing, writable directory";
  }
  return "";
}

}  // namespace
}  // namespace mpirt

int main(int argc, char** argv) {
  using namespace mpirt;
  // --check-args: the options checked without MPI. `mpirt bench allreduce --np N` runs it before
  // starting N ranks, so a bad option is said once, without mpirun's report of a failed job.
  if (std::any_of(argv + 1, argv + argc, [](const char* a) { return std::strcmp(a, "--check-args") == 0; })) {
    try {
      const std::string problem = output_problem(parse_options(argc, argv));
      if (!problem.empty()) throw UsageError(problem);
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mpirt-allreduce-perf: error: %s\n", e.what());
      return 2;
    }
  }
  MPI_Init(&argc, &argv);
  World w;
  MPI_Comm_rank(w.comm, &w.rank);
  MPI_Comm_size(w.comm, &w.size);
  int rc = 0;
  try {
    BenchOptions o = parse_options(argc, argv);
    if (o.help || o.version) {
      if (w.rank == 0) std::fputs(o.help ? usage() : "mpirt-allreduce-perf " MPIRT_VERSION "\n", stdout);
    } else {
      // rank 0 writes the files: its word goes for all
      std::string problem = w.rank == 0 ? output_problem(o) : "";
      int bad = !problem.empty();
      MPI_Bcast(&bad, 1, MPI_INT, 0, w.comm);
      if (bad) throw UsageError(problem);
      w.layout = node_layout(w.comm);
      Bench bench(o, w, std::vector<std::string>(argv, argv + argc));
      rc = bench.run();
    }
  } catch (const UsageError& e) {
    if (w.rank == 0) std::fprintf(stderr, "mpirt-allreduce-perf: error: %s\n", e.what());
    rc = 2;
  } catch (const std::invalid_argument& e) {
    if (w.rank == 0) std::fprintf(stderr, "mpirt-allreduce-perf: error: %s\n", e.what());
    rc = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpirt-allreduce-perf: rank %d: error: %s\n", w.rank, e.what());
    std::fflush(stderr);
    MPI_Abort(w.comm, 1);
  }
  release_all();
  MPI_Finalize();
  return rc;
}
