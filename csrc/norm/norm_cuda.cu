// CUDA kernels of the norm family. Written like norm_cpu.cpp on purpose: per row, Welford
// statistics, a group reduction, then one pass that normalizes; the math is norm_math.h's.
//
// One design covers hidden sizes 1..65536: a group of G threads owns a row. G = 32 (a warp,
// several rows per block) for short rows, G = 64..1024 (the whole block) for long ones.
// Each thread reads 16-byte vectors when every row start is 16-byte aligned, plus a
// scalar tail. dweight/dbias use a deterministic two-stage reduction: per-chunk partials,
// then a fixed-order sum over chunks.
#include <algorithm>

#include "common/cuda_utils.cuh"
#include "norm/norm.h"
#include "norm/norm_math.h"

namespace pfa::norm {
namespace {

using W = Welford<float>;

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
  Pack<T, V> pk;
#pragma unroll
  for (int k = 0; k < V; ++k) pk.v[k] = from_f32<T>(in[k]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

// Round to the storage type and back: add_layer_norm normalizes x + residual as stored.
template <class T>
__device__ __forceinline__ float round_to(float x) {
  return to_f32(from_f32<T>(x));
}

// A vector of V values as one Welford state: exact mean and M2 of the V values, so the
// running merge divides once per vector instead of once per element.
template <int V>
__device__ __forceinline__ W welford_of(float (&v)[V], float shift) {
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] -= shift, s += v[k];
  const float mean = s * (1.f / V);
  float m2 = 0.f;
#pragma unroll
  for (int k = 0; k < V; ++k) m2 += (v[k] - mean) * (v[k] - mean);
  return {float(V), mean, m2};
}

__device__ __forceinline__ W shfl_xor(const W& w, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, w.count, lane_mask), __shfl_xor_sync(0xffffffffu, w.mean, lane_mask),
          __shfl_xor_sync(0xffffffffu, w.m2, lane_mask)};
}

