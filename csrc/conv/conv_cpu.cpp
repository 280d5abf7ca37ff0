// CPU kernels of the convolution family.
//
// Every convolution here is reduced to one register-blocked micro-GEMM (common/cpu_gemm.h) over
// packed tiles:
//   C[m][n] (+)= sum_{tap s} sum_k A_s[m*am + k*ak] * B_s[k*bk + n]
// - forward:        m = output position, n = output channel, k = (tap, input channel);
//                   A_s is the channel-last input shifted by tap s, B_s the tap's weight slice.
//                   With few input channels the roles swap: m = output channel, n = position
//                   (vectors along positions), B_s the planar input shifted by tap s.
// - backward-input: the same with dy as input and the transposed weight, once per stride
//                   phase of dx (only the taps that land on that phase take part).
// - backward-weight: per tap, m = input channel, n = output channel, k = position.
// Positions are flattened over a zero-padded plane with row pitch Wq (flat_rows), so every
// tap becomes one constant shift (conv_math.h's coordinate map); the few columns past the
// real width are computed and dropped. A stride s splits the input into s*s phase planes so
// that a tap stays a constant shift inside one plane. Channel-last tiles are packed from and
// unpacked to NCHW with register-block transposes.
//
// OpenMP runs over samples (and groups); dw/db use weight_chunks() fixed batch slices,
// each summed by one thread in sample order, then the chunks in chunk order, so results do
// not depend on the thread count. float16/bfloat16 are packed to float and computed in
// float, float64 in double. The micro-GEMM is compiled for AVX-512, AVX2 and baseline
// x86-64 and picked at run time.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_gemm.h"
#include "conv/conv.h"
#include "conv/conv_math.h"

