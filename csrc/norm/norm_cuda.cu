// CUDA kernels of the norm family. Written like norm_cpu.cpp on purpose: per row,
// statistics, a group reduction, then one pass that normalizes; the math is norm_math.h's.
//
// A group of G threads owns a row: G = 1..32 lanes of a warp (several rows per block) or
// 64..512 threads. The row is cut into segments of G * K vectors of V values (16-byte
// vectors when every row start is 16-byte aligned, else V = 1); thread t holds vectors
// t, t + G, ..., t + (K-1) * G of a segment in registers. The launch picks G so that most
// rows are one segment: the row is read from memory once. Longer rows take several
// segments; the last one stays in registers, the others are read again.
//
// Grids are no larger than what stays resident, so each block walks many rows; the next
// row's first segment is loaded while the current one is reduced and written, which keeps
// loads in flight through the reductions (not in add_layer_norm, nor in the backward that
// keeps column sums in registers: there the extra registers would spill).
//
// Backward: one kernel computes dx and, when dweight/dbias are wanted and the row is one
// segment, the block's column sums of dy * xhat and dy over its chunk of rows (one partial
// row per block). Rows of 8192 to 16384 columns are staged instead: copied into shared
// memory with cp.async, the next row while this one is worked on, with the column sums in
// registers. Rows longer still (or unaligned, or not a constant stride apart) get those sums
// from a column kernel that reads dy and x again. A last kernel adds the partial rows in a
// fixed order: no float atomics, so the results are bitwise reproducible.
#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "common/cp_async.cuh"
#include "common/cuda_utils.cuh"
#include "norm/norm.h"
#include "norm/norm_math.h"

namespace pfa::norm {
namespace {

using W = Welford<float>;

constexpr int kMaxGroup = 512;       // threads per row at most (and per block)
constexpr int kForwardValues = 32;   // values a forward thread holds per segment
constexpr int kForwardBlock = 128;   // threads per block when a row needs fewer
constexpr int kBackwardValues = 16;  // per backward thread: g, xhat and two column sums each
constexpr int kBackwardBlock = 256;

// Vectors of V values a thread holds per segment; at most 8, since with V = 1 each one
// needs an address of its own (more spill).
template <int V>
constexpr int kForwardVecs = std::min(8, kForwardValues / V);
template <int V>
constexpr int kBackwardVecs = std::min(8, kBackwardValues / V);

template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <class T, int V>
__device__ __forceinline__ void load_f32(const T* p, float (&out)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = to_f32(pk.v[k]);
}

template <class T, int V>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[V]) {
  if constexpr (sizeof(T) * V == 16) {
    // One 16-byte store, written out: the compiler splits a Pack (or uint4) copy into 4-byte
    // stores in the pass-2 loops.
    uint32_t word[4];
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int k = 0; k < 4; ++k) word[k] = __float_as_uint(in[k]);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) word[k] = pack2<T>(in[2 * k], in[2 * k + 1]);
    }
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(word[0]), "r"(word[1]), "r"(word[2]),
                 "r"(word[3])
                 : "memory");
  } else {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = from_f32<T>(in[k]);
    *reinterpret_cast<Pack<T, V>*>(p) = pk;
  }
}

// Round to the storage type and back: add_layer_norm normalizes x + residual as stored.
template <class T>
__device__ __forceinline__ float round_to(float x) {
  return to_f32(from_f32<T>(x));
}

// The vectors one thread holds of one segment of a row: vector k is the row's vector
// first + k * G; the thread has it (loads and counts it) when its row is live and the index
// is below nvec, and writes it under the same condition. In a full segment (kFull: every
// thread of every group has all K vectors) there is no per-vector test: a group past the
// block's last row still loads its (clamped) row, and only writes nothing.
template <bool kFull = false>
struct Segment {
  int64_t first, nvec;
  int G;
  bool live;
  __device__ int64_t vec(int k) const { return first + int64_t(k) * G; }
  __device__ bool has(int k) const {
    if constexpr (kFull) return true;
    else return live && vec(k) < nvec;
  }
  __device__ bool writes(int k) const {
    if constexpr (kFull) return live;
    else return has(k);
  }
};

template <int K, bool kFull = false>
__device__ __forceinline__ Segment<kFull> segment_of(int s, int64_t nvec, bool live) {
  const int G = blockDim.x;
  return {int64_t(s) * G * K + threadIdx.x, nvec, G, live};
}

// raw[k] = the thread's vector k of the segment of row r as stored, not converted yet (so a
// load issued ahead of its use holds 16 bytes in 4 registers); zeros where it has none.
template <class T, int V, int K, class Seg>
__device__ __forceinline__ void load_segment_raw(const T* r, const Seg& seg, Pack<T, V> (&raw)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (seg.has(k)) {
      raw[k] = *reinterpret_cast<const Pack<T, V>*>(r + seg.vec(k) * V);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) raw[k].v[e] = from_f32<T>(0.f);
    }
  }
}

template <class T, int V, int K>
__device__ __forceinline__ void unpack_f32(const Pack<T, V> (&raw)[K], float (&v)[K][V]) {
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) v[k][e] = to_f32(raw[k].v[e]);
}

// v[k] = the thread's vector k of the segment of row r; 0 where it has none.
template <class T, int V, int K, class Seg>
__device__ __forceinline__ void load_segment(const T* r, const Seg& seg, float (&v)[K][V]) {
  Pack<T, V> raw[K];
  load_segment_raw<T, V, K>(r, seg, raw);
  unpack_f32<T, V, K>(raw, v);
}

