// CPU kernels of the norm family. Written like norm_cuda.cu on purpose: one row at a
// time, two-pass statistics of x - shift (layer norm) or the sum of squares (RMS norm), then
// one pass that normalizes; the math is norm_math.h's. OpenMP spreads rows over threads; the
// inner loops are vectorized reductions.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "norm/norm.h"
#include "norm/norm_math.h"

namespace pfa::norm {

int64_t reduction_chunks(int64_t rows, int64_t cols, bool cuda) {
  if (rows <= 0 || cols <= 0) return 0;
  // Enough chunks to fill the machine, few enough that the partials stay small. CUDA: one
  // block per chunk (norm_cuda.cu), about 32 rows each, 256..1024 blocks. CPU: the partials
  // (16 bytes per column per chunk at most) within 8 MiB, so that writing them and summing
  // them back stays small next to the rows' own traffic (wide rows: 8 chunks at 65536).
  const int64_t target = cuda ? std::clamp<int64_t>((rows + 31) / 32, 256, 1024) : 64;
  const int64_t budget = cuda ? (int64_t(64) << 20) : (int64_t(8) << 20);
  const int64_t by_memory = std::max<int64_t>(1, budget / (cols * 16));
  return std::max<int64_t>(1, std::min({rows, target, by_memory}));
}

namespace {

template <class T>
using Acc = typename Storage<T>::acc;

template <class T>
Acc<T> ld(const T* p, int64_t j) {
  return Storage<T>::load(p[j]);
}

// Row sums run over blocks of kSumBlock columns, one vectorized reduction each, added up in
// order: a float sum's rounding error then grows with kSumBlock / lanes + n / kSumBlock terms,
// not n / lanes (a build without vectorized reductions, like the sanitizer job's, put all 65536
// columns of a row in one chain: ~1e-5 relative error in the variance).
constexpr int64_t kSumBlock = 512;

// sum over j < n of term(j), blocked as above
template <class A, class Term>
A blocked_sum(int64_t n, Term term) {
  A total = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kSumBlock) {
    const int64_t j1 = std::min(n, j0 + kSumBlock);
    A s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = j0; j < j1; ++j) s += term(j);
    total += s;
  }
  return total;
}

// Two-pass statistics of x - shift over one row: the sum, then the squared deviations from
// the mean (the row is read twice, from cache). Each pass is a vectorized reduction, so a
// row costs no merge of lane states (with a division each), which dominated short rows.
template <class T>
Welford<Acc<T>> row_moments(const T* x, int64_t n, Acc<T> shift) {
  using A = Acc<T>;
  const A mean = blocked_sum<A>(n, [&](int64_t j) { return ld(x, j) - shift; }) / A(n);
  const A m2 = blocked_sum<A>(n, [&](int64_t j) {
    const A d = (ld(x, j) - shift) - mean;
    return d * d;
  });
  return {A(n), mean, m2};
}

// RMS norm: the row's sum of squares, as the CUDA forward.
template <class T>
Acc<T> row_sum_of_squares(const T* x, int64_t n) {
  return blocked_sum<Acc<T>>(n, [&](int64_t j) { return ld(x, j) * ld(x, j); });
}

