// Shared by every kernel family, host and device: the dtype codes, the host/device
// qualifier, argument checks and float16/bfloat16 <-> float conversions for the CPU.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define PFA_HD __host__ __device__ __forceinline__
#else
#define PFA_HD inline
#endif

// Hot CPU functions are compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and baseline
// x86-64, and the loader picks one (GCC function multiversioning); `flatten` inlines their
// callees into each clone. Put it on functions called from inside OpenMP regions: the
// outlined parallel body itself is compiled for the baseline only. Off under the sanitizers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(PFA_SANITIZE)
#define PFA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define PFA_CPU_CLONES
#endif

namespace pfa {

// Codes the Python layer passes for a tensor's dtype (see pyfastattn/_backend.py).
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float64: return "float64";
  }
  return "unknown";
}

// Thrown for bad arguments that reach C++ (pybind11 turns it into ValueError).
inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// Host-side storage types for half precision: the raw 16 bits, converted with the
// same rounding as the hardware (round to nearest even).
struct half_t { uint16_t bits; };
struct bfloat16_t { uint16_t bits; };

inline float to_float(half_t h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ffu, out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    out = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    out = sign;
  } else {  // subnormal: renormalize
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    out = sign | (uint32_t(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

inline half_t to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return {uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u))};
  if (ax >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds past 65504: inf
  if (ax < 0x38800000u) {                                     // result is subnormal or zero
    if (ax < 0x33000000u) return {sign};
    const uint32_t e = ax >> 23, man = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14 + (113 - e) - 1
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return {uint16_t(sign | h)};
  }
  uint32_t h = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return {uint16_t(sign | h)};
}

inline float to_float(bfloat16_t b) {
  const uint32_t x = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline bfloat16_t to_bfloat16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {uint16_t((x >> 16) | 0x40u)};  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return {uint16_t(x >> 16)};
}

inline float to_float(float f) { return f; }
inline double to_float(double d) { return d; }

// Storage -> compute -> storage, for the CPU kernels' templates.
template <class T> struct Storage;
template <> struct Storage<float> {
  using acc = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
template <> struct Storage<double> {
  using acc = double;
  static double load(double x) { return x; }
  static double store(double x) { return x; }
};
template <> struct Storage<half_t> {
  using acc = float;
  static float load(half_t x) { return to_float(x); }
  static half_t store(float x) { return to_half(x); }
};
template <> struct Storage<bfloat16_t> {
  using acc = float;
  static float load(bfloat16_t x) { return to_float(x); }
  static bfloat16_t store(float x) { return to_bfloat16(x); }
};

// Calls f(T{}) with T the CPU storage type for `dtype`.
template <class F>
void dispatch_cpu_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Float16: f(half_t{}); return;
    case DType::BFloat16: f(bfloat16_t{}); return;
  }
  throw std::invalid_argument("unsupported dtype code " + std::to_string(int(dtype)));
}

// Waking an OpenMP thread team costs microseconds, far more on a loaded machine: problems of
// fewer than about a million multiply-adds (gradcheck-sized calls, small inference batches) run
// on the calling thread. Results never depend on the thread count.
inline bool worth_threads(double work) { return work > double(1 << 20); }

}  // namespace pfa
