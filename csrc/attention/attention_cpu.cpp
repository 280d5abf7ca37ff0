// CPU kernels of the attention family: FlashAttention-2 on tiles, like attention_cuda.cu,
// with the per-element math of attention_math.h.
//
// Forward: one task per (batch, query head, query block of kBQ rows); it streams key/value
// blocks of kBK rows through an online softmax and writes out and the LSE. Its score tiles
// are transposed (S^T = K Q^T) so that the softmax runs along contiguous query columns.
// Backward: D = rowsum(dO * O) per query row first. Then one task per (batch, kv head, chunk
// of key blocks of kBKB rows); for each key block it loops
// over the GQA group's query heads and all query blocks, recomputes P from the LSE and
// accumulates dK/dV for the block (so the group is summed in a fixed order) and dQ into the
// chunk's own partial buffer; a last pass sums the chunks' dQ in chunk order. No race, no
// atomics, the same bits on every run. No (Lq, Lk) matrix exists, only kBQ x kBK(B) tiles.
//
// Tiles are converted to the accumulation type A (float, or double for float64) and padded
// with zeros to kMR rows and whole vectors of columns, so the tile products need no edge
// cases. The tile products run on the micro-GEMM the conv family uses (common/cpu_gemm.h),
// inlined into the task functions, which are cloned per x86 level (AVX-512 when the CPU has
// it) and picked at load time.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_math.h"
#include "common/cpu_gemm.h"