// Rows [r0, r1) of the forward.
template <class T>
inline void forward_rows(const ForwardParams& p, int64_t r0, int64_t r1) {
  using A = Acc<T>;
  const int64_t n = p.cols;
  const T* w = static_cast<const T*>(p.weight);
  const T* b = static_cast<const T*>(p.bias);
  const A eps = A(p.eps);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = static_cast<const T*>(p.x) + p.x_rows.offset(r);
    T* yr = static_cast<T*>(p.y) + r * n;
    // add_layer_norm: s = x + residual rounded to T (as torch), stored, then normalized.
    const T* src = xr;
    if (p.residual) {
      const T* rr = static_cast<const T*>(p.residual) + p.residual_rows.offset(r);
      T* sr = static_cast<T*>(p.sum_out) + r * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) sr[j] = Storage<T>::store(ld(xr, j) + ld(rr, j));
      src = sr;
    }
    A hi, lo, rstd;
    if (p.center) {
      const A shift = ld(src, 0);
      row_statistics(row_moments(src, n, shift), shift, eps, hi, lo, rstd);
    } else {
      rms_statistics(row_sum_of_squares(src, n), A(n), eps, hi, lo, rstd);
    }
    if (p.mean) static_cast<A*>(p.mean)[2 * r] = hi, static_cast<A*>(p.mean)[2 * r + 1] = lo;
    static_cast<A*>(p.rstd)[r] = rstd;
    // y = ((s - hi) - lo) * rstd * w + b
    if (w && b) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        yr[j] = Storage<T>::store(normalize_affine(ld(src, j), hi, lo, rstd, ld(w, j), ld(b, j)));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const A wj = w ? ld(w, j) : A(1), bj = b ? ld(b, j) : A(0);
        yr[j] = Storage<T>::store(normalize_affine(ld(src, j), hi, lo, rstd, wj, bj));
      }
    }
  }
}

// Stage 1 of the backward for chunk c: rows [c*rows/chunks, (c+1)*rows/chunks) and, when
// dweight/dbias are wanted, the chunk's partial rows. g and xhat are n scratch values.
template <class T>
inline void backward_chunk(const BackwardParams& p, int64_t c, int64_t chunks, Acc<T>* g, Acc<T>* xhat) {
  using A = Acc<T>;
  const int64_t n = p.cols;
  const T* w = static_cast<const T*>(p.weight);
  const A* means = static_cast<const A*>(p.mean);
  const A* rstds = static_cast<const A*>(p.rstd);
  const A inv_n = A(1) / A(n);
  const bool want_partials = p.dweight || p.dbias;
  A* dwc = want_partials ? static_cast<A*>(p.partials) + c * n : nullptr;
  A* dbc = want_partials ? static_cast<A*>(p.partials) + (chunks + c) * n : nullptr;
  if (want_partials) std::fill(dwc, dwc + n, A(0)), std::fill(dbc, dbc + n, A(0));
  const int64_t r0 = p.rows * c / chunks, r1 = p.rows * (c + 1) / chunks;
  for (int64_t r = r0; r < r1; ++r) {
    const T* dyr = static_cast<const T*>(p.dy) + p.dy_rows.offset(r);
    const T* xr = static_cast<const T*>(p.x) + p.x_rows.offset(r);
    const A hi = means ? means[2 * r] : A(0), lo = means ? means[2 * r + 1] : A(0), rstd = rstds[r];
    // sum_g = sum(dy * w); sum_gx = sum(dy * w * xhat); partials += dy * xhat, dy (blocked
    // as blocked_sum, in the same pass)
    A sum_g = 0, sum_gx = 0;
    for (int64_t j0 = 0; j0 < n; j0 += kSumBlock) {
      const int64_t j1 = std::min(n, j0 + kSumBlock);
      A bg = 0, bgx = 0;
#pragma omp simd reduction(+ : bg, bgx)
      for (int64_t j = j0; j < j1; ++j) {
        const A dyj = ld(dyr, j);
        xhat[j] = normalized(ld(xr, j), hi, lo, rstd);
        g[j] = dyj * (w ? ld(w, j) : A(1));
        bg += g[j];
        bgx += g[j] * xhat[j];
        if (dwc) dwc[j] += dyj * xhat[j];
        if (dbc) dbc[j] += dyj;
      }
      sum_g += bg;
      sum_gx += bgx;
    }
    const A mean_g = sum_g * inv_n, mean_gx = sum_gx * inv_n;
    T* dxr = static_cast<T*>(p.dx) + r * n;
    const T* dsr = p.dsum ? static_cast<const T*>(p.dsum) + r * n : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      A d = input_gradient(g[j], xhat[j], rstd, mean_g, mean_gx, p.center);
      if (dsr) d += ld(dsr, j);
      dxr[j] = Storage<T>::store(d);
    }
  }
}

