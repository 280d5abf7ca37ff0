// What both drivers share: dtype-erased buffers with random fill, and the comparison that
// counts a failure.
#pragma once
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/pfa.h"

namespace emu_check {
using namespace pfa;
inline std::mt19937 rng(1234);
inline int failures = 0;

struct Buf {  // raw storage of n elements of dtype dt
  DType dt; size_t n; std::vector<uint16_t> h; std::vector<float> f;
  Buf(DType d, size_t n_) : dt(d), n(n_) { if (d == DType::Float32) f.assign(n, 0.f); else h.assign(n, 0); }
  void* p() { return dt == DType::Float32 ? (void*)f.data() : (void*)h.data(); }
  float get(size_t i) const {
    if (dt == DType::Float32) return f[i];
    return dt == DType::Float16 ? to_float(half_t{h[i]}) : to_float(bfloat16_t{h[i]});
  }
  void set(size_t i, float v) {
    if (dt == DType::Float32) f[i] = v;
    else h[i] = dt == DType::Float16 ? to_half(v).bits : to_bfloat16(v).bits;
  }
  void randomize() { std::normal_distribution<float> nd; for (size_t i = 0; i < n; ++i) set(i, nd(rng)); }
  void fill_nan() { for (size_t i = 0; i < n; ++i) set(i, NAN); }
};

// a (emulated CUDA) against b (CPU): |a - b| <= eps * max|b| + 1e-6 everywhere, eps by dtype
// (times `slack`, for quantities the two sides round differently, e.g. fp16 gradients).
inline void compare(const char* what, const Buf& a, const Buf& b, double slack = 1) {
  double mx = 0, err = 0; size_t bad = 0, worst = 0;
  for (size_t i = 0; i < a.n; ++i) mx = std::max(mx, std::fabs(double(b.get(i))));
  const double eps = slack * (a.dt == DType::Float32 ? 1e-5 : a.dt == DType::Float16 ? 2e-3 : 1.6e-2);
  for (size_t i = 0; i < a.n; ++i) {
    const double d = std::fabs(double(a.get(i)) - double(b.get(i)));
    if (!(d <= eps * mx + 1e-6)) { if (!bad || d > err) worst = i; ++bad; }
    if (d > err || d != d) err = d != d ? INFINITY : std::max(err, d);
  }
  std::printf("%-4s %-58s max|ref| %.3g  max err %.3g%s\n", bad ? "FAIL" : "ok", what, mx, err,
              bad ? (" bad=" + std::to_string(bad) + " first worst idx " + std::to_string(worst)).c_str() : "");
  failures += bad != 0;
}

}  // namespace emu_check