namespace pfa::attention {
namespace {

template <class T>
using Acc = typename Storage<T>::acc;

constexpr int kBQ = 64;  // query rows per tile
constexpr int kBK = 64;  // key rows per tile (forward)
constexpr int kBKB = 128;  // key rows per backward tile: half the passes over Q, dO and dQ
constexpr int kMR = 4;   // tile rows are padded to a multiple of this

// The head dim is padded to whole vectors (16 floats, 8 doubles); tile widths are multiples of
// 4 vectors.
template <class A>
int padded_dim(int d) {
  constexpr int L = cpu::kLanes<A>;
  return (d + L - 1) / L * L;
}

// 2^x as Cody-Waite range reduction + degree-6 Taylor polynomial on [-1/2, 1/2] (relative
// error < 2e-7), written with plain arithmetic so `omp simd` loops vectorize it; scores far
// below the masked threshold never reach it (masked_exp2 returns 0 for them).
struct FastExp2 {
  float operator()(float x) const {
    x = x < -126.f ? -126.f : x;  // exp2(-126) ~ 1e-38: below anything that matters next to 1
    const float n = (x + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23 trick)
    const float f = (x - n) * 0.69314718056f;
    float p = 1.f / 720.f;
    p = p * f + 1.f / 120.f;
    p = p * f + 1.f / 24.f;
    p = p * f + 1.f / 6.f;
    p = p * f + 0.5f;
    p = p * f + 1.f;
    p = p * f + 1.f;
    // NaN/Inf scores: the exponent is clamped before the int conversion (which would be UB);
    // p is NaN for them, so NaN still propagates.
    const float nc = n > -127.f ? (n < 128.f ? n : 128.f) : -127.f;
    const int32_t bits = (int32_t(nc) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    return p * scale;
  }
  double operator()(double x) const { return std::exp2(x); }
};

// C (m x n) {=, +=} X (m x k) * Y (k x n) on the shared micro-GEMM. X element (r, kk) is
// X[r * xr + kk * xk] (so X may be a transposed tile); Y and C are row-major with leading dims
// ldy, ldc. n % lanes == 0, and every element read exists (the tiles are padded).
template <bool kAccumulate, class A>
__attribute__((always_inline)) inline void tile_gemm(int m, int n, int k, const A* X, int64_t xr, int64_t xk,
                                                     const A* Y, int64_t ldy, A* C, int64_t ldc) {
  cpu::Gemm<A> g;
  g.M = m;
  g.NP = n;
  g.K = k;
  g.a = &X;
  g.b = &Y;
  g.am = xr;
  g.ak = xk;
  g.bk = ldy;
  g.c = C;
  g.cm = ldc;
  g.accumulate = kAccumulate;
  cpu::gemm_body(g);
}

int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Multiply-adds of one pass, for pfa::worth_threads.
bool worth_threads(const ForwardParams& p) {
  return pfa::worth_threads(double(p.batch) * p.heads_q * p.len_q * double(p.len_k) * p.head_dim);
}

// Where sequence b lives: dense rows start at 0 in their own (b, h) slice; varlen rows are
// tokens cu[b] + i with stride_b unused.
struct Seq {
  int64_t q0 = 0, k0 = 0;  // first token (varlen) or 0 (dense)
  int len_q = 0, len_k = 0;
};

Seq sequence(const ForwardParams& p, int b) {
  Seq s;
  if (p.cu_seqlens_q) {
    s.q0 = p.cu_seqlens_q[b];
    s.k0 = p.cu_seqlens_k[b];
    s.len_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    s.len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
  } else {
    s.len_q = p.len_q;
    s.len_k = p.len_k;
  }
  return s;
}

// Element offset of row i of (b, h) in a strided operand (varlen: stride_b is ignored).
int64_t row_offset(const ForwardParams& p, int64_t sb, int64_t sh, int64_t sl, int b, int h,
                   int64_t first, int64_t i) {
  return (p.cu_seqlens_q ? 0 : int64_t(b) * sb) + int64_t(h) * sh + (first + i) * sl;
}

// Index of query row i of (b, h) in the LSE and in any per-row buffer: (B, Hq, Lq) dense,
// (Hq, total_q) varlen.
int64_t lse_index(const ForwardParams& p, int64_t total_q, int b, int h, const Seq& s, int64_t i) {
  if (p.cu_seqlens_q) return int64_t(h) * total_q + s.q0 + i;
  return (int64_t(b) * p.heads_q + h) * p.len_q + i;
}

// Element offset of query row r (r = lse_index(b, h, i)) in a strided (B, Hq, Lq, D) operand.
template <class S>
int64_t query_row_offset(const ForwardParams& p, const S& t, int64_t total_q, int64_t r) {
  if (p.cu_seqlens_q) return (r / total_q) * t.stride_h + (r % total_q) * t.stride_l;
  const int64_t per_b = int64_t(p.heads_q) * p.len_q;
  return (r / per_b) * t.stride_b + ((r % per_b) / p.len_q) * t.stride_h + (r % p.len_q) * t.stride_l;
}

int64_t total_rows_q(const ForwardParams& p) {
  return p.cu_seqlens_q ? int64_t(p.cu_seqlens_q[p.batch]) : int64_t(p.len_q);
}

// Loads rows [r0, r0 + n) of a (b, h) slice into a zero-padded tile: row-major (ld) or
// transposed (tile[d * ld + r]).
template <class T, class A>
void load_tile(const T* base, int64_t stride_l, int n, int d, A* tile, int rows, int ld, bool transposed) {
  if (transposed) {
    std::fill(tile, tile + int64_t(ld) * rows, A(0));  // rows = padded head dim here
    for (int r = 0; r < n; ++r) {
      const T* src = base + r * stride_l;
      for (int c = 0; c < d; ++c) tile[int64_t(c) * ld + r] = Storage<T>::load(src[c]);
    }
    return;
  }
  for (int r = 0; r < rows; ++r) {
    A* dst = tile + int64_t(r) * ld;
    if (r < n) {
      const T* src = base + r * stride_l;
#pragma omp simd
      for (int c = 0; c < d; ++c) dst[c] = Storage<T>::load(src[c]);
      std::fill(dst + d, dst + ld, A(0));
    } else {
      std::fill(dst, dst + ld, A(0));
    }
  }
}

// s2 for a score tile: score_log2 of the raw products, then the bool mask and causal rules set
// kMaskedScore. kT = false: S[i * ld + j] (rows are queries, backward); kT = true:
// S[j * ld + i] (rows are keys, forward). n_out rows and n_in columns are valid; the columns
// from n_in to ld get `fill` (masked for missing keys, 0 for missing queries: never stored).
template <bool kT, class T, class A>
void scores_log2(const ForwardParams& p, A* S, int ld, int n_out, int n_in, int b, int h, int64_t i0,
                 int64_t j0, A fill) {
  const A scale_log2 = A(p.scale * kLog2e);
  const A masked = masked_score<A>();
  const int64_t ms = kT ? p.mask_stride_q : p.mask_stride_k;  // along a row of S
  for (int o = 0; o < n_out; ++o) {
    A* s = S + int64_t(o) * ld;
    const int64_t gi = kT ? i0 : i0 + o, gj = kT ? j0 + o : j0;  // (query, key) of s[0]
    const int64_t m_off = b * p.mask_stride_b + h * p.mask_stride_h + gi * p.mask_stride_q + gj * p.mask_stride_k;
    if (p.mask_kind == MaskKind::Float) {
      const T* m = static_cast<const T*>(p.mask) + m_off;
#pragma omp simd
      for (int x = 0; x < n_in; ++x) s[x] = score_log2(s[x], scale_log2, A(Storage<T>::load(m[x * ms])));
    } else {
#pragma omp simd
      for (int x = 0; x < n_in; ++x) s[x] = score_log2(s[x], scale_log2, A(0));
      if (p.mask_kind == MaskKind::Bool) {
        const uint8_t* m = static_cast<const uint8_t*>(p.mask) + m_off;
#pragma omp simd
        for (int x = 0; x < n_in; ++x) s[x] = m[x * ms] ? s[x] : masked;
      }
    }
    if (p.causal) {  // key gj visible to query gi iff gj <= gi
      if (kT) {
        const int64_t first_visible = std::min<int64_t>(n_in, std::max<int64_t>(0, gj - gi));
        for (int64_t x = 0; x < first_visible; ++x) s[x] = masked;
      } else {
        for (int64_t x = std::max<int64_t>(0, gi - gj + 1); x < n_in; ++x) s[x] = masked;
      }
    }
    for (int x = n_in; x < ld; ++x) s[x] = fill;
  }
}

// ---------------------------------------------------------------- forward

template <class T>
struct FwdScratch {
  using A = Acc<T>;
  int dp;
  std::vector<A> qt, k, v, st, o, m, l, m_new, tile_sum;
  explicit FwdScratch(int d)
      : dp(padded_dim<A>(d)), qt(size_t(d) * kBQ), k(size_t(kBK) * dp), v(size_t(kBK) * dp),
        st(size_t(kBK) * kBQ), o(size_t(kBQ) * dp), m(kBQ), l(kBQ), m_new(kBQ), tile_sum(kBQ) {}
};

// One query block: Q^T is loaded once; for each key block S^T = K Q^T (K read in place when it
// is already in the accumulation type), so the softmax runs along contiguous query columns.
template <class T>
void forward_block(const ForwardParams& p, FwdScratch<T>& w, int b, int h, int qb, int64_t total_q) {
  using A = Acc<T>;
  constexpr bool kDirect = std::is_same<T, A>::value;
  const Seq sq = sequence(p, b);
  const int64_t i0 = int64_t(qb) * kBQ;
  if (i0 >= sq.len_q) return;
  const int qm = int(std::min<int64_t>(kBQ, sq.len_q - i0)), qmr = round_up(qm, kMR);
  const int d = p.head_dim, dp = w.dp;
  const int hk = h / (p.heads_q / p.heads_kv);
  const T* q = static_cast<const T*>(p.q.ptr) +
               row_offset(p, p.q.stride_b, p.q.stride_h, p.q.stride_l, b, h, sq.q0, i0);
  load_tile<T, A>(q, p.q.stride_l, qm, d, w.qt.data(), d, kBQ, true);
  std::fill(w.o.begin(), w.o.end(), A(0));
  for (int i = 0; i < kBQ; ++i) {
    const SoftmaxState<A> st = softmax_init<A>();
    w.m[i] = st.m;
    w.l[i] = st.l;
  }
  // Causal: key blocks that start after the block's last query row are all hidden.
  const int64_t k_end = p.causal ? std::min<int64_t>(sq.len_k, i0 + qm) : sq.len_k;
  for (int64_t j0 = 0; j0 < k_end; j0 += kBK) {
    const int kn = int(std::min<int64_t>(kBK, k_end - j0)), knr = round_up(kn, kMR);
    const T* k = static_cast<const T*>(p.k.ptr) +
                 row_offset(p, p.k.stride_b, p.k.stride_h, p.k.stride_l, b, hk, sq.k0, j0);
    const T* v = static_cast<const T*>(p.v.ptr) +
                 row_offset(p, p.v.stride_b, p.v.stride_h, p.v.stride_l, b, hk, sq.k0, j0);
    // S^T = K Q^T (kn x kBQ)
    if (kDirect && kn % kMR == 0) {
      tile_gemm<false>(kn, kBQ, d, reinterpret_cast<const A*>(k), p.k.stride_l, 1, w.qt.data(), kBQ,
                       w.st.data(), kBQ);
    } else {
      load_tile<T, A>(k, p.k.stride_l, kn, d, w.k.data(), knr, dp, false);
      tile_gemm<false>(knr, kBQ, d, w.k.data(), dp, 1, w.qt.data(), kBQ, w.st.data(), kBQ);
    }
    // A plain tile (no mask, positive scale, every key visible under causal) skips the
    // scores pass: a positive scale commutes with the row max, so P = exp2(qk * c - m_new) is
    // formed in the exponent pass, and no score can be masked.
    const bool plain = p.mask_kind == MaskKind::None && p.scale > 0 && (!p.causal || j0 + kn - 1 <= i0);
    const A scale_log2 = plain ? A(p.scale * kLog2e) : A(1);
    if (!plain) scores_log2<true, T, A>(p, w.st.data(), kBQ, kn, qm, b, h, i0, j0, A(0));
    // Online softmax per query column i: m_new = softmax_new_max(m, max_j S) (lazy: m moves
    // only on a jump past kRescaleSlack); P = exp2(S - m_new); l = l * alpha + sum_j P; O *= alpha.
    A* mn = w.m_new.data();
    A* ts = w.tile_sum.data();
    {
      const A* s = w.st.data();
#pragma omp simd
      for (int i = 0; i < kBQ; ++i) mn[i] = s[i], ts[i] = A(0);
    }
    for (int j = 1; j < kn; ++j) {
      const A* s = w.st.data() + j * kBQ;
#pragma omp simd
      for (int i = 0; i < kBQ; ++i) mn[i] = mn[i] > s[i] ? mn[i] : s[i];
    }
#pragma omp simd
    for (int i = 0; i < kBQ; ++i) {
      const A tile_max = plain ? score_log2(mn[i], scale_log2, A(0)) : mn[i];
      mn[i] = softmax_new_max(SoftmaxState<A>{w.m[i], w.l[i]}, tile_max);
    }
    // P = p_of(score, m_new) elementwise; tile_sum = rowsum(P)
    auto exponentiate = [&](auto p_of) {
      for (int j = 0; j < kn; ++j) {
        A* s = w.st.data() + j * kBQ;
#pragma omp simd
        for (int i = 0; i < kBQ; ++i) {
          s[i] = p_of(s[i], mn[i]);
          ts[i] += s[i];
        }
      }
    };
    if (plain)
      exponentiate([&](A qk, A m) { return FastExp2{}(score_log2(qk, scale_log2, A(0)) - m); });
    else
      exponentiate([](A s2, A m) { return masked_exp2(s2, m, FastExp2{}); });
    for (int i = 0; i < qm; ++i) {
      SoftmaxState<A> st{w.m[i], w.l[i]};
      const A alpha = softmax_update(st, mn[i], ts[i]);
      w.m[i] = st.m;
      w.l[i] = st.l;
      if (alpha != A(1)) {
        A* o = w.o.data() + int64_t(i) * dp;
#pragma omp simd
        for (int c = 0; c < dp; ++c) o[c] *= alpha;
      }
    }
    // O += P V   (P element (i, j) at S^T[j * kBQ + i])
    if (kDirect && d == dp) {
      tile_gemm<true>(qmr, dp, kn, w.st.data(), 1, kBQ, reinterpret_cast<const A*>(v), p.v.stride_l,
                      w.o.data(), dp);
    } else {
      load_tile<T, A>(v, p.v.stride_l, kn, d, w.v.data(), kn, dp, false);
      tile_gemm<true>(qmr, dp, kn, w.st.data(), 1, kBQ, w.v.data(), dp, w.o.data(), dp);
    }
  }
  // out = O / l (0 for a row with no key); LSE = (m + log2 l) ln 2 (-inf for such a row).
  T* out = static_cast<T*>(p.out.ptr) +
           row_offset(p, p.out.stride_b, p.out.stride_h, p.out.stride_l, b, h, sq.q0, i0);
  for (int i = 0; i < qm; ++i) {
    const SoftmaxState<A> st{w.m[i], w.l[i]};
    const A inv = softmax_out_scale(st);
    const A* o = w.o.data() + int64_t(i) * dp;
    T* dst = out + i * p.out.stride_l;
#pragma omp simd
    for (int c = 0; c < d; ++c) dst[c] = Storage<T>::store(o[c] * inv);
    const int64_t li = lse_index(p, total_q, b, h, sq, i0 + i);
    if (p.lse_f64)
      p.lse_f64[li] = double(softmax_lse(st));
    else
      p.lse[li] = float(softmax_lse(st));
  }
}

#define PFA_FORWARD_TASK(T)                                                                   \
  PFA_CPU_CLONES void forward_task_##T(const ForwardParams& p, FwdScratch<T>& w, int b, int h, \
                                       int qb, int64_t total_q) {                              \
    forward_block<T>(p, w, b, h, qb, total_q);                                                 \
  }
PFA_FORWARD_TASK(float)
PFA_FORWARD_TASK(double)
PFA_FORWARD_TASK(half_t)
PFA_FORWARD_TASK(bfloat16_t)
#undef PFA_FORWARD_TASK

void forward_task(const ForwardParams& p, FwdScratch<float>& w, int b, int h, int qb, int64_t t) {
  forward_task_float(p, w, b, h, qb, t);
}
void forward_task(const ForwardParams& p, FwdScratch<double>& w, int b, int h, int qb, int64_t t) {
  forward_task_double(p, w, b, h, qb, t);
}
void forward_task(const ForwardParams& p, FwdScratch<half_t>& w, int b, int h, int qb, int64_t t) {
  forward_task_half_t(p, w, b, h, qb, t);
}
void forward_task(const ForwardParams& p, FwdScratch<bfloat16_t>& w, int b, int h, int qb, int64_t t) {
  forward_task_bfloat16_t(p, w, b, h, qb, t);
}

template <class T>
void forward_typed(const ForwardParams& p) {
  const int nqb = (p.len_q + kBQ - 1) / kBQ;
  const int64_t tasks = int64_t(p.batch) * p.heads_q * nqb;
  const int64_t total_q = total_rows_q(p);
#pragma omp parallel if (worth_threads(p))
  {
    FwdScratch<T> w(p.head_dim);
    // Causal and varlen blocks differ in cost: hand them out dynamically.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int qb = int(t % nqb);
      const int h = int((t / nqb) % p.heads_q);
      const int b = int(t / (int64_t(nqb) * p.heads_q));
      forward_task(p, w, b, h, qb, total_q);
    }
  }
}

// ---------------------------------------------------------------- backward

template <class T>
struct BwdScratch {
  using A = Acc<T>;
  int dp;
  std::vector<A> q, dout, kt, k, vt, s, dpm, dq, dk, dv, delta, lse2;
  const A* delta_rows = nullptr;  // D = rowsum(dO * O) of every query row, by lse_index
  explicit BwdScratch(int d)
      : dp(padded_dim<A>(d)), q(size_t(kBQ) * dp), dout(size_t(kBQ) * dp), kt(size_t(dp) * kBKB),
        k(size_t(kBKB) * dp), vt(size_t(dp) * kBKB), s(size_t(kBQ) * kBKB), dpm(size_t(kBQ) * kBKB),
        dq(size_t(kBQ) * dp), dk(size_t(kBKB) * dp), dv(size_t(kBKB) * dp), delta(kBQ), lse2(kBQ) {}
};

// Number of key chunks per (batch, kv head): enough tasks for a many-core CPU, with the dQ
// partials (chunks x dQ in the accumulation type) kept under 64 MiB beyond the first, and fixed
// by the shapes alone so the dQ summation order (and so the result) never depends on threads.
int key_chunks(const ForwardParams& p, int64_t dq_bytes) {
  const int nkb = (p.len_k + kBKB - 1) / kBKB;
  const int64_t units = int64_t(p.batch) * p.heads_kv;
  const int64_t want = (32 + units - 1) / units;
  const int64_t by_memory = 1 + (int64_t(64) << 20) / std::max<int64_t>(1, dq_bytes);
  return int(std::max<int64_t>(1, std::min<int64_t>({int64_t(nkb), want, by_memory})));
}

// One query block against the loaded key block: P from the LSE, dP = dO V^T,
// dS = P (dP - D), then dV += P^T dO, dK += dS^T Q (scale applied at the end), dQ_part += dS K.
template <class T>
void backward_qblock(const BackwardParams& bp, BwdScratch<T>& w, int b, int h, const Seq& sq,
                     int64_t i0, int64_t j0, int kn, Acc<T>* dq_part, int64_t total_q) {
  using A = Acc<T>;
  const ForwardParams& p = bp.fwd;
  const int d = p.head_dim, dp = w.dp;
  const int qm = int(std::min<int64_t>(kBQ, sq.len_q - i0)), qmr = round_up(qm, kMR);
  const T* q = static_cast<const T*>(p.q.ptr) +
               row_offset(p, p.q.stride_b, p.q.stride_h, p.q.stride_l, b, h, sq.q0, i0);
  const T* dout = static_cast<const T*>(bp.dout.ptr) +
                  row_offset(p, bp.dout.stride_b, bp.dout.stride_h, bp.dout.stride_l, b, h, sq.q0, i0);
  load_tile<T, A>(q, p.q.stride_l, qm, d, w.q.data(), qmr, dp, false);
  load_tile<T, A>(dout, bp.dout.stride_l, qm, d, w.dout.data(), qmr, dp, false);
  for (int i = 0; i < qm; ++i) {
    const int64_t li = lse_index(p, total_q, b, h, sq, i0 + i);
    w.delta[i] = w.delta_rows[li];
    w.lse2[i] = lse_log2(p.lse_f64 ? A(p.lse_f64[li]) : A(p.lse[li]));
  }
  A* S = w.s.data();
  A* dP = w.dpm.data();
  tile_gemm<false>(qmr, kBKB, d, w.q.data(), dp, 1, w.kt.data(), kBKB, S, kBKB);
  tile_gemm<false>(qmr, kBKB, d, w.dout.data(), dp, 1, w.vt.data(), kBKB, dP, kBKB);
  // A plain tile (no mask, all kBKB keys present and visible) skips the scores pass:
  // P = exp2(q.k * c - lse2) is formed in the exponent pass, and no score can be masked.
  const bool plain = p.mask_kind == MaskKind::None && kn == kBKB && (!p.causal || j0 + kn - 1 <= i0);
  const A scale_log2 = A(p.scale * kLog2e);
  if (!plain) scores_log2<false, T, A>(p, S, kBKB, qm, kn, b, h, i0, j0, masked_score<A>());
  const int64_t dm_off = b * bp.dmask_stride_b + h * bp.dmask_stride_h + i0 * bp.dmask_stride_q + j0;
  T* dmask = bp.dmask && !bp.dmask_f32 ? static_cast<T*>(bp.dmask) + dm_off : nullptr;
  float* dmask_f32 = bp.dmask && bp.dmask_f32 ? static_cast<float*>(bp.dmask) + dm_off : nullptr;
  for (int i = 0; i < qm; ++i) {
    A* s = S + i * kBKB;
    A* g = dP + i * kBKB;
    const A l2 = w.lse2[i], di = w.delta[i];
    // P = p_of(score, lse2); dS = P (dP - D)
    auto exponentiate = [&](auto p_of) {
#pragma omp simd
      for (int j = 0; j < kBKB; ++j) {
        const A pij = p_of(s[j]);
        s[j] = pij;
        g[j] = softmax_grad(pij, g[j], di);
      }
    };
    if (plain)
      exponentiate([&](A qk) { return FastExp2{}(score_log2(qk, scale_log2, A(0)) - l2); });
    else
      exponentiate([&](A s2) { return masked_exp2(s2, l2, FastExp2{}); });
    if (dmask) {
      T* dm = dmask + i * bp.dmask_stride_q;
#pragma omp simd
      for (int j = 0; j < kn; ++j) dm[j] = Storage<T>::store(g[j]);
    } else if (dmask_f32) {
      float* dm = dmask_f32 + i * bp.dmask_stride_q;
#pragma omp simd
      for (int j = 0; j < kn; ++j) dm[j] = float(g[j]);
    }
  }
  for (int i = qm; i < qmr; ++i) {
    std::fill(S + i * kBKB, S + (i + 1) * kBKB, A(0));
    std::fill(dP + i * kBKB, dP + (i + 1) * kBKB, A(0));
  }
  // dV += P^T dO; dK += dS^T Q   (X transposed: element (j, i) at i * kBKB + j)
  tile_gemm<true>(kBKB, dp, qmr, S, 1, kBKB, w.dout.data(), dp, w.dv.data(), dp);
  tile_gemm<true>(kBKB, dp, qmr, dP, 1, kBKB, w.q.data(), dp, w.dk.data(), dp);
  // dQ_part += dS K   (scale applied in the final sum)
  tile_gemm<false>(qmr, dp, kBKB, dP, kBKB, 1, w.k.data(), dp, w.dq.data(), dp);
  A* part = dq_part + lse_index(p, total_q, b, h, sq, i0) * d;
  for (int i = 0; i < qm; ++i) {
    A* dst = part + int64_t(i) * d;
    const A* src = w.dq.data() + int64_t(i) * dp;
#pragma omp simd
    for (int c = 0; c < d; ++c) dst[c] += src[c];
  }
}

// All key blocks of chunk c for (b, kv head hk).
template <class T>
void backward_unit(const BackwardParams& bp, BwdScratch<T>& w, int b, int hk, int c, int chunks,
                   Acc<T>* dq_parts, int64_t total_q) {
  using A = Acc<T>;
  const ForwardParams& p = bp.fwd;
  const Seq sq = sequence(p, b);
  const int d = p.head_dim, dp = w.dp;
  const int group = p.heads_q / p.heads_kv;
  const int nkb = (p.len_k + kBKB - 1) / kBKB;
  const int64_t rows_q = int64_t(p.heads_q) * (p.cu_seqlens_q ? total_q : int64_t(p.batch) * p.len_q);
  A* dq_part = dq_parts + int64_t(c) * rows_q * d;
  const A scale = A(p.scale);
  for (int kb = int(int64_t(nkb) * c / chunks); kb < int(int64_t(nkb) * (c + 1) / chunks); ++kb) {
    const int64_t j0 = int64_t(kb) * kBKB;
    if (j0 >= sq.len_k) break;
    const int kn = int(std::min<int64_t>(kBKB, sq.len_k - j0));
    const T* k = static_cast<const T*>(p.k.ptr) +
                 row_offset(p, p.k.stride_b, p.k.stride_h, p.k.stride_l, b, hk, sq.k0, j0);
    const T* v = static_cast<const T*>(p.v.ptr) +
                 row_offset(p, p.v.stride_b, p.v.stride_h, p.v.stride_l, b, hk, sq.k0, j0);
    load_tile<T, A>(k, p.k.stride_l, kn, d, w.kt.data(), dp, kBKB, true);
    load_tile<T, A>(k, p.k.stride_l, kn, d, w.k.data(), kBKB, dp, false);
    load_tile<T, A>(v, p.v.stride_l, kn, d, w.vt.data(), dp, kBKB, true);
    std::fill(w.dk.begin(), w.dk.end(), A(0));
    std::fill(w.dv.begin(), w.dv.end(), A(0));
    // Causal: query rows before j0 see none of these keys.
    const int64_t i_start = p.causal ? j0 / kBQ * kBQ : 0;
    for (int g = 0; g < group; ++g)
      for (int64_t i0 = i_start; i0 < sq.len_q; i0 += kBQ)
        backward_qblock<T>(bp, w, b, hk * group + g, sq, i0, j0, kn, dq_part, total_q);
    // dK = scale * sum dS^T Q; dV = sum P^T dO, for the kv head (the group summed above)
    T* dk = static_cast<T*>(bp.dk.ptr) +
            row_offset(p, bp.dk.stride_b, bp.dk.stride_h, bp.dk.stride_l, b, hk, sq.k0, j0);
    T* dv = static_cast<T*>(bp.dv.ptr) +
            row_offset(p, bp.dv.stride_b, bp.dv.stride_h, bp.dv.stride_l, b, hk, sq.k0, j0);
    for (int j = 0; j < kn; ++j) {
      const A* sk = w.dk.data() + int64_t(j) * dp;
      const A* sv = w.dv.data() + int64_t(j) * dp;
      T* ok = dk + j * bp.dk.stride_l;
      T* ov = dv + j * bp.dv.stride_l;
#pragma omp simd
      for (int x = 0; x < d; ++x) {
        ok[x] = Storage<T>::store(sk[x] * scale);
        ov[x] = Storage<T>::store(sv[x]);
      }
    }
  }
}

#define PFA_BACKWARD_TASK(T)                                                                   \
  PFA_CPU_CLONES void backward_task_##T(const BackwardParams& bp, BwdScratch<T>& w, int b,      \
                                        int hk, int c, int chunks, Acc<T>* parts, int64_t tq) { \
    backward_unit<T>(bp, w, b, hk, c, chunks, parts, tq);                                       \
  }