// Every thread of the row group ends with the merged state. Groups larger than a warp are
// the whole block (blockDim.y == 1), so __syncthreads is uniform.
__device__ W group_merge(W w) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) w = welford_merge(w, shfl_xor(w, m));
  if (blockDim.x <= 32) return w;
  __shared__ W warp_states[32];
  __shared__ W total;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  __syncthreads();  // the previous row's readers of `total` are done
  if (lane == 0) warp_states[warp] = w;
  __syncthreads();
  if (warp == 0) {
    W v = lane < nwarps ? warp_states[lane] : W{0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = welford_merge(v, shfl_xor(v, m));
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Same pattern for the two backward sums.
__device__ float2 group_sum2(float2 s) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    s.x += __shfl_xor_sync(0xffffffffu, s.x, m);
    s.y += __shfl_xor_sync(0xffffffffu, s.y, m);
  }
  if (blockDim.x <= 32) return s;
  __shared__ float2 warp_sums[32];
  __shared__ float2 total;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) warp_sums[warp] = s;
  __syncthreads();
  if (warp == 0) {
    float2 v = lane < nwarps ? warp_sums[lane] : make_float2(0.f, 0.f);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
      v.x += __shfl_xor_sync(0xffffffffu, v.x, m);
      v.y += __shfl_xor_sync(0xffffffffu, v.y, m);
    }
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Row groups of up to 512 threads: 1024 x 72 registers exceeds the register file (seen on
// an H100: "too many resources requested for launch").
constexpr int kMaxRowThreads = 512;

template <class T, int V, bool kResidual>
__global__ void forward_kernel(const ForwardParams p) {
  const int64_t n = p.cols, nvec = n / V;
  const int tid = threadIdx.x, G = blockDim.x;
  const T* w = static_cast<const T*>(p.weight);
  const T* b = static_cast<const T*>(p.bias);
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < p.rows;
       row += int64_t(gridDim.x) * blockDim.y) {
    const T* xr = static_cast<const T*>(p.x) + p.x_rows.offset(row);
    const T* rr = kResidual ? static_cast<const T*>(p.residual) + p.residual_rows.offset(row) : nullptr;
    T* sr = kResidual ? static_cast<T*>(p.sum_out) + row * n : nullptr;
    // Pass 1: s = x (+ residual, rounded and stored); Welford over s - s[0].
    const float shift = kResidual ? round_to<T>(to_f32(xr[0]) + to_f32(rr[0])) : to_f32(xr[0]);
    W acc{0.f, 0.f, 0.f};
    for (int64_t i = tid; i < nvec; i += G) {
      float v[V];
      load_f32<T, V>(xr + i * V, v);
      if (kResidual) {
        float r[V];
        load_f32<T, V>(rr + i * V, r);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = round_to<T>(v[k] + r[k]);
        store_f32<T, V>(sr + i * V, v);
      }
      acc = welford_merge(acc, welford_of<V>(v, shift));
    }
    for (int64_t j = nvec * V + tid; j < n; j += G) {
      float v = to_f32(xr[j]);
      if (kResidual) {
        v = round_to<T>(v + to_f32(rr[j]));
        sr[j] = from_f32<T>(v);
      }
      welford_push(acc, v - shift);
    }
    acc = group_merge(acc);
    float hi, lo, rstd;
    row_statistics(acc, shift, float(p.eps), p.center, hi, lo, rstd);
    if (tid == 0) {
      if (p.mean) static_cast<float2*>(p.mean)[row] = make_float2(hi, lo);
      static_cast<float*>(p.rstd)[row] = rstd;
    }
    // Pass 2: y = (s - mean) * rstd * w + b. Each thread re-reads only what it wrote or read.
    const T* src = kResidual ? sr : xr;
    T* yr = static_cast<T*>(p.y) + row * n;
    for (int64_t i = tid; i < nvec; i += G) {
      float v[V], wv[V], bv[V];
      load_f32<T, V>(src + i * V, v);
      if (w) load_f32<T, V>(w + i * V, wv);
      if (b) load_f32<T, V>(b + i * V, bv);
#pragma unroll
      for (int k = 0; k < V; ++k)
        v[k] = normalize_affine(v[k], hi, lo, rstd, w ? wv[k] : 1.f, b ? bv[k] : 0.f);
      store_f32<T, V>(yr + i * V, v);
    }
    for (int64_t j = nvec * V + tid; j < n; j += G) {
      const float v = normalize_affine(to_f32(src[j]), hi, lo, rstd, w ? to_f32(w[j]) : 1.f, b ? to_f32(b[j]) : 0.f);
      yr[j] = from_f32<T>(v);
    }
  }
}

// g = dy * w rounded once (no FMA contraction), so both passes see the same g and a row
// whose dx is exactly 0 (one element) gets 0, as on the CPU.
__device__ __forceinline__ float scaled_grad(float dy, float w) { return __fmul_rn(dy, w); }

template <class T, int V>
__global__ void backward_input_kernel(const BackwardParams p) {
  const int64_t n = p.cols, nvec = n / V;
  const int tid = threadIdx.x, G = blockDim.x;
  const T* w = static_cast<const T*>(p.weight);
  const float2* means = static_cast<const float2*>(p.mean);
  const float* rstds = static_cast<const float*>(p.rstd);
  const float inv_n = 1.f / float(n);
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < p.rows;
       row += int64_t(gridDim.x) * blockDim.y) {
    const T* dyr = static_cast<const T*>(p.dy) + p.dy_rows.offset(row);
    const T* xr = static_cast<const T*>(p.x) + p.x_rows.offset(row);
    const float2 c = means ? means[row] : make_float2(0.f, 0.f);
    const float rstd = rstds[row];
    // Pass 1: sum(g) and sum(g * xhat) with g = dy * w, xhat = (x - mean) * rstd.
    float2 sums = make_float2(0.f, 0.f);
    for (int64_t i = tid; i < nvec; i += G) {
      float dy[V], x[V], wv[V];
      load_f32<T, V>(dyr + i * V, dy);
      load_f32<T, V>(xr + i * V, x);
      if (w) load_f32<T, V>(w + i * V, wv);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float g = scaled_grad(dy[k], w ? wv[k] : 1.f);
        sums.x += g;
        sums.y += g * normalized(x[k], c.x, c.y, rstd);
      }
    }
    for (int64_t j = nvec * V + tid; j < n; j += G) {
      const float g = scaled_grad(to_f32(dyr[j]), w ? to_f32(w[j]) : 1.f);
      sums.x += g;
      sums.y += g * normalized(to_f32(xr[j]), c.x, c.y, rstd);
    }
    sums = group_sum2(sums);
    const float mean_g = sums.x * inv_n, mean_gx = sums.y * inv_n;
    // Pass 2: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dsum).
    T* dxr = static_cast<T*>(p.dx) + row * n;
    const T* dsr = p.dsum ? static_cast<const T*>(p.dsum) + row * n : nullptr;
    for (int64_t i = tid; i < nvec; i += G) {
      float dy[V], x[V], wv[V], ds[V];
      load_f32<T, V>(dyr + i * V, dy);
      load_f32<T, V>(xr + i * V, x);
      if (w) load_f32<T, V>(w + i * V, wv);
      if (dsr) load_f32<T, V>(dsr + i * V, ds);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float g = scaled_grad(dy[k], w ? wv[k] : 1.f);
        x[k] = input_gradient(g, normalized(x[k], c.x, c.y, rstd), rstd, mean_g, mean_gx, p.center) +
               (dsr ? ds[k] : 0.f);
      }
      store_f32<T, V>(dxr + i * V, x);
    }
    for (int64_t j = nvec * V + tid; j < n; j += G) {
      const float g = scaled_grad(to_f32(dyr[j]), w ? to_f32(w[j]) : 1.f);
      float d = input_gradient(g, normalized(to_f32(xr[j]), c.x, c.y, rstd), rstd, mean_g, mean_gx, p.center);
      if (dsr) d += to_f32(dsr[j]);
      dxr[j] = from_f32<T>(d);
    }
  }
}

