// The per-element math of the norm family, shared verbatim by the CPU and CUDA kernels.
//
// Layer-norm statistics: (count, mean, M2) of x - shift, with shift = the row's first value,
// so rounding scales with the row's spread rather than its magnitude (mean 1e4, std 1 stays
// exact to float precision); the mean is kept as shift + the shifted mean. Each part (a CPU
// row, a CUDA thread's values) is two-pass: the mean, then the squared deviations from it.
// Parts combine by Chan's merge or, once the row mean is known, by `m2_about`. Accumulation
// is in float for 16/32-bit inputs and double for float64. RMS norm needs only the sum of
// squares (`rms_statistics`).
#pragma once
#include <cmath>

#include "common/pfa.h"

namespace pfa::norm {

template <class A>
struct Welford {
  A count, mean, m2;
};

// Chan et al.: n = na + nb; mean = mean_a + d * nb / n; m2 = m2_a + m2_b + d^2 * na * nb / n
template <class A>
PFA_HD Welford<A> welford_merge(const Welford<A>& a, const Welford<A>& b) {
  if (a.count == A(0)) return b;
  const A n = a.count + b.count;
  const A wb = b.count / n;
  const A delta = b.mean - a.mean;
  return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.count * wb};
}

// M2 of a partial state about the mean m of the whole: m2 + count * (mean - m)^2 (the sum of
// these over disjoint parts is the M2 of their union about m).
template <class A>
PFA_HD A m2_about(const Welford<A>& w, A m) {
  const A d = w.mean - m;
  return w.m2 + w.count * d * d;
}

// Layer norm: mean and 1/sqrt(var + eps). `w` holds the statistics of x - shift. The mean is
// kept as hi + lo (hi = shift, lo = the shifted mean) and subtracted in two steps, in forward
// and backward, so that neither loses the digits a single rounded float mean of 1e4 would.
template <class A>
PFA_HD void row_statistics(const Welford<A>& w, A shift, A eps, A& hi, A& lo, A& rstd) {
  const A var = w.count > A(0) ? w.m2 / w.count : A(0);  // biased, as torch
  hi = shift;
  lo = w.mean;
  rstd = A(1) / sqrt(var + eps);
}

// RMS norm from the row's sum of squares: mean 0 (hi = lo = 0) and 1/sqrt(sum_sq / n + eps).
template <class A>
PFA_HD void rms_statistics(A sum_sq, A n, A eps, A& hi, A& lo, A& rstd) {
  hi = lo = A(0);
  rstd = A(1) / sqrt(sum_sq / n + eps);
}

// xhat = ((x - hi) - lo) * rstd
template <class A>
PFA_HD A normalized(A x, A hi, A lo, A rstd) {
  return ((x - hi) - lo) * rstd;
}

// y = xhat * w + b   (w = 1, b = 0 when absent)
template <class A>
PFA_HD A normalize_affine(A x, A hi, A lo, A rstd, A w, A b) {
  return normalized(x, hi, lo, rstd) * w + b;
}

// Backward of one row, with g = dy * w and xhat = (x - mean) * rstd:
//   dx = rstd * (g - mean(g) * [center] - xhat * mean(g * xhat))
template <class A>
PFA_HD A input_gradient(A g, A xhat, A rstd, A mean_g, A mean_gxhat, bool center) {
  return rstd * (g - (center ? mean_g : A(0)) - xhat * mean_gxhat);
}

}  // namespace pfa::norm
