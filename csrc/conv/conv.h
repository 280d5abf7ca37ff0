// Convolution family: 2D convolution, hexagonal convolution, hexagonal pooling and
// convolution over a neighbour table. The one declaration of the family, implemented in
// conv_cpu.cpp and conv_cuda.cu; the shared tap/offset math is in conv_math.h.
//
// ONE "tap convolution" serves conv2d and hex_conv2d. A tap set is a list of T (dr, dc)
// offsets (TapSet in conv_math.h): conv2d's is the kh x kw grid scaled by the dilation,
// row-major (T = kh*kw, so a (Cout, Cin/g, kh, kw) weight is already (Cout, Cin/g, T));
// hex_conv2d's is the hexagon of radius k in axial coordinates (T = 3k(k+1)+1), in the
// order of pyfastattn.hex.taps(k). Output cell (oh, ow) reads input cell
//   (oh * stride_h - pad_h + dr_t, ow * stride_w - pad_w + dc_t)
// and cells outside the input count as zero. pad_h/pad_w are the leading pads only (the
// trailing pad is implied by the output size the caller passes, so 'same' with an even
// extent works). hex_conv2d: pad = 0, stride 1 or 2, offsets negative as well.
//
//   y[n, co, oh, ow] = bias[co] + sum_{ci in group(co), t} w[co, ci, t] * x[n, g*Cig + ci, ih_t, iw_t]
//   dx[n, c, ih, iw] = sum_{co in group(c), t, (oh, ow) reading (ih, iw) through t} w[co, c, t] * dy[n, co, oh, ow]
//   dw[co, ci, t]    = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, g*Cig + ci, ih_t, iw_t]
//   db[co]           = sum_{n, oh, ow} dy[n, co, oh, ow]
//
// Layouts (sizes and strides in elements, 64-bit):
//   x   (N, Cin, H, W): any strides for N, C, H; W contiguous (stride 1).
//   dy  (N, Cout, Ho, Wo): same rule as x.
//   y, dx: contiguous (N, C, rows, cols).       w, dw: contiguous (Cout, Cin/groups, T).
//   bias, db: contiguous (Cout,).
// Accumulation is float for float32/float16/bfloat16 and double for float64.
//
// Workspaces (kernels never allocate device memory; Python allocates with torch):
//   forward, backward-input: none.
//   backward-weight: `partials`, weight_chunks(...) chunks of (Cout*Cin/g*T + Cout)
//     accumulators: chunk j holds the sums of dw (then db) over its own fixed slice of the
//     batch; a second pass adds the chunks in chunk order and rounds to the dtype. The
//     chunk count depends only on the shape, so dw/db are bitwise reproducible whatever
//     the thread count or launch order. (CPU kernels may keep small per-thread host
//     scratch, like the norm family.)
//
// Pooling (hex_max_pool2d / hex_avg_pool2d) is a tap pool with the same geometry and no
// weights. Cells outside the input do not take part: max is over the in-bounds taps, the
// average divides by the number of in-bounds taps (count_include_pad=False). Max pooling
// saves, per output cell, the index t of the tap that won (int32, first one on ties, NaN
// wins) for the backward pass. Backward is written as a gather over the output cells
// whose window holds an input cell, so it needs no atomics and no workspace.
//
// Indexed convolution (arbitrary layouts): x (N, Cin, P) with any N/C strides and P
// contiguous; neighbors (P_out, T) int32 contiguous, -1 = no neighbour (counts as zero);
// w (Cout, Cin, T); y (N, Cout, P_out) contiguous.
//   y[n, co, o] = bias[co] + sum_{ci, t: nb[o,t] >= 0} w[co, ci, t] * x[n, ci, nb[o, t]]
// backward-input is a gather through the inverse table that Python builds (CSR, int32):
//   inv_offsets (P+1), inv_entries (nnz) holding o*T + t, sorted by (input p, o, t):
//   dx[n, ci, p] = sum_{e in inv[p]} sum_co w[co, ci, t_e] * dy[n, co, o_e]
// backward-weight uses the same `partials` scheme as the tap convolution (groups = 1).
#pragma once
#include <cstdint>

#include "common/pfa.h"
#include "conv/conv_math.h"

namespace pfa::conv {

// Strides (elements) of a 4-D (N, C, rows, cols) tensor whose cols are contiguous.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0;
};