template <class T, int V, int K, class Seg>
__device__ __forceinline__ void store_segment(T* r, const Seg& seg, const float (&v)[K][V]) {
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (seg.writes(k)) store_f32<T, V>(r + seg.vec(k) * V, v[k]);
}

// Block b of B owns rows [rows * b / B, rows * (b + 1) / B); its row group y (threadIdx.y,
// R = blockDim.y groups) takes every R-th of them. For the fused backward, B = the number
// of dweight/dbias chunks, so block b's rows are chunk b's. Loops over a block's rows stay
// block-uniform (shuffles and __syncthreads need every thread); a group past the end works
// on a clamped row and is not live: it stores nothing and adds nothing.
struct RowRange {
  int64_t begin, end;
};

__device__ __forceinline__ RowRange block_rows(int64_t rows) {
  return {rows * blockIdx.x / gridDim.x, rows * (blockIdx.x + 1) / gridDim.x};
}

__device__ __forceinline__ float shfl_xor(float s, int m) { return __shfl_xor_sync(0xffffffffu, s, m); }
__device__ __forceinline__ float2 shfl_xor(float2 s, int m) {
  return make_float2(__shfl_xor_sync(0xffffffffu, s.x, m), __shfl_xor_sync(0xffffffffu, s.y, m));
}
__device__ __forceinline__ float combine(float a, float b) { return a + b; }
__device__ __forceinline__ float2 combine(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }

// Every thread of a row group ends with the same sums: lanes pair up in a butterfly (a + b
// and b + a are the same bits), then groups wider than a warp add their warps' sums in warp
// order.
template <class S>
__device__ S group_reduce(S s) {
  const int G = blockDim.x;
  const int tid = threadIdx.y * G + threadIdx.x, lane = tid % 32;
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    if (m < G) s = combine(s, shfl_xor(s, m));
  }
  if (G <= 32) return s;
  __shared__ S warp_states[kMaxGroup / 32];
  const int warps = G / 32, first = threadIdx.y * warps;
  __syncthreads();  // the previous call's readers are done
  if (lane == 0) warp_states[tid / 32] = s;
  __syncthreads();
  s = warp_states[first];
  for (int w = 1; w < warps; ++w) s = combine(s, warp_states[first + w]);
  return s;
}

// Sum of the thread's squares of a segment (vectors it does not have are zeros).
template <int K, int V>
__device__ __forceinline__ float sum_of_squares(const float (&v)[K][V]) {
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) sq += v[k][e] * v[k][e];
  return sq;
}

// The row's (count, mean, M2) from its threads' exact states: the mean from the group's sum
// of count * mean, then M2 = the sum of each state's M2 about that mean (Chan's merge with
// the final mean known). Two float sums instead of a Welford merge, with a division, per
// butterfly level.
__device__ __forceinline__ W group_statistics(const W& t, int64_t n) {
  const float count = float(n);
  const float mean = group_reduce(t.count * t.mean) / count;
  return {count, mean, group_reduce(m2_about(t, mean))};
}

// Exact (count, mean, M2) of this thread's values u (already shifted) in a segment: the mean
// first, then the squared deviations from it.
template <int K, int V, class Seg>
__device__ __forceinline__ W thread_welford(const float (&u)[K][V], const Seg& seg) {
  float count = 0.f, sum = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (!seg.has(k)) continue;
    count += float(V);
#pragma unroll
    for (int e = 0; e < V; ++e) sum += u[k][e];
  }
  if (count == 0.f) return {0.f, 0.f, 0.f};
  const float mean = sum / count;
  float m2 = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (!seg.has(k)) continue;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float d = u[k][e] - mean;
      m2 += d * d;
    }
  }
  return {count, mean, m2};
}

// v -= hi for layer norm (hi = the shift: v becomes what both the statistics and the
// normalization ((v - hi) - lo) * rstd start from, computed once); RMS norm keeps v (hi = 0).
template <int K, int V>
__device__ __forceinline__ void subtract_hi(float (&v)[K][V], bool center, float hi) {
  if (!center) return;
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) v[k][e] -= hi;
}

// Row group threadIdx.y's row of the block's iteration starting at row0: clamped to row0
// and not live past the block's last row (a group that is not live loads and stores nothing).
struct GroupRow {
  bool live;
  int64_t row;
  __device__ GroupRow(int64_t row0, int64_t end)
      : live(row0 + threadIdx.y < end), row(live ? row0 + threadIdx.y : row0) {}
};

template <class T, bool kResidual>
struct ForwardRow : GroupRow {
  const T* x;
  const T* residual;
  __device__ ForwardRow(const ForwardParams& p, int64_t row0, int64_t end)
      : GroupRow(row0, end),
        x(static_cast<const T*>(p.x) + p.x_rows.offset(row)),
        residual(kResidual ? static_cast<const T*>(p.residual) + p.residual_rows.offset(row) : nullptr) {}
};

// The first segment of a row and its first value (the Welford shift), loaded ahead: the
// launch keeps every block resident and each block walks its rows, so the next row's loads
// are in flight while this row is reduced and written.
template <class T, int V, int K>
struct RowAhead {
  Pack<T, V> x[K];
  T x0;
  template <bool kResidual, bool kFull>
  __device__ void load(const ForwardRow<T, kResidual>& r, int64_t nvec) {
    load_segment_raw<T, V, K>(r.x, segment_of<K, kFull>(0, nvec, r.live), x);
    x0 = r.x[0];
  }
};

