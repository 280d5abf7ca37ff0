// CUDA kernels of the convolution family (see conv.h for the maths and layouts).
//
// Tap convolution, forward and backward-input, are one "tap correlation" from a source
// tensor to a destination tensor (TapProblem):
//   dst[n, g*dcg + d, y, x] = bias[d] + sum_{s < scg, t} W(g, d, s, t) * src_up[n, g*scg + s, u, v]
//   u = y*s_out_h - pad_h + sign*dr_t,  v = x*s_out_w - pad_w + sign*dc_t,
// where src_up is the source upsampled by s_in (zero unless u, v are multiples of s_in).
//   forward:        src = x,  dst = y,  s_out = stride, s_in = 1,      pad = pad,  sign = +1
//   backward-input: src = dy, dst = dx, s_out = 1,      s_in = stride, pad = -pad, sign = -1
// (dx[ih] sums dy[oh] over oh*stride = ih + pad - dr_t: a transposed convolution.) W reads
// the (Cout, Cin/g, T) weight through strides, so the transposition costs nothing.
// Two kernels compute it:
//   - tap_direct_kernel: any dtype; stages an input patch per output tile and the weights of
//     an output-channel tile in shared memory, float accumulate. Small channel counts.
//   - tap_gemm_kernel: float16/bfloat16 with >= 32 channels on both sides; implicit GEMM
//     (M = positions, N = dst channels, K = taps x src channels) on mma.sync tensor cores.
// and tap_simple_kernel, without shared memory, when a footprint exceeds what the device has.
// backward-weight: tap/indexed columns are gathered per tile into shared memory and reduced
// over the positions of each batch chunk into `partials` (one slot per chunk, never shared),
// on CUDA cores (weight_grad_kernel) or, for float16/bfloat16 with >= 32 channels, on tensor
// cores (weight_grad_mma_kernel); then reduce_partials_kernel adds the chunks in order:
// deterministic, no atomics.
// Pooling and the indexed-convolution backward-input are gathers, also atomic-free.
#include <algorithm>
#include <string>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "conv/conv.h"
#include "conv/conv_math.h"
#include "conv/conv_mma.cuh"

namespace pfa::conv {
namespace {

constexpr int kThreads = 128;          // every kernel here runs 128-thread blocks
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr int64_t kMaxGridYZ = 65535;

PFA_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Allows `bytes` of dynamic shared memory for `kernel` (on top of `static_bytes`), opting in
// past 48 KB when the device allows it; otherwise a clear error instead of a failed launch.
template <class K>
void allow_smem(K kernel, size_t bytes, size_t static_bytes, const char* what) {
  if (bytes + static_bytes <= kDefaultSmem) return;
  const size_t optin = smem_optin();
  check(bytes + static_bytes <= optin,
        std::string(what) + ": the kernel footprint needs " +
            std::to_string(bytes + static_bytes) + " bytes of shared memory, more than the " +
            std::to_string(optin) + " this GPU allows");
  PFA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(bytes)));
}

void check_grid(int64_t x, int64_t y, int64_t z, const char* what) {
  check(x <= INT32_MAX && y <= kMaxGridYZ && z <= kMaxGridYZ,
        std::string(what) + ": the problem is too large for one CUDA launch grid");
}

// ---------------------------------------------------------------------------------------
// The tap correlation (forward and backward-input).

struct TapProblem {
  const void* src = nullptr;
  int64_t src_sn = 0, src_sc = 0, src_sh = 0, src_h = 0, src_w = 0;
  void* dst = nullptr;                     // contiguous (n, dst_c, dst_h, dst_w)
  int64_t dst_c = 0, dst_h = 0, dst_w = 0;
  const void* w = nullptr;                 // W(g, d, s, t) = w[g*w_group + d*w_dst + s*w_src + t]
  int64_t w_group = 0, w_dst = 0, w_src = 0;
  const void* bias = nullptr;              // (dst_c,) or null
  int64_t n = 0;
  int groups = 1, scg = 0, dcg = 0, taps = 0;
  int s_out_h = 1, s_out_w = 1, s_in_h = 1, s_in_w = 1, pad_h = 0, pad_w = 0, sign = 1;
  TapSet tapset;
  int rmin = 0, rmax = 0, cmin = 0, cmax = 0;  // bounding box of sign * offsets
};

TapProblem forward_problem(const TapConvParams& p) {
  TapProblem q;
  const int64_t T = p.taps.count(), cig = p.Cin / p.groups, cog = p.Cout / p.groups;
  q.src = p.x;
  q.src_sn = p.x_strides.n, q.src_sc = p.x_strides.c, q.src_sh = p.x_strides.h;
  q.src_h = p.H, q.src_w = p.W;
  q.dst = p.y, q.dst_c = p.Cout, q.dst_h = p.Ho, q.dst_w = p.Wo;
  q.w = p.w, q.w_group = cog * cig * T, q.w_dst = cig * T, q.w_src = T;
  q.bias = p.bias;
  q.n = p.N, q.groups = int(p.groups), q.scg = int(cig), q.dcg = int(cog), q.taps = int(T);
  q.s_out_h = p.stride_h, q.s_out_w = p.stride_w, q.pad_h = p.pad_h, q.pad_w = p.pad_w;
  q.sign = 1;
  q.tapset = p.taps;
  q.rmin = p.taps.min_dr(), q.rmax = p.taps.max_dr();
  q.cmin = p.taps.min_dc(), q.cmax = p.taps.max_dc();
  return q;
}

TapProblem backward_input_problem(const TapConvParams& p) {
  TapProblem q;
  const int64_t T = p.taps.count(), cig = p.Cin / p.groups, cog = p.Cout / p.groups;
  q.src = p.dy;
  q.src_sn = p.dy_strides.n, q.src_sc = p.dy_strides.c, q.src_sh = p.dy_strides.h;
  q.src_h = p.Ho, q.src_w = p.Wo;
  q.dst = p.dx, q.dst_c = p.Cin, q.dst_h = p.H, q.dst_w = p.W;
  q.w = p.w, q.w_group = cog * cig * T, q.w_dst = T, q.w_src = cig * T;
  q.bias = nullptr;
  q.n = p.N, q.groups = int(p.groups), q.scg = int(cog), q.dcg = int(cig), q.taps = int(T);
  q.s_in_h = p.stride_h, q.s_in_w = p.stride_w, q.pad_h = -p.pad_h, q.pad_w = -p.pad_w;
  q.sign = -1;
  q.tapset = p.taps;
  q.rmin = -p.taps.max_dr(), q.rmax = -p.taps.min_dr();
  q.cmin = -p.taps.max_dc(), q.cmax = -p.taps.min_dc();
  return q;
}

// Source value at upsampled coordinates (u, v) of one (n, channel) plane; zero outside.
template <class T>
__device__ __forceinline__ float src_at(const TapProblem& q, const T* plane, int64_t u, int64_t v) {
  if (u < 0 || v < 0) return 0.f;
  if (q.s_in_h != 1) {
    if (u % q.s_in_h != 0) return 0.f;
    u /= q.s_in_h;
  }
  if (q.s_in_w != 1) {
    if (v % q.s_in_w != 0) return 0.f;
    v /= q.s_in_w;
  }
  if (u >= q.src_h || v >= q.src_w) return 0.f;
  return to_f32(plane[u * q.src_sh + v]);
}

// ---- direct kernel -------------------------------------------------------------------
// A block computes a TH x TW tile of destination cells for OC_TILE destination channels of
// one sample; each thread owns PPT cells x OCPT channels. Per source-channel chunk it
// stages the (upsampled) source patch under the tile and the chunk's weights:
//   acc[o][i] += sum_{s, t} wts[s][t][o] * patch[s][cell_i * s_out + tap_t - bbox_min]
template <int OCPT> struct DirectTile;
template <> struct DirectTile<8> { static constexpr int oc_tile = 16, th = 16, tw = 16; };
template <> struct DirectTile<1> { static constexpr int oc_tile = 1, th = 16, tw = 16; };