PFA_BACKWARD_TASK(float)
PFA_BACKWARD_TASK(double)
PFA_BACKWARD_TASK(half_t)
PFA_BACKWARD_TASK(bfloat16_t)
#undef PFA_BACKWARD_TASK

void backward_task(const BackwardParams& bp, BwdScratch<float>& w, int b, int hk, int c, int n,
                   float* parts, int64_t tq) {
  backward_task_float(bp, w, b, hk, c, n, parts, tq);
}
void backward_task(const BackwardParams& bp, BwdScratch<double>& w, int b, int hk, int c, int n,
                   double* parts, int64_t tq) {
  backward_task_double(bp, w, b, hk, c, n, parts, tq);
}
void backward_task(const BackwardParams& bp, BwdScratch<half_t>& w, int b, int hk, int c, int n,
                   float* parts, int64_t tq) {
  backward_task_half_t(bp, w, b, hk, c, n, parts, tq);
}
void backward_task(const BackwardParams& bp, BwdScratch<bfloat16_t>& w, int b, int hk, int c, int n,
                   float* parts, int64_t tq) {
  backward_task_bfloat16_t(bp, w, b, hk, c, n, parts, tq);
}

template <class T>
void backward_typed(const BackwardParams& bp) {
  using A = Acc<T>;
  const ForwardParams& p = bp.fwd;
  const int d = p.head_dim;
  const int64_t total_q = total_rows_q(p);
  const int64_t rows_q = int64_t(p.heads_q) * (p.cu_seqlens_q ? total_q : int64_t(p.batch) * p.len_q);
  const int chunks = key_chunks(p, rows_q * d * int64_t(sizeof(A)));
  // dQ partial sums, one per key chunk: chunks x (rows of q) x D. Host scratch of the size of
  // dQ itself (times the few chunks), O(B H L D), not a device allocation.
  std::vector<A> parts(size_t(chunks) * rows_q * d, A(0));
  // D_i = rowsum(dO * O), once per query row.
  std::vector<A> delta(static_cast<size_t>(rows_q));
#pragma omp parallel for schedule(static) if (worth_threads(p))
  for (int64_t r = 0; r < rows_q; ++r) {
    const T* o = static_cast<const T*>(p.out.ptr) + query_row_offset(p, p.out, total_q, r);
    const T* g = static_cast<const T*>(bp.dout.ptr) + query_row_offset(p, bp.dout, total_q, r);
    A acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int c = 0; c < d; ++c) acc += A(Storage<T>::load(g[c])) * A(Storage<T>::load(o[c]));
    delta[r] = acc;
  }
  const int64_t units = int64_t(p.batch) * p.heads_kv * chunks;