namespace pfa::conv {

int64_t weight_chunks(int64_t N, int64_t work_per_sample, bool cuda) {
  if (N <= 0) return 0;
  // Enough slices to keep every core (or SM) busy; slices big enough that the partials
  // stay small next to the work.
  const int64_t target = cuda ? 128 : 32;
  const int64_t min_work = cuda ? (int64_t(1) << 16) : (int64_t(1) << 14);
  const int64_t by_work = std::max<int64_t>(1, N * std::max<int64_t>(work_per_sample, 1) / min_work);
  return std::max<int64_t>(1, std::min({N, target, by_work}));
}

namespace {

template <class T>
using Acc = typename Storage<T>::acc;

constexpr int64_t kPosBlock = 64;  // positions per block of the weight-gradient GEMMs

using cpu::Gemm;
using cpu::gemm_body;
using cpu::kLanes;
using cpu::Vec;

PFA_CPU_CLONES void gemm_run(const Gemm<float>& g) { gemm_body(g); }
PFA_CPU_CLONES void gemm_run(const Gemm<double>& g) { gemm_body(g); }

// A tap GEMM in chunks of taps whose B panels (K x NP each) fit in L1 together: every row
// tile re-reads B, so B read from L1 instead of L2; A's rows are re-read once per chunk.
template <class A>
void gemm_run_in_tap_chunks(Gemm<A> g) {
  constexpr int64_t kL1PanelBytes = 24 * 1024;
  const int per = int(std::max<int64_t>(1, kL1PanelBytes / (g.K * g.NP * int64_t(sizeof(A)))));
  const A* const* a = g.a;
  const A* const* b = g.b;
  const int ntaps = g.ntaps;
  for (int s = 0; s < ntaps; s += per) {
    g.a = a + s;
    g.b = b + s;
    g.ntaps = std::min(per, ntaps - s);
    gemm_run(g);
    g.accumulate = true;  // later chunks add to the first's
  }
}

// ---------------------------------------------------------------------------------------
// Transpose: dst[(c + c / run * gap)*dst_ld + r] = src[r*src_ld + c] for r < rows, c < cols,
// in L x L register blocks (L = vector lanes): after swapping bit S of the row and column index
// for S = L/2, ..., 1, element (r, c) sits at (c, r). Moves between channel-last tiles and NCHW
// planes. `gap` rows of dst after every `run` (rows of a padded plane past a grid row's end)
// are left as they are; run = cols, gap = 0: a plain transpose.

// Rows a and b = a + S of a block: the elements whose column has bit S set in a trade places
// with those whose column has it clear in b.
template <class V, int L, int S, int... J>
__attribute__((always_inline)) inline void swap_index_bit(V& a, V& b, std::integer_sequence<int, J...>) {
  const V lo = __builtin_shufflevector(a, b, ((J & S) ? L + J - S : J)...);
  const V hi = __builtin_shufflevector(a, b, ((J & S) ? L + J : J + S)...);
  a = lo;
  b = hi;
}

template <class V, int L, int S>
__attribute__((always_inline)) inline void swap_index_bits_from(V* v) {
  for (int i = 0; i < L; ++i)
    if (!(i & S)) swap_index_bit<V, L, S>(v[i], v[i + S], std::make_integer_sequence<int, L>{});
  if constexpr (S > 1) swap_index_bits_from<V, L, S / 2>(v);
}

// dst row of source column c = c0 + i, stepped through a block without dividing: (q, rem) =
// (c / run, c % run).
struct GappedRows {
  int64_t run, gap, q, rem;
  GappedRows(int64_t run_, int64_t gap_, int64_t c0) : run(run_), gap(gap_), q(c0 / run_), rem(c0 % run_) {}
  int64_t row(int64_t c) const { return c + q * gap; }
  void next() {
    if (++rem == run) rem = 0, ++q;
  }
};

template <class A>
__attribute__((always_inline)) inline void transpose_body(const A* src, int64_t src_ld, A* dst, int64_t dst_ld,
                                                          int64_t rows, int64_t cols, int64_t run, int64_t gap) {
  using V = typename Vec<A>::type;
  constexpr int L = kLanes<A>;
  int64_t r0 = 0;
  for (; r0 + L <= rows; r0 += L) {
    int64_t c0 = 0;
    for (; c0 + L <= cols; c0 += L) {
      V v[L];
      for (int i = 0; i < L; ++i) std::memcpy(&v[i], src + (r0 + i) * src_ld + c0, sizeof(V));
      swap_index_bits_from<V, L, L / 2>(v);
      GappedRows d(run, gap, c0);
      for (int i = 0; i < L; ++i, d.next()) std::memcpy(dst + d.row(c0 + i) * dst_ld + r0, &v[i], sizeof(V));
    }
    for (GappedRows d(run, gap, c0); c0 < cols; ++c0, d.next())
      for (int i = 0; i < L; ++i) dst[d.row(c0) * dst_ld + r0 + i] = src[(r0 + i) * src_ld + c0];
  }
  for (; r0 < rows; ++r0) {
    GappedRows d(run, gap, 0);
    for (int64_t c = 0; c < cols; ++c, d.next()) dst[d.row(c) * dst_ld + r0] = src[r0 * src_ld + c];
  }
}

PFA_CPU_CLONES void transpose(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows,
                              int64_t cols, int64_t run, int64_t gap) {
  transpose_body(src, src_ld, dst, dst_ld, rows, cols, run, gap);
}
PFA_CPU_CLONES void transpose(const double* src, int64_t src_ld, double* dst, int64_t dst_ld, int64_t rows,
                              int64_t cols, int64_t run, int64_t gap) {
  transpose_body(src, src_ld, dst, dst_ld, rows, cols, run, gap);
}

// Channel planes out of a padded tile, plus a per-plane bias (none: 0):
//   dst[(c*rows + r)*cols + j] = src[c*plane_ld + r*row_ld + j] + bias[c]
// src holds planes*plane_ld elements; dst, planes*rows*cols, and neither overlaps the other.
// A short row (at most 64 bytes: the 7- or 14-wide rows of small grids) is one vector from its
// start: the lanes past `cols` spill into the rows after it in dst, which are written later
// (rows go in order), so every cache line of dst takes ~one store; the last rows, whose vector
// would run past either buffer, and longer rows go in the widest vectors that fit, a row's
// last vector ending at the row's end and overlapping the one before it.
template <class A, int Bytes>
__attribute__((always_inline)) inline void add_vector(const A* src, A* dst, A add) {
  typedef A V __attribute__((vector_size(Bytes)));
  V v;
  std::memcpy(&v, src, sizeof(V));
  v += add;
  std::memcpy(dst, &v, sizeof(V));
}

template <class A, int Bytes>
__attribute__((always_inline)) inline void add_row_in_vectors(const A* src, A* dst, int64_t n, A add) {
  constexpr int64_t L = Bytes / sizeof(A);
  for (int64_t j = 0;; j += L) {
    if (j + L > n) j = n - L;
    add_vector<A, Bytes>(src + j, dst + j, add);
    if (j + L == n) return;
  }
}

template <class A>
__attribute__((always_inline)) inline void add_planes_body(const A* src, int64_t plane_ld, int64_t row_ld, A* dst,
                                                           int64_t planes, int64_t rows, int64_t cols,
                                                           const A* bias) {
  const int64_t bytes = cols * int64_t(sizeof(A));
  const int64_t spill = bytes <= 16 ? 16 : bytes <= 32 ? 32 : 64;  // one vector per row, if it fits
  const int64_t L = spill / int64_t(sizeof(A));
  const int64_t src_end = planes * plane_ld, dst_end = planes * rows * cols;
  for (int64_t c = 0; c < planes; ++c) {
    const A add = bias ? bias[c] : A(0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t so = c * plane_ld + r * row_ld, dof = (c * rows + r) * cols;
      const A* s = src + so;
      A* d = dst + dof;
      if (bytes <= 64 && so + L <= src_end && dof + L <= dst_end) {
        if (spill == 16) add_vector<A, 16>(s, d, add);
        else if (spill == 32) add_vector<A, 32>(s, d, add);
        else add_vector<A, 64>(s, d, add);
      } else if (bytes >= 64) {
        add_row_in_vectors<A, 64>(s, d, cols, add);
      } else if (bytes >= 32) {
        add_row_in_vectors<A, 32>(s, d, cols, add);
      } else if (bytes >= 16) {
        add_row_in_vectors<A, 16>(s, d, cols, add);
      } else {
        for (int64_t j = 0; j < cols; ++j) d[j] = s[j] + add;
      }
    }
  }
}

PFA_CPU_CLONES void add_planes(const float* src, int64_t plane_ld, int64_t row_ld, float* dst, int64_t planes,
                               int64_t rows, int64_t cols, const float* bias) {
  add_planes_body(src, plane_ld, row_ld, dst, planes, rows, cols, bias);
}
PFA_CPU_CLONES void add_planes(const double* src, int64_t plane_ld, int64_t row_ld, double* dst, int64_t planes,
                               int64_t rows, int64_t cols, const double* bias) {
  add_planes_body(src, plane_ld, row_ld, dst, planes, rows, cols, bias);
}

// Bias-gradient sums of a channel-last tile of rows x cols (cols a multiple of the vector
// lanes): dst[j] += sum_{r < rows} src[r*cols + j], each column in four interleaved partial
// sums (a fixed order: the result does not depend on the thread count).
template <class A>
__attribute__((always_inline)) inline void add_column_sums_body(const A* src, int64_t rows, int64_t cols, A* dst) {
  using V = typename Vec<A>::type;
  constexpr int L = kLanes<A>;
  for (int64_t j = 0; j < cols; j += L) {
    V s[4] = {}, v;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4)
      for (int u = 0; u < 4; ++u) {
        std::memcpy(&v, src + (r + u) * cols + j, sizeof(V));
        s[u] += v;
      }
    for (; r < rows; ++r) {
      std::memcpy(&v, src + r * cols + j, sizeof(V));
      s[0] += v;
    }
    V d;
    std::memcpy(&d, dst + j, sizeof(V));
    d += (s[0] + s[1]) + (s[2] + s[3]);
    std::memcpy(dst + j, &d, sizeof(V));
  }
}
PFA_CPU_CLONES void add_column_sums(const float* src, int64_t rows, int64_t cols, float* dst) {
  add_column_sums_body(src, rows, cols, dst);
}
PFA_CPU_CLONES void add_column_sums(const double* src, int64_t rows, int64_t cols, double* dst) {
  add_column_sums_body(src, rows, cols, dst);
}

template <class A>
int64_t padded_lanes(int64_t n) {
  return (n + kLanes<A> - 1) / kLanes<A> * kLanes<A>;
}

// floor division / modulo for possibly negative offsets
inline int64_t fdiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// ---------------------------------------------------------------------------------------
// Packing: a channel-last, zero-padded plane in the accumulation type.
//   dst[(ii*cols + jj)*cpitch + c] = src[c, s_h*(i0+ii) + ph, s_w*jj + pw]
// (zero outside the source or for c >= C).
struct PlaneSpec {
  int64_t C = 0, H = 0, W = 0;  // source
  int64_t sC = 0, sH = 0;       // source strides, cols contiguous
  int sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t i0 = 0, rows = 0, cols = 0, cpitch = 0;
};

// Writes only the cells of the plane that come from the source: every other cell of dst
// (rows and columns outside the source, channels past C) must already be zero. Each caller
// packs one geometry per pass into a per-thread buffer that starts zeroed, so the zeros
// written once stay in place for every sample; re-zeroing them per sample cost more than
// packing the small grids' interiors.
// A source with whole contiguous rows goes in one transpose, straight into the plane's rows
// (skipping the columns past the source's width); it writes channels below C only.
template <class T, class A = Acc<T>>
void pack_plane_over_zeros(const T* src, const PlaneSpec& s, A* dst) {
  // Columns jj in [0, jb) land inside the source row: iw = sw*jj + pw in [0, W).
  const int64_t jb = std::min(s.cols, s.W - s.pw <= 0 ? int64_t(0) : (s.W - s.pw + s.sw - 1) / s.sw);
  // Rows ii in [ia, ib) land inside the source: ih = sh*(i0 + ii) + ph in [0, H).
  const int64_t ia = std::clamp<int64_t>(fdiv(-s.ph + s.sh - 1, s.sh) - s.i0, 0, s.rows);
  const int64_t ib = std::clamp<int64_t>(fdiv(s.H - s.ph + s.sh - 1, s.sh) - s.i0, ia, s.rows);
  if constexpr (std::is_same_v<T, A>) {
    if (s.C > 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.sH == s.W && jb == s.W) {
      transpose(src + (s.i0 + ia) * s.W, s.sC, dst + ia * s.cols * s.cpitch, s.cpitch, s.C, (ib - ia) * s.W, s.W,
                s.cols - s.W);
      return;
    }
  }
  for (int64_t ii = ia; ii < ib; ++ii) {
    const T* srow = src + (s.sh * (s.i0 + ii) + s.ph) * s.sH + s.pw;
    A* drow = dst + ii * s.cols * s.cpitch;
    // Channel-outer: contiguous reads along the row, writes strided by cpitch (in L1).
    for (int64_t c = 0; c < s.C; ++c) {
      const T* sp = srow + c * s.sC;
      A* d = drow + c;
      for (int64_t jj = 0; jj < jb; ++jj) d[jj * s.cpitch] = Storage<T>::load(sp[jj * s.sw]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Flattened planes: a tap becomes one constant shift of the flat position when the plane
// rows are read at one pitch. An output row of out_w positions reads source columns
// [lo, out_w - 1 + hi] of a source src_w wide; the zero columns past the source serve as
// this row's right halo and, wrapped, as the next row's left halo, so the pitch is
// max(src_w - lo, out_w + max(hi, 0)) rather than out_w + hi - lo (never below out_w: the
// output rows themselves must not overlap, e.g. with padding past the kernel, where hi < 0).
// `lead` zero positions before row 0 take the first row's wrapped reads (shifts may be
// negative), one zero row after the last takes the dropped columns' reads past it.
struct FlatRows {
  int64_t pitch = 0, lead = 0;
};
FlatRows flat_rows(int64_t src_w, int64_t out_w, int64_t lo, int64_t hi) {
  return {std::max(src_w - lo, out_w + std::max<int64_t>(hi, 0)), std::max<int64_t>(0, -lo)};
}

// Tap convolution geometry (forward and backward-weight): tap t reads phase plane
// plane[t] at flat position lead + shift[t] + oh*Wq + ow (in positions of the plane).
struct FwdGeometry {
  int T = 0;
  int64_t Wq = 0, lead = 0, rows = 0;  // pitch, zero positions before row 0, rows
  int64_t qd_lo = 0;
  std::vector<int> plane;
  std::vector<int64_t> shift;
  int64_t plane_positions() const { return lead + rows * Wq; }
};

FwdGeometry fwd_geometry(const TapConvParams& p) {
  FwdGeometry g;
  g.T = p.taps.count();
  std::vector<int64_t> qd(g.T), qc(g.T), rd(g.T), rc(g.T);
  int64_t qd_hi = 0, qc_lo = 0, qc_hi = 0;
  for (int t = 0; t < g.T; ++t) {
    int dr, dc;
    p.taps.offset(t, dr, dc);
    const int64_t d = dr - p.pad_h, e = dc - p.pad_w;
    qd[t] = fdiv(d, p.stride_h);
    rd[t] = d - qd[t] * p.stride_h;
    qc[t] = fdiv(e, p.stride_w);
    rc[t] = e - qc[t] * p.stride_w;
    if (t == 0 || qd[t] < g.qd_lo) g.qd_lo = qd[t];
    if (t == 0 || qd[t] > qd_hi) qd_hi = qd[t];
    if (t == 0 || qc[t] < qc_lo) qc_lo = qc[t];
    if (t == 0 || qc[t] > qc_hi) qc_hi = qc[t];
  }
  const FlatRows fr = flat_rows((p.W + p.stride_w - 1) / p.stride_w, p.Wo, qc_lo, qc_hi);
  g.Wq = fr.pitch;
  g.lead = fr.lead;
  g.rows = p.Ho + qd_hi - g.qd_lo + 1;
  g.plane.resize(g.T);
  g.shift.resize(g.T);
  for (int t = 0; t < g.T; ++t) {
    g.plane[t] = int(rd[t] * p.stride_w + rc[t]);
    g.shift[t] = (qd[t] - g.qd_lo) * g.Wq + qc[t];
  }
  return g;
}

// Phase plane (a, b) of C input channels of x in the layout of `g`, channel pitch C.
PlaneSpec input_phase_spec(const TapConvParams& p, const FwdGeometry& g, int a, int b, int64_t C) {
  PlaneSpec s;
  s.C = C;
  s.H = p.H;
  s.W = p.W;
  s.sC = p.x_strides.c;
  s.sH = p.x_strides.h;
  s.sh = p.stride_h;
  s.sw = p.stride_w;
  s.ph = a;
  s.pw = b;
  s.i0 = g.qd_lo;
  s.rows = g.rows;
  s.cols = g.Wq;
  s.cpitch = C;
  return s;
}

// Packs sample n, group grp of x into the s_h*s_w phase planes of `g` (the lead positions
// are left as they are: zero).
template <class T, class A = Acc<T>>
void pack_input_planes(const TapConvParams& p, const FwdGeometry& g, int64_t n, int64_t grp,
                       int64_t Cig, A* planes) {
  const T* x = static_cast<const T*>(p.x) + n * p.x_strides.n + grp * Cig * p.x_strides.c;
  const int64_t plane_elems = g.plane_positions() * Cig;
  for (int a = 0; a < p.stride_h; ++a)
    for (int b = 0; b < p.stride_w; ++b)
      pack_plane_over_zeros<T>(x, input_phase_spec(p, g, a, b, Cig),
                               planes + (a * p.stride_w + b) * plane_elems + g.lead * Cig);
}

// Below kColsBelow input channels per group the passes take positions as the vector dimension
// (the per-tap channel count is too short to vectorize). The backward-weight pass then
// stacks the taps (im2col, position-minor, on the exact output grid):
//   colT[t*Cig + ci][oh*Wo + ow] = x[ci, oh*s - pad + dr_t, ow*s - pad + dc_t]   (0 outside)
constexpr int64_t kColsBelow = 8;

template <class T, class A = Acc<T>>
void im2col_rows(const TapConvParams& p, int64_t n, int64_t grp, int64_t Cig, A* colT) {
  const T* x = static_cast<const T*>(p.x) + n * p.x_strides.n + grp * Cig * p.x_strides.c;
  const int T_ = p.taps.count();
  for (int t = 0; t < T_; ++t) {
    int dr, dc;
    p.taps.offset(t, dr, dc);
    int64_t oa, ob;  // outputs whose column lands inside the input
    valid_out_range(p.W, p.stride_w, p.pad_w, dc, p.Wo, oa, ob);
    for (int64_t ci = 0; ci < Cig; ++ci) {
      A* row = colT + (t * Cig + ci) * p.Ho * p.Wo;
      const T* xc = x + ci * p.x_strides.c;
      for (int64_t oh = 0; oh < p.Ho; ++oh) {
        A* d = row + oh * p.Wo;
        const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, dr);
        if (ih < 0 || ih >= p.H) {
          std::fill(d, d + p.Wo, A(0));
          continue;
        }
        std::fill(d, d + oa, A(0));
        std::fill(d + ob, d + p.Wo, A(0));
        const T* xr = xc + ih * p.x_strides.h + in_coord(0, p.stride_w, p.pad_w, dc);
        for (int64_t ow = oa; ow < ob; ++ow) d[ow] = Storage<T>::load(xr[ow * p.stride_w]);
      }
    }
  }
}

// wc[g][co][t*Cig + ci] (row pitch KcP >= Kc, zeros past Kc).
template <class T, class A = Acc<T>>
std::vector<A> pack_weight_rows(const TapConvParams& p, int64_t KcP) {
  const int64_t G = p.groups, Cig = p.Cin / G, Cog = p.Cout / G;
  const int T_ = p.taps.count();
  std::vector<A> wc(size_t(G * Cog * KcP), A(0));
  const T* w = static_cast<const T*>(p.w);
  for (int64_t co = 0; co < G * Cog; ++co)
    for (int64_t ci = 0; ci < Cig; ++ci)
      for (int t = 0; t < T_; ++t)
        wc[size_t(co * KcP + t * Cig + ci)] = Storage<T>::load(w[(co * Cig + ci) * T_ + t]);
  return wc;
}

// A channel-last GEMM tile back to NCHW planes, plus the bias when given:
//   out[c*Ho*Wo + oh*Wo + ow] = tile[(oh*pitch + ow)*cpitch + c] + bias[c]   (c < C)
// The float/double path transposes the whole tile into a channel-major `stage` (per thread,
// resized as needed; it stays in cache, so the transpose's scattered stores do too), then
// writes each output row as one contiguous run with the bias added: `out`, which goes to
// memory, only gets sequential stores.
template <class T, class A = Acc<T>>
void unpack_tile(const A* tile, int64_t pitch, int64_t cpitch, int64_t Ho, int64_t Wo, int64_t C, const T* bias,
                 T* out, std::vector<A>& stage) {
  const int64_t HW = Ho * Wo;
  if constexpr (std::is_same_v<T, A>) {
    const int64_t rows = Ho * pitch, ld = padded_lanes<A>(rows);
    if (stage.size() < size_t(C * ld)) stage.resize(size_t(C * ld));
    transpose(tile, cpitch, stage.data(), ld, rows, C, C, 0);
    add_planes(stage.data(), ld, pitch, out, C, Ho, Wo, bias);
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const A b = bias ? Storage<T>::load(bias[c]) : A(0);
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow)
          out[c * HW + oh * Wo + ow] = Storage<T>::store(tile[size_t((oh * pitch + ow) * cpitch + c)] + b);
    }
  }
}

// Multiply-adds of one pass (each pass of a layer does about as many), for worth_threads.
double work_of(const TapConvParams& p) {
  return double(p.N) * p.Cout * p.Ho * p.Wo * (p.Cin / std::max<int64_t>(1, p.groups)) * p.taps.count();
}
double work_of(const TapPoolParams& p) { return double(p.N) * p.C * p.Ho * p.Wo * p.taps.count(); }
double work_of(const IndexedConvParams& p) { return double(p.N) * p.Cout * p.P_out * p.T * p.Cin; }

// Few input channels: positions are the vector dimension. Each input channel is packed as
// its own flattened plane (pitch Wq, as fwd_geometry), so tap t reads every plane at one
// shift and no im2col is needed (m = oh*Wq + ow):
//   y[co][m] = bias[co] + sum_t sum_ci wc[co][t*Cig + ci] * plane[phase_t][ci][lead + shift_t + m]
template <class T>
void tap_conv_forward_cols(const TapConvParams& p) {
  using A = Acc<T>;
  const int64_t G = p.groups, Cig = p.Cin / G, Cog = p.Cout / G;
  const FwdGeometry geo = fwd_geometry(p);
  const int T_ = geo.T;
  const int64_t Kc = T_ * Cig;
  const std::vector<A> wc = pack_weight_rows<T>(p, Kc);
  const int64_t M = p.Ho * geo.Wq, MP = padded_lanes<A>(M);
  const int64_t PP = geo.plane_positions() + (MP - M);  // + zeros for the padded columns' reads
  const int nplanes = p.stride_h * p.stride_w;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> planes(size_t(nplanes * Cig * PP), A(0));
    std::vector<A> cbuf(size_t(Cog * MP));
    std::vector<const A*> ap(T_), bp(T_);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < p.N * G; ++item) {
      const int64_t n = item / G, grp = item % G;
      const T* x = static_cast<const T*>(p.x) + n * p.x_strides.n + grp * Cig * p.x_strides.c;
      for (int a = 0; a < p.stride_h; ++a)
        for (int b = 0; b < p.stride_w; ++b)
          for (int64_t ci = 0; ci < Cig; ++ci)
            pack_plane_over_zeros<T>(x + ci * p.x_strides.c, input_phase_spec(p, geo, a, b, 1),
                                     planes.data() + ((a * p.stride_w + b) * Cig + ci) * PP + geo.lead);
      for (int t = 0; t < T_; ++t) {
        ap[t] = wc.data() + grp * Cog * Kc + t * Cig;
        bp[t] = planes.data() + geo.plane[t] * Cig * PP + geo.lead + geo.shift[t];
      }
      Gemm<A> gm;
      gm.M = Cog;
      gm.NP = MP;
      gm.K = Cig;
      gm.ntaps = T_;
      gm.a = ap.data();
      gm.b = bp.data();
      gm.am = Kc;
      gm.ak = 1;
      gm.bk = PP;
      gm.c = cbuf.data();
      gm.cm = MP;
      gemm_run(gm);
      T* yg = y + (n * p.Cout + grp * Cog) * p.Ho * p.Wo;
      if constexpr (std::is_same_v<T, A>) {
        add_planes(cbuf.data(), MP, geo.Wq, yg, Cog, p.Ho, p.Wo, bias ? bias + grp * Cog : nullptr);
      } else {
        for (int64_t co = 0; co < Cog; ++co) {
          const A b = bias ? Storage<T>::load(bias[grp * Cog + co]) : A(0);
          for (int64_t oh = 0; oh < p.Ho; ++oh)
            for (int64_t ow = 0; ow < p.Wo; ++ow)
              yg[(co * p.Ho + oh) * p.Wo + ow] = Storage<T>::store(cbuf[size_t(co * MP + oh * geo.Wq + ow)] + b);
        }
      }
    }
  }
}