template <int OCPT>
struct DirectGeom {
  using Tile = DirectTile<OCPT>;
  static constexpr int oc_groups = Tile::oc_tile / OCPT;
  static constexpr int pos_threads = kThreads / oc_groups;
  static constexpr int ppt = Tile::th * Tile::tw / pos_threads;
  static_assert(ppt * pos_threads == Tile::th * Tile::tw, "tile must split evenly");
};

// Two block shapes: a TH x TW tile of one sample ("tile mode"), or, for grids smaller than
// a tile, TH*TW consecutive cells of the flattened (n, y, x) range, whose samples' whole
// patches are staged side by side ("image mode": a 13x13 or 9x9 grid fills whole blocks).
struct DirectLayout {
  int ph = 0, pw = 0, ci_chunk = 0;
  int images = 1;          // patches per channel: 1 in tile mode
  bool image_mode = false;
  int64_t tap_words = 0, wts_floats = 0, patch_floats = 0;
  size_t bytes() const { return size_t(tap_words + wts_floats + patch_floats) * 4; }
};

template <int OCPT>
DirectLayout direct_layout(const TapProblem& q, int ci_chunk, bool image_mode) {
  using Tile = DirectTile<OCPT>;
  constexpr int kCells = Tile::th * Tile::tw;
  DirectLayout l;
  l.image_mode = image_mode;
  const int64_t rows = image_mode ? q.dst_h : Tile::th, cols = image_mode ? q.dst_w : Tile::tw;
  l.ph = int((rows - 1) * q.s_out_h + (q.rmax - q.rmin + 1));
  l.pw = int((cols - 1) * q.s_out_w + (q.cmax - q.cmin + 1));
  // kCells consecutive cells touch at most (kCells - 1) / cells + 2 samples.
  if (image_mode) l.images = int(std::min<int64_t>(q.n, (kCells - 1) / (q.dst_h * q.dst_w) + 2));
  l.ci_chunk = ci_chunk;
  l.tap_words = ceil_div(q.taps, 4) * 4;  // keeps the weights 16-byte aligned
  l.wts_floats = int64_t(ci_chunk) * q.taps * Tile::oc_tile;
  l.patch_floats = int64_t(ci_chunk) * l.images * l.ph * l.pw;
  return l;
}

template <class T, int OCPT>
__global__ void __launch_bounds__(kThreads, 4)
tap_direct_kernel(TapProblem q, DirectLayout l) {
  using Tile = DirectTile<OCPT>;
  using G = DirectGeom<OCPT>;
  constexpr int TH = Tile::th, TW = Tile::tw, OCT = Tile::oc_tile, PPT = G::ppt;
  extern __shared__ __align__(16) float smem[];
  int* tapoff = reinterpret_cast<int*>(smem);
  float* wts = smem + l.tap_words;
  float* patch = wts + l.wts_floats;

  // Block origin: first sample n0 and the cell (y0, x0) the patch rows/columns start from.
  const int64_t cells = q.dst_h * q.dst_w;
  int64_t n0, y0 = 0, x0 = 0, m0 = 0;
  if (l.image_mode) {
    m0 = int64_t(blockIdx.x) * (TH * TW);
    n0 = m0 / cells;
  } else {
    const int64_t tiles_w = ceil_div(q.dst_w, TW), tiles_h = ceil_div(q.dst_h, TH);
    n0 = blockIdx.x / (tiles_h * tiles_w);
    const int64_t tile = blockIdx.x % (tiles_h * tiles_w);
    y0 = (tile / tiles_w) * TH, x0 = (tile % tiles_w) * TW;
  }
  const int oc_tiles = (q.dcg + OCT - 1) / OCT;
  const int g = blockIdx.y / oc_tiles, oc0 = (blockIdx.y % oc_tiles) * OCT;
  const int64_t u0 = y0 * q.s_out_h - q.pad_h + q.rmin, v0 = x0 * q.s_out_w - q.pad_w + q.cmin;
  const int PHW = l.ph * l.pw, plane = l.images * PHW;  // floats per staged channel

  // Offset of tap t inside a patch: (sign*dr - rmin) rows, (sign*dc - cmin) columns.
  for (int t = threadIdx.x; t < q.taps; t += kThreads) {
    int dr, dc;
    q.tapset.offset(t, dr, dc);
    tapoff[t] = (q.sign * dr - q.rmin) * l.pw + (q.sign * dc - q.cmin);
  }

  // Per cell: where its window starts in the staged patches, and its output offset
  // (n*dst_c*cells + y*dst_w + x; -1 outside the output).
  const int og = threadIdx.x / G::pos_threads, pt = threadIdx.x % G::pos_threads;
  int pbase[PPT];
  int64_t out_off[PPT];
#pragma unroll
  for (int i = 0; i < PPT; ++i) {
    const int p = pt + i * G::pos_threads;
    int64_t n = n0, y, x;
    bool ok;
    if (l.image_mode) {
      const int64_t m = m0 + p;
      ok = m < q.n * cells;
      n = ok ? m / cells : n0;
      const int64_t yx = ok ? m % cells : 0;
      y = yx / q.dst_w, x = yx % q.dst_w;
    } else {
      y = y0 + p / TW, x = x0 + p % TW;
      ok = y < q.dst_h && x < q.dst_w;
    }
    pbase[i] = (int(n - n0) * l.ph + int(y - y0) * q.s_out_h) * l.pw + int(x - x0) * q.s_out_w;
    out_off[i] = ok ? n * q.dst_c * cells + y * q.dst_w + x : -1;
  }
  float acc[OCPT][PPT];
#pragma unroll
  for (int o = 0; o < OCPT; ++o)
#pragma unroll
    for (int i = 0; i < PPT; ++i) acc[o][i] = 0.f;

  const T* src = static_cast<const T*>(q.src) + int64_t(g) * q.scg * q.src_sc;
  const T* w = static_cast<const T*>(q.w) + g * q.w_group;
  for (int c0 = 0; c0 < q.scg; c0 += l.ci_chunk) {
    const int nc = min(l.ci_chunk, q.scg - c0);
    __syncthreads();  // the previous chunk's patch and weights are no longer read
    // Staged sizes fit shared memory, so 32-bit indices suffice here.
    {
      // e = tid + kThreads*i walks (s, image, r, c) incrementally, without divisions.
      const int step_r = kThreads / l.pw, step_c = kThreads % l.pw;
      int s = 0, im = 0, r = threadIdx.x / l.pw, c = threadIdx.x % l.pw;
      while (r >= l.ph) r -= l.ph, ++im;
      while (im >= l.images) im -= l.images, ++s;
      for (int e = threadIdx.x; e < nc * plane; e += kThreads) {
        const int64_t n = n0 + im;
        patch[e] = n < q.n ? src_at(q, src + n * q.src_sn + int64_t(c0 + s) * q.src_sc, u0 + r, v0 + c)
                           : 0.f;
        c += step_c, r += step_r;
        if (c >= l.pw) c -= l.pw, ++r;
        while (r >= l.ph) r -= l.ph, ++im;
        while (im >= l.images) im -= l.images, ++s;
      }
    }
    for (int e = threadIdx.x; e < nc * q.taps * OCT; e += kThreads) {
      const int o = e % OCT, st = e / OCT;  // st = s * taps + t
      const int s = st / q.taps, t = st % q.taps;
      const int d = oc0 + o;
      wts[e] = d < q.dcg ? to_f32(w[d * q.w_dst + (c0 + s) * q.w_src + t]) : 0.f;
    }
    __syncthreads();
    for (int s = 0; s < nc; ++s) {
      const float* ps = patch + s * plane;
      const float* ws = wts + int64_t(s) * q.taps * OCT + og * OCPT;
      for (int t = 0; t < q.taps; ++t) {
        const int off = tapoff[t];
        float v[PPT], wv[OCPT];
#pragma unroll
        for (int i = 0; i < PPT; ++i) v[i] = ps[pbase[i] + off];
        if constexpr (OCPT % 4 == 0) {
#pragma unroll
          for (int o = 0; o < OCPT; o += 4) {
            const float4 w4 = *reinterpret_cast<const float4*>(ws + t * OCT + o);
            wv[o] = w4.x, wv[o + 1] = w4.y, wv[o + 2] = w4.z, wv[o + 3] = w4.w;
          }
        } else {
#pragma unroll
          for (int o = 0; o < OCPT; ++o) wv[o] = ws[t * OCT + o];
        }
#pragma unroll
        for (int o = 0; o < OCPT; ++o)
#pragma unroll
          for (int i = 0; i < PPT; ++i) acc[o][i] = fmaf(wv[o], v[i], acc[o][i]);
      }
    }
  }

  T* dst = static_cast<T*>(q.dst);
  const T* bias = static_cast<const T*>(q.bias);
#pragma unroll
  for (int o = 0; o < OCPT; ++o) {
    const int d = oc0 + og * OCPT + o;
    if (d >= q.dcg) continue;
    const int64_t ch = int64_t(g) * q.dcg + d;
    const float b = bias ? to_f32(bias[ch]) : 0.f;
#pragma unroll
    for (int i = 0; i < PPT; ++i)
      if (out_off[i] >= 0) dst[out_off[i] + ch * cells] = from_f32<T>(acc[o][i] + b);
  }
}

