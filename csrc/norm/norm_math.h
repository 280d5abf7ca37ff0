// The per-element math of the norm family, shared verbatim by the CPU and CUDA kernels.
//
// Statistics: Welford's running (count, mean, M2) and Chan's merge of two partial
// states, in the accumulation type (float for 16/32-bit inputs, double for float64), so
// an input with mean 1e4 and std 1 keeps its variance to float precision.
// RMS norm reuses the same statistics: mean(x^2) = var + mean^2.
// The kernels run Welford on x - shift, with shift = the row's first value, so rounding
// scales with the row's spread rather than its magnitude (mean 1e4, std 1 stays exact to
// float precision); the mean is shift + the shifted mean.
#pragma once
#include <cmath>

#include "common/pfa.h"

namespace pfa::norm {

template <class A>
struct Welford {
  A count, mean, m2;
};

// count += 1; delta = x - mean; mean += delta / count; m2 += delta * (x - mean_new)
template <class A>
PFA_HD void welford_push(Welford<A>& w, A x) {
  w.count += A(1);
  const A delta = x - w.mean;
  w.mean += delta / w.count;
  w.m2 += delta * (x - w.mean);
}

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

// Layer norm: mean and 1/sqrt(var + eps). RMS norm: mean 0 and 1/sqrt(mean(x^2) + eps).
// `w` holds the statistics of x - shift. The mean is kept as hi + lo (hi = shift, lo = the
// shifted mean; both 0 for RMS norm) and subtracted in two steps, in forward and backward,
// so that neither loses the digits a single rounded float mean of 1e4 would.
template <class A>
PFA_HD void row_statistics(const Welford<A>& w, A shift, A eps, bool center, A& hi, A& lo, A& rstd) {
  const A var = w.count > A(0) ? w.m2 / w.count : A(0);  // biased, as torch
  if (center) {
    hi = shift;
    lo = w.mean;
    rstd = A(1) / sqrt(var + eps);
  } else {
    const A m = shift + w.mean;
    hi = lo = A(0);
    rstd = A(1) / sqrt(var + m * m + eps);
  }
}

// RMS norm from the row's sum of squares (the CUDA forward's statistics): mean 0 and
// 1/sqrt(sum_sq / n + eps). Same value as row_statistics(center = false) up to rounding.
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