// y = bias + sum_t sum_ci w[co, ci, t] * x[ci, oh*s - pad + dr_t, ow*s - pad + dc_t]
template <class T>
void tap_conv_forward_typed(const TapConvParams& p) {
  using A = Acc<T>;
  const int64_t G = p.groups, Cig = p.Cin / G, Cog = p.Cout / G;
  if (Cig < kColsBelow) return tap_conv_forward_cols<T>(p);
  const int64_t CogP = padded_lanes<A>(Cog);
  const FwdGeometry geo = fwd_geometry(p);
  const int T_ = geo.T;
  // Packed weights: wf[g][t][ci][co] (co padded with zeros).
  std::vector<A> wf(size_t(G * T_ * Cig * CogP), A(0));
  const T* w = static_cast<const T*>(p.w);
  for (int64_t grp = 0; grp < G; ++grp)
    for (int64_t co = 0; co < Cog; ++co)
      for (int64_t ci = 0; ci < Cig; ++ci)
        for (int t = 0; t < T_; ++t)
          wf[size_t(((grp * T_ + t) * Cig + ci) * CogP + co)] =
              Storage<T>::load(w[((grp * Cog + co) * Cig + ci) * T_ + t]);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t plane_elems = geo.plane_positions() * Cig;
  const int nplanes = p.stride_h * p.stride_w;
  const int64_t M = p.Ho * geo.Wq;
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> planes(size_t(nplanes * plane_elems)), stage;
    std::vector<A> cbuf(size_t(M * CogP));
    std::vector<const A*> ap(T_), bp(T_);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < p.N * G; ++item) {
      const int64_t n = item / G, grp = item % G;
      pack_input_planes<T>(p, geo, n, grp, Cig, planes.data());
      for (int t = 0; t < T_; ++t) {
        ap[t] = planes.data() + geo.plane[t] * plane_elems + (geo.lead + geo.shift[t]) * Cig;
        bp[t] = wf.data() + (grp * T_ + t) * Cig * CogP;
      }
      Gemm<A> gm;
      gm.M = M;
      gm.NP = CogP;
      gm.K = Cig;
      gm.ntaps = T_;
      gm.a = ap.data();
      gm.b = bp.data();
      gm.am = Cig;
      gm.ak = 1;
      gm.bk = CogP;
      gm.c = cbuf.data();
      gm.cm = CogP;
      gemm_run_in_tap_chunks(gm);
      unpack_tile<T>(cbuf.data(), geo.Wq, CogP, p.Ho, p.Wo, Cog, bias ? bias + grp * Cog : nullptr,
                     y + (n * p.Cout + grp * Cog) * p.Ho * p.Wo, stage);
    }
  }
}