// False (nothing launched) when even a one-channel patch does not fit the device.
template <class T, int OCPT>
bool launch_direct(const TapProblem& q, cudaStream_t stream) {
  using Tile = DirectTile<OCPT>;
  constexpr int kCells = Tile::th * Tile::tw;
  // Image mode for grids smaller than a tile, unless its side-by-side patches get large.
  bool image_mode = q.dst_h * q.dst_w < kCells;
  if (image_mode && direct_layout<OCPT>(q, 1, true).bytes() > kDefaultSmem) image_mode = false;
  // Largest source-channel chunk whose patch + weights fit the default 48 KB; a chunk of
  // one channel may opt in to more (large dilations).
  const DirectLayout one = direct_layout<OCPT>(q, 1, image_mode);
  const int64_t per_ci = (one.wts_floats + one.patch_floats) * 4;
  const int64_t fit = (int64_t(kDefaultSmem) - one.tap_words * 4) / per_ci;
  const int ci_chunk = int(std::max<int64_t>(1, std::min<int64_t>(q.scg, fit)));
  const DirectLayout l = direct_layout<OCPT>(q, ci_chunk, image_mode);
  if (l.bytes() > kDefaultSmem && l.bytes() > smem_optin()) return false;
  auto kernel = tap_direct_kernel<T, OCPT>;
  allow_smem(kernel, l.bytes(), 0, "conv (direct CUDA kernel)");
  const int64_t gx = image_mode ? ceil_div(q.n * q.dst_h * q.dst_w, kCells)
                                : q.n * ceil_div(q.dst_h, Tile::th) * ceil_div(q.dst_w, Tile::tw);
  const int64_t gy = int64_t(q.groups) * ceil_div(q.dcg, Tile::oc_tile);
  check_grid(gx, gy, 1, "conv");
  kernel<<<dim3(unsigned(gx), unsigned(gy)), kThreads, l.bytes(), stream>>>(q, l);
  PFA_CHECK_LAUNCH();
  return true;
}

// ---- fallback ---------------------------------------------------------------------------
// For footprints no shared-memory tile holds (huge strides or dilations, tens of thousands
// of taps): one thread per destination cell, reading through the caches.
//   dst[n, g*dcg + d, y, x] = bias + sum_{t, s} W(g, d, s, t) * src_up[n, g*scg + s, u_t, v_t]
template <class T>
__global__ void __launch_bounds__(256) tap_simple_kernel(TapProblem q) {
  const int64_t total = q.n * q.dst_c * q.dst_h * q.dst_w;
  const T* wbase = static_cast<const T*>(q.w);
  const T* bias = static_cast<const T*>(q.bias);
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = e % q.dst_w, y = (e / q.dst_w) % q.dst_h;
    const int64_t ch = (e / (q.dst_w * q.dst_h)) % q.dst_c, n = e / (q.dst_w * q.dst_h * q.dst_c);
    const int64_t g = ch / q.dcg, d = ch % q.dcg;
    const T* src = static_cast<const T*>(q.src) + n * q.src_sn + g * q.scg * q.src_sc;
    const T* w = wbase + g * q.w_group + d * q.w_dst;
    float acc = bias ? to_f32(bias[ch]) : 0.f;
    for (int t = 0; t < q.taps; ++t) {
      int dr, dc;
      q.tapset.offset(t, dr, dc);
      int64_t u = y * q.s_out_h - q.pad_h + q.sign * dr, v = x * q.s_out_w - q.pad_w + q.sign * dc;
      if (u < 0 || v < 0 || u % q.s_in_h != 0 || v % q.s_in_w != 0) continue;
      u /= q.s_in_h, v /= q.s_in_w;
      if (u >= q.src_h || v >= q.src_w) continue;
      const T* a = src + u * q.src_sh + v;
      for (int s = 0; s < q.scg; ++s)
        acc = fmaf(to_f32(w[s * q.w_src + t]), to_f32(a[s * q.src_sc]), acc);
    }
    static_cast<T*>(q.dst)[e] = from_f32<T>(acc);
  }
}

template <class T>
void launch_simple(const TapProblem& q, cudaStream_t stream) {
  const int64_t total = q.n * q.dst_c * q.dst_h * q.dst_w;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(total, 256), int64_t(1) << 20));
  tap_simple_kernel<T><<<blocks, 256, 0, stream>>>(q);
  PFA_CHECK_LAUNCH();
}

// ---- implicit GEMM on tensor cores --------------------------------------------------------
// C[m, d] = sum_k A[m, k] * B[k, d] with m = (n, y, x) over dst cells, d the dst channel in
// the group and k = t * scg + s (tap-major, so a K tile mostly shares one tap's offset):
//   A[m, k] = src_up[n, g*scg + s, y*s_out - pad + sign*dr_t, ...],  B[k, d] = W(g, d, s, t).
// 64x64 block tile, K tiles of 32 (dev::mma_k32). Global loads of K tile k+1 go to
// registers while the MMAs consume tile k from the other shared buffer.
using dev::kRowK;
using dev::kTileK;
using dev::kTileM;
using dev::kTileN;

