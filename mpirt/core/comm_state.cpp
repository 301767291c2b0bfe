#include "comm_state.hpp"

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MPIRT_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define MPIRT_PAUSE() asm volatile("yield")
#else
#define MPIRT_PAUSE() ((void)0)
#endif

namespace mpirt {
namespace {

int g_keyval = MPI_KEYVAL_INVALID;
std::vector<CommState*> g_live;  // in creation order, identical on every rank
// The last communicator each thread asked about: MPI_Comm_get_attr costs about 80 ns, 9% of a
// small MPI_Allreduce here, on every `auto` call. A freed state bumps the generation, so a
// handle MPI reuses for a new communicator never finds the old state.
std::atomic<uint64_t> g_generation{0};
thread_local MPI_Comm t_comm = MPI_COMM_NULL;
thread_local CommState* t_state = nullptr;
thread_local uint64_t t_generation = 0;

void destroy(CommState* st) {
  g_generation.fetch_add(1, std::memory_order_acq_rel);
  g_live.erase(std::remove(g_live.begin(), g_live.end(), st), g_live.end());
  for (auto it = st->shared.rbegin(); it != st->shared.rend(); ++it) MPI_Win_free(&it->win);
  if (st->shm.win != MPI_WIN_NULL) MPI_Win_free(&st->shm.win);
  if (st->cross_comm != MPI_COMM_NULL) MPI_Comm_free(&st->cross_comm);
  if (st->ring_comm != MPI_COMM_NULL) MPI_Comm_free(&st->ring_comm);
  if (st->node_comm != MPI_COMM_NULL) MPI_Comm_free(&st->node_comm);
  delete st;
}

int on_comm_free(MPI_Comm, int, void* attr, void*) {
  auto* st = static_cast<CommState*>(attr);  // may already be gone if freed at finalize
  if (std::find(g_live.begin(), g_live.end(), st) != g_live.end()) destroy(st);
  return MPI_SUCCESS;
}

// MPI deletes MPI_COMM_SELF's attributes first in MPI_Finalize: whatever release_all() did not
// free yet (a program that never called it) is freed there.
int on_finalize(MPI_Comm, int, void*, void*) {
  release_all();
  return MPI_SUCCESS;
}

void install_keyvals() {
  MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_comm_free, &g_keyval, nullptr);
  int finalize_key;
  MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_finalize, &finalize_key, nullptr);
  MPI_Comm_set_attr(MPI_COMM_SELF, finalize_key, nullptr);
}

// The L3 this core shares, from sysfs (glibc's sysconf said 320 MiB here, where sysfs and
// lscpu say 32 MiB); 0 where sysfs does not say.
size_t l3_bytes() {
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level(dir + "level"), size(dir + "size");
    int l = 0;
    unsigned long long kib = 0;
    std::string unit;
    if (level >> l && l == 3 && size >> kib >> unit && unit == "K") return static_cast<size_t>(kib) << 10;
  }
  return 0;
}

// `shm`'s staging per rank per round where MPIRT_SHM_CHUNK is unset: the two rounds' staging
// (2(n+1) chunks) takes at most half the L3 (8 MiB assumed where unknown), leaving room for the
// input and output streaming past it; 1 MiB at most, 64 KiB at least. Measured on 2 ranks here,
// in the same jobs: 1 MiB gave 7.0-7.5 GB/s at 64 MiB where 256 KiB gave 5.7-6.2; 2 and 4 MiB
// were no better.
size_t default_shm_chunk(int local_size) {
  const size_t l3 = l3_bytes();
  const size_t cache = l3 ? l3 : size_t{8} << 20;
  return std::clamp<size_t>(cache / (4 * static_cast<size_t>(local_size + 1)), 64 << 10, 1 << 20) / 64 * 64;
}

