// The tap/offset math of the convolution family, shared verbatim by the CPU and CUDA
// kernels (and mirrored by pyfastattn/hex for the Python side: keep them in step).
//
// Hexagonal grids use axial coordinates (r, q): the six neighbours of (r, q) are
// (r, q+-1), (r+-1, q), (r-1, q+1), (r+1, q-1). The hexagon of radius k is the offsets
// with |dr| <= k, |dq| <= k, |dr + dq| <= k: T = 3k(k+1)+1 taps. Tap order (that of
// pyfastattn.hex.taps(k) and the weight's last dim): row-major, dr from -k to k, then dq
// increasing over [max(-k, -k-dr), min(k, k-dr)]. It is the order of the non-zero
// entries of the (2k+1)x(2k+1) masked kernel flattened row-major, so a hex weight maps
// onto a square F.conv2d kernel at [dr+k, dq+k].
#pragma once
#include <cstdint>

#include "common/pfa.h"

namespace pfa::conv {

enum class TapKind : int { Grid = 0, Hex = 1 };

PFA_HD int iabs(int v) { return v < 0 ? -v : v; }
PFA_HD int imax(int a, int b) { return a > b ? a : b; }

PFA_HD int hex_tap_count(int k) { return 3 * k * (k + 1) + 1; }
// Taps in hex row dr (|dr| <= k): 2k+1-|dr|, starting at dq = max(-k, -k-dr).
PFA_HD int hex_row_width(int k, int dr) { return 2 * k + 1 - iabs(dr); }
PFA_HD int hex_row_first_dq(int k, int dr) { return imax(-k, -k - dr); }
// Tap index -> (dr, dq); O(k), kernels call it once per tap to fill a table.
PFA_HD void hex_tap_offset(int k, int t, int& dr, int& dq) {
  int r = -k;
  while (t >= hex_row_width(k, r)) {
    t -= hex_row_width(k, r);
    ++r;
  }
  dr = r;
  dq = hex_row_first_dq(k, r) + t;
}

// A tap set: the kh x kw grid of conv2d (offsets (i*dil_h, j*dil_w), t = i*kw + j) or the
// hexagon of radius `radius` (offsets as above; kh = kw = 2*radius+1 is its bounding box).
struct TapSet {
  TapKind kind = TapKind::Grid;
  int kh = 1, kw = 1;
  int dil_h = 1, dil_w = 1;
  int radius = 0;

  PFA_HD int count() const { return kind == TapKind::Hex ? hex_tap_count(radius) : kh * kw; }
  PFA_HD void offset(int t, int& dr, int& dc) const {
    if (kind == TapKind::Hex) {
      hex_tap_offset(radius, t, dr, dc);
    } else {
      dr = (t / kw) * dil_h;
      dc = (t % kw) * dil_w;
    }
  }
  // Bounding box of the offsets: dr in [min_dr, max_dr], dc in [min_dc, max_dc].
  PFA_HD int min_dr() const { return kind == TapKind::Hex ? -radius : 0; }
  PFA_HD int max_dr() const { return kind == TapKind::Hex ? radius : (kh - 1) * dil_h; }
  PFA_HD int min_dc() const { return kind == TapKind::Hex ? -radius : 0; }
  PFA_HD int max_dc() const { return kind == TapKind::Hex ? radius : (kw - 1) * dil_w; }
};

PFA_HD TapSet grid_taps(int kh, int kw, int dil_h, int dil_w) {
  TapSet s;
  s.kind = TapKind::Grid;
  s.kh = kh;
  s.kw = kw;
  s.dil_h = dil_h;
  s.dil_w = dil_w;
  return s;
}
PFA_HD TapSet hex_taps(int radius) {
  TapSet s;
  s.kind = TapKind::Hex;
  s.radius = radius;
  s.kh = s.kw = 2 * radius + 1;
  return s;
}

// Output -> input along one axis: in = out * stride - pad + off.
PFA_HD int64_t in_coord(int64_t out, int stride, int pad, int off) {
  return out * int64_t(stride) - pad + off;
}
// Input -> output along one axis, for the gather form of the backward passes: the output
// coordinate whose tap `off` reads `in`, when there is one inside [0, out_size).
PFA_HD bool out_coord(int64_t in, int stride, int pad, int off, int64_t out_size, int64_t& out) {
  const int64_t num = in + pad - off;
  if (num < 0 || num % stride != 0) return false;
  out = num / stride;
  return out < out_size;
}
// Range of outputs [lo, hi) whose tap `off` reads an input in [0, in_size): a kernel
// loops over these and needs no bounds test inside.
PFA_HD void valid_out_range(int64_t in_size, int stride, int pad, int off, int64_t out_size,
                            int64_t& lo, int64_t& hi) {
  // 0 <= out*stride - pad + off < in_size
  const int64_t a = int64_t(pad) - off;  // out*stride >= a
  lo = a <= 0 ? 0 : (a + stride - 1) / stride;
  const int64_t b = in_size + pad - off;  // out*stride < b
  hi = b <= 0 ? 0 : (b + stride - 1) / stride;
  if (hi > out_size) hi = out_size;
  if (lo > hi) lo = hi;
}

// Max pooling: does v replace the current best? The first NaN wins and stays (as torch).
template <class A>
PFA_HD bool pool_max_takes(A v, A best, bool have) {
  if (!have) return true;
  if (best != best) return false;
  return v > best || v != v;
}

// Batch slice of dw/db partial chunk j: samples [begin, end).
PFA_HD int64_t chunk_begin(int64_t j, int64_t chunks, int64_t n) { return j * n / chunks; }

}  // namespace pfa::conv
