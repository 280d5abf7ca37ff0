// Bindings of the norm family: pointers and sizes in, no logic beyond memory-safety checks.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/binding.h"
#include "norm/norm.h"

namespace py = pybind11;
using pfa::make_row_layout;

namespace {

using Dims = std::vector<int64_t>;

void forward(bool cuda, int dtype, int64_t rows, int64_t cols, uintptr_t x, const Dims& x_sizes,
             const Dims& x_strides, uintptr_t residual, const Dims& r_sizes, const Dims& r_strides,
             uintptr_t sum_out, uintptr_t weight, uintptr_t bias, uintptr_t y, uintptr_t mean,
             uintptr_t rstd, double eps, bool center, [[maybe_unused]] uintptr_t stream) {
  pfa::check(rows >= 0 && cols >= 0, "norm: negative size");
  pfa::norm::ForwardParams p;
  p.dtype = pfa::dtype_from(dtype);
  p.rows = rows;
  p.cols = cols;
  p.eps = eps;
  p.center = center;
  if (rows > 0 && cols > 0) {
    p.x = pfa::nonnull_ptr<const void>(x, "input");
    p.x_rows = make_row_layout(x_sizes, x_strides, "input");
    if (residual) {
      p.residual = pfa::ptr_from<const void>(residual);
      p.residual_rows = make_row_layout(r_sizes, r_strides, "residual");
      p.sum_out = pfa::nonnull_ptr<void>(sum_out, "sum output");
    }
    p.weight = pfa::ptr_from<const void>(weight);
    p.bias = pfa::ptr_from<const void>(bias);
    p.y = pfa::nonnull_ptr<void>(y, "output");
    p.mean = pfa::ptr_from<void>(mean);
    p.rstd = pfa::nonnull_ptr<void>(rstd, "rstd");
    pfa::check(!center || p.mean, "norm: layer norm needs a mean buffer");
  }
  py::gil_scoped_release nogil;
  if (cuda) {
#ifdef PFA_WITH_CUDA
    pfa::norm::forward_cuda(p, stream);
#else
    throw std::runtime_error("pyfastattn was built without CUDA");
#endif
  } else {
    pfa::norm::forward_cpu(p);
  }
}

void backward(bool cuda, int dtype, int64_t rows, int64_t cols, uintptr_t dy, const Dims& dy_sizes,
              const Dims& dy_strides, uintptr_t x, const Dims& x_sizes, const Dims& x_strides,
              uintptr_t weight, uintptr_t mean, uintptr_t rstd, uintptr_t dsum, uintptr_t dx,
              uintptr_t partials, int64_t partial_rows, uintptr_t dweight, uintptr_t dbias,
              bool center, [[maybe_unused]] uintptr_t stream) {
  pfa::check(rows >= 0 && cols >= 0, "norm backward: negative size");
  pfa::norm::BackwardParams p;
  p.dtype = pfa::dtype_from(dtype);
  p.rows = rows;
  p.cols = cols;
  p.center = center;
  if (rows > 0 && cols > 0) {
    p.dy = pfa::nonnull_ptr<const void>(dy, "grad_output");
    p.dy_rows = make_row_layout(dy_sizes, dy_strides, "grad_output");
    p.x = pfa::nonnull_ptr<const void>(x, "input");
    p.x_rows = make_row_layout(x_sizes, x_strides, "input");
    p.weight = pfa::ptr_from<const void>(weight);
    p.mean = pfa::ptr_from<const void>(mean);
    p.rstd = pfa::nonnull_ptr<const void>(rstd, "rstd");
    p.dsum = pfa::ptr_from<const void>(dsum);
    p.dx = pfa::nonnull_ptr<void>(dx, "grad_input");
    p.dweight = pfa::ptr_from<void>(dweight);
    p.dbias = pfa::ptr_from<void>(dbias);
    if (p.dweight || p.dbias) {
      pfa::check(partial_rows == pfa::norm::reduction_chunks(rows, cols, cuda),
                 "norm backward: workspace has the wrong number of partial rows");
      p.partials = pfa::nonnull_ptr<void>(partials, "workspace");
      p.partial_rows = partial_rows;
    }
    pfa::check(!center || p.mean, "norm backward: layer norm needs the saved mean");
  }
  py::gil_scoped_release nogil;
  if (cuda) {
#ifdef PFA_WITH_CUDA
    pfa::norm::backward_cuda(p, stream);
#else
    throw std::runtime_error("pyfastattn was built without CUDA");
#endif
  } else {
    pfa::norm::backward_cpu(p);
  }
}

void bind_norm(py::module_& m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("reduction_chunks", &pfa::norm::reduction_chunks, py::arg("rows"), py::arg("cols"),
        py::arg("cuda"));
}

}  // namespace

PFA_REGISTER_FAMILY(norm, bind_norm);