constexpr int kColsPerBlock = 32, kRowLanes = 8;

// Stage 1: block (32 columns x 8 row lanes) sums dy * xhat and dy over the rows of chunk
// blockIdx.y, reduces its 8 lanes in fixed order and writes one partial row.
template <class T>
__global__ void param_grad_partials_kernel(const BackwardParams p) {
  __shared__ float sw[kRowLanes][kColsPerBlock + 1], sb[kRowLanes][kColsPerBlock + 1];
  const int64_t n = p.cols, chunks = p.partial_rows;
  const int64_t j = int64_t(blockIdx.x) * kColsPerBlock + threadIdx.x;
  const int64_t c = blockIdx.y;
  const int64_t r0 = p.rows * c / chunks, r1 = p.rows * (c + 1) / chunks;
  const float2* means = static_cast<const float2*>(p.mean);
  const float* rstds = static_cast<const float*>(p.rstd);
  float dw = 0.f, db = 0.f;
  if (j < n) {
    // dweight_j += dy_ij * xhat_ij; dbias_j += dy_ij
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const float dy = to_f32(static_cast<const T*>(p.dy)[p.dy_rows.offset(r) + j]);
      const float x = to_f32(static_cast<const T*>(p.x)[p.x_rows.offset(r) + j]);
      const float2 c = means ? means[r] : make_float2(0.f, 0.f);
      dw += dy * normalized(x, c.x, c.y, rstds[r]);
      db += dy;
    }
  }
  sw[threadIdx.y][threadIdx.x] = dw;
  sb[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int l = 1; l < kRowLanes; ++l) dw += sw[l][threadIdx.x], db += sb[l][threadIdx.x];
    float* part = static_cast<float*>(p.partials);
    part[c * n + j] = dw;
    part[(chunks + c) * n + j] = db;
  }
}

// Stage 2: dweight_j = sum over chunks in order.
template <class T>
__global__ void param_grad_final_kernel(const BackwardParams p) {
  const int64_t n = p.cols, chunks = p.partial_rows;
  const float* part = static_cast<const float*>(p.partials);
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    float dw = 0.f, db = 0.f;
    for (int64_t c = 0; c < chunks; ++c) {
      dw += part[c * n + j];
      db += part[(chunks + c) * n + j];
    }
    if (p.dweight) static_cast<T*>(p.dweight)[j] = from_f32<T>(dw);
    if (p.dbias) static_cast<T*>(p.dbias)[j] = from_f32<T>(db);
  }
}

struct Launch {
  dim3 grid, block;
};

