// Element types, reduction ops and the host reduction kernels every algorithm shares.
//
// 16-bit floats are stored as raw bits and accumulated in fp32; int32 arithmetic wraps
// (computed in uint32) so that overflow is defined, matching MPI_INT behaviour in practice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace mpirt {

enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i32 = 4 };
enum class Op : int { sum = 0, min = 1, max = 2, avg = 3 };

constexpr int kNumDTypes = 5;
constexpr int kNumOps = 4;

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* op_name(Op o);
// Accept the spellings users know from numpy, torch and nccl-tests; false when unknown.
bool parse_dtype(const std::string& s, DType* out);
bool parse_op(const std::string& s, Op* out);

inline float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (absx < 0x38800000u) {                                              // subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t e = absx >> 23;
    uint32_t man = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14..24
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = ((absx - 0x38000000u) >> 13);
  uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float bf16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN stays NaN; branch-free, so loops vectorise
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t nearest = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16, quiet = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet : nearest);
}

// dst[i] = op(srcs[0][i], ..., srcs[nsrc-1][i]) for i < count. dst may alias srcs[0].
// Op::avg reduces as a sum here; callers divide once the full sum is known (scale_avg).
void reduce_n(void* dst, const void* const* srcs, int nsrc, size_t count, DType t, Op o);
// dst[i] = op(dst[i], src[i]).
void reduce_into(void* dst, const void* src, size_t count, DType t, Op o);
// buf[i] /= n (integer types truncate toward zero, like C division).
void scale_avg(void* buf, size_t count, DType t, int n);

}  // namespace mpirt
