// Host reduction kernels: written as tiles over an accumulator type so the compiler
// vectorises them and 16-bit inputs are converted once per element, not once per hop.
#include "dtype.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MPIRT_X86_DISPATCH 1
#endif
#if defined(MPIRT_X86_DISPATCH) && defined(__GLIBC__)
// The two-source loops get an AVX2 copy beside the baseline one, picked when the library loads
// (an ifunc, hence glibc): about a tenth more bandwidth for in-cache shm here, and the package
// still runs on any x86-64.
#define MPIRT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MPIRT_CLONES
#endif

namespace mpirt {
namespace {

// Whole tiles of 16-bit floats to fp32 and back. fp16 in software is about ten times slower
// than the fp32 reduction itself, so x86 CPUs with F16C (every x86-64-v3 one) convert in
// hardware, chosen at run time: the package stays buildable and runnable on any x86-64.
// Both round to nearest even; only the payload bits of a NaN may differ between the two.
void f16_to_f32_scalar(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = half_to_float(s[i]);
}
void f32_to_f16_scalar(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = float_to_half(s[i]);
}
#ifdef MPIRT_X86_DISPATCH
__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  f16_to_f32_scalar(s + i, d + i, n - i);
}
__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(const float* s, uint16_t* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  f32_to_f16_scalar(s + i, d + i, n - i);
}
bool has_f16c() {
  static const bool yes = [] {
    const char* env = std::getenv("MPIRT_F16C");  // 0: the portable conversion, for comparison
    if (env != nullptr && std::string(env) == "0") return false;
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return yes;
}
#endif

void f16_to_f32(const uint16_t* s, float* d, size_t n) {
#ifdef MPIRT_X86_DISPATCH
  if (has_f16c()) return f16_to_f32_f16c(s, d, n);
#endif
  f16_to_f32_scalar(s, d, n);
}
void f32_to_f16(const float* s, uint16_t* d, size_t n) {
#ifdef MPIRT_X86_DISPATCH
  if (has_f16c()) return f32_to_f16_f16c(s, d, n);
#endif
  f32_to_f16_scalar(s, d, n);
}
// bfloat16 is the top half of an fp32: shifts and a select, which the compiler vectorises.
void bf16_to_f32(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = bf16_to_float(s[i]);
}
void f32_to_bf16(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
}

struct F32 {
  using T = float;
  using Acc = float;
  static Acc load(T v) { return v; }
  static T store(Acc a) { return a; }
};
struct F64 {
  using T = double;
  using Acc = double;
  static Acc load(T v) { return v; }
  static T store(Acc a) { return a; }
};
struct F16 {
  using T = uint16_t;
  using Acc = float;
  static void widen(const T* s, Acc* d, size_t n) { f16_to_f32(s, d, n); }
  static void narrow(const Acc* s, T* d, size_t n) { f32_to_f16(s, d, n); }
};
struct BF16 {
  using T = uint16_t;
  using Acc = float;
  static void widen(const T* s, Acc* d, size_t n) { bf16_to_f32(s, d, n); }
  static void narrow(const Acc* s, T* d, size_t n) { f32_to_bf16(s, d, n); }
};
template <class D>
constexpr bool kWidened = std::is_same_v<D, F16> || std::is_same_v<D, BF16>;
struct I32 {
  using T = int32_t;
  using Acc = uint32_t;  // wrapping sum without undefined behaviour
  static Acc load(T v) { return static_cast<uint32_t>(v); }
  static T store(Acc a) { return static_cast<int32_t>(a); }
};

template <class D>
struct Sum {
  static typename D::Acc apply(typename D::Acc a, typename D::Acc b) { return a + b; }
};
// Floating-point min and max are IEEE 754-2019 minimum/maximum: a NaN wins, and -0 < +0. So
// they commute, and a result never depends on which rank reduced which slice.
template <class D>
struct Min {
  static typename D::Acc apply(typename D::Acc a, typename D::Acc b) {
    if constexpr (std::is_same_v<D, I32>) {
      return static_cast<int32_t>(b) < static_cast<int32_t>(a) ? b : a;
    } else {
      if (a != a) return a;
      return b < a || (b == a && std::signbit(b)) || b != b ? b : a;
    }
  }
};
template <class D>
struct Max {
  static typename D::Acc apply(typename D::Acc a, typename D::Acc b) {
    if constexpr (std::is_same_v<D, I32>) {
      return static_cast<int32_t>(b) > static_cast<int32_t>(a) ? b : a;
    } else {
      if (a != a) return a;
      return b > a || (b == a && !std::signbit(b)) || b != b ? b : a;
    }
  }
};

constexpr size_t kTile = 1024;

// Two sources in one pass, read both and write dst (restrict: no alias checks, so the loop is
// always vectorised). dst may be one of the sources, the in-place case; every op commutes.
template <class D, template <class> class O>
MPIRT_CLONES void combine(typename D::T* __restrict dst, const typename D::T* __restrict a, const typename D::T* __restrict b,
             size_t count) {
  for (size_t i = 0; i < count; ++i) dst[i] = D::store(O<D>::apply(D::load(a[i]), D::load(b[i])));
}
template <class D, template <class> class O>
MPIRT_CLONES void accumulate(typename D::T* __restrict dst, const typename D::T* __restrict src, size_t count) {
  for (size_t i = 0; i < count; ++i) dst[i] = D::store(O<D>::apply(D::load(dst[i]), D::load(src[i])));
}

// 16-bit floats: each tile of each source is widened to fp32 once, reduced there by the fp32
// op, and rounded once. dst may alias a source: a tile is read whole before it is written.
template <class D, template <class> class O>
void reduce_widened(void* dst_v, const void* const* srcs_v, int nsrc, size_t count) {
  using T = typename D::T;
  T* dst = static_cast<T*>(dst_v);
  float acc[kTile], next[kTile];
  for (size_t base = 0; base < count; base += kTile) {
    const size_t m = std::min(kTile, count - base);
    D::widen(static_cast<const T*>(srcs_v[0]) + base, acc, m);
    for (int j = 1; j < nsrc; ++j) {
      D::widen(static_cast<const T*>(srcs_v[j]) + base, next, m);
      for (size_t i = 0; i < m; ++i) acc[i] = O<F32>::apply(acc[i], next[i]);
    }
    D::narrow(acc, dst + base, m);
  }
}

// Two sources (the `shm` case on two ranks, and every `ring` step) take one pass. More go
// through an accumulator tile that stays in L1: the first two sources are combined as they
// are loaded and the last as it is stored.
template <class D, template <class> class O>
void reduce_tiles(void* dst_v, const void* const* srcs_v, int nsrc, size_t count) {
  using T = typename D::T;
  using Acc = typename D::Acc;
  T* dst = static_cast<T*>(dst_v);
  const T* s0 = static_cast<const T*>(srcs_v[0]);
  if (nsrc == 1) {
    if (dst != s0) std::copy(s0, s0 + count, dst);
    return;
  }
  const T* s1 = static_cast<const T*>(srcs_v[1]);
  if (nsrc == 2) {
    if (dst == s0) return accumulate<D, O>(dst, s1, count);
    if (dst == s1) return accumulate<D, O>(dst, s0, count);
    return combine<D, O>(dst, s0, s1, count);
  }
  Acc acc[kTile];
  for (size_t base = 0; base < count; base += kTile) {
    const size_t m = std::min(kTile, count - base);
    for (size_t i = 0; i < m; ++i) acc[i] = O<D>::apply(D::load(s0[base + i]), D::load(s1[base + i]));
    for (int j = 2; j < nsrc - 1; ++j) {
      const T* s = static_cast<const T*>(srcs_v[j]) + base;
      for (size_t i = 0; i < m; ++i) acc[i] = O<D>::apply(acc[i], D::load(s[i]));
    }
    const T* last = static_cast<const T*>(srcs_v[nsrc - 1]) + base;
    for (size_t i = 0; i < m; ++i) dst[base + i] = D::store(O<D>::apply(acc[i], D::load(last[i])));
  }
}

template <class D, template <class> class O>
void reduce(void* dst, const void* const* srcs, int nsrc, size_t count) {
  if constexpr (kWidened<D>)
    reduce_widened<D, O>(dst, srcs, nsrc, count);
  else
    reduce_tiles<D, O>(dst, srcs, nsrc, count);
}

template <class D>
void reduce_dispatch_op(void* dst, const void* const* srcs, int nsrc, size_t count, Op o) {
  switch (o) {
    case Op::sum:
    case Op::avg: return reduce<D, Sum>(dst, srcs, nsrc, count);
    case Op::min: return reduce<D, Min>(dst, srcs, nsrc, count);
    case Op::max: return reduce<D, Max>(dst, srcs, nsrc, count);
  }
}

template <class D>
void scale_tiles(void* buf_v, size_t count, int n) {
  using T = typename D::T;
  T* buf = static_cast<T*>(buf_v);
  if constexpr (std::is_same_v<D, I32>) {
    for (size_t i = 0; i < count; ++i) buf[i] = buf[i] / n;
  } else if constexpr (kWidened<D>) {
    const float inv = 1.0f / static_cast<float>(n);
    float tile[kTile];
    for (size_t base = 0; base < count; base += kTile) {
      const size_t m = std::min(kTile, count - base);
      D::widen(buf + base, tile, m);
      for (size_t i = 0; i < m; ++i) tile[i] *= inv;
      D::narrow(tile, buf + base, m);
    }
  } else {
    const typename D::Acc inv = static_cast<typename D::Acc>(1) / static_cast<typename D::Acc>(n);
    for (size_t i = 0; i < count; ++i) buf[i] = D::store(D::load(buf[i]) * inv);
  }
}

}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
  }
  throw std::invalid_argument("unknown dtype");
}

