// -T/--timeout of mpirt-allreduce-perf (nccl-tests' option): a thread that ends this rank when
// it has waited that long for one call to complete, naming the test it was in. Without it a
// stopped rank or a stuck link hangs the benchmark until the job's own limit, with nothing
// said; with it mpirun sees a rank exit and ends the rest.
//
// The loops mark progress with tick() after each call (outside the timed region); the thread looks every quarter of the limit, so it fires between 1 and
// 1.25 limits after the last call completed.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace mpirt {

class Watchdog {
 public:
  static constexpr int kExitCode = 124;  // what timeout(1) exits with

  // seconds <= 0: off (no thread; arm and tick cost next to nothing)
  Watchdog(double seconds, int rank) : seconds_(seconds), rank_(rank) {
    if (seconds_ > 0) thread_ = std::thread([this] { watch(); });
  }
  ~Watchdog() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // What the calls from now on are part of, for the message; "" when the rest needs no watch.
  void arm(const std::string& what) {
    if (seconds_ <= 0) return;
    std::lock_guard<std::mutex> lock(m_);
    what_ = what;
    tick();
  }
  // One writer (the benchmark's thread): a plain load and store, no locked instruction.
  void tick() { ticks_.store(ticks_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;

  void watch() {
    std::unique_lock<std::mutex> lock(m_);
    uint64_t seen = ticks_.load(std::memory_order_relaxed);
    Clock::time_point since = Clock::now();
    const auto look = std::chrono::duration<double>(seconds_ / 4);
    while (!cv_.wait_for(lock, look, [this] { return stop_; })) {
      const uint64_t now_ticks = ticks_.load(std::memory_order_relaxed);
      if (now_ticks != seen || what_.empty()) {
        seen = now_ticks;
        since = Clock::now();
      } else if (Clock::now() - since >= std::chrono::duration<double>(seconds_)) {
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        std::fprintf(stderr,
                     "mpirt-allreduce-perf: rank %d on %s: stuck for %g s (--timeout) in %s: a rank stopped "
                     "or is starved of CPU, or the network between ranks is stuck (`mpirt doctor --hostfile F` "
                     "checks every host; raise -T where one call takes longer)\n",
                     rank_, host, seconds_, what_.c_str());
        std::fflush(stderr);
        std::_Exit(kExitCode);
      }
    }
  }

  const double seconds_;
  const int rank_;
  std::atomic<uint64_t> ticks_{0};
  std::mutex m_;
  std::condition_variable cv_;
  std::string what_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace mpirt