// Few input channels: gT[(t, ci)][p] = sum_co w[co, ci, t] * dy[co, p] with positions as the
// vector dimension, then each tap row adds back into the input cells it read (col2im, row
// segments in a fixed order per sample):
//   dx[ci, oh*s - pad + dr_t, ow*s - pad + dc_t] += gT[(t, ci)][oh*Wo + ow]
template <class T>
void tap_conv_backward_input_cols(const TapConvParams& p) {
  using A = Acc<T>;
  const int64_t G = p.groups, Cig = p.Cin / G, Cog = p.Cout / G;
  const int T_ = p.taps.count();
  const int64_t Kc = T_ * Cig, KcP = padded_lanes<A>(Kc);
  const std::vector<A> wc = pack_weight_rows<T>(p, KcP);
  const int64_t M = p.Ho * p.Wo, MP = padded_lanes<A>(M);
  T* dx = static_cast<T*>(p.dx);
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> dyT(size_t(Cog * MP), A(0));  // dy[co][p], planar
    std::vector<A> g(size_t(Kc * MP));
    std::vector<A> acc(size_t(Cig * p.H * p.W));
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < p.N * G; ++item) {
      const int64_t n = item / G, grp = item % G;
      const T* dy = static_cast<const T*>(p.dy) + n * p.dy_strides.n + grp * Cog * p.dy_strides.c;
      for (int64_t co = 0; co < Cog; ++co)
        for (int64_t oh = 0; oh < p.Ho; ++oh) {
          const T* src = dy + co * p.dy_strides.c + oh * p.dy_strides.h;
          A* d = dyT.data() + co * MP + oh * p.Wo;
          for (int64_t ow = 0; ow < p.Wo; ++ow) d[ow] = Storage<T>::load(src[ow]);
        }
      const A* a0 = wc.data() + grp * Cog * KcP;
      const A* b0 = dyT.data();
      Gemm<A> gm;
      gm.M = Kc;
      gm.NP = MP;
      gm.K = Cog;
      gm.a = &a0;
      gm.b = &b0;
      gm.am = 1;
      gm.ak = KcP;
      gm.bk = MP;
      gm.c = g.data();
      gm.cm = MP;
      gemm_run(gm);
      std::fill(acc.begin(), acc.end(), A(0));
      for (int t = 0; t < T_; ++t) {
        int dr, dc;
        p.taps.offset(t, dr, dc);
        int64_t oa, ob;
        valid_out_range(p.W, p.stride_w, p.pad_w, dc, p.Wo, oa, ob);
        for (int64_t ci = 0; ci < Cig; ++ci) {
          const A* gr = g.data() + (t * Cig + ci) * MP;
          for (int64_t oh = 0; oh < p.Ho; ++oh) {
            const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, dr);
            if (ih < 0 || ih >= p.H) continue;
            A* d = acc.data() + (ci * p.H + ih) * p.W + in_coord(0, p.stride_w, p.pad_w, dc);
            const A* gp = gr + oh * p.Wo;
            for (int64_t ow = oa; ow < ob; ++ow) d[ow * p.stride_w] += gp[ow];
          }
        }
      }
      T* dxg = dx + (n * p.Cin + grp * Cig) * p.H * p.W;
      for (int64_t i = 0; i < Cig * p.H * p.W; ++i) dxg[i] = Storage<T>::store(acc[size_t(i)]);
    }
  }
}

