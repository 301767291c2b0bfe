#include "bench_options.hpp"

#include <getopt.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "memops.hpp"

namespace mpirt {
namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

long parse_int(const std::string& s, const char* option, long lo, long hi) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < lo || v > hi)
    throw UsageError(std::string(option) + " " + s + ": expected a whole number from " +
                     std::to_string(lo) + " to " + std::to_string(hi));
  return v;
}

double parse_double(const std::string& s, const char* option) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v))
    throw UsageError(std::string(option) + " " + s + ": expected a number");
  return v;
}

}  // namespace

const char* usage() {
  return "usage: mpirt-allreduce-perf [options]   (run under mpirun, or use mpirt bench allreduce --np N)\n"
         "  -b, --minbytes SIZE     smallest buffer per rank (K/M/G suffixes, binary)   [8]\n"
         "  -e, --maxbytes SIZE     largest buffer per rank                             [64M]\n"
         "  -f, --stepfactor F      multiply the size by F each step (> 1)               [2]\n"
         "  -n, --iters N           timed iterations per size      [1000 <=64K, 50 <=16M, 20 above]\n"
         "  -w, --warmup N          untimed iterations per size    [iters/10, at least 2]\n"
         "  -d, --datatype T        float32|float64|float16|bfloat16|int32          [float32]\n"
         "  -o, --op OP             sum|min|max|avg                                  [sum]\n"
         "  -a, --algo LIST         comma list of mpi,ring,shm,auto,ordered,hier or all [all]\n"
         "  -m, --mode MODE         out-of-place|in-place|both                       [both]\n"
         "  -D, --device DEV        cpu|cuda (cuda: local rank picks the GPU)        [cpu]\n"
         "  -c, --check N           check N results against locally computed values  [1]\n"
         "      --min-busbw GBS     exit 1 if an algorithm's average busbw is lower\n"
         "  -T, --timeout S         end the run (exit 124) where a rank waits S seconds for one\n"
         "                          call to complete, naming the test it is in            [off]\n"
         "  -R, --shared-buffers    buffers in memory the local ranks share (shm then reduces\n"
         "                          without staging, as nccl-tests -R registers them)  [off]\n"
         "      --memcpy            also time memcpy of each size on every rank at once (baseline)\n"
         "  -J, --json FILE         write every measurement as JSON (- : to stdout, after the table)\n"
         "      --csv FILE          write one CSV row per measurement\n"
         "      --corrupt           damage one result element on rank 0 (proves the checker)\n"
         "      --check-args        check these options and exit 0, or 2 with the error (no MPI)\n"
         "  -h, --help              this text\n"
         "  -V, --version           print the version\n";
}

namespace {

// The help line of the option typed (e.g. "-c, --check N  check N results ... [1]"), squeezed
// onto one line for an error message; "see --help" where it has none.
std::string help_line(const std::string& typed) {
  const std::string text = usage();
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(at, end - at);
    at = end + 1;
    for (const char* stop : {" ", ","}) {
      if (line.find(" " + typed + stop) == std::string::npos) continue;
      std::string squeezed;
      for (char ch : line) {
        if (ch != ' ' || (!squeezed.empty() && squeezed.back() != ' ')) squeezed += ch;
      }
      return squeezed;
    }
  }
  return "see --help";
}

}  // namespace

size_t parse_size(const std::string& text, const char* option) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0)
    throw UsageError(std::string(option) + " " + text + ": a size starts with a number, e.g. 8, 64K, 1M, 2G");
  std::string suffix = text.substr(i);
  for (char& ch : suffix) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (!suffix.empty() && suffix.back() == 'B') suffix.pop_back();
  if (suffix.size() == 2 && suffix[1] == 'I') suffix.pop_back();  // KiB, MiB, GiB
  size_t mult = 1;
  if (suffix == "K") mult = 1ull << 10;
  else if (suffix == "M") mult = 1ull << 20;
  else if (suffix == "G") mult = 1ull << 30;
  else if (!suffix.empty())
    throw UsageError(std::string(option) + " " + text + ": unknown size suffix '" + text.substr(i) +
                     "'; use K, M or G (binary multiples), e.g. 64K");
  const unsigned long long v = std::strtoull(text.substr(0, i).c_str(), nullptr, 10);
  if (v > (1ull << 40) / mult)
    throw UsageError(std::string(option) + " " + text + ": larger than 1T per rank");
  return static_cast<size_t>(v * mult);
}