// G threads per row: a warp for short rows (4 rows per block), else the whole block.
Launch row_launch(int64_t rows, int64_t cols, int vec) {
  const int64_t vecs = (cols + vec - 1) / vec;
  constexpr int64_t kMaxGrid = int64_t(1) << 20;  // grid-stride loops cover the rest
  if (vecs <= 32 * 8) {
    const int rows_per_block = 4;
    return {dim3(unsigned(std::min((rows + rows_per_block - 1) / rows_per_block, kMaxGrid))),
            dim3(32, rows_per_block)};
  }
  const int64_t want = (vecs + 7) / 8;  // about 8 vectors per thread
  const int g = int(std::min<int64_t>(kMaxRowThreads, std::max<int64_t>(64, (want + 31) / 32 * 32)));
  return {dim3(unsigned(std::min(rows, kMaxGrid))), dim3(g, 1)};
}

bool rows_aligned(const void* base, const RowLayout& l, int64_t cols, int bytes) {
  if (reinterpret_cast<uintptr_t>(base) % 16) return false;
  if ((cols * bytes) % 16) return false;
  for (int d = 0; d < l.ndim; ++d)
    if ((l.stride[d] * bytes) % 16) return false;
  return true;
}

}  // namespace

void forward_cuda(const ForwardParams& p, uintptr_t stream_handle) {
  if (p.rows == 0 || p.cols == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  dispatch_cuda_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const int b = sizeof(T);
    bool vec = rows_aligned(p.x, p.x_rows, p.cols, b) && (!p.weight || reinterpret_cast<uintptr_t>(p.weight) % 16 == 0) &&
               (!p.bias || reinterpret_cast<uintptr_t>(p.bias) % 16 == 0) &&
               reinterpret_cast<uintptr_t>(p.y) % 16 == 0;
    if (p.residual)
      vec = vec && rows_aligned(p.residual, p.residual_rows, p.cols, b) &&
            reinterpret_cast<uintptr_t>(p.sum_out) % 16 == 0;
    const Launch l = row_launch(p.rows, p.cols, vec ? V : 1);
    if (vec) {
      if (p.residual) forward_kernel<T, V, true><<<l.grid, l.block, 0, stream>>>(p);
      else forward_kernel<T, V, false><<<l.grid, l.block, 0, stream>>>(p);
    } else {
      if (p.residual) forward_kernel<T, 1, true><<<l.grid, l.block, 0, stream>>>(p);
      else forward_kernel<T, 1, false><<<l.grid, l.block, 0, stream>>>(p);
    }
    PFA_CHECK_LAUNCH();
  });
}

void backward_cuda(const BackwardParams& p, uintptr_t stream_handle) {
  if (p.rows == 0 || p.cols == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  dispatch_cuda_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const int b = sizeof(T);
    const bool vec = rows_aligned(p.dy, p.dy_rows, p.cols, b) && rows_aligned(p.x, p.x_rows, p.cols, b) &&
                     (!p.weight || reinterpret_cast<uintptr_t>(p.weight) % 16 == 0) &&
                     (!p.dsum || reinterpret_cast<uintptr_t>(p.dsum) % 16 == 0) &&
                     reinterpret_cast<uintptr_t>(p.dx) % 16 == 0;
    const Launch l = row_launch(p.rows, p.cols, vec ? V : 1);
    if (vec) backward_input_kernel<T, V><<<l.grid, l.block, 0, stream>>>(p);
    else backward_input_kernel<T, 1><<<l.grid, l.block, 0, stream>>>(p);
    PFA_CHECK_LAUNCH();
    if (!p.dweight && !p.dbias) return;
    check(p.partial_rows > 0 && p.partial_rows <= 65535, "norm backward: bad partial_rows");
    const dim3 grid1(unsigned((p.cols + kColsPerBlock - 1) / kColsPerBlock), unsigned(p.partial_rows));
    param_grad_partials_kernel<T><<<grid1, dim3(kColsPerBlock, kRowLanes), 0, stream>>>(p);
    PFA_CHECK_LAUNCH();
    const unsigned grid2 = unsigned(std::min<int64_t>((p.cols + 255) / 256, 4096));
    param_grad_final_kernel<T><<<grid2, 256, 0, stream>>>(p);
    PFA_CHECK_LAUNCH();
  });
}

}  // namespace pfa::norm