// K vectors per thread and segment; kFull: every segment is full (nvec a multiple of G * K),
// so no vector needs a bounds test.
template <class T, int V, int K, bool kResidual, bool kFull>
__global__ void __launch_bounds__(kMaxGroup, 1) forward_kernel(const ForwardParams p) {
  // add_layer_norm loads its rows in turn: holding x and residual ahead would spill.
  constexpr bool kLoadAhead = !kResidual;
  const int64_t n = p.cols, nvec = n / V;
  const int R = blockDim.y;
  const int64_t seg_vecs = int64_t(blockDim.x) * K;
  const int nseg = int((nvec + seg_vecs - 1) / seg_vecs);
  const T* w = static_cast<const T*>(p.weight);
  const T* b = static_cast<const T*>(p.bias);
  const RowRange rows = block_rows(p.rows);
  RowAhead<T, V, K> ahead;
  if (kLoadAhead && rows.begin < rows.end)
    ahead.template load<kResidual, kFull>(ForwardRow<T, kResidual>(p, rows.begin, rows.end), nvec);
  for (int64_t row0 = rows.begin; row0 < rows.end; row0 += R) {
    const ForwardRow<T, kResidual> cur(p, row0, rows.end);
    const bool live = cur.live;
    const int64_t row = cur.row;
    T* sr = kResidual ? static_cast<T*>(p.sum_out) + row * n : nullptr;
    // Pass 1, per segment: s = x (+ residual, rounded and stored); layer norm: Welford over
    // s - shift (shift = s[0]); RMS norm: the sum of s^2.
    const float x0 = to_f32(kLoadAhead ? ahead.x0 : cur.x[0]);
    const float shift = kResidual ? round_to<T>(x0 + to_f32(cur.residual[0])) : x0;
    float v[K][V];
    W acc{0.f, 0.f, 0.f};
    float squares = 0.f;
    // v holds the segment's x: add the residual (storing the sum); the thread's statistics.
    const auto absorb = [&](const auto& seg) {
      if constexpr (kResidual) {
        float r[K][V];
        load_segment<T, V, K>(cur.residual, seg, r);
#pragma unroll
        for (int k = 0; k < K; ++k)
#pragma unroll
          for (int e = 0; e < V; ++e) v[k][e] = round_to<T>(v[k][e] + r[k][e]);
        store_segment<T, V, K>(sr, seg, v);
      }
      if (p.center) {
        subtract_hi<K, V>(v, true, shift);
        acc = welford_merge(acc, thread_welford<K, V>(v, seg));
      } else {
        squares += sum_of_squares<K, V>(v);
      }
    };
    int s = 0;
    if constexpr (kLoadAhead) {
      unpack_f32<T, V, K>(ahead.x, v);
      absorb(segment_of<K, kFull>(0, nvec, live));
      s = 1;
    }
    for (; s < nseg; ++s) {
      const auto seg = segment_of<K, kFull>(s, nvec, live);
      load_segment<T, V, K>(cur.x, seg, v);
      absorb(seg);
    }
    if (kLoadAhead && row0 + R < rows.end)
      ahead.template load<kResidual, kFull>(ForwardRow<T, kResidual>(p, row0 + R, rows.end), nvec);
    float hi, lo, rstd;
    if (p.center) row_statistics(group_statistics(acc, n), shift, float(p.eps), hi, lo, rstd);
    else rms_statistics(group_reduce(squares), float(n), float(p.eps), hi, lo, rstd);
    if (live && threadIdx.x == 0) {
      if (p.mean) static_cast<float2*>(p.mean)[row] = make_float2(hi, lo);
      static_cast<float*>(p.rstd)[row] = rstd;
    }
    // Pass 2, last segment first (it is still in registers, as s - hi):
    // y = ((s - hi) - lo) * rstd * w + b.
    const T* src = kResidual ? sr : cur.x;
    T* yr = static_cast<T*>(p.y) + row * n;
    for (int s = nseg - 1; s >= 0; --s) {
      const auto seg = segment_of<K, kFull>(s, nvec, live);
      if (s != nseg - 1) {
        load_segment<T, V, K>(src, seg, v);
        subtract_hi<K, V>(v, p.center, hi);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (!seg.writes(k)) continue;
        const int64_t j = seg.vec(k) * V;
        float wv[V], bv[V];
        if (w) load_f32<T, V>(w + j, wv);
        if (b) load_f32<T, V>(b + j, bv);
#pragma unroll
        for (int e = 0; e < V; ++e)
          v[k][e] = normalize_affine(v[k][e], 0.f, lo, rstd, w ? wv[e] : 1.f, b ? bv[e] : 0.f);  // v = s - hi
        store_f32<T, V>(yr + j, v[k]);
      }
    }
  }
}

// xh = xhat = ((x - hi) - lo) * rstd where the thread has a vector of the segment, else 0.
template <int V, int K>
__device__ __forceinline__ void to_xhat(const Segment<>& seg, float2 mean, float rstd, float (&xh)[K][V]) {
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) xh[k][e] = seg.has(k) ? normalized(xh[k][e], mean.x, mean.y, rstd) : 0.f;
}