// dx[ci, s*i + a, s*j + b] = sum_{t on phase (a,b)} sum_co w[co, ci, t] * dy[co, i + e_t, j + f_t]
// with e_t = (a + pad_h - dr_t) / s_h exact (the taps whose offset leaves no remainder).
template <class T>
void tap_conv_backward_input_typed(const TapConvParams& p) {
  using A = Acc<T>;
  const int64_t G = p.groups, Cig = p.Cin / G, Cog = p.Cout / G;
  if (Cig < kColsBelow) return tap_conv_backward_input_cols<T>(p);
  const int64_t CigP = padded_lanes<A>(Cig);
  const int T_ = p.taps.count();
  const int sh = p.stride_h, sw = p.stride_w;
  struct PhaseTap {
    int t;
    int64_t e, f;
  };
  std::vector<std::vector<PhaseTap>> phase(size_t(sh * sw));
  bool any = false;
  int64_t e_lo = 0, e_hi = 0, f_lo = 0, f_hi = 0;
  for (int a = 0; a < sh; ++a)
    for (int b = 0; b < sw; ++b)
      for (int t = 0; t < T_; ++t) {
        int dr, dc;
        p.taps.offset(t, dr, dc);
        const int64_t nr = a + p.pad_h - dr, nc = b + p.pad_w - dc;
        if (nr - fdiv(nr, sh) * sh != 0 || nc - fdiv(nc, sw) * sw != 0) continue;
        const int64_t e = nr / sh, f = nc / sw;
        phase[size_t(a * sw + b)].push_back({t, e, f});
        e_lo = any ? std::min(e_lo, e) : e;
        e_hi = any ? std::max(e_hi, e) : e;
        f_lo = any ? std::min(f_lo, f) : f;
        f_hi = any ? std::max(f_hi, f) : f;
        any = true;
      }
  T* dx = static_cast<T*>(p.dx);
  if (!any) {
    std::fill(dx, dx + p.N * p.Cin * p.H * p.W, Storage<T>::store(A(0)));
    return;
  }
  const int64_t Hi_max = (p.H + sh - 1) / sh, Wi_max = (p.W + sw - 1) / sw;
  // dy packed as a flattened plane (see flat_rows): dy[i + e, j + f] at lead + (i + e - e_lo)*Wd + j + f
  const FlatRows fr = flat_rows(p.Wo, Wi_max, f_lo, f_hi);
  const int64_t Wd = fr.pitch, rows = Hi_max + e_hi - e_lo + 1;
  // wb[g][t][co][ci] (ci padded with zeros)
  std::vector<A> wb(size_t(G * T_ * Cog * CigP), A(0));
  const T* w = static_cast<const T*>(p.w);
  for (int64_t grp = 0; grp < G; ++grp)
    for (int64_t co = 0; co < Cog; ++co)
      for (int64_t ci = 0; ci < Cig; ++ci)
        for (int t = 0; t < T_; ++t)
          wb[size_t(((grp * T_ + t) * Cog + co) * CigP + ci)] =
              Storage<T>::load(w[((grp * Cog + co) * Cig + ci) * T_ + t]);
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> dyp(size_t((fr.lead + rows * Wd) * Cog)), stage;
    std::vector<A> cbuf(size_t(Hi_max * Wd * CigP));
    std::vector<const A*> ap(T_), bp(T_);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < p.N * G; ++item) {
      const int64_t n = item / G, grp = item % G;
      PlaneSpec s;
      s.C = Cog;
      s.H = p.Ho;
      s.W = p.Wo;
      s.sC = p.dy_strides.c;
      s.sH = p.dy_strides.h;
      s.i0 = e_lo;
      s.rows = rows;
      s.cols = Wd;
      s.cpitch = Cog;
      pack_plane_over_zeros<T>(static_cast<const T*>(p.dy) + n * p.dy_strides.n + grp * Cog * p.dy_strides.c,
                               s, dyp.data() + fr.lead * Cog);
      for (int a = 0; a < sh; ++a)
        for (int b = 0; b < sw; ++b) {
          const int64_t Hi = (p.H - a + sh - 1) / sh, Wi = (p.W - b + sw - 1) / sw;
          if (Hi <= 0 || Wi <= 0) continue;
          const auto& taps = phase[size_t(a * sw + b)];
          const int nt = int(taps.size());
          if (nt > 0) {
            for (int u = 0; u < nt; ++u) {
              ap[u] = dyp.data() + (fr.lead + (taps[u].e - e_lo) * Wd + taps[u].f) * Cog;
              bp[u] = wb.data() + (grp * T_ + taps[u].t) * Cog * CigP;
            }
            Gemm<A> gm;
            gm.M = Hi * Wd;
            gm.NP = CigP;
            gm.K = Cog;
            gm.ntaps = nt;
            gm.a = ap.data();
            gm.b = bp.data();
            gm.am = Cog;
            gm.ak = 1;
            gm.bk = CigP;
            gm.c = cbuf.data();
            gm.cm = CigP;
            gemm_run_in_tap_chunks(gm);
          }
          if (sh == 1 && sw == 1) {  // one phase, holding every tap
            unpack_tile<T>(cbuf.data(), Wd, CigP, Hi, Wi, Cig, static_cast<const T*>(nullptr),
                           dx + (n * p.Cin + grp * Cig) * p.H * p.W, stage);
            continue;
          }
          for (int64_t ci = 0; ci < Cig; ++ci) {
            T* dxc = dx + ((n * p.Cin) + grp * Cig + ci) * p.H * p.W;
            for (int64_t i = 0; i < Hi; ++i)
              for (int64_t j = 0; j < Wi; ++j)
                dxc[(sh * i + a) * p.W + sw * j + b] =
                    Storage<T>::store(nt > 0 ? cbuf[size_t((i * Wd + j) * CigP + ci)] : A(0));
          }
        }
    }
  }
}