// Per storage type, the row loops compiled for each instruction set; an overload on a
// T* tag lets the templates below call them.
#define PFA_NORM_CPU_KERNELS(T)                                                                 \
  PFA_CPU_CLONES void forward_rows_##T(const ForwardParams& p, int64_t r0, int64_t r1) {       \
    forward_rows<T>(p, r0, r1);                                                                \
  }                                                                                             \
  PFA_CPU_CLONES void backward_chunk_##T(const BackwardParams& p, int64_t c, int64_t chunks,   \
                                         Acc<T>* g, Acc<T>* xhat) {                             \
    backward_chunk<T>(p, c, chunks, g, xhat);                                                  \
  }                                                                                             \
  inline void forward_rows_any(const T*, const ForwardParams& p, int64_t r0, int64_t r1) {     \
    forward_rows_##T(p, r0, r1);                                                               \
  }                                                                                             \
  inline void backward_chunk_any(const T*, const BackwardParams& p, int64_t c, int64_t chunks, \
                                 Acc<T>* g, Acc<T>* xhat) {                                     \
    backward_chunk_##T(p, c, chunks, g, xhat);                                                 \
  }
PFA_NORM_CPU_KERNELS(float)
PFA_NORM_CPU_KERNELS(double)
PFA_NORM_CPU_KERNELS(half_t)
PFA_NORM_CPU_KERNELS(bfloat16_t)
#undef PFA_NORM_CPU_KERNELS

constexpr int64_t kRowsPerTask = 16;
constexpr double kOpsPerElement = 8;  // statistics and normalization, as multiply-adds

template <class T>
void forward_typed(const ForwardParams& p) {
  const int64_t tasks = (p.rows + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(static) if (worth_threads(kOpsPerElement * p.rows * p.cols))
  for (int64_t t = 0; t < tasks; ++t)
    forward_rows_any(static_cast<const T*>(nullptr), p, t * kRowsPerTask,
                     std::min(p.rows, (t + 1) * kRowsPerTask));
}

template <class T>
void backward_typed(const BackwardParams& p) {
  using A = Acc<T>;
  const int64_t n = p.cols;
  const bool want_partials = p.dweight || p.dbias;
  const int64_t chunks = want_partials ? p.partial_rows : std::max<int64_t>(1, std::min<int64_t>(p.rows, 256));
#pragma omp parallel if (worth_threads(2 * kOpsPerElement * p.rows * n))
  {
    std::vector<A> g(n), xhat(n);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c)
      backward_chunk_any(static_cast<const T*>(nullptr), p, c, chunks, g.data(), xhat.data());
  }
  if (!want_partials) return;
  // Stage 2: dweight[j] = sum_c partial[c][j], always summed in chunk order. In blocks of
  // columns, chunk by chunk: each partial row is read in runs and the sums vectorize.
  constexpr int64_t kBlock = 256;
  const A* dw_part = static_cast<const A*>(p.partials);
  const A* db_part = dw_part + chunks * n;
#pragma omp parallel for schedule(static) if (worth_threads(2.0 * chunks * n))
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t m = std::min(kBlock, n - j0);
    A sw[kBlock] = {}, sb[kBlock] = {};
    for (int64_t c = 0; c < chunks; ++c) {
      const A* pw = dw_part + c * n + j0;
      const A* pb = db_part + c * n + j0;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        sw[j] += pw[j];
        sb[j] += pb[j];
      }
    }
    for (int64_t j = 0; j < m; ++j) {
      if (p.dweight) static_cast<T*>(p.dweight)[j0 + j] = Storage<T>::store(sw[j]);
      if (p.dbias) static_cast<T*>(p.dbias)[j0 + j] = Storage<T>::store(sb[j]);
    }
  }
}

}  // namespace

void forward_cpu(const ForwardParams& p) {
  if (p.rows == 0 || p.cols == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto t) { forward_typed<decltype(t)>(p); });
}

void backward_cpu(const BackwardParams& p) {
  if (p.rows == 0 || p.cols == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto t) { backward_typed<decltype(t)>(p); });
}

}  // namespace pfa::norm