const char* dtype_name(DType t) {
  static const char* names[] = {"float32", "float64", "float16", "bfloat16", "int32"};
  return names[static_cast<int>(t)];
}

const char* op_name(Op o) {
  static const char* names[] = {"sum", "min", "max", "avg"};
  return names[static_cast<int>(o)];
}

bool parse_dtype(const std::string& s, DType* out) {
  static const struct {
    const char* name;
    DType t;
  } table[] = {{"float32", DType::f32}, {"float", DType::f32},   {"f32", DType::f32},
               {"float64", DType::f64}, {"double", DType::f64},  {"f64", DType::f64},
               {"float16", DType::f16}, {"half", DType::f16},    {"f16", DType::f16},
               {"bfloat16", DType::bf16}, {"bf16", DType::bf16}, {"int32", DType::i32},
               {"int", DType::i32},     {"i32", DType::i32}};
  for (const auto& e : table)
    if (s == e.name) {
      *out = e.t;
      return true;
    }
  return false;
}

bool parse_op(const std::string& s, Op* out) {
  for (int i = 0; i < kNumOps; ++i)
    if (s == op_name(static_cast<Op>(i))) {
      *out = static_cast<Op>(i);
      return true;
    }
  return false;
}

void reduce_n(void* dst, const void* const* srcs, int nsrc, size_t count, DType t, Op o) {
  switch (t) {
    case DType::f32: return reduce_dispatch_op<F32>(dst, srcs, nsrc, count, o);
    case DType::f64: return reduce_dispatch_op<F64>(dst, srcs, nsrc, count, o);
    case DType::f16: return reduce_dispatch_op<F16>(dst, srcs, nsrc, count, o);
    case DType::bf16: return reduce_dispatch_op<BF16>(dst, srcs, nsrc, count, o);
    case DType::i32: return reduce_dispatch_op<I32>(dst, srcs, nsrc, count, o);
  }
}

void reduce_into(void* dst, const void* src, size_t count, DType t, Op o) {
  const void* srcs[2] = {dst, src};
  reduce_n(dst, srcs, 2, count, t, o);
}

void scale_avg(void* buf, size_t count, DType t, int n) {
  if (n == 1) return;
  switch (t) {
    case DType::f32: return scale_tiles<F32>(buf, count, n);
    case DType::f64: return scale_tiles<F64>(buf, count, n);
    case DType::f16: return scale_tiles<F16>(buf, count, n);
    case DType::bf16: return scale_tiles<BF16>(buf, count, n);
    case DType::i32: return scale_tiles<I32>(buf, count, n);
  }
}

}  // namespace mpirt