// g = dy, xh = xhat for the thread's vectors of a segment; 0 where it has none.
template <class T, int V, int K>
__device__ __forceinline__ void load_dy_xhat(const T* dyr, const T* xr, const Segment<>& seg, float2 mean,
                                             float rstd, float (&g)[K][V], float (&xh)[K][V]) {
  load_segment<T, V, K>(dyr, seg, g);
  load_segment<T, V, K>(xr, seg, xh);
  to_xhat<V, K>(seg, mean, rstd, xh);
}

// A backward row and, below, its first segment of dy and x with the row's statistics, loaded
// ahead as in the forward: in flight while the row before is finished.
template <class T>
struct BackwardRow : GroupRow {
  const T* dy;
  const T* x;
  __device__ BackwardRow(const BackwardParams& p, int64_t row0, int64_t end)
      : GroupRow(row0, end),
        dy(static_cast<const T*>(p.dy) + p.dy_rows.offset(row)),
        x(static_cast<const T*>(p.x) + p.x_rows.offset(row)) {}
};

template <class T, int V, int K>
struct BackwardAhead {
  Pack<T, V> dy[K], x[K];
  float2 mean;
  float rstd;
  __device__ void load(const BackwardParams& p, const BackwardRow<T>& r, int64_t nvec) {
    const auto seg = segment_of<K>(0, nvec, r.live);
    load_segment_raw<T, V, K>(r.dy, seg, dy);
    load_segment_raw<T, V, K>(r.x, seg, x);
    mean = p.mean ? static_cast<const float2*>(p.mean)[r.row] : make_float2(0.f, 0.f);
    rstd = static_cast<const float*>(p.rstd)[r.row];
  }
};

// g = dy * w rounded once (no FMA contraction), so both passes see the same g and a row
// whose dx is exactly 0 (one element) gets 0, as on the CPU.
template <class T, int V, int K>
__device__ __forceinline__ void scale_by_weight(const T* w, const Segment<>& seg, float (&g)[K][V]) {
  if (!w) return;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (!seg.has(k)) continue;
    float wv[V];
    load_f32<T, V>(w + seg.vec(k) * V, wv);
#pragma unroll
    for (int e = 0; e < V; ++e) g[k][e] = __fmul_rn(g[k][e], wv[e]);
  }
}

// Row groups 1..R-1 of the block hand their column sums to group 0, which adds them in
// group order (group 0 ends with the block's sums).
template <int K, int V>
__device__ __forceinline__ void add_row_groups(float (&acc)[K][V]) {
  const int G = blockDim.x, R = blockDim.y, t = threadIdx.x, y = threadIdx.y;
  if (R == 1) return;
  __shared__ float handoff[kBackwardBlock * kBackwardValues];  // (R - 1) * G * K * V values
  __syncthreads();  // the previous readers are done
  if (y > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int e = 0; e < V; ++e) handoff[((k * V + e) * (R - 1) + y - 1) * G + t] = acc[k][e];
  }
  __syncthreads();
  if (y == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int e = 0; e < V; ++e)
        for (int q = 1; q < R; ++q) acc[k][e] += handoff[((k * V + e) * (R - 1) + q - 1) * G + t];
  }
}

// Row group 0 writes the block's column sums as partial row `c` of `part` (n columns).
template <int K, int V>
__device__ __forceinline__ void write_partial_row(float* part, int64_t n, const float (&acc)[K][V]) {
  if (threadIdx.y != 0) return;
  const auto seg = segment_of<K>(0, n / V, true);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (!seg.writes(k)) continue;
#pragma unroll
    for (int e = 0; e < V; ++e) part[seg.vec(k) * V + e] = acc[k][e];
  }
}