// The core's settings, agreed over `comm` before anything else is made: `auto` must pick the
// same algorithm on every rank and ring segments must match between sender and receiver, so a
// value that differs (or does not parse) on any rank is an error on all of them rather than a
// hang or a truncated message; the ranks of a node must cut `shm`'s rounds alike, or they
// would read each other's staging at the wrong places. (The ring's wait and `shm`'s stores
// could differ; checking them with the others keeps a bad value from failing one rank while the
// rest wait for it.)
struct Setting {
  const char* name;
  uint64_t unset;    // value when unset or empty
  bool off;          // "off" means never (UINT64_MAX)
  uint64_t lo, hi;   // accepted range
  const char* fix;   // what is wrong with a bad value, and what to give instead
  const char* const* words = nullptr;  // a word setting: its value is the word's index
};
constexpr const char* kStoreWords[] = {"auto", "cached", "streaming", nullptr};
enum SettingIndex { kRingMin, kRingSegment, kRingWait, kShmChunk, kShmStores };  // positions in kSettings
constexpr Setting kSettings[] = {
    {"MPIRT_AUTO_RING_MIN_BYTES", UINT64_MAX, true, 0, UINT64_MAX - 2,
     "is not a byte count; give one (e.g. 4194304), or off, or unset it"},
    {"MPIRT_RING_SEGMENT_BYTES", 256 * 1024, false, 4096, 1ull << 30,
     "is not a byte count from 4096 to 1073741824; give one (e.g. 61440) or unset it"},
    {"MPIRT_RING_WAIT_US", 0, false, 0, 100000,
     "is not a number of microseconds from 0 to 100000; give one (e.g. 50), or 0 to poll, or unset it"},
    {"MPIRT_SHM_CHUNK", 0, false, 4096, 1ull << 30,  // 0: default_shm_chunk
     "is not a byte count from 4096 to 1073741824; give one (e.g. 1048576) or unset it"},
    {"MPIRT_SHM_STORES", 0, false, 0, 0, "is not auto, cached or streaming; give one of them or unset it",
     kStoreWords},
};
constexpr size_t kSettingCount = sizeof(kSettings) / sizeof(kSettings[0]);
constexpr uint64_t kInvalid = UINT64_MAX - 1;

uint64_t parse_setting(const Setting& s) {
  const char* env = std::getenv(s.name);
  if (env == nullptr || *env == '\0') return s.unset;
  if (s.off && std::string(env) == "off") return UINT64_MAX;
  if (s.words) {
    for (uint64_t i = 0; s.words[i]; ++i)
      if (std::string(env) == s.words[i]) return i;
    return kInvalid;
  }
  char* end = nullptr;
  unsigned long long v = std::strtoull(env, &end, 10);
  return (*end != '\0' || env[0] == '-' || v < s.lo || v > s.hi) ? kInvalid : v;
}

std::array<uint64_t, kSettingCount> agreed_settings(MPI_Comm comm) {
  std::array<uint64_t, kSettingCount> mine;
  uint64_t v[2 * kSettingCount];  // each value's max, and ~min
  for (size_t i = 0; i < kSettingCount; ++i) {
    mine[i] = parse_setting(kSettings[i]);
    v[2 * i] = mine[i];
    v[2 * i + 1] = ~mine[i];
  }
  MPI_Allreduce(MPI_IN_PLACE, v, 2 * kSettingCount, MPI_UINT64_T, MPI_MAX, comm);
  for (size_t i = 0; i < kSettingCount; ++i)
    if (mine[i] == kInvalid)
      throw std::invalid_argument(std::string(kSettings[i].name) + "=" + std::getenv(kSettings[i].name) + " " +
                                  kSettings[i].fix);
  for (size_t i = 0; i < kSettingCount; ++i)
    if (v[2 * i] != ~v[2 * i + 1])
      throw std::invalid_argument(std::string(kSettings[i].name) +
                                  " differs between ranks (or is wrong on one); set it the same on every rank "
                                  "(mpirt launch forwards the launcher's) or unset it");
  return mine;
}

ShmStores::Class& size_class(ShmStores& s, size_t bytes) {
  int k = 0;
  while (k + 1 < ShmStores::kClasses && bytes >= (size_t{512} << 10 << k)) ++k;
  return s.classes[k];
}