#pragma omp parallel if (worth_threads(p))
  {
    BwdScratch<T> w(d);
    w.delta_rows = delta.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < units; ++t) {
      const int c = int(t % chunks);
      const int hk = int((t / chunks) % p.heads_kv);
      const int b = int(t / (int64_t(chunks) * p.heads_kv));
      backward_task(bp, w, b, hk, c, chunks, parts.data(), total_q);
    }
  }
  // dQ = scale * sum_c part_c, summed in chunk order.
  const A scale = A(p.scale);
#pragma omp parallel for schedule(static) if (worth_threads(p))
  for (int64_t r = 0; r < rows_q; ++r) {
    T* dst = static_cast<T*>(bp.dq.ptr) + query_row_offset(p, bp.dq, total_q, r);
    const A* src = parts.data() + r * d;
#pragma omp simd
    for (int x = 0; x < d; ++x) {
      A acc = src[x];
      for (int c = 1; c < chunks; ++c) acc += src[int64_t(c) * rows_q * d + x];
      dst[x] = Storage<T>::store(acc * scale);
    }
  }
}

}  // namespace

void forward_cpu(const ForwardParams& p) {
  if (p.batch == 0 || p.heads_q == 0 || p.len_q == 0) return;
  dispatch_cpu_dtype(p.dtype, [&](auto t) { forward_typed<decltype(t)>(p); });
}

void backward_cpu(const BackwardParams& bp) {
  const ForwardParams& p = bp.fwd;
  if (p.batch == 0 || p.heads_q == 0 || (p.len_q == 0 && p.len_k == 0)) return;
  check(bp.dkv_heads == p.heads_kv, "attention backward (CPU): dk/dv must have heads_kv heads");
  dispatch_cpu_dtype(p.dtype, [&](auto t) { backward_typed<decltype(t)>(bp); });
}

}  // namespace pfa::attention