// kPartials: the row is one segment and gridDim.x = partial_rows chunks (block_rows).
template <class T, int V, bool kPartials>
__global__ void __launch_bounds__(kMaxGroup, 1) backward_kernel(const BackwardParams p) {
  constexpr int K = kBackwardVecs<V>;
  const int64_t n = p.cols, nvec = n / V;
  const int R = blockDim.y;
  const int64_t seg_vecs = int64_t(blockDim.x) * K;
  const int nseg = int((nvec + seg_vecs - 1) / seg_vecs);
  const T* w = static_cast<const T*>(p.weight);
  const float inv_n = 1.f / float(n);
  float dw[K][V] = {}, db[K][V] = {};  // kPartials: this row group's sums of dy * xhat, dy
  const RowRange rows = block_rows(p.rows);
  // With the column sums in registers, holding the next row's dy and x too would spill.
  constexpr bool kLoadAhead = !kPartials;
  BackwardAhead<T, V, K> ahead;
  if (kLoadAhead && rows.begin < rows.end) ahead.load(p, BackwardRow<T>(p, rows.begin, rows.end), nvec);
  for (int64_t row0 = rows.begin; row0 < rows.end; row0 += R) {
    const BackwardRow<T> cur(p, row0, rows.end);
    if (!kLoadAhead) ahead.load(p, cur, nvec);
    const bool live = cur.live;
    const int64_t row = cur.row;
    const float2 mean = ahead.mean;
    const float rstd = ahead.rstd;
    // Pass 1, per segment: xhat = (x - mean) * rstd; dweight += dy * xhat, dbias += dy;
    // g = dy * w; sums of g and g * xhat.
    float g[K][V], xh[K][V];
    float2 sums = make_float2(0.f, 0.f);
    const auto absorb = [&](const auto& seg) {  // g = dy, xh = xhat of the segment
      if (kPartials) {
#pragma unroll
        for (int k = 0; k < K; ++k)
#pragma unroll
          for (int e = 0; e < V; ++e) dw[k][e] += g[k][e] * xh[k][e], db[k][e] += g[k][e];
      }
      scale_by_weight<T, V, K>(w, seg, g);
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int e = 0; e < V; ++e) sums.x += g[k][e], sums.y += g[k][e] * xh[k][e];
    };
    {
      const auto seg = segment_of<K>(0, nvec, live);
      unpack_f32<T, V, K>(ahead.dy, g);
      unpack_f32<T, V, K>(ahead.x, xh);
      to_xhat<V, K>(seg, mean, rstd, xh);
      absorb(seg);
    }
    for (int s = 1; s < nseg; ++s) {
      const auto seg = segment_of<K>(s, nvec, live);
      load_dy_xhat<T, V, K>(cur.dy, cur.x, seg, mean, rstd, g, xh);
      absorb(seg);
    }
    if (kLoadAhead && row0 + R < rows.end) ahead.load(p, BackwardRow<T>(p, row0 + R, rows.end), nvec);
    sums = group_reduce(sums);
    const float mean_g = sums.x * inv_n, mean_gx = sums.y * inv_n;
    // Pass 2, last segment first (still in registers):
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dsum).
    T* dxr = static_cast<T*>(p.dx) + row * n;
    const T* dsr = p.dsum ? static_cast<const T*>(p.dsum) + row * n : nullptr;
    for (int s = nseg - 1; s >= 0; --s) {
      const auto seg = segment_of<K>(s, nvec, live);
      if (s != nseg - 1) {
        load_dy_xhat<T, V, K>(cur.dy, cur.x, seg, mean, rstd, g, xh);
        scale_by_weight<T, V, K>(w, seg, g);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (!seg.writes(k)) continue;
        const int64_t j = seg.vec(k) * V;
        float ds[V];
        if (dsr) load_f32<T, V>(dsr + j, ds);
#pragma unroll
        for (int e = 0; e < V; ++e)
          g[k][e] = input_gradient(g[k][e], xh[k][e], rstd, mean_g, mean_gx, p.center) + (dsr ? ds[e] : 0.f);
        store_f32<T, V>(dxr + j, g[k]);
      }
    }
  }
  if (kPartials) {
    float* part = static_cast<float*>(p.partials);
    const int64_t c = blockIdx.x, chunks = p.partial_rows;
    add_row_groups<K, V>(dw);
    write_partial_row<K, V>(part + c * n, n, dw);
    add_row_groups<K, V>(db);
    write_partial_row<K, V>(part + (chunks + c) * n, n, db);
  }
}

// Columns per thread in the staged backward: its column sums are 2 * 32 registers.
constexpr int kStagedColumns = 32;
// Rows at least this long take the staged backward: shorter ones are one register segment
// with several rows per block or several blocks per SM (H200, check 11: forward+backward
// 1.05x torch and up at 4096 columns and fewer); from 8192 bf16 columns that path has one
// block per SM that waits for each row's loads (0.99x at 8192, 0.62x at 16384).
constexpr int64_t kStagedMinColumns = 8192;
template <class T>
constexpr int kStagedVecs = kStagedColumns * int(sizeof(T)) / 16;

// kStagedMinColumns, or PYFASTATTN_NORM_STAGED_MIN_COLS when set: a knob for measuring the
// crossover on a GPU in one process (bench/kernel_time.py norm-staged), read at every launch.
// Never below 1024 columns, where a staged row would get fewer than 32 threads.
int64_t staged_min_columns() {
  const char* v = std::getenv("PYFASTATTN_NORM_STAGED_MIN_COLS");
  return std::max<int64_t>(1024, v ? std::atoll(v) : kStagedMinColumns);
}