bool is_dir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// CPUs the quota set on cgroup directory `dir` allows (v2 cpu.max, v1 cpu.cfs_quota_us over
// cpu.cfs_period_us); -1 where it sets none.
double dir_quota(const std::string& dir, bool v1) {
  long quota = -1, period = 0;
  if (v1) {
    std::ifstream qf(dir + "/cpu.cfs_quota_us"), pf(dir + "/cpu.cfs_period_us");
    if (!(qf >> quota && pf >> period)) return -1;
  } else {
    std::ifstream f(dir + "/cpu.max");
    std::string q;
    if (!(f >> q >> period) || q == "max") return -1;
    quota = std::atol(q.c_str());
  }
  return quota > 0 && period > 0 ? static_cast<double>(quota) / static_cast<double>(period) : -1;
}

// The smallest CPU quota on the way up this process's cgroup tree (-1: none), found as
// launcher/detect/cpus.py finds it: the path from /proc/self/cgroup (a v1 cpu hierarchy wins
// on a hybrid host), its directory and every ancestor up to the mount's root (a pod's or a
// slice's quota may sit above the process's own cgroup); directories that do not exist (a
// host's path seen from inside a container) are left out, the mount's root stays.
double cgroup_cpu_quota() {
  std::ifstream in("/proc/self/cgroup");
  std::string line, v1_hierarchy, path;
  bool v1 = false, found = false;
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string id = line.substr(0, a), controllers = line.substr(a + 1, b - a - 1);
    if (("," + controllers + ",").find(",cpu,") != std::string::npos) {
      v1 = found = true;
      v1_hierarchy = controllers;
      path = line.substr(b + 1);
    } else if (id == "0" && controllers.empty() && !v1) {
      found = true;
      path = line.substr(b + 1);
    }
  }
  if (!found) return -1;
  std::string base = "/sys/fs/cgroup";
  if (v1) base += is_dir(base + "/" + v1_hierarchy) ? "/" + v1_hierarchy : "/cpu";
  std::string here = base + path;
  double least = -1;
  for (;;) {
    while (here.size() > base.size() && here.back() == '/') here.pop_back();
    if (is_dir(here)) {
      const double q = dir_quota(here, v1);
      if (q > 0 && (least < 0 || q < least)) least = q;
    }
    if (here.size() <= base.size()) break;
    here.resize(here.rfind('/'));
  }
  return least;
}

}  // namespace

// The CPUs of this node: those online, capped by the CPU quota of this process's cgroup tree
// (Kubernetes resources.limits.cpu), rounded down and at least 1 (a quota of 1.5 keeps one
// CPU busy and the next half-idle), not by this rank's own affinity mask, which a binding
// narrows to its share.
long node_cpus() {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  const double quota = cgroup_cpu_quota();
  if (quota > 0) n = std::min(n, std::max(1L, static_cast<long>(quota)));
  return n;
}

double ShmStores::Class::cost(int streaming) const {
  const double* r = recent[streaming];
  return std::max(std::min(r[0], r[1]), std::min(std::max(r[0], r[1]), r[2]));
}

bool ShmStores::pick(size_t bytes) {
  Class& c = size_class(*this, bytes);
  ++c.calls;
  if (c.calls <= 4) return c.calls > 2;
  const bool better = c.cost(1) < c.cost(0);
  return c.calls % 32 == 0 ? !better : better;
}

void ShmStores::record(size_t bytes, bool streaming, double seconds_per_byte) {
  Class& c = size_class(*this, bytes);
  if (c.calls == 1 || c.calls == 3) return;
  double* r = c.recent[streaming];
  if (c.calls <= 4 || c.calls % 32 == 0) {
    r[0] = r[1] = r[2] = seconds_per_byte;
  } else {
    r[0] = r[1];
    r[1] = r[2];
    r[2] = seconds_per_byte;
  }
}

void ShmBarrier::wait(int nranks, int spin_limit) {
  const uint32_t gen = generation.load(std::memory_order_acquire);
  if (arrived.fetch_add(1, std::memory_order_acq_rel) == static_cast<uint32_t>(nranks - 1)) {
    arrived.store(0, std::memory_order_relaxed);
    generation.store(gen + 1, std::memory_order_release);
    return;
  }
  for (int spins = 0; generation.load(std::memory_order_acquire) == gen; ++spins) {
    if (spins < spin_limit)
      MPIRT_PAUSE();
    else
      sched_yield();
  }
}