template <class T>
__global__ void __launch_bounds__(kThreads)
tap_gemm_kernel(TapProblem q) {
  __shared__ __align__(16) dev::SmemTile<T> As[2];
  __shared__ __align__(16) dev::SmemTile<T> Bs[2];
  extern __shared__ int2 taps_s[];  // (sign*dr, sign*dc) per tap

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t cells = q.dst_h * q.dst_w, M = q.n * cells;
  const int K = q.taps * q.scg;  // < 2^31 (launch_gemm)
  const int nkt = (K + kTileK - 1) / kTileK;
  const int oc_tiles = (q.dcg + kTileN - 1) / kTileN;
  const int g = blockIdx.y / oc_tiles, d0 = (blockIdx.y % oc_tiles) * kTileN;
  const int64_t m0 = int64_t(blockIdx.x) * kTileM;

  for (int t = tid; t < q.taps; t += kThreads) {
    int dr, dc;
    q.tapset.offset(t, dr, dc);
    taps_s[t] = make_int2(q.sign * dr, q.sign * dc);
  }
  __syncthreads();

  // A loader: row = cell m0 + row, 16 consecutive k (a 16-wide half of the K tile); a warp's
  // lanes hold consecutive cells, so each load reads one or two cache lines.
  const int row = tid & 63, khalf = tid >> 6;
  const int64_t m = m0 + row;
  const bool m_ok = m < M;
  int64_t u0 = 0, v0 = 0;
  const T* src = static_cast<const T*>(q.src);
  if (m_ok) {
    const int64_t n = m / cells, yx = m % cells;
    u0 = (yx / q.dst_w) * q.s_out_h - q.pad_h;
    v0 = (yx % q.dst_w) * q.s_out_w - q.pad_w;
    src += n * q.src_sn + int64_t(g) * q.scg * q.src_sc;
  }
  // B loader: W(g, d, s, t) at k = t*scg + s lies w_src apart along k and w_dst apart along d.
  // Its lanes run along the nearer one, so that a warp's load spans few lines: along k in the
  // forward (T apart; lane = k, rows r0 .. r0 + 15), along d in the backward-input (as A).
  const bool b_lanes_on_k = q.w_src < q.w_dst;
  const int r0 = warp * 16;
  const int b_row = b_lanes_on_k ? d0 + r0 : d0 + row;
  const T* w = static_cast<const T*>(q.w) + g * q.w_group + int64_t(b_row) * q.w_dst;
  const int b_rows = max(0, min(b_lanes_on_k ? 16 : 1, q.dcg - b_row));  // rows of B this thread has

  uint32_t a_reg[8], b_reg[8];
  auto load_tile = [&](int kt) {
    const T zero = from_f32<T>(0.f);
    const int k = kt * kTileK + khalf * 16;
    uint16_t av[16], bv[16];
    if (q.scg % 16 == 0 && k < K) {
      // The 16 k's share tap t: one bounds test, then 16 channel-strided loads.
      const int t = k / q.scg, s = k % q.scg;
      const int2 off = taps_s[t];
      int64_t u = u0 + off.x, v = v0 + off.y;
      bool in = m_ok && u >= 0 && v >= 0;
      if (in && q.s_in_h != 1) { in = u % q.s_in_h == 0; u /= q.s_in_h; }
      if (in && q.s_in_w != 1) { in = v % q.s_in_w == 0; v /= q.s_in_w; }
      in = in && u < q.src_h && v < q.src_w;
      const T* a = in ? src + int64_t(s) * q.src_sc + u * q.src_sh + v : src;
#pragma unroll
      for (int j = 0; j < 16; ++j) av[j] = dev::bits16(in ? a[j * q.src_sc] : zero);
    } else {
      int t = k / q.scg, s = k % q.scg;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        T a = zero;
        if (k + j < K && m_ok) {
          const int2 off = taps_s[t];
          const int64_t u = u0 + off.x, v = v0 + off.y;
          bool in = u >= 0 && v >= 0;
          int64_t uu = u, vv = v;
          if (in && q.s_in_h != 1) { in = u % q.s_in_h == 0; uu = u / q.s_in_h; }
          if (in && q.s_in_w != 1) { in = v % q.s_in_w == 0; vv = v / q.s_in_w; }
          if (in && uu < q.src_h && vv < q.src_w) a = src[s * q.src_sc + uu * q.src_sh + vv];
        }
        av[j] = dev::bits16(a);
        if (++s == q.scg) s = 0, ++t;
      }
    }
    if (b_lanes_on_k) {  // bv[i] = W(d = b_row + i, k = kt*32 + lane)
      const int kl = kt * kTileK + lane;
      const bool k_ok = kl < K;
      const T* b = w + (k_ok ? int64_t(kl % q.scg) * q.w_src + kl / q.scg : 0);
#pragma unroll
      for (int i = 0; i < 16; ++i) bv[i] = dev::bits16(k_ok && i < b_rows ? b[i * q.w_dst] : zero);
    } else {  // bv[j] = W(d = b_row, k + j)
      int t = k / q.scg, s = k % q.scg;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        bv[j] = dev::bits16(k + j < K && b_rows > 0 ? w[int64_t(s) * q.w_src + t] : zero);
        if (++s == q.scg) s = 0, ++t;
      }
    }
    dev::pack16(av, a_reg);
    dev::pack16(bv, b_reg);
  };
  auto store_tile = [&](int buf) {
    dev::store_row16(&As[buf][row][khalf * 16], a_reg);
    if (b_lanes_on_k) dev::store_col16(Bs[buf], r0, lane, b_reg);
    else dev::store_row16(&Bs[buf][row][khalf * 16], b_reg);
  };

  float acc[2][4][4] = {};
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32, gr = lane >> 2, q2 = (lane & 3) * 2;
  load_tile(0);
  store_tile(0);
  __syncthreads();
  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < nkt) load_tile(kt + 1);
    dev::mma_k32<T>(As[buf], Bs[buf], acc, wm, wn, lane);
    if (kt + 1 < nkt) store_tile(buf ^ 1);
    __syncthreads();
  }

  // Epilogue: C fragment rows are cells, columns are channels.
  T* dst = static_cast<T*>(q.dst);
  const T* bias = static_cast<const T*>(q.bias);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t mm = m0 + wm + i * 16 + gr + h * 8;
      if (mm >= M) continue;
      const int64_t n = mm / cells, yx = mm % cells;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int d = d0 + wn + j * 8 + q2 + c;
          if (d >= q.dcg) continue;
          const int64_t ch = int64_t(g) * q.dcg + d;
          const float b = bias ? to_f32(bias[ch]) : 0.f;
          dst[(n * q.dst_c + ch) * cells + yx] = from_f32<T>(acc[i][j][h * 2 + c] + b);
        }
    }
}

// False (nothing launched) when the tap table does not fit the device.
template <class T>
bool launch_gemm(const TapProblem& q, cudaStream_t stream) {
  auto kernel = tap_gemm_kernel<T>;
  const size_t table = size_t(q.taps) * sizeof(int2), tiles = 2 * 2 * sizeof(dev::SmemTile<T>);
  if (int64_t(q.taps) * q.scg + kTileK > INT32_MAX) return false;
  if (table + tiles > kDefaultSmem && table + tiles > smem_optin()) return false;
  allow_smem(kernel, table, tiles, "conv (tensor-core CUDA kernel)");
  const int64_t gx = ceil_div(q.n * q.dst_h * q.dst_w, kTileM);
  const int64_t gy = int64_t(q.groups) * ceil_div(q.dcg, kTileN);
  check_grid(gx, gy, 1, "conv");
  kernel<<<dim3(unsigned(gx), unsigned(gy)), kThreads, table, stream>>>(q);
  PFA_CHECK_LAUNCH();
  return true;
}

// Tensor cores for 16-bit data once both channel counts fill an MMA tile reasonably;
// the direct kernel otherwise (float32, small channel counts, depthwise); the fallback when
// no shared-memory layout fits.
template <class T>
void run_tap_problem(const TapProblem& q, cudaStream_t stream) {
  if (q.n == 0 || q.dst_h == 0 || q.dst_w == 0 || q.dcg == 0) return;
  if constexpr (!std::is_same_v<T, float>) {
    if (q.scg >= 32 && q.dcg >= 32 && launch_gemm<T>(q, stream)) return;
  }
  if (q.dcg >= 8 ? launch_direct<T, 8>(q, stream) : launch_direct<T, 1>(q, stream)) return;
  launch_simple<T>(q, stream);
}

// ---------------------------------------------------------------------------------------
// Weight gradients: dw[g, d, j] with j = s*T + t (the weight's own layout) is
//   sum over the positions of a batch chunk of dy[n, g*dcg + d, cell] * col[n, j, cell]
// where col is the input column read by tap t of channel s (tap conv: x at the tap's cell;
// indexed conv: x at the neighbour). A block owns a 32 x 64 (d, j) tile of one chunk and
// walks the chunk's samples and 64-cell tiles, staging dy and the gathered columns in
// shared memory; each thread keeps a 4 x 4 register tile. The sums go to the chunk's own
// slot of `partials` (dw then db); reduce_partials_kernel adds the chunks in order.
constexpr int kWD = 32, kWJ = 64, kWP = 64;