// Final, fixed-order pass of the dw/db reduction: out = sum over chunks in chunk order.
template <class T, class A = Acc<T>>
void reduce_chunks(const A* partials, int64_t chunks, int64_t stride, int64_t offset, int64_t count,
                   T* out) {
#pragma omp parallel for schedule(static) if (worth_threads(double(chunks) * count))
  for (int64_t i = 0; i < count; ++i) {
    A s = A(0);
    for (int64_t j = 0; j < chunks; ++j) s += partials[j * stride + offset + i];
    out[i] = Storage<T>::store(s);
  }
}

// A chunk's weight-gradient sums go to its partials in the GEMMs' layout, unpadded:
//   part[(g*Kc + t*Cig + ci)*Cog + co] (Kc = T*Cig), then db[g*Cog + co],
// from acc[(g*Kc + t*Cig + ci)*CogP + co] and bacc[g*CogP + co]: row copies; the one
// permutation to dw's (co, ci, t) order is left to finish_weight_grads.
template <class A>
void store_chunk_partials(const A* acc, const A* bacc, int64_t G, int64_t Kc, int64_t Cog, int64_t CogP, A* part) {
  for (int64_t r = 0; r < G * Kc; ++r) std::copy(acc + r * CogP, acc + r * CogP + Cog, part + r * Cog);
  for (int64_t grp = 0; grp < G; ++grp)
    std::copy(bacc + grp * CogP, bacc + grp * CogP + Cog, part + G * Kc * Cog + grp * Cog);
}

// dw[((g*Cog + co)*Cig + ci)*T + t] and db[g*Cog + co]: the chunks' partials summed in
// chunk order, rounded once to the dtype.
template <class T, class A = Acc<T>>
void finish_weight_grads(const A* partials, int64_t chunks, int64_t stride, int64_t G, int64_t T_, int64_t Cig,
                         int64_t Cog, T* dw, T* db) {
  const int64_t Kc = T_ * Cig, wcount = G * Kc * Cog;
  if (dw) {
    std::vector<A> sum(static_cast<size_t>(wcount));
    reduce_chunks<A>(partials, chunks, stride, 0, wcount, sum.data());
    for (int64_t grp = 0; grp < G; ++grp)
      for (int64_t co = 0; co < Cog; ++co)
        for (int64_t ci = 0; ci < Cig; ++ci)
          for (int64_t t = 0; t < T_; ++t)
            dw[((grp * Cog + co) * Cig + ci) * T_ + t] =
                Storage<T>::store(sum[size_t((grp * Kc + t * Cig + ci) * Cog + co)]);
  }
  if (db) reduce_chunks<T>(partials, chunks, stride, wcount, G * Cog, db);
}

// dw[co, ci, t] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, ci, oh*s - pad + dr_t, ...];
// db[co] = sum dy. Chunk j sums its batch slice (partials: store_chunk_partials).
template <class T>
void tap_conv_backward_weight_typed(const TapConvParams& p) {
  using A = Acc<T>;
  const int64_t G = p.groups, Cig = p.Cin / G, Cog = p.Cout / G;
  const int64_t CogP = padded_lanes<A>(Cog);
  const FwdGeometry geo = fwd_geometry(p);
  const int T_ = geo.T;
  const int64_t plane_elems = geo.plane_positions() * Cig;
  const int nplanes = p.stride_h * p.stride_w;
  const int64_t wcount = p.Cout * Cig * T_;
  const int64_t chunk_stride = wcount + p.Cout;
  A* partials = static_cast<A*>(p.partials);
  const int64_t chunks = p.partial_chunks;
  const bool cols = Cig < kColsBelow;
  const int64_t Kc = T_ * Cig;
  const int64_t pitch = cols ? p.Wo : geo.Wq;  // as in the forward pass
  const int64_t M = p.Ho * pitch;
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> planes(size_t(p.dw && !cols ? nplanes * plane_elems : 0));
    std::vector<A> col(size_t(p.dw && cols ? Kc * M : 0), A(0));
    std::vector<A> dyp(size_t(M * CogP));
    std::vector<A> acc(size_t(G * T_ * Cig * CogP));  // [g][t][ci][co]
    std::vector<A> bacc(size_t(G * CogP));
#pragma omp for schedule(dynamic)
    for (int64_t j = 0; j < chunks; ++j) {
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(bacc.begin(), bacc.end(), A(0));
      for (int64_t n = chunk_begin(j, chunks, p.N); n < chunk_begin(j + 1, chunks, p.N); ++n)
        for (int64_t grp = 0; grp < G; ++grp) {
          // dy on the forward output grid (pitch Wq, zeros past Wo and past Cog).
          PlaneSpec s;
          s.C = Cog;
          s.H = p.Ho;
          s.W = p.Wo;
          s.sC = p.dy_strides.c;
          s.sH = p.dy_strides.h;
          s.rows = p.Ho;
          s.cols = pitch;
          s.cpitch = CogP;
          pack_plane_over_zeros<T>(
              static_cast<const T*>(p.dy) + n * p.dy_strides.n + grp * Cog * p.dy_strides.c, s, dyp.data());
          add_column_sums(dyp.data(), M, CogP, bacc.data() + grp * CogP);
          if (!p.dw) continue;
          if (cols) {  // dw[(t, ci)][co] = sum_p colT[(t, ci)][p] * dy[p][co]: one product
            im2col_rows<T>(p, n, grp, Cig, col.data());
            for (int64_t k0 = 0; k0 < M; k0 += kPosBlock) {
              const A* a0 = col.data() + k0;
              const A* b0 = dyp.data() + k0 * CogP;
              Gemm<A> gm;
              gm.M = Kc;
              gm.NP = CogP;
              gm.K = std::min<int64_t>(kPosBlock, M - k0);
              gm.a = &a0;
              gm.b = &b0;
              gm.am = M;
              gm.ak = 1;
              gm.bk = CogP;
              gm.c = acc.data() + grp * T_ * Cig * CogP;
              gm.cm = CogP;
              gm.accumulate = true;
              gemm_run(gm);
            }
            continue;
          }
          pack_input_planes<T>(p, geo, n, grp, Cig, planes.data());
          // Position blocks outermost, so that the dy block stays in L1 across the taps.
          for (int64_t k0 = 0; k0 < M; k0 += kPosBlock)
            for (int t = 0; t < T_; ++t) {
              const A* a0 = planes.data() + geo.plane[t] * plane_elems + (geo.lead + geo.shift[t] + k0) * Cig;
              const A* b0 = dyp.data() + k0 * CogP;
              Gemm<A> gm;
              gm.M = Cig;
              gm.NP = CogP;
              gm.K = std::min<int64_t>(kPosBlock, M - k0);
              gm.ntaps = 1;
              gm.a = &a0;
              gm.b = &b0;
              gm.am = 1;
              gm.ak = Cig;
              gm.bk = CogP;
              gm.c = acc.data() + (grp * T_ + t) * Cig * CogP;
              gm.cm = CogP;
              gm.accumulate = true;
              gemm_run(gm);
            }
        }
      store_chunk_partials(acc.data(), bacc.data(), G, Kc, Cog, CogP, partials + j * chunk_stride);
    }
  }
  finish_weight_grads<T>(partials, chunks, chunk_stride, G, T_, Cig, Cog, static_cast<T*>(p.dw),
                         static_cast<T*>(p.db));
}