// Backward for aligned rows of kStagedMinColumns to kMaxGroup * kStagedColumns columns (one
// row per block): the block's rows are copied into shared memory with cp.async, the next
// row while this one is worked on (`stages` = 2; 1 when two rows do not fit), so a row's
// loads are in flight without holding registers. Thread t copies exactly the 16-byte vectors
// it reads later (t, t + G, ...): the staged rows are its own, and need no barrier.
// kPartials: gridDim.x = partial_rows chunks, and the column sums of dy * xhat and dy over
// the block's rows stay in registers until the block writes its partial row.
template <class T, bool kPartials>
__global__ void __launch_bounds__(kMaxGroup, 1) backward_staged_kernel(const BackwardParams p, int stages) {
  constexpr int V = 16 / int(sizeof(T)), K = kStagedVecs<T>;
  using Vec = Pack<T, V>;
  extern __shared__ __align__(16) unsigned char staged_rows[];  // stages x (dy, x) x cols
  const int64_t n = p.cols;
  // Vector indices within a row fit an int (at most kMaxGroup * K vectors).
  const int nvec = int(n / V), G = blockDim.x, t = threadIdx.x;
  const Vec* w = static_cast<const Vec*>(p.weight);
  const float inv_n = 1.f / float(n);
  const auto stage = [&](int s) { return reinterpret_cast<Vec*>(staged_rows) + 2 * s * nvec; };
  // Issues the copies of row r's dy and x into stage s, and reads its statistics.
  float2 mean_next = make_float2(0.f, 0.f);
  float rstd_next = 0.f;
  const auto fetch = [&](int64_t r, int s) {
    asm volatile("" ::: "memory");  // the stage's last reads (this thread's) come first
    // Rows a constant stride apart (checked at launch): RowLayout::offset's divisions, with
    // the column sums live, would spill.
    const auto row_of = [r](const void* base, const RowLayout& l) {
      return reinterpret_cast<const Vec*>(static_cast<const T*>(base) + (l.ndim ? r * l.stride[0] : 0));
    };
    const Vec* dy = row_of(p.dy, p.dy_rows);
    const Vec* x = row_of(p.x, p.x_rows);
    const uint32_t to = smem_addr(stage(s));
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = t + k * G;
      if (i >= nvec) break;
      cp_async16_whole(to + uint32_t(i) * 16u, dy + i);
      cp_async16_whole(to + uint32_t(nvec + i) * 16u, x + i);
    }
    if (p.mean) mean_next = static_cast<const float2*>(p.mean)[r];
    rstd_next = static_cast<const float*>(p.rstd)[r];
  };
  // g = dy * w (rounded once, as scale_by_weight) and xh = xhat of vector i of the staged row.
  const auto staged_vector = [&](const Vec* row, int i, float2 mean, float rstd, float (&dy)[V], float (&g)[V],
                                 float (&xh)[V]) {
    const Vec dv = row[i], xv = row[nvec + i];
    Vec wv;
    if (w) wv = w[i];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      dy[e] = to_f32(dv.v[e]);
      g[e] = w ? __fmul_rn(dy[e], to_f32(wv.v[e])) : dy[e];
      xh[e] = normalized(to_f32(xv.v[e]), mean.x, mean.y, rstd);
    }
  };
  float dw[K][V] = {}, db[K][V] = {};
  const RowRange rows = block_rows(p.rows);
  if (rows.begin < rows.end) fetch(rows.begin, 0);
  for (int64_t row = rows.begin; row < rows.end; ++row) {
    const int s = stages == 2 ? int((row - rows.begin) & 1) : 0;
    const float2 mean = mean_next;
    const float rstd = rstd_next;
    if (stages == 2 && row + 1 < rows.end) fetch(row + 1, s ^ 1);
    cp_async_commit();
    if (stages == 2) cp_async_wait<1>();  // this row's copies have landed, the next may not have
    else cp_async_wait<0>();
    const Vec* staged = stage(s);
    // Pass 1: dweight += dy * xhat, dbias += dy; g = dy * w; sums of g and g * xhat.
    float2 sums = make_float2(0.f, 0.f);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = t + k * G;
      if (i >= nvec) break;
      float dy[V], g[V], xh[V];
      staged_vector(staged, i, mean, rstd, dy, g, xh);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        if (kPartials) dw[k][e] += dy[e] * xh[e], db[k][e] += dy[e];
        sums.x += g[e], sums.y += g[e] * xh[e];
      }
    }
    sums = group_reduce(sums);
    const float mean_g = sums.x * inv_n, mean_gx = sums.y * inv_n;
    // Pass 2, from the staged row again: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dsum).
    T* dxr = static_cast<T*>(p.dx) + row * n;
    const T* dsr = p.dsum ? static_cast<const T*>(p.dsum) + row * n : nullptr;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = t + k * G;
      if (i >= nvec) break;
      float dy[V], g[V], xh[V], ds[V];
      staged_vector(staged, i, mean, rstd, dy, g, xh);
      if (dsr) load_f32<T, V>(dsr + i * V, ds);
#pragma unroll
      for (int e = 0; e < V; ++e)
        g[e] = input_gradient(g[e], xh[e], rstd, mean_g, mean_gx, p.center) + (dsr ? ds[e] : 0.f);
      store_f32<T, V>(dxr + i * V, g);
    }
    if (stages == 1 && row + 1 < rows.end) fetch(row + 1, 0);
  }
  if (kPartials) {
    float* part = static_cast<float*>(p.partials);
    const int64_t c = blockIdx.x, chunks = p.partial_rows;
    write_partial_row<K, V>(part + c * n, n, dw);
    write_partial_row<K, V>(part + (chunks + c) * n, n, db);
  }
}

constexpr int kColThreads = 32, kColLanes = 8;

// For rows longer than one backward segment: the column sums of chunk blockIdx.y over
// columns [blockIdx.x * 32 * V, +32 * V). Row lane y adds dy * xhat and dy over rows
// r0 + y, r0 + y + 8, ...; lane 0 then adds the lanes in order and writes the partial rows.
template <class T, int V>
__global__ void column_partials_kernel(const BackwardParams p) {
  __shared__ float handoff[2][kColLanes - 1][kColThreads * V];
  const int64_t n = p.cols, chunks = p.partial_rows, c = blockIdx.y;
  const int t = threadIdx.x, y = threadIdx.y;
  const int64_t j = (int64_t(blockIdx.x) * kColThreads + t) * V;
  const int64_t r0 = p.rows * c / chunks, r1 = p.rows * (c + 1) / chunks;
  const float2* means = static_cast<const float2*>(p.mean);
  const float* rstds = static_cast<const float*>(p.rstd);
  float dw[V] = {}, db[V] = {};
  if (j < n) {
#pragma unroll 4
    for (int64_t r = r0 + y; r < r1; r += kColLanes) {
      float dy[V], x[V];
      load_f32<T, V>(static_cast<const T*>(p.dy) + p.dy_rows.offset(r) + j, dy);
      load_f32<T, V>(static_cast<const T*>(p.x) + p.x_rows.offset(r) + j, x);
      const float2 mean = means ? means[r] : make_float2(0.f, 0.f);
      const float rstd = rstds[r];
#pragma unroll
      for (int e = 0; e < V; ++e) dw[e] += dy[e] * normalized(x[e], mean.x, mean.y, rstd), db[e] += dy[e];
    }
  }
  if (y > 0) {
#pragma unroll
    for (int e = 0; e < V; ++e) handoff[0][y - 1][t * V + e] = dw[e], handoff[1][y - 1][t * V + e] = db[e];
  }
  __syncthreads();
  if (y != 0 || j >= n) return;
  for (int q = 1; q < kColLanes; ++q)
#pragma unroll
    for (int e = 0; e < V; ++e) dw[e] += handoff[0][q - 1][t * V + e], db[e] += handoff[1][q - 1][t * V + e];
  float* part = static_cast<float*>(p.partials);
#pragma unroll
  for (int e = 0; e < V; ++e) part[c * n + j + e] = dw[e], part[(chunks + c) * n + j + e] = db[e];
}