BenchOptions parse_options(int argc, char** argv) {
  enum { kMinBusbw = 1000, kCsv, kMemcpy, kCorrupt, kCheckArgs };
  static const option longopts[] = {
      {"minbytes", required_argument, nullptr, 'b'}, {"maxbytes", required_argument, nullptr, 'e'},
      {"stepfactor", required_argument, nullptr, 'f'}, {"iters", required_argument, nullptr, 'n'},
      {"warmup", required_argument, nullptr, 'w'},   {"datatype", required_argument, nullptr, 'd'},
      {"op", required_argument, nullptr, 'o'},       {"algo", required_argument, nullptr, 'a'},
      {"mode", required_argument, nullptr, 'm'},     {"device", required_argument, nullptr, 'D'},
      {"check", required_argument, nullptr, 'c'},    {"json", required_argument, nullptr, 'J'},
      {"timeout", required_argument, nullptr, 'T'},
      {"min-busbw", required_argument, nullptr, kMinBusbw},
      {"csv", required_argument, nullptr, kCsv},     {"memcpy", no_argument, nullptr, kMemcpy},
      {"corrupt", no_argument, nullptr, kCorrupt},   {"help", no_argument, nullptr, 'h'},
      {"shared-buffers", no_argument, nullptr, 'R'}, {"check-args", no_argument, nullptr, kCheckArgs},
      {"version", no_argument, nullptr, 'V'},        {nullptr, 0, nullptr, 0}};
  BenchOptions o;
  opterr = 0;
  optind = 1;
  int ch;
  while ((ch = getopt_long(argc, argv, ":b:e:f:n:w:d:o:a:m:D:c:J:T:RhV", longopts, nullptr)) != -1) {
    const std::string arg = optarg ? optarg : "";
    switch (ch) {
      case 'b': o.minbytes = parse_size(arg, "-b/--minbytes"); break;
      case 'e': o.maxbytes = parse_size(arg, "-e/--maxbytes"); break;
      case 'f':
        o.factor = parse_double(arg, "-f/--stepfactor");
        if (o.factor <= 1.0) throw UsageError("-f/--stepfactor " + arg + ": must be greater than 1, e.g. 2");
        break;
      case 'n': o.iters = static_cast<int>(parse_int(arg, "-n/--iters", 1, 10000000)); break;
      case 'w': o.warmup = static_cast<int>(parse_int(arg, "-w/--warmup", 0, 10000000)); break;
      case 'd':
        if (!parse_dtype(arg, &o.dtype))
          throw UsageError("-d/--datatype " + arg + ": unknown type; use float32, float64, float16, bfloat16 or int32");
        break;
      case 'o':
        if (!parse_op(arg, &o.op)) throw UsageError("-o/--op " + arg + ": unknown op; use sum, min, max or avg");
        break;
      case 'a': {
        o.algos.clear();
        for (const auto& name : split_commas(arg)) {
          if (name == "all") {
            for (const auto& p : algorithms()) o.algos.push_back(p.id);
            continue;
          }
          Algo a;
          if (!parse_algo(name, &a))
            throw UsageError("-a/--algo " + name + ": unknown algorithm; use mpi, ring, shm, auto, ordered, hier or all");
          o.algos.push_back(a);
        }
        if (o.algos.empty()) throw UsageError("-a/--algo: give at least one of mpi, ring, shm, auto, ordered, hier");
        break;
      }
      case 'm':
        if (arg == "both") o.modes = {Mode::out_of_place, Mode::in_place};
        else if (arg == "out-of-place") o.modes = {Mode::out_of_place};
        else if (arg == "in-place") o.modes = {Mode::in_place};
        else throw UsageError("-m/--mode " + arg + ": use out-of-place, in-place or both");
        break;
      case 'D':
        if (arg == "cpu") o.device = Device::cpu;
        else if (arg == "cuda") o.device = Device::cuda;
        else throw UsageError("-D/--device " + arg + ": use cpu or cuda");
        break;
      case 'c': o.check = static_cast<int>(parse_int(arg, "-c/--check", 0, 1000)); break;
      case 'J': o.json = arg; break;
      case kMinBusbw:
        o.min_busbw = parse_double(arg, "--min-busbw");
        if (o.min_busbw < 0) throw UsageError("--min-busbw " + arg + ": must not be negative");
        break;
      case 'T':
        o.timeout = parse_double(arg, "-T/--timeout");
        if (o.timeout < 0) throw UsageError("-T/--timeout " + arg + ": must not be negative (0: no limit)");
        break;
      case kCsv: o.csv = arg; break;
      case kMemcpy: o.memcpy_baseline = true; break;
      case kCorrupt: o.corrupt = true; break;
      case kCheckArgs: break;  // acted on in main, before MPI starts
      case 'R': o.shared_buffers = true; break;
      case 'h': o.help = true; break;
      case 'V': o.version = true; break;
      case ':': throw UsageError(std::string(argv[optind - 1]) + " needs a value: " + help_line(argv[optind - 1]));
      default: throw UsageError(std::string("unknown option ") + argv[optind - 1] + "; see --help");
    }
  }
  if (optind < argc) throw UsageError(std::string("unexpected argument '") + argv[optind] + "'; see --help");
  const size_t es = dtype_size(o.dtype);
  if (o.minbytes < es)
    throw UsageError("-b/--minbytes " + std::to_string(o.minbytes) + ": smaller than one " +
                     dtype_name(o.dtype) + " element (" + std::to_string(es) + " bytes); use -b " +
                     std::to_string(es) + " or more");
  if (o.minbytes > o.maxbytes)
    throw UsageError("-b/--minbytes " + std::to_string(o.minbytes) + " is larger than -e/--maxbytes " +
                     std::to_string(o.maxbytes) + "; swap them");
  for (size_t s : {o.minbytes, o.maxbytes})
    if (s % es != 0)
      throw UsageError("size " + std::to_string(s) + " is not a multiple of the " + dtype_name(o.dtype) +
                       " element size (" + std::to_string(es) + " bytes); round it to a multiple");
  if (o.shared_buffers && o.device == Device::cuda)
    throw UsageError("-R/--shared-buffers: shared buffers are host memory; use --device cpu or drop -R");
  if (o.device == Device::cuda && !cuda::available())
    throw UsageError("--device cuda: " + cuda::describe() + "; use --device cpu");
  return o;
}

std::vector<size_t> sizes(const BenchOptions& o) {
  const size_t es = dtype_size(o.dtype);
  std::vector<size_t> out;
  for (double s = static_cast<double>(o.minbytes); s <= static_cast<double>(o.maxbytes) * (1 + 1e-9);
       s *= o.factor) {
    size_t bytes = static_cast<size_t>(std::llround(s)) / es * es;
    if (out.empty() || bytes != out.back()) out.push_back(bytes);
  }
  return out;
}

int iters_for(const BenchOptions& o, size_t bytes) {
  if (o.iters > 0) return o.iters;
  return bytes <= (64u << 10) ? 1000 : bytes <= (16u << 20) ? 50 : 20;
}

int warmup_for(const BenchOptions& o, size_t bytes) {
  if (o.warmup >= 0) return o.warmup;
  return std::max(2, iters_for(o, bytes) / 10);
}

}  // namespace mpirt