// ---------------------------------------------------------------------------------------
// Pooling over a tap set: one (n, c) plane per work item.

// max: y = max over in-bounds taps (argmax = first winning tap); avg: y = sum / in-bounds count.
template <class T>
void tap_pool_forward_typed(const TapPoolParams& p) {
  using A = Acc<T>;
  const int T_ = p.taps.count();
  std::vector<int> dr(T_), dc(T_);
  for (int t = 0; t < T_; ++t) p.taps.offset(t, dr[t], dc[t]);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
#pragma omp parallel for schedule(dynamic) if (worth_threads(work_of(p)))
  for (int64_t plane = 0; plane < p.N * p.C; ++plane) {
    const int64_t n = plane / p.C, c = plane % p.C;
    const T* xp = x + n * p.x_strides.n + c * p.x_strides.c;
    T* yp = y + plane * p.Ho * p.Wo;
    int32_t* am = p.argmax ? p.argmax + plane * p.Ho * p.Wo : nullptr;
    for (int64_t oh = 0; oh < p.Ho; ++oh)
      for (int64_t ow = 0; ow < p.Wo; ++ow) {
        A best = A(0), sum = A(0);
        int count = 0, arg = -1;
        for (int t = 0; t < T_; ++t) {
          const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, dr[t]);
          const int64_t iw = in_coord(ow, p.stride_w, p.pad_w, dc[t]);
          if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
          const A v = Storage<T>::load(xp[ih * p.x_strides.h + iw]);
          if (p.mode == PoolMode::Max) {
            if (pool_max_takes(v, best, arg >= 0)) {
              best = v;
              arg = t;
            }
          } else {
            sum += v;
            ++count;
          }
        }
        const int64_t o = oh * p.Wo + ow;
        if (p.mode == PoolMode::Max) {
          yp[o] = Storage<T>::store(best);
          am[o] = arg;
        } else {
          yp[o] = Storage<T>::store(count > 0 ? sum / A(count) : A(0));
        }
      }
  }
}

// dx[cell] = sum over the outputs whose window holds the cell: dy (max: only where the
// saved argmax is that tap; avg: dy / in-bounds count), added in output order.
template <class T>
void tap_pool_backward_typed(const TapPoolParams& p) {
  using A = Acc<T>;
  const int T_ = p.taps.count();
  std::vector<int> dr(T_), dc(T_);
  for (int t = 0; t < T_; ++t) p.taps.offset(t, dr[t], dc[t]);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> acc(size_t(p.H * p.W));
#pragma omp for schedule(dynamic)
    for (int64_t plane = 0; plane < p.N * p.C; ++plane) {
      const int64_t n = plane / p.C, c = plane % p.C;
      const T* dyp = dy + n * p.dy_strides.n + c * p.dy_strides.c;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t oh = 0; oh < p.Ho; ++oh)
        for (int64_t ow = 0; ow < p.Wo; ++ow) {
          const A g = Storage<T>::load(dyp[oh * p.dy_strides.h + ow]);
          if (p.mode == PoolMode::Max) {
            const int t = p.argmax_in[(plane * p.Ho + oh) * p.Wo + ow];
            if (t < 0 || t >= T_) continue;
            const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, dr[t]);
            const int64_t iw = in_coord(ow, p.stride_w, p.pad_w, dc[t]);
            if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) acc[size_t(ih * p.W + iw)] += g;
            continue;
          }
          int count = 0;
          for (int t = 0; t < T_; ++t) {
            const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, dr[t]);
            const int64_t iw = in_coord(ow, p.stride_w, p.pad_w, dc[t]);
            count += (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W);
          }
          if (count == 0) continue;
          const A share = g / A(count);
          for (int t = 0; t < T_; ++t) {
            const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, dr[t]);
            const int64_t iw = in_coord(ow, p.stride_w, p.pad_w, dc[t]);
            if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) acc[size_t(ih * p.W + iw)] += share;
          }
        }
      T* dxp = dx + plane * p.H * p.W;
      for (int64_t i = 0; i < p.H * p.W; ++i) dxp[i] = Storage<T>::store(acc[size_t(i)]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Indexed convolution: gathered columns col[o][t*Cin + ci] (zero for -1) times the weight.

template <class T, class A = Acc<T>>
void gather_columns(const IndexedConvParams& p, int64_t n, A* col) {
  const T* x = static_cast<const T*>(p.x) + n * p.x_stride_n;
  const int64_t K = p.T * p.Cin;
  for (int64_t o = 0; o < p.P_out; ++o)
    for (int64_t t = 0; t < p.T; ++t) {
      const int32_t src = p.neighbors[o * p.T + t];
      A* d = col + o * K + t * p.Cin;
      if (src < 0) {
        std::fill(d, d + p.Cin, A(0));
        continue;
      }
      for (int64_t ci = 0; ci < p.Cin; ++ci) d[ci] = Storage<T>::load(x[ci * p.x_stride_c + src]);
    }
}

// Channel-last copy of dy[n] (P_out, cpitch), zero past Cout.
template <class T, class A = Acc<T>>
void pack_dy_points(const IndexedConvParams& p, int64_t n, int64_t cpitch, A* dst) {
  const T* dy = static_cast<const T*>(p.dy) + n * p.dy_stride_n;
  for (int64_t o = 0; o < p.P_out; ++o) {
    A* d = dst + o * cpitch;
    for (int64_t co = 0; co < p.Cout; ++co) d[co] = Storage<T>::load(dy[co * p.dy_stride_c + o]);
    std::fill(d + p.Cout, d + cpitch, A(0));
  }
}

// y[n, co, o] = bias[co] + sum_{t, ci} w[co, ci, t] * col[o][t*Cin + ci]
template <class T>
void indexed_forward_typed(const IndexedConvParams& p) {
  using A = Acc<T>;
  const int64_t K = p.T * p.Cin, CoP = padded_lanes<A>(p.Cout);
  std::vector<A> wk(size_t(K * CoP), A(0));  // [t*Cin + ci][co]
  const T* w = static_cast<const T*>(p.w);
  for (int64_t co = 0; co < p.Cout; ++co)
    for (int64_t ci = 0; ci < p.Cin; ++ci)
      for (int64_t t = 0; t < p.T; ++t)
        wk[size_t((t * p.Cin + ci) * CoP + co)] = Storage<T>::load(w[(co * p.Cin + ci) * p.T + t]);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> col(size_t(p.P_out * K));
    std::vector<A> cbuf(size_t(p.P_out * CoP));
#pragma omp for schedule(dynamic)
    for (int64_t n = 0; n < p.N; ++n) {
      gather_columns<T>(p, n, col.data());
      const A* a0 = col.data();
      const A* b0 = wk.data();
      Gemm<A> gm;
      gm.M = p.P_out;
      gm.NP = CoP;
      gm.K = K;
      gm.a = &a0;
      gm.b = &b0;
      gm.am = K;
      gm.ak = 1;
      gm.bk = CoP;
      gm.c = cbuf.data();
      gm.cm = CoP;
      gemm_run(gm);
      for (int64_t co = 0; co < p.Cout; ++co) {
        const A b = bias ? Storage<T>::load(bias[co]) : A(0);
        T* yc = y + (n * p.Cout + co) * p.P_out;
        for (int64_t o = 0; o < p.P_out; ++o) yc[o] = Storage<T>::store(cbuf[size_t(o * CoP + co)] + b);
      }
    }
  }
}

