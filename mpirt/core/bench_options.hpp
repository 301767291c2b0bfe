// Command line of mpirt-allreduce-perf: nccl-tests' spelling where it has one.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "allreduce.hpp"

namespace mpirt {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Mode : int { out_of_place = 0, in_place = 1 };

struct BenchOptions {
  size_t minbytes = 8;
  size_t maxbytes = 64u << 20;
  double factor = 2.0;
  int iters = -1;   // -1: by size (see iters_for)
  int warmup = -1;  // -1: by size
  DType dtype = DType::f32;
  Op op = Op::sum;
  std::vector<Algo> algos = {Algo::mpi, Algo::ring, Algo::shm, Algo::automatic};
  std::vector<Mode> modes = {Mode::out_of_place, Mode::in_place};
  Device device = Device::cpu;
  int check = 1;
  double min_busbw = 0.0;  // GB/s, 0 = no threshold
  double timeout = 0.0;    // seconds one test may take, 0 = no limit
  bool shared_buffers = false;  // send and receive buffers from shared_alloc
  bool memcpy_baseline = false;
  bool corrupt = false;  // self-test of the checker: damage one element on rank 0
  std::string json, csv;
  bool help = false, version = false;
};

// Parses "8", "64K", "1M", "2G" (binary multiples, optional trailing B); throws UsageError.
size_t parse_size(const std::string& text, const char* option);
BenchOptions parse_options(int argc, char** argv);
std::vector<size_t> sizes(const BenchOptions& o);
int iters_for(const BenchOptions& o, size_t bytes);
int warmup_for(const BenchOptions& o, size_t bytes);
const char* usage();

}  // namespace mpirt