// A "column source" says where a cell of one sample's output plane lies (Pos: its offset in
// dy's plane, plus what the columns need to find their input there), and what column (s, t)
// holds at a cell. Cells are numbered 0 .. cells() - 1 in dy's row-major order.
struct TapColumns {
  // Column (s, t) at output cell (y, x) is x[s, y*stride - pad + dr_t, x*stride - pad + dc_t].
  const void* x;
  int64_t sn, sc, sh, H, W, Ho, Wo;
  int stride_h, stride_w, pad_h, pad_w;
  TapSet tapset;
  struct Pos { int64_t dy, u, v; };  // (u, v): where tap (0, 0) reads
  __device__ int64_t cells() const { return Ho * Wo; }
  __device__ Pos pos(int64_t cell, int64_t dy_sh) const {  // cells < 2^31 (checked at launch)
    const int64_t y = int(cell) / int(Wo), xo = cell - y * Wo;
    return {y * dy_sh + xo, in_coord(y, stride_h, pad_h, 0), in_coord(xo, stride_w, pad_w, 0)};
  }
  struct __align__(16) Col { int64_t plane; int dr, dc; };  // one 16-byte shared load
  __device__ Col column(int64_t s, int t) const {
    Col c;
    c.plane = s * sc;
    tapset.offset(t, c.dr, c.dc);
    return c;
  }
  template <class T>
  __device__ T value(const T* xn, const Col& c, const Pos& p) const {
    const int64_t ih = p.u + c.dr, iw = p.v + c.dc;
    if (ih < 0 || iw < 0 || ih >= H || iw >= W) return from_f32<T>(0.f);
    return xn[c.plane + ih * sh + iw];
  }
};

struct IndexedColumns {
  // Column (s, t) at output o is x[s, nb[o, t]] (zero where nb is -1); dy rows are contiguous.
  const void* x;
  int64_t sn, sc, P, P_out, taps;
  const int32_t* nb;
  struct Pos { int64_t dy; };  // dy = o
  __device__ int64_t cells() const { return P_out; }
  __device__ Pos pos(int64_t o, int64_t) const { return {o}; }
  struct __align__(16) Col { int64_t plane; int t; };
  __device__ Col column(int64_t s, int t) const { return {s * sc, t}; }
  template <class T>
  __device__ T value(const T* xn, const Col& c, const Pos& p) const {
    const int32_t idx = nb[p.dy * taps + c.t];
    return idx >= 0 ? xn[c.plane + idx] : from_f32<T>(0.f);
  }
};

struct WeightGradProblem {
  const void* dy;
  int64_t dy_sn, dy_sc, dy_sh;  // dy_sh: row stride (tap conv); indexed dy rows are contiguous
  int64_t n, cout, groups, dcg, scg, taps;
  float* partials;
  int64_t chunks;
  bool want_bias;
};

template <class T, class Cols>
__global__ void __launch_bounds__(kThreads, 4)
weight_grad_kernel(WeightGradProblem q, Cols cols) {
  __shared__ __align__(16) float dys[kWD][kWP];
  __shared__ __align__(16) float xs[kWJ][kWP + 1];
  __shared__ typename Cols::Col colinfo[kWJ];
  __shared__ typename Cols::Pos pos_s[kWP];
  __shared__ bool ok_s[kWP];

  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t J = q.scg * q.taps;
  const int64_t j0 = int64_t(blockIdx.x) * kWJ;
  const int d_tiles = int((q.dcg + kWD - 1) / kWD);
  const int64_t g = blockIdx.y / d_tiles;
  const int64_t d0 = int64_t(blockIdx.y % d_tiles) * kWD;
  const int64_t chunk = blockIdx.z;
  const int64_t nb = chunk_begin(chunk, q.chunks, q.n), ne = chunk_begin(chunk + 1, q.chunks, q.n);

  if (tid < kWJ) {
    const int64_t j = min(j0 + tid, J - 1);
    colinfo[tid] = cols.column(g * q.scg + j / q.taps, int(j % q.taps));
  }
  float acc[4][4] = {};
  float bacc = 0.f;
  const bool bias_block = q.want_bias && blockIdx.x == 0;
  const T* dy = static_cast<const T*>(q.dy);
  const T* x = static_cast<const T*>(cols.x);
  const int64_t cells = cols.cells(), tiles = (cells + kWP - 1) / kWP;

  for (int64_t n = nb; n < ne; ++n) {
    const T* dyn = dy + n * q.dy_sn + (g * q.dcg + d0) * q.dy_sc;
    const T* xn = x + n * cols.sn;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      __syncthreads();  // previous tile fully consumed (and colinfo written on entry)
      if (tid < kWP) {
        const int64_t c = tile * kWP + tid;
        ok_s[tid] = c < cells;
        pos_s[tid] = cols.pos(c < cells ? c : 0, q.dy_sh);
      }
      __syncthreads();
      // dys[d][p] = dy at cell p of channel d0+d (zero outside): cells along threads.
      for (int e = tid; e < kWD * kWP; e += kThreads) {
        const int d = e / kWP, p = e % kWP;
        dys[d][p] = ok_s[p] && d0 + d < q.dcg ? to_f32(dyn[d * q.dy_sc + pos_s[p].dy]) : 0.f;
      }
      // xs[j][p] = column j0+j at cell p (the tap's input value, or the neighbour's).
      for (int e = tid; e < kWJ * kWP; e += kThreads) {
        const int j = e / kWP, p = e % kWP;
        xs[j][p] = ok_s[p] && j0 + j < J ? to_f32(cols.value(xn, colinfo[j], pos_s[p])) : 0.f;
      }
      __syncthreads();
      // acc[a][b] += sum_p dy[d = ty + 8a][p] * col[j = tx + 16b][p]
#pragma unroll 4
      for (int p = 0; p < kWP; ++p) {
        float dv[4], xv[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) dv[a] = dys[ty + 8 * a][p];
#pragma unroll
        for (int b = 0; b < 4; ++b) xv[b] = xs[tx + 16 * b][p];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
          for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(dv[a], xv[b], acc[a][b]);
      }
      if (bias_block && tid < kWD)
        for (int p = 0; p < kWP; ++p) bacc += dys[tid][p];
    }
  }

  float* part = q.partials + chunk * (q.cout * J + q.cout);
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int64_t d = d0 + ty + 8 * a;
    if (d >= q.dcg) continue;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t j = j0 + tx + 16 * b;
      if (j < J) part[(g * q.dcg + d) * J + j] = acc[a][b];
    }
  }
  if (bias_block && tid < kWD && d0 + tid < q.dcg) part[q.cout * J + g * q.dcg + d0 + tid] = bacc;
}