// g[o][t][ci] = sum_co dy[n, co, o] * w[co, ci, t];  dx[n, ci, p] = sum_{(o,t) in inv[p]} g[o][t][ci]
template <class T>
void indexed_backward_input_typed(const IndexedConvParams& p) {
  using A = Acc<T>;
  const int64_t CiP = padded_lanes<A>(p.Cin), NP = p.T * CiP;
  std::vector<A> wk(size_t(p.Cout * NP), A(0));  // [co][t*CiP + ci]
  const T* w = static_cast<const T*>(p.w);
  for (int64_t co = 0; co < p.Cout; ++co)
    for (int64_t ci = 0; ci < p.Cin; ++ci)
      for (int64_t t = 0; t < p.T; ++t)
        wk[size_t(co * NP + t * CiP + ci)] = Storage<T>::load(w[(co * p.Cin + ci) * p.T + t]);
  T* dx = static_cast<T*>(p.dx);
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> dyp(size_t(p.P_out * p.Cout));
    std::vector<A> g(size_t(p.P_out * NP));
    std::vector<A> acc(size_t(p.Cin));
#pragma omp for schedule(dynamic)
    for (int64_t n = 0; n < p.N; ++n) {
      pack_dy_points<T>(p, n, p.Cout, dyp.data());
      const A* a0 = dyp.data();
      const A* b0 = wk.data();
      Gemm<A> gm;
      gm.M = p.P_out;
      gm.NP = NP;
      gm.K = p.Cout;
      gm.a = &a0;
      gm.b = &b0;
      gm.am = p.Cout;
      gm.ak = 1;
      gm.bk = NP;
      gm.c = g.data();
      gm.cm = NP;
      gemm_run(gm);
      for (int64_t q = 0; q < p.P; ++q) {
        std::fill(acc.begin(), acc.end(), A(0));
        for (int32_t e = p.inv_offsets[q]; e < p.inv_offsets[q + 1]; ++e) {
          const int64_t ot = p.inv_entries[e];
          const A* gp = g.data() + (ot / p.T) * NP + (ot % p.T) * CiP;
          for (int64_t ci = 0; ci < p.Cin; ++ci) acc[size_t(ci)] += gp[ci];
        }
        for (int64_t ci = 0; ci < p.Cin; ++ci)
          dx[(n * p.Cin + ci) * p.P + q] = Storage<T>::store(acc[size_t(ci)]);
      }
    }
  }
}

// dw[co, ci, t] = sum_{n, o} dy[n, co, o] * col_n[o][t*Cin + ci]; db[co] = sum dy.
template <class T>
void indexed_backward_weight_typed(const IndexedConvParams& p) {
  using A = Acc<T>;
  const int64_t K = p.T * p.Cin, CoP = padded_lanes<A>(p.Cout);
  const int64_t wcount = p.Cout * K, chunk_stride = wcount + p.Cout;
  A* partials = static_cast<A*>(p.partials);
  const int64_t chunks = p.partial_chunks;
#pragma omp parallel if (worth_threads(work_of(p)))
  {
    std::vector<A> col(size_t(p.dw ? p.P_out * K : 0));
    std::vector<A> dyp(size_t(p.P_out * CoP));
    std::vector<A> acc(size_t(K * CoP));  // [t*Cin + ci][co]
    std::vector<A> bacc(static_cast<size_t>(CoP));
#pragma omp for schedule(dynamic)
    for (int64_t j = 0; j < chunks; ++j) {
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(bacc.begin(), bacc.end(), A(0));
      for (int64_t n = chunk_begin(j, chunks, p.N); n < chunk_begin(j + 1, chunks, p.N); ++n) {
        pack_dy_points<T>(p, n, CoP, dyp.data());
        add_column_sums(dyp.data(), p.P_out, CoP, bacc.data());
        if (!p.dw) continue;
        gather_columns<T>(p, n, col.data());
        const A* a0 = col.data();
        const A* b0 = dyp.data();
        Gemm<A> gm;
        gm.M = K;
        gm.NP = CoP;
        gm.K = p.P_out;
        gm.a = &a0;
        gm.b = &b0;
        gm.am = 1;
        gm.ak = K;
        gm.bk = CoP;
        gm.c = acc.data();
        gm.cm = CoP;
        gm.accumulate = true;
        gemm_run(gm);
      }
      store_chunk_partials(acc.data(), bacc.data(), 1, K, p.Cout, CoP, partials + j * chunk_stride);
    }
  }
  finish_weight_grads<T>(partials, chunks, chunk_stride, 1, p.T, p.Cin, p.Cout, static_cast<T*>(p.dw),
                         static_cast<T*>(p.db));
}

}  // namespace

void tap_conv_forward_cpu(const TapConvParams& p) {
  if (p.N == 0 || p.Cout == 0 || p.Ho == 0 || p.Wo == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { tap_conv_forward_typed<decltype(tag)>(p); });
}
void tap_conv_backward_input_cpu(const TapConvParams& p) {
  if (p.N == 0 || p.Cin == 0 || p.H == 0 || p.W == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { tap_conv_backward_input_typed<decltype(tag)>(p); });
}
void tap_conv_backward_weight_cpu(const TapConvParams& p) {
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { tap_conv_backward_weight_typed<decltype(tag)>(p); });
}
void tap_pool_forward_cpu(const TapPoolParams& p) {
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { tap_pool_forward_typed<decltype(tag)>(p); });
}
void tap_pool_backward_cpu(const TapPoolParams& p) {
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { tap_pool_backward_typed<decltype(tag)>(p); });
}
void indexed_conv_forward_cpu(const IndexedConvParams& p) {
  if (p.N == 0 || p.Cout == 0 || p.P_out == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { indexed_forward_typed<decltype(tag)>(p); });
}
void indexed_conv_backward_input_cpu(const IndexedConvParams& p) {
  if (p.N == 0 || p.Cin == 0 || p.P == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { indexed_backward_input_typed<decltype(tag)>(p); });
}
void indexed_conv_backward_weight_cpu(const IndexedConvParams& p) {
  dispatch_cpu_dtype(p.dtype, [&](auto tag) { indexed_backward_weight_typed<decltype(tag)>(p); });
}

}  // namespace pfa::conv