static CommState& lookup_or_create(MPI_Comm comm) {
  if (g_keyval == MPI_KEYVAL_INVALID) install_keyvals();
  void* attr = nullptr;
  int found = 0;
  MPI_Comm_get_attr(comm, g_keyval, &attr, &found);
  if (found) return *static_cast<CommState*>(attr);

  const auto settings = agreed_settings(comm);
  auto* st = new CommState();
  st->auto_ring_min = static_cast<size_t>(settings[kRingMin]);
  st->ring_segment = static_cast<size_t>(settings[kRingSegment]);
  st->ring_wait_us = static_cast<unsigned>(settings[kRingWait]);
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &st->node_comm);
  MPI_Comm_rank(st->node_comm, &st->layout.local_rank);
  MPI_Comm_size(st->node_comm, &st->layout.local_size);
  MPI_Comm_split(comm, st->layout.local_rank, rank, &st->cross_comm);
  MPI_Comm_dup(comm, &st->ring_comm);
  int leaders = st->layout.local_rank == 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &leaders, 1, MPI_INT, MPI_SUM, comm);
  st->layout.node_count = leaders;
  // any node oversubscribed counts for all: `auto` must choose alike on every rank
  int minmax[3] = {-st->layout.local_size, st->layout.local_size, st->layout.local_size > node_cpus()};
  MPI_Allreduce(MPI_IN_PLACE, minmax, 3, MPI_INT, MPI_MAX, comm);
  st->layout.uniform = -minmax[0] == minmax[1];
  st->layout.oversubscribed = minmax[2] != 0;
  st->shm_policy = static_cast<int>(settings[kShmStores]);
  st->shm_chunk = settings[kShmChunk] ? static_cast<size_t>(settings[kShmChunk]) / 64 * 64
                                      : default_shm_chunk(st->layout.local_size);
  g_live.push_back(st);
  MPI_Comm_set_attr(comm, g_keyval, st);
  return *st;
}

size_t auto_ring_min_bytes(MPI_Comm comm) { return comm_state(comm).auto_ring_min; }

CommState& comm_state(MPI_Comm comm) {
  const uint64_t generation = g_generation.load(std::memory_order_acquire);
  if (comm == t_comm && t_state != nullptr && generation == t_generation) return *t_state;
  CommState& st = lookup_or_create(comm);
  t_comm = comm;
  t_state = &st;
  t_generation = generation;
  return st;
}

void release_all() {
  while (!g_live.empty()) destroy(g_live.back());
}

ShmSegment& shm_segment(CommState& st) {
  ShmSegment& seg = st.shm;
  if (seg.win != MPI_WIN_NULL) return seg;
  const int n = st.layout.local_size;
  seg.chunk_bytes = st.shm_chunk;
  seg.spin_limit = st.layout.oversubscribed ? 0 : 2000;
  const size_t header = sizeof(ShmBarrier) + static_cast<size_t>(n) * sizeof(ShmCallDesc);
  const size_t bytes = header + 2 * static_cast<size_t>(n + 1) * seg.chunk_bytes;
  char* mine = nullptr;
  MPI_Info info;
  MPI_Info_create(&info);
  MPI_Info_set(info, "alloc_shared_noncontig", "false");
  const MPI_Aint local_bytes = st.layout.local_rank == 0 ? static_cast<MPI_Aint>(bytes) : 0;
  int err = MPI_Win_allocate_shared(local_bytes, 1, info, st.node_comm, &mine, &seg.win);
  MPI_Info_free(&info);
  if (err != MPI_SUCCESS)
    throw std::runtime_error("MPI_Win_allocate_shared failed: is /dev/shm large enough? (" +
                             std::to_string(bytes) + " bytes needed per node)");
  MPI_Aint got;
  int disp;
  char* base = nullptr;
  MPI_Win_shared_query(seg.win, 0, &got, &disp, &base);
  seg.barrier = reinterpret_cast<ShmBarrier*>(base);
  seg.calls = reinterpret_cast<ShmCallDesc*>(base + sizeof(ShmBarrier));
  seg.base = base + header;
  if (st.layout.local_rank == 0) {
    new (seg.barrier) ShmBarrier();
    seg.barrier->arrived.store(0);
    seg.barrier->generation.store(0);
  }
  MPI_Barrier(st.node_comm);
  return seg;
}

}  // namespace mpirt