// Tensor-core version for float16/bfloat16 with >= 32 channels on both sides:
//   C[d, j] = sum_k A[d, k] * B[j, k],  A = dy[n, g*dcg + d, cell], B = column j at (n, cell),
// with k running over the chunk's (sample, cell) pairs in order, 32 per K tile; the chunk's
// 64 x 64 sums go to its partials slot. A lane loads one k (cell) of 16 rows of A and of B:
// a warp's load of a row reads 32 consecutive cells, one or two cache lines (with a row per
// lane, every load touched 32 lines). Blocks of the first j tile also sum their dy rows, from
// shared memory in a fixed order, for db.
template <class T, class Cols>
__global__ void __launch_bounds__(kThreads)
weight_grad_mma_kernel(WeightGradProblem q, Cols cols) {
  __shared__ __align__(16) dev::SmemTile<T> As[2];
  __shared__ __align__(16) dev::SmemTile<T> Bs[2];
  __shared__ typename Cols::Col colinfo[kTileN];
  __shared__ float bias_s[2][kTileM];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t J = q.scg * q.taps;
  const int64_t j0 = int64_t(blockIdx.x) * kTileN;
  const int d_tiles = int((q.dcg + kTileM - 1) / kTileM);
  const int64_t g = blockIdx.y / d_tiles;
  const int64_t d0 = int64_t(blockIdx.y % d_tiles) * kTileM;
  const int64_t chunk = blockIdx.z;
  const int64_t nb = chunk_begin(chunk, q.chunks, q.n), ne = chunk_begin(chunk + 1, q.chunks, q.n);
  const int64_t cells = cols.cells();
  const int nkt = int(((ne - nb) * cells + kTileK - 1) / kTileK);
  const bool bias_block = q.want_bias && blockIdx.x == 0;

  if (tid < kTileN) {
    const int64_t j = min(j0 + tid, J - 1);
    colinfo[tid] = cols.column(g * q.scg + j / q.taps, int(j % q.taps));
  }

  // Loader role: k = lane of every K tile; rows r0 .. r0 + 15 of A (channels d0 + r) and of
  // B (columns j0 + r), of which a_rows and b_rows exist.
  const int r0 = warp * 16;
  const int a_rows = int(max(int64_t(0), min(int64_t(16), q.dcg - d0 - r0)));
  const int b_rows = int(max(int64_t(0), min(int64_t(16), J - j0 - r0)));
  const T* dy = static_cast<const T*>(q.dy) + (g * q.dcg + d0 + r0) * q.dy_sc;
  const T* x = static_cast<const T*>(cols.x);
  // The lane's k of the next tile to load, as (sample n, cell): k = (n - nb)*cells + cell.
  int64_t n = nb, cell = lane;
  auto wrap = [&] {
    while (cell >= cells) cell -= cells, ++n;
  };
  if (nkt > 0) wrap();

  uint32_t a_reg[8], b_reg[8];
  auto load_tile = [&] {
    const T zero = from_f32<T>(0.f);
    const bool k_ok = n < ne;
    const typename Cols::Pos at = cols.pos(k_ok ? cell : 0, q.dy_sh);
    const T* dyk = dy + n * q.dy_sn + at.dy;
    const T* xn = x + n * cols.sn;
    uint16_t av[16], bv[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      av[i] = dev::bits16(k_ok && i < a_rows ? dyk[i * q.dy_sc] : zero);
      bv[i] = dev::bits16(k_ok && i < b_rows ? cols.value(xn, colinfo[r0 + i], at) : zero);
    }
    dev::pack16(av, a_reg);
    dev::pack16(bv, b_reg);
    cell += kTileK;
    wrap();
  };
  auto store_tile = [&](int buf) {
    dev::store_col16(As[buf], r0, lane, a_reg);
    dev::store_col16(Bs[buf], r0, lane, b_reg);
  };

  float acc[2][4][4] = {};
  float bsum = 0.f;
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32, gr = lane >> 2, q2 = (lane & 3) * 2;
  __syncthreads();  // colinfo
  if (nkt > 0) {
    load_tile();
    store_tile(0);
  }
  __syncthreads();
  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < nkt) load_tile();
    if (bias_block) {  // this thread's half of dy row tid % 64
      const T* r = &As[buf][tid % kTileM][(tid / kTileM) * 16];
#pragma unroll
      for (int k = 0; k < 16; ++k) bsum += to_f32(r[k]);
    }
    dev::mma_k32<T>(As[buf], Bs[buf], acc, wm, wn, lane);
    if (kt + 1 < nkt) store_tile(buf ^ 1);
    __syncthreads();
  }

  float* part = q.partials + chunk * (q.cout * J + q.cout);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t d = d0 + wm + i * 16 + gr + h * 8;
      if (d >= q.dcg) continue;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t j = j0 + wn + jj * 8 + q2 + c;
          if (j < J) part[(g * q.dcg + d) * J + j] = acc[i][jj][h * 2 + c];
        }
    }
  if (bias_block) {
    bias_s[tid / kTileM][tid % kTileM] = bsum;
    __syncthreads();
    if (tid < kTileM && d0 + tid < q.dcg)
      part[q.cout * J + g * q.dcg + d0 + tid] = bias_s[0][tid] + bias_s[1][tid];
  }
}

// dw[e] (then db) = sum over chunks, in chunk order, of partials[chunk][e].
template <class T>
__global__ void __launch_bounds__(256)
reduce_partials_kernel(const float* partials, int64_t chunks, int64_t wsize, int64_t bsize,
                       T* dw, T* db) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = wsize + bsize;
  if (e >= stride) return;
  if (e < wsize ? dw == nullptr : db == nullptr) return;
  float s = 0.f;
  for (int64_t c = 0; c < chunks; ++c) s += partials[c * stride + e];
  if (e < wsize) dw[e] = from_f32<T>(s);
  else db[e - wsize] = from_f32<T>(s);
}

// Blocks the weight-gradient grid aims for: the chunk count is cut down to what it takes to
// reach it, so a layer whose channel tiles already fill the GPU writes and re-reads few
// partial slots. It depends only on the shape, so results stay bitwise reproducible.
constexpr int64_t kWeightGradBlocks = 1024;

template <class T, class Cols>
void run_weight_grad(WeightGradProblem q, const Cols& cols, void* dw, void* db,
                     cudaStream_t stream) {
  const int64_t J = q.scg * q.taps;
  const int64_t wsize = q.cout * J, bsize = q.cout;
  if (wsize + bsize == 0) return;
  // No samples means no chunks (and maybe no workspace): the reduction alone writes zeros.
  check(q.n == 0 || (q.partials != nullptr && q.chunks >= 1),
        "conv backward: missing weight-gradient workspace");
  // Tensor cores for 16-bit data when both GEMM sides fill a tile reasonably.
  bool mma = false;
  if constexpr (!std::is_same_v<T, float>) mma = q.dcg >= 32 && J >= 32;
  if (q.n > 0) {
    const int64_t jt = mma ? kTileN : kWJ, dt = mma ? kTileM : kWD;
    const int64_t j_tiles = std::max<int64_t>(1, ceil_div(J, jt));
    const int64_t gx = dw ? j_tiles : 1;  // db alone: only the blocks of the first j tile
    const int64_t gy = q.groups * ceil_div(q.dcg, dt);
    // Uses the first `chunks` slots of the workspace (sized for q.chunks >= chunks); counted
    // with every j tile so that db sums the same way with or without dw.
    q.chunks = std::min(q.chunks, std::max<int64_t>(1, ceil_div(kWeightGradBlocks, j_tiles * gy)));
    check_grid(gx, gy, q.chunks, "conv backward (weight)");
    const dim3 grid(unsigned(gx), unsigned(gy), unsigned(q.chunks));
    if (mma) {
      if constexpr (!std::is_same_v<T, float>)
        weight_grad_mma_kernel<T, Cols><<<grid, kThreads, 0, stream>>>(q, cols);
    } else {
      weight_grad_kernel<T, Cols><<<grid, kThreads, 0, stream>>>(q, cols);
    }
    PFA_CHECK_LAUNCH();
  }
  reduce_partials_kernel<T><<<unsigned(ceil_div(wsize + bsize, 256)), 256, 0, stream>>>(
      q.partials, q.n > 0 ? q.chunks : 0, wsize, bsize, static_cast<T*>(dw), static_cast<T*>(db));
  PFA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------
// Pooling over a tap set (no weights). Forward, one thread per output cell:
//   max: y = max over in-bounds taps (first wins ties, NaN wins), argmax = winning tap
//   avg: y = sum over in-bounds taps / their count
// Backward, one thread per input cell, gathering the outputs whose window holds it:
//   max: dx = sum over taps t reading it with argmax[o] == t of dy[o]
//   avg: dx = sum over taps t reading it of dy[o] / count(o)
__device__ __forceinline__ void fill_tap_table(const TapSet& ts, int taps, int2* tab) {
  for (int t = threadIdx.x; t < taps; t += blockDim.x) {
    int dr, dc;
    ts.offset(t, dr, dc);
    tab[t] = make_int2(dr, dc);
  }
  __syncthreads();
}

__device__ __forceinline__ int window_count(const TapPoolParams& p, const int2* tab, int taps,
                                            int64_t oh, int64_t ow) {
  int cnt = 0;
  for (int t = 0; t < taps; ++t) {
    const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, tab[t].x);
    const int64_t iw = in_coord(ow, p.stride_w, p.pad_w, tab[t].y);
    cnt += (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W);
  }
  return cnt;
}