constexpr int kFinalLanes = 32;

// dweight_j (blockIdx.y = 0) or dbias_j (1) = the sum over chunks in a fixed order: lane y
// adds chunks y, y + 32, ...; lane 0 then adds the 32 lane sums in order.
template <class T>
__global__ void param_grad_final_kernel(const BackwardParams p) {
  __shared__ float lanes[kFinalLanes][32 + 1];
  T* out = static_cast<T*>(blockIdx.y ? p.dbias : p.dweight);
  if (!out) return;  // the whole block
  const int64_t n = p.cols, chunks = p.partial_rows;
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const float* part = static_cast<const float*>(p.partials) + blockIdx.y * chunks * n;
  float s = 0.f;
  if (j < n)
    for (int64_t c = threadIdx.y; c < chunks; c += kFinalLanes) s += part[c * n + j];
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || j >= n) return;
  for (int q = 1; q < kFinalLanes; ++q) s += lanes[q][threadIdx.x];
  out[j] = from_f32<T>(s);
}

// G threads per row, enough that each holds at most `per_thread` vectors of the row: a
// power of two up to a warp (several rows per block of `block_threads`), else a multiple
// of 32 up to kMaxGroup (one row per block; longer rows take several segments).
dim3 row_block(int64_t nvec, int per_thread, int block_threads) {
  const int64_t need = (nvec + per_thread - 1) / per_thread;
  int g = 1;
  if (need <= 32) {
    while (g < need) g *= 2;
  } else {
    g = int(std::min<int64_t>(kMaxGroup, (need + 31) / 32 * 32));
  }
  return dim3(unsigned(g), unsigned(std::max(1, block_threads / g)));
}

// One block per block.y rows (block_rows loops when the grid is smaller).
dim3 row_grid(int64_t rows, dim3 block) {
  constexpr int64_t kMaxGrid = int64_t(1) << 20;
  return dim3(unsigned(std::min<int64_t>((rows + block.y - 1) / block.y, kMaxGrid)));
}

// At most as many blocks as stay resident, each walking its rows with the next one loaded
// ahead (a grid of row_grid's size would start most blocks after others finished).
template <class Kernel>
dim3 resident_row_grid(Kernel kernel, int64_t rows, dim3 block) {
  return dim3(unsigned(std::min<int64_t>(row_grid(rows, block).x, resident_blocks(kernel, int(block.x * block.y)))));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool rows_aligned(const void* base, const RowLayout& l, int64_t cols, int bytes) {
  if (!aligned16(base) || (cols * bytes) % 16) return false;
  for (int d = 0; d < l.ndim; ++d)
    if ((l.stride[d] * bytes) % 16) return false;
  return true;
}

// Calls f(std::integral_constant<int, V>) with V = 16 / sizeof(T) values per vector when
// every row start is 16-byte aligned (then V divides cols), else V = 1.
template <class T, class F>
void with_vector_width(bool aligned, F&& f) {
  if (aligned) f(std::integral_constant<int, int(16 / sizeof(T))>{});
  else f(std::integral_constant<int, 1>{});
}

// The staged backward (backward_staged_kernel) for rows of 16-byte vectors: when a row has
// at most kMaxGroup * 32 columns, the rows of dy and of x are a constant stride apart, and a
// row's dy and x fit the shared memory a block may opt in to; false (nothing launched)
// otherwise. Each block takes one row at a time, with as many threads as give each thread
// at most kStagedColumns columns. May lower p.partial_rows (the chunks the final sum reads).
template <class T>
bool launch_staged_backward(BackwardParams& p, cudaStream_t stream, bool want_partials) {
  constexpr int V = 16 / int(sizeof(T)), K = kStagedVecs<T>;
  // group_reduce's warp sums: the kernel's only static shared memory.
  constexpr size_t kStaticSmem = sizeof(float2) * (kMaxGroup / 32);
  const int64_t nvec = p.cols / V;
  if (nvec > int64_t(kMaxGroup) * K || p.dy_rows.ndim > 1 || p.x_rows.ndim > 1) return false;
  const size_t row_bytes = 2 * size_t(p.cols) * sizeof(T), room = smem_optin() - kStaticSmem;
  if (row_bytes > room) return false;
  const int stages = 2 * row_bytes <= room ? 2 : 1;
  const size_t smem = stages * row_bytes;
  const dim3 block = row_block(nvec, K, 1);  // one row per block

  const auto launch = [&](auto kernel, bool chunked) {
    PFA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const int64_t resident = resident_blocks(kernel, int(block.x), smem);
    // With dweight/dbias, one block per chunk and no more chunks than blocks stay resident:
    // a second, partly idle wave would restart the pipeline and write more partial rows.
    // The count depends on the device only, so results stay bitwise reproducible on it.
    if (chunked) p.partial_rows = std::min(p.partial_rows, resident);
    const dim3 grid(unsigned(chunked ? p.partial_rows : std::min<int64_t>(row_grid(p.rows, block).x, resident)));
    kernel<<<grid, block, smem, stream>>>(p, stages);
    PFA_CHECK_LAUNCH();
  };
  if (want_partials) launch(backward_staged_kernel<T, true>, true);
  else launch(backward_staged_kernel<T, false>, false);
  return true;
}

}  // namespace

