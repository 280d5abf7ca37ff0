// Bindings of the conv family: pointers, sizes and the tap geometry in, no logic beyond
// memory-safety checks. Geometry travels as one int list (see pyfastattn/conv.py):
//   conv: [N, Cin, H, W, Cout, Ho, Wo, groups, stride_h, stride_w, pad_h, pad_w,
//          tap_kind, kh, kw, dil_h, dil_w, radius]
//   pool: [N, C, H, W, Ho, Wo, stride_h, stride_w, pad_h, pad_w, tap_kind, kh, kw, dil_h, dil_w, radius]
//   indexed: [N, Cin, Cout, P, P_out, T]
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/binding.h"
#include "conv/conv.h"

namespace py = pybind11;

namespace {

using Dims = std::vector<int64_t>;
using pfa::check;
namespace cv = pfa::conv;

constexpr int kMaxTaps = 4096;

pfa::conv::TapSet tap_set(const Dims& g, size_t at) {
  const int kind = int(g[at]);
  check(kind == 0 || kind == 1, "conv: unknown tap kind");
  const int kh = int(g[at + 1]), kw = int(g[at + 2]), dh = int(g[at + 3]), dw = int(g[at + 4]);
  const int radius = int(g[at + 5]);
  if (kind == 1) {
    check(radius >= 0 && radius <= 36, "conv: hex radius out of range");
    return cv::hex_taps(radius);
  }
  check(kh >= 1 && kw >= 1 && int64_t(kh) * kw <= kMaxTaps, "conv: kernel size out of range");
  check(dh >= 1 && dw >= 1 && int64_t(dh) * kh < (1 << 24) && int64_t(dw) * kw < (1 << 24),
        "conv: dilation out of range");
  return cv::grid_taps(kh, kw, dh, dw);
}

cv::Strides4 strides3(const Dims& s, const char* what) {
  check(s.size() == 3, std::string(what) + ": expected 3 strides (N, C, rows)");
  cv::Strides4 r;
  r.n = s[0];
  r.c = s[1];
  r.h = s[2];
  return r;
}

cv::TapConvParams conv_params(int dtype, const Dims& g) {
  check(g.size() == 18, "conv: geometry must have 18 entries");
  for (size_t i = 0; i < 12; ++i) check(g[i] >= 0, "conv: negative size in geometry");
  cv::TapConvParams p;
  p.dtype = pfa::dtype_from(dtype);
  p.N = g[0];
  p.Cin = g[1];
  p.H = g[2];
  p.W = g[3];
  p.Cout = g[4];
  p.Ho = g[5];
  p.Wo = g[6];
  p.groups = g[7];
  check(p.groups >= 1 && p.Cin % p.groups == 0 && p.Cout % p.groups == 0,
        "conv: channels must be divisible by groups");
  check(g[8] >= 1 && g[9] >= 1 && g[8] < (1 << 20) && g[9] < (1 << 20), "conv: stride out of range");
  check(g[10] < (1 << 24) && g[11] < (1 << 24), "conv: padding out of range");
  p.stride_h = int(g[8]);
  p.stride_w = int(g[9]);
  p.pad_h = int(g[10]);
  p.pad_w = int(g[11]);
  p.taps = tap_set(g, 12);
  return p;
}

#ifdef PFA_WITH_CUDA
#define PFA_CONV_DISPATCH(cuda, fn, p, stream)                 \
  do {                                                          \
    py::gil_scoped_release nogil;                               \
    if (cuda) cv::fn##_cuda(p, stream); else cv::fn##_cpu(p);   \
  } while (0)
#else
#define PFA_CONV_DISPATCH(cuda, fn, p, stream)                                   \
  do {                                                                            \
    if (cuda) throw std::runtime_error("pyfastattn was built without CUDA");      \
    (void)(stream);                                                               \
    py::gil_scoped_release nogil;                                                 \
    cv::fn##_cpu(p);                                                              \
  } while (0)
#endif

void tap_conv_forward(bool cuda, int dtype, const Dims& geom, uintptr_t x, const Dims& xs, uintptr_t w,
                      uintptr_t bias, uintptr_t y, uintptr_t stream) {
  cv::TapConvParams p = conv_params(dtype, geom);
  if (p.N * p.Cout * p.Ho * p.Wo > 0) {
    p.x = p.Cin * p.H * p.W > 0 ? pfa::nonnull_ptr<const void>(x, "input") : nullptr;
    p.x_strides = strides3(xs, "input");
    p.w = p.Cin > 0 ? pfa::nonnull_ptr<const void>(w, "weight") : nullptr;
    p.bias = pfa::ptr_from<const void>(bias);
    p.y = pfa::nonnull_ptr<void>(y, "output");
  }
  PFA_CONV_DISPATCH(cuda, tap_conv_forward, p, stream);
}

void tap_conv_backward_input(bool cuda, int dtype, const Dims& geom, uintptr_t dy, const Dims& dys,
                             uintptr_t w, uintptr_t dx, uintptr_t stream) {
  cv::TapConvParams p = conv_params(dtype, geom);
  if (p.N * p.Cin * p.H * p.W > 0) {
    p.dx = pfa::nonnull_ptr<void>(dx, "grad_input");
    if (p.Cout * p.Ho * p.Wo > 0) {
      p.dy = pfa::nonnull_ptr<const void>(dy, "grad_output");
      p.w = pfa::nonnull_ptr<const void>(w, "weight");
    }
    p.dy_strides = strides3(dys, "grad_output");
  }
  PFA_CONV_DISPATCH(cuda, tap_conv_backward_input, p, stream);
}

void tap_conv_backward_weight(bool cuda, int dtype, const Dims& geom, uintptr_t dy, const Dims& dys,
                              uintptr_t x, const Dims& xs, uintptr_t dw, uintptr_t db, uintptr_t partials,
                              int64_t chunks, uintptr_t stream) {
  cv::TapConvParams p = conv_params(dtype, geom);
  const int64_t work = p.Cout * (p.Cin / p.groups) * p.taps.count() * p.Ho * p.Wo;
  check(chunks == cv::weight_chunks(p.N, work, cuda), "conv backward: workspace has the wrong number of chunks");
  p.dw = pfa::ptr_from<void>(dw);
  p.db = pfa::ptr_from<void>(db);
  p.partial_chunks = chunks;
  if (chunks > 0 && (p.dw || p.db)) {
    p.partials = pfa::nonnull_ptr<void>(partials, "workspace");
    if (p.Cout * p.Ho * p.Wo > 0) p.dy = pfa::nonnull_ptr<const void>(dy, "grad_output");
    if (p.dw && p.Cin * p.H * p.W > 0) p.x = pfa::nonnull_ptr<const void>(x, "input");
    p.dy_strides = strides3(dys, "grad_output");
    p.x_strides = strides3(xs, "input");
  }
  PFA_CONV_DISPATCH(cuda, tap_conv_backward_weight, p, stream);
}

cv::TapPoolParams pool_params(int dtype, int mode, const Dims& g) {
  check(g.size() == 16, "pool: geometry must have 16 entries");
  for (size_t i = 0; i < 10; ++i) check(g[i] >= 0, "pool: negative size in geometry");
  check(mode == 0 || mode == 1, "pool: unknown mode");
  cv::TapPoolParams p;
  p.dtype = pfa::dtype_from(dtype);
  p.mode = cv::PoolMode(mode);
  p.N = g[0];
  p.C = g[1];
  p.H = g[2];
  p.W = g[3];
  p.Ho = g[4];
  p.Wo = g[5];
  check(g[6] >= 1 && g[7] >= 1 && g[6] < (1 << 20) && g[7] < (1 << 20), "pool: stride out of range");
  check(g[8] < (1 << 24) && g[9] < (1 << 24), "pool: padding out of range");
  p.stride_h = int(g[6]);
  p.stride_w = int(g[7]);
  p.pad_h = int(g[8]);
  p.pad_w = int(g[9]);
  p.taps = tap_set(g, 10);
  return p;
}

void tap_pool_forward(bool cuda, int dtype, int mode, const Dims& geom, uintptr_t x, const Dims& xs,
                      uintptr_t y, uintptr_t argmax, uintptr_t stream) {
  cv::TapPoolParams p = pool_params(dtype, mode, geom);
  if (p.N * p.C * p.Ho * p.Wo > 0) {
    p.x = pfa::nonnull_ptr<const void>(x, "input");
    p.x_strides = strides3(xs, "input");
    p.y = pfa::nonnull_ptr<void>(y, "output");
    if (p.mode == cv::PoolMode::Max) p.argmax = pfa::nonnull_ptr<int32_t>(argmax, "argmax");
  } else {
    p.N = 0;
  }
  PFA_CONV_DISPATCH(cuda, tap_pool_forward, p, stream);
}

void tap_pool_backward(bool cuda, int dtype, int mode, const Dims& geom, uintptr_t dy, const Dims& dys,
                       uintptr_t argmax, uintptr_t dx, uintptr_t stream) {
  cv::TapPoolParams p = pool_params(dtype, mode, geom);
  if (p.N * p.C * p.H * p.W > 0) {
    p.dx = pfa::nonnull_ptr<void>(dx, "grad_input");
    if (p.Ho * p.Wo > 0) {
      p.dy = pfa::nonnull_ptr<const void>(dy, "grad_output");
      if (p.mode == cv::PoolMode::Max) p.argmax_in = pfa::nonnull_ptr<const int32_t>(argmax, "argmax");
    }
    p.dy_strides = strides3(dys, "grad_output");
  } else {
    p.N = 0;
  }
  PFA_CONV_DISPATCH(cuda, tap_pool_backward, p, stream);
}

cv::IndexedConvParams indexed_params(int dtype, const Dims& d, uintptr_t neighbors) {
  check(d.size() == 6, "indexed_conv: dims must have 6 entries");
  for (auto v : d) check(v >= 0, "indexed_conv: negative size");
  check(d[3] < (int64_t(1) << 31) && d[4] * d[5] < (int64_t(1) << 31),
        "indexed_conv: point counts must fit in 32 bits");
  cv::IndexedConvParams p;
  p.dtype = pfa::dtype_from(dtype);
  p.N = d[0];
  p.Cin = d[1];
  p.Cout = d[2];
  p.P = d[3];
  p.P_out = d[4];
  p.T = d[5];
  if (p.P_out * p.T > 0) p.neighbors = pfa::nonnull_ptr<const int32_t>(neighbors, "neighbors");
  return p;
}

void indexed_forward(bool cuda, int dtype, const Dims& dims, uintptr_t neighbors, uintptr_t x,
                     const Dims& xs, uintptr_t w, uintptr_t bias, uintptr_t y, uintptr_t stream) {
  cv::IndexedConvParams p = indexed_params(dtype, dims, neighbors);
  check(xs.size() == 2, "indexed_conv: expected 2 input strides");
  if (p.N * p.Cout * p.P_out > 0) {
    p.x = p.Cin * p.P > 0 ? pfa::nonnull_ptr<const void>(x, "input") : nullptr;
    p.x_stride_n = xs[0];
    p.x_stride_c = xs[1];
    p.w = p.Cin * p.T > 0 ? pfa::nonnull_ptr<const void>(w, "weight") : nullptr;
    p.bias = pfa::ptr_from<const void>(bias);
    p.y = pfa::nonnull_ptr<void>(y, "output");
  }
  PFA_CONV_DISPATCH(cuda, indexed_conv_forward, p, stream);
}

void indexed_backward_input(bool cuda, int dtype, const Dims& dims, uintptr_t neighbors,
                            uintptr_t inv_offsets, uintptr_t inv_entries, uintptr_t dy, const Dims& dys,
                            uintptr_t w, uintptr_t dx, uintptr_t stream) {
  cv::IndexedConvParams p = indexed_params(dtype, dims, neighbors);
  check(dys.size() == 2, "indexed_conv: expected 2 grad_output strides");
  if (p.N * p.Cin * p.P > 0) {
    p.dx = pfa::nonnull_ptr<void>(dx, "grad_input");
    p.inv_offsets = pfa::nonnull_ptr<const int32_t>(inv_offsets, "inverse offsets");
    p.inv_entries = pfa::ptr_from<const int32_t>(inv_entries);
    if (p.Cout * p.P_out > 0) {
      p.dy = pfa::nonnull_ptr<const void>(dy, "grad_output");
      p.w = pfa::nonnull_ptr<const void>(w, "weight");
    }
    p.dy_stride_n = dys[0];
    p.dy_stride_c = dys[1];
  }
  PFA_CONV_DISPATCH(cuda, indexed_conv_backward_input, p, stream);
}

void indexed_backward_weight(bool cuda, int dtype, const Dims& dims, uintptr_t neighbors, uintptr_t x,
                             const Dims& xs, uintptr_t dy, const Dims& dys, uintptr_t dw, uintptr_t db,
                             uintptr_t partials, int64_t chunks, uintptr_t stream) {
  cv::IndexedConvParams p = indexed_params(dtype, dims, neighbors);
  check(xs.size() == 2 && dys.size() == 2, "indexed_conv: expected 2 strides per tensor");
  check(chunks == cv::weight_chunks(p.N, p.Cout * p.Cin * p.T * p.P_out, cuda),
        "indexed_conv backward: workspace has the wrong number of chunks");
  p.dw = pfa::ptr_from<void>(dw);
  p.db = pfa::ptr_from<void>(db);
  p.partial_chunks = chunks;
  if (chunks > 0 && (p.dw || p.db)) {
    p.partials = pfa::nonnull_ptr<void>(partials, "workspace");
    if (p.Cout * p.P_out > 0) p.dy = pfa::nonnull_ptr<const void>(dy, "grad_output");
    if (p.dw && p.Cin * p.P > 0) p.x = pfa::nonnull_ptr<const void>(x, "input");
    p.x_stride_n = xs[0];
    p.x_stride_c = xs[1];
    p.dy_stride_n = dys[0];
    p.dy_stride_c = dys[1];
  }
  PFA_CONV_DISPATCH(cuda, indexed_conv_backward_weight, p, stream);
}

void bind_conv(py::module_& m) {
  m.def("tap_conv_forward", &tap_conv_forward);
  m.def("tap_conv_backward_input", &tap_conv_backward_input);
  m.def("tap_conv_backward_weight", &tap_conv_backward_weight);
  m.def("tap_pool_forward", &tap_pool_forward);
  m.def("tap_pool_backward", &tap_pool_backward);
  m.def("indexed_forward", &indexed_forward);
  m.def("indexed_backward_input", &indexed_backward_input);
  m.def("indexed_backward_weight", &indexed_backward_weight);
  m.def("weight_chunks", &cv::weight_chunks, py::arg("N"), py::arg("work_per_sample"), py::arg("cuda"));
  m.def("hex_tap_count", [](int k) { return cv::hex_tap_count(k); });
  m.def("hex_tap_offset", [](int k, int t) {
    check(k >= 0 && t >= 0 && t < cv::hex_tap_count(k), "hex_tap_offset: tap out of range");
    int dr, dq;
    cv::hex_tap_offset(k, t, dr, dq);
    return py::make_tuple(dr, dq);
  });
}

}  // namespace

PFA_REGISTER_FAMILY(conv, bind_conv);