// Grid: x over 256-cell chunks of a plane, y over (n, c) planes (looping past 65535).
template <class T>
__global__ void __launch_bounds__(256) pool_forward_kernel(TapPoolParams p) {
  extern __shared__ int2 tab[];
  const int taps = p.taps.count();
  fill_tap_table(p.taps, taps, tab);
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= p.Ho * p.Wo) return;
  const int64_t oh = cell / p.Wo, ow = cell - oh * p.Wo;
  for (int64_t plane = blockIdx.y; plane < p.N * p.C; plane += gridDim.y) {
    const int64_t n = plane / p.C, c = plane - n * p.C;
    const T* xp = static_cast<const T*>(p.x) + n * p.x_strides.n + c * p.x_strides.c;
    float best = 0.f, sum = 0.f;
    int arg = -1, cnt = 0;
    for (int t = 0; t < taps; ++t) {
      const int64_t ih = in_coord(oh, p.stride_h, p.pad_h, tab[t].x);
      const int64_t iw = in_coord(ow, p.stride_w, p.pad_w, tab[t].y);
      if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
      const float v = to_f32(xp[ih * p.x_strides.h + iw]);
      if (p.mode == PoolMode::Max) {
        if (pool_max_takes(v, best, arg >= 0)) best = v, arg = t;
      } else {
        sum += v;
        ++cnt;
      }
    }
    const int64_t e = plane * p.Ho * p.Wo + cell;
    const float out = p.mode == PoolMode::Max ? best : (cnt ? sum / float(cnt) : 0.f);
    static_cast<T*>(p.y)[e] = from_f32<T>(out);
    if (p.mode == PoolMode::Max && p.argmax) p.argmax[e] = arg;
  }
}

template <class T>
__global__ void __launch_bounds__(256) pool_backward_kernel(TapPoolParams p) {
  extern __shared__ int2 tab[];
  const int taps = p.taps.count();
  fill_tap_table(p.taps, taps, tab);
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= p.H * p.W) return;
  const int64_t ih = cell / p.W, iw = cell - ih * p.W;
  for (int64_t plane = blockIdx.y; plane < p.N * p.C; plane += gridDim.y) {
    const int64_t n = plane / p.C, c = plane - n * p.C;
    const T* dyp = static_cast<const T*>(p.dy) + n * p.dy_strides.n + c * p.dy_strides.c;
    const int32_t* am = p.argmax_in ? p.argmax_in + plane * p.Ho * p.Wo : nullptr;
    float acc = 0.f;
    for (int t = 0; t < taps; ++t) {
      int64_t oh, ow;
      if (!out_coord(ih, p.stride_h, p.pad_h, tab[t].x, p.Ho, oh) ||
          !out_coord(iw, p.stride_w, p.pad_w, tab[t].y, p.Wo, ow))
        continue;
      const float g = to_f32(dyp[oh * p.dy_strides.h + ow]);
      if (p.mode == PoolMode::Max) {
        if (am[oh * p.Wo + ow] == t) acc += g;
      } else {
        acc += g / float(window_count(p, tab, taps, oh, ow));
      }
    }
    static_cast<T*>(p.dx)[plane * p.H * p.W + cell] = from_f32<T>(acc);
  }
}

dim3 plane_grid(int64_t cells, int64_t planes) {
  return dim3(unsigned(ceil_div(cells, 256)), unsigned(std::min<int64_t>(planes, kMaxGridYZ)));
}

// ---------------------------------------------------------------------------------------
// Indexed convolution forward: y[n, co, o] = bias[co] + sum_k w[co, k] * col[n, k, o] with
// k = ci*T + t and col[n, k, o] = x[n, ci, nb[o, t]] (zero for -1). A block owns 128
// outputs x 16 channels of one sample and walks K in chunks of 32, staging the gathered
// columns and the weights; each thread keeps 2 outputs x 8 channels.
constexpr int kIP = 128, kIC = 16, kIK = 32;

template <class T>
__global__ void __launch_bounds__(kThreads, 4) indexed_forward_kernel(IndexedConvParams p) {
  __shared__ __align__(16) float cols[kIK][kIP];
  __shared__ __align__(16) float wts[kIK][kIC];
  const int64_t ptiles = ceil_div(p.P_out, kIP);
  const int64_t n = blockIdx.x / ptiles, o0 = (blockIdx.x % ptiles) * kIP;
  const int64_t c0 = int64_t(blockIdx.y) * kIC;
  const int og = threadIdx.x / 64, pt = threadIdx.x % 64;
  const int64_t K = p.Cin * p.T;
  const T* x = static_cast<const T*>(p.x) + n * p.x_stride_n;
  const T* w = static_cast<const T*>(p.w);
  float acc[8][2] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kIK) {
    __syncthreads();
    // Thread tid stages output o0 + tid for every k of the chunk (kIP == kThreads), walking
    // (ci, t) = (k / T, k % T) incrementally.
    static_assert(kIP == kThreads, "one staged output per thread");
    {
      const int64_t o = o0 + threadIdx.x;
      const bool o_ok = o < p.P_out;
      const int32_t* nbo = p.neighbors + (o_ok ? o : 0) * p.T;
      int64_t ci = k0 / p.T, t = k0 % p.T;
      for (int kk = 0; kk < kIK; ++kk) {
        float v = 0.f;
        if (o_ok && k0 + kk < K) {
          const int32_t idx = nbo[t];
          if (idx >= 0) v = to_f32(x[ci * p.x_stride_c + idx]);
        }
        cols[kk][threadIdx.x] = v;
        if (++t == p.T) t = 0, ++ci;
      }
    }
    for (int e = threadIdx.x; e < kIK * kIC; e += kThreads) {
      const int kk = e / kIC, cc = e % kIC;
      const int64_t k = k0 + kk, co = c0 + cc;
      wts[kk][cc] = (k < K && co < p.Cout) ? to_f32(w[co * K + k]) : 0.f;
    }
    __syncthreads();
    for (int kk = 0; kk < kIK; ++kk) {
      const float v0 = cols[kk][pt], v1 = cols[kk][pt + 64];
      const float4 wa = *reinterpret_cast<const float4*>(&wts[kk][og * 8]);
      const float4 wb = *reinterpret_cast<const float4*>(&wts[kk][og * 8 + 4]);
      const float wv[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
      for (int o = 0; o < 8; ++o) {
        acc[o][0] = fmaf(wv[o], v0, acc[o][0]);
        acc[o][1] = fmaf(wv[o], v1, acc[o][1]);
      }
    }
  }
  T* y = static_cast<T*>(p.y);
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int o = 0; o < 8; ++o) {
    const int64_t co = c0 + og * 8 + o;
    if (co >= p.Cout) continue;
    const float b = bias ? to_f32(bias[co]) : 0.f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t oo = o0 + pt + i * 64;
      if (oo < p.P_out) y[(n * p.Cout + co) * p.P_out + oo] = from_f32<T>(acc[o][i] + b);
    }
  }
}

// Indexed convolution backward-input, a gather through the inverse table:
//   dx[n, ci, q] = sum_{e in inv[q]} sum_co w[co, ci, t_e] * dy[n, co, o_e]
// A block owns 64 inputs x 16 input channels of one sample; output channels come in chunks
// whose weights, wts[co][t][ci], are staged in shared memory. Each thread: 1 input x 8 ci.
template <class T>
__global__ void __launch_bounds__(kThreads) indexed_backward_input_kernel(IndexedConvParams p,
                                                                          int co_chunk) {
  extern __shared__ __align__(16) float wts[];  // [co_chunk][T][kIC]
  const int64_t qtiles = ceil_div(p.P, 64);
  const int64_t n = blockIdx.x / qtiles, q = (blockIdx.x % qtiles) * 64 + threadIdx.x % 64;
  const int64_t c0 = int64_t(blockIdx.y) * kIC;
  const int cg = threadIdx.x / 64;
  const T* w = static_cast<const T*>(p.w);
  const T* dy = static_cast<const T*>(p.dy) + n * p.dy_stride_n;
  const int32_t e0 = q < p.P ? p.inv_offsets[q] : 0, e1 = q < p.P ? p.inv_offsets[q + 1] : 0;
  float acc[8] = {};
  for (int64_t co0 = 0; co0 < p.Cout; co0 += co_chunk) {
    const int nco = int(p.Cout - co0 < co_chunk ? p.Cout - co0 : co_chunk);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < int64_t(nco) * p.T * kIC; e += kThreads) {
      const int cc = int(e % kIC);
      const int64_t ct = e / kIC, t = ct % p.T, co = co0 + ct / p.T, ci = c0 + cc;
      wts[e] = ci < p.Cin ? to_f32(w[(co * p.Cin + ci) * p.T + t]) : 0.f;
    }
    __syncthreads();
    const int32_t T32 = int32_t(p.T);  // entries o*T + t are int32, so T is too
    for (int32_t e = e0; e < e1; ++e) {
      const int32_t ent = p.inv_entries[e];
      const int32_t o = ent / T32, t = ent - o * T32;
      for (int c = 0; c < nco; ++c) {
        const float g = to_f32(dy[(co0 + c) * p.dy_stride_c + o]);
        const float* ws = wts + (int64_t(c) * p.T + t) * kIC + cg * 8;
        const float4 wa = *reinterpret_cast<const float4*>(ws);
        const float4 wb = *reinterpret_cast<const float4*>(ws + 4);
        acc[0] = fmaf(wa.x, g, acc[0]), acc[1] = fmaf(wa.y, g, acc[1]);
        acc[2] = fmaf(wa.z, g, acc[2]), acc[3] = fmaf(wa.w, g, acc[3]);
        acc[4] = fmaf(wb.x, g, acc[4]), acc[5] = fmaf(wb.y, g, acc[5]);
        acc[6] = fmaf(wb.z, g, acc[6]), acc[7] = fmaf(wb.w, g, acc[7]);
      }
    }
  }
  if (q >= p.P) return;
  T* dx = static_cast<T*>(p.dx);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t ci = c0 + cg * 8 + i;
    if (ci < p.Cin) dx[(n * p.Cin + ci) * p.P + q] = from_f32<T>(acc[i]);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Entry points.