struct TapConvParams {
  DType dtype = DType::Float32;
  int64_t N = 0, Cin = 0, H = 0, W = 0;  // input
  int64_t Cout = 0, Ho = 0, Wo = 0;      // output
  int64_t groups = 1;
  int stride_h = 1, stride_w = 1;
  int pad_h = 0, pad_w = 0;              // leading pads
  TapSet taps;

  // forward: x, w, bias (optional) -> y
  const void* x = nullptr;
  Strides4 x_strides;
  const void* w = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;

  // backward: dy (+ w) -> dx;  dy, x -> dw (optional), db (optional)
  const void* dy = nullptr;
  Strides4 dy_strides;
  void* dx = nullptr;
  void* dw = nullptr;
  void* db = nullptr;
  void* partials = nullptr;              // weight_chunks(...) * (Cout*Cin/g*T + Cout) accumulators
  int64_t partial_chunks = 0;
};

enum class PoolMode : int { Max = 0, Avg = 1 };

struct TapPoolParams {
  DType dtype = DType::Float32;
  PoolMode mode = PoolMode::Max;
  int64_t N = 0, C = 0, H = 0, W = 0, Ho = 0, Wo = 0;
  int stride_h = 2, stride_w = 2;
  int pad_h = 0, pad_w = 0;
  TapSet taps;

  const void* x = nullptr;               // forward input
  Strides4 x_strides;
  void* y = nullptr;                     // (N, C, Ho, Wo) contiguous
  int32_t* argmax = nullptr;             // max: (N, C, Ho, Wo) winning tap, written by forward

  const void* dy = nullptr;              // backward
  Strides4 dy_strides;
  const int32_t* argmax_in = nullptr;    // max: what forward wrote
  void* dx = nullptr;                    // (N, C, H, W) contiguous
};

struct IndexedConvParams {
  DType dtype = DType::Float32;
  int64_t N = 0, Cin = 0, Cout = 0, P = 0, P_out = 0, T = 0;
  const int32_t* neighbors = nullptr;    // (P_out, T), -1 = none
  const int32_t* inv_offsets = nullptr;  // (P + 1): backward-input only
  const int32_t* inv_entries = nullptr;  // (inv_offsets[P]) entries o*T + t

  const void* x = nullptr;
  int64_t x_stride_n = 0, x_stride_c = 0;   // P contiguous
  const void* w = nullptr;               // (Cout, Cin, T)
  const void* bias = nullptr;
  void* y = nullptr;                     // (N, Cout, P_out)

  const void* dy = nullptr;
  int64_t dy_stride_n = 0, dy_stride_c = 0;  // P_out contiguous
  void* dx = nullptr;                    // (N, Cin, P)
  void* dw = nullptr;
  void* db = nullptr;
  void* partials = nullptr;              // weight_chunks(...) * (Cout*Cin*T + Cout) accumulators
  int64_t partial_chunks = 0;
};

// Number of batch chunks of the deterministic dw/db reduction (depends only on the shape).
// `work_per_sample` is the multiply-adds one sample contributes (Cout*Cin/g*T*Ho*Wo).
int64_t weight_chunks(int64_t N, int64_t work_per_sample, bool cuda);

void tap_conv_forward_cpu(const TapConvParams& p);
void tap_conv_backward_input_cpu(const TapConvParams& p);
void tap_conv_backward_weight_cpu(const TapConvParams& p);
void tap_pool_forward_cpu(const TapPoolParams& p);
void tap_pool_backward_cpu(const TapPoolParams& p);
void indexed_conv_forward_cpu(const IndexedConvParams& p);
void indexed_conv_backward_input_cpu(const IndexedConvParams& p);
void indexed_conv_backward_weight_cpu(const IndexedConvParams& p);

#ifdef PFA_WITH_CUDA
void tap_conv_forward_cuda(const TapConvParams& p, uintptr_t stream);
void tap_conv_backward_input_cuda(const TapConvParams& p, uintptr_t stream);
void tap_conv_backward_weight_cuda(const TapConvParams& p, uintptr_t stream);
void tap_pool_forward_cuda(const TapPoolParams& p, uintptr_t stream);
void tap_pool_backward_cuda(const TapPoolParams& p, uintptr_t stream);
void indexed_conv_forward_cuda(const IndexedConvParams& p, uintptr_t stream);
void indexed_conv_backward_input_cuda(const IndexedConvParams& p, uintptr_t stream);
void indexed_conv_backward_weight_cuda(const IndexedConvParams& p, uintptr_t stream);
#endif

}  // namespace pfa::conv