void forward_cuda(const ForwardParams& p, uintptr_t stream_handle) {
  if (p.rows == 0 || p.cols == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  dispatch_cuda_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int bytes = sizeof(T);
    bool vec = rows_aligned(p.x, p.x_rows, p.cols, bytes) && (!p.weight || aligned16(p.weight)) &&
               (!p.bias || aligned16(p.bias)) && aligned16(p.y);
    if (p.residual) vec = vec && rows_aligned(p.residual, p.residual_rows, p.cols, bytes) && aligned16(p.sum_out);
    with_vector_width<T>(vec, [&](auto width) {
      constexpr int V = decltype(width)::value;
      constexpr int K = kForwardVecs<V>;
      const int64_t nvec = p.cols / V;
      // forward_kernel<T, V, KV, residual or not, kFull> on `block`
      const auto launch = [&](auto kv, auto full, dim3 block) {
        constexpr int KV = decltype(kv)::value;
        constexpr bool kFull = decltype(full)::value;
        const auto run = [&](auto kernel) {
          kernel<<<resident_row_grid(kernel, p.rows, block), block, 0, stream>>>(p);
          PFA_CHECK_LAUNCH();
        };
        if (p.residual) run(forward_kernel<T, V, KV, true, kFull>);
        else run(forward_kernel<T, V, KV, false, kFull>);
      };
      using KVecs = std::integral_constant<int, K>;
      const dim3 block = row_block(nvec, K, kForwardBlock);
      const bool full = nvec % (int64_t(block.x) * K) == 0;
      // 16-bit rows that K leaves with a partial segment but K - 1 = 3 vectors per thread
      // fill exactly (768 and 1536 columns: 96 = 32 x 3 and 192 = 64 x 3 vectors) take the
      // full-segment kernel with K - 1.
      if constexpr (sizeof(T) == 2 && V * sizeof(T) == 16) {
        const dim3 block3 = row_block(nvec, K - 1, kForwardBlock);
        if (!full && nvec == int64_t(block3.x) * (K - 1))
          return launch(std::integral_constant<int, K - 1>{}, std::true_type{}, block3);
      }
      if (full) launch(KVecs{}, std::true_type{}, block);
      else launch(KVecs{}, std::false_type{}, block);
    });
  });
}

void backward_cuda(const BackwardParams& p, uintptr_t stream_handle) {
  if (p.rows == 0 || p.cols == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  const bool want_partials = p.dweight || p.dbias;
  if (want_partials)
    check(p.partial_rows > 0 && p.partial_rows <= std::min<int64_t>(p.rows, 65535),
          "norm backward: bad partial_rows");
  dispatch_cuda_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int bytes = sizeof(T);
    const bool vec = rows_aligned(p.dy, p.dy_rows, p.cols, bytes) && rows_aligned(p.x, p.x_rows, p.cols, bytes) &&
                     (!p.weight || aligned16(p.weight)) && (!p.dsum || aligned16(p.dsum)) && aligned16(p.dx);
    with_vector_width<T>(vec, [&](auto width) {
      constexpr int V = decltype(width)::value;
      constexpr int K = kBackwardVecs<V>;
      const int64_t nvec = p.cols / V;
      const dim3 block = row_block(nvec, K, kBackwardBlock);
      const bool one_segment = nvec <= int64_t(block.x) * K;
      BackwardParams q = p;  // the staged kernel may use fewer chunks than were allocated
      if (V * bytes == 16 && p.cols >= staged_min_columns() && launch_staged_backward<T>(q, stream, want_partials)) {
        if (!want_partials) return;
      } else if (want_partials && one_segment) {
        backward_kernel<T, V, true><<<unsigned(p.partial_rows), block, 0, stream>>>(p);
        PFA_CHECK_LAUNCH();
      } else {
        const auto kernel = backward_kernel<T, V, false>;
        kernel<<<resident_row_grid(kernel, p.rows, block), block, 0, stream>>>(p);
        PFA_CHECK_LAUNCH();
        if (!want_partials) return;
        const dim3 col_grid(unsigned((p.cols / V + kColThreads - 1) / kColThreads), unsigned(p.partial_rows));
        column_partials_kernel<T, V><<<col_grid, dim3(kColThreads, kColLanes), 0, stream>>>(p);
        PFA_CHECK_LAUNCH();
      }
      const dim3 grid(unsigned((p.cols + 31) / 32), 2);
      param_grad_final_kernel<T><<<grid, dim3(32, kFinalLanes), 0, stream>>>(q);
      PFA_CHECK_LAUNCH();
    });
  });
}

}  // namespace pfa::norm