void tap_conv_forward_cuda(const TapConvParams& p, uintptr_t stream) {
  check(p.groups >= 1 && p.Cin % p.groups == 0 && p.Cout % p.groups == 0,
        "conv: channels must divide by groups");
  const TapProblem q = forward_problem(p);
  dispatch_cuda_dtype(p.dtype, [&](auto t) { run_tap_problem<decltype(t)>(q, as_stream(stream)); });
}

void tap_conv_backward_input_cuda(const TapConvParams& p, uintptr_t stream) {
  check(p.groups >= 1 && p.Cin % p.groups == 0 && p.Cout % p.groups == 0,
        "conv: channels must divide by groups");
  if (p.dx == nullptr) return;
  const TapProblem q = backward_input_problem(p);
  dispatch_cuda_dtype(p.dtype, [&](auto t) { run_tap_problem<decltype(t)>(q, as_stream(stream)); });
}

void tap_conv_backward_weight_cuda(const TapConvParams& p, uintptr_t stream) {
  check(p.groups >= 1 && p.Cin % p.groups == 0 && p.Cout % p.groups == 0,
        "conv: channels must divide by groups");
  if (p.dw == nullptr && p.db == nullptr) return;
  check(p.Ho * p.Wo <= INT32_MAX, "conv backward (weight): more than 2^31 - 1 output cells per plane");
  WeightGradProblem q;
  q.dy = p.dy;
  q.dy_sn = p.dy_strides.n, q.dy_sc = p.dy_strides.c, q.dy_sh = p.dy_strides.h;
  q.n = p.N, q.cout = p.Cout, q.groups = p.groups, q.dcg = p.Cout / p.groups;
  q.scg = p.Cin / p.groups, q.taps = p.taps.count();
  q.partials = static_cast<float*>(p.partials), q.chunks = p.partial_chunks;
  q.want_bias = p.db != nullptr;
  if (p.Ho == 0 || p.Wo == 0) q.n = 0;  // dw and db are sums over nothing
  const TapColumns cols{p.x, p.x_strides.n, p.x_strides.c, p.x_strides.h, p.H, p.W, p.Ho, p.Wo,
                        p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.taps};
  dispatch_cuda_dtype(p.dtype, [&](auto t) {
    run_weight_grad<decltype(t)>(q, cols, p.dw, p.db, as_stream(stream));
  });
}

void tap_pool_forward_cuda(const TapPoolParams& p, uintptr_t stream) {
  const int64_t total = p.N * p.C * p.Ho * p.Wo;
  if (total == 0) return;
  const size_t table = size_t(p.taps.count()) * sizeof(int2);
  dispatch_cuda_dtype(p.dtype, [&](auto t) {
    auto kernel = pool_forward_kernel<decltype(t)>;
    allow_smem(kernel, table, 0, "hex pooling");
    kernel<<<plane_grid(p.Ho * p.Wo, p.N * p.C), 256, table, as_stream(stream)>>>(p);
    PFA_CHECK_LAUNCH();
  });
}

void tap_pool_backward_cuda(const TapPoolParams& p, uintptr_t stream) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return;
  check(p.mode != PoolMode::Max || p.argmax_in != nullptr, "max pool backward: missing argmax");
  const size_t table = size_t(p.taps.count()) * sizeof(int2);
  dispatch_cuda_dtype(p.dtype, [&](auto t) {
    auto kernel = pool_backward_kernel<decltype(t)>;
    allow_smem(kernel, table, 0, "hex pooling");
    kernel<<<plane_grid(p.H * p.W, p.N * p.C), 256, table, as_stream(stream)>>>(p);
    PFA_CHECK_LAUNCH();
  });
}

void indexed_conv_forward_cuda(const IndexedConvParams& p, uintptr_t stream) {
  if (p.N == 0 || p.Cout == 0 || p.P_out == 0) return;
  const int64_t gx = p.N * ceil_div(p.P_out, kIP), gy = ceil_div(p.Cout, kIC);
  check_grid(gx, gy, 1, "indexed_conv");
  dispatch_cuda_dtype(p.dtype, [&](auto t) {
    indexed_forward_kernel<decltype(t)><<<dim3(unsigned(gx), unsigned(gy)), kThreads, 0,
                                          as_stream(stream)>>>(p);
    PFA_CHECK_LAUNCH();
  });
}

void indexed_conv_backward_input_cuda(const IndexedConvParams& p, uintptr_t stream) {
  if (p.dx == nullptr || p.N == 0 || p.Cin == 0 || p.P == 0) return;
  check(p.inv_offsets != nullptr && p.inv_entries != nullptr,
        "indexed_conv backward: missing inverse neighbour table");
  // Output channels per staged weight chunk: as many as fit 48 KB (one may opt in to more).
  const int64_t per_co = p.T * kIC * int64_t(sizeof(float));
  const int co_chunk = int(std::max<int64_t>(1, std::min<int64_t>(p.Cout, int64_t(kDefaultSmem) / per_co)));
  const size_t bytes = size_t(co_chunk * per_co);
  const int64_t gx = p.N * ceil_div(p.P, 64), gy = ceil_div(p.Cin, kIC);
  check_grid(gx, gy, 1, "indexed_conv backward");
  dispatch_cuda_dtype(p.dtype, [&](auto t) {
    auto kernel = indexed_backward_input_kernel<decltype(t)>;
    allow_smem(kernel, bytes, 0, "indexed_conv backward");
    kernel<<<dim3(unsigned(gx), unsigned(gy)), kThreads, bytes, as_stream(stream)>>>(p, co_chunk);
    PFA_CHECK_LAUNCH();
  });
}

void indexed_conv_backward_weight_cuda(const IndexedConvParams& p, uintptr_t stream) {
  if (p.dw == nullptr && p.db == nullptr) return;
  WeightGradProblem q;
  q.dy = p.dy;
  q.dy_sn = p.dy_stride_n, q.dy_sc = p.dy_stride_c, q.dy_sh = 0;
  q.n = p.P_out == 0 ? 0 : p.N, q.cout = p.Cout, q.groups = 1, q.dcg = p.Cout;
  q.scg = p.Cin, q.taps = p.T;
  q.partials = static_cast<float*>(p.partials), q.chunks = p.partial_chunks;
  q.want_bias = p.db != nullptr;
  IndexedColumns cols{p.x, p.x_stride_n, p.x_stride_c, p.P, p.P_out, p.T, p.neighbors};
  dispatch_cuda_dtype(p.dtype, [&](auto t) {
    run_weight_grad<decltype(t)>(q, cols, p.dw, p.db, as_stream(stream));
  });
}

}  // namespace pfa::conv
