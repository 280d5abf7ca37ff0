// Layer norm / RMS norm / fused residual-add + layer norm: the one declaration of the
// op family, implemented in norm_cpu.cpp and norm_cuda.cu.
#pragma once
#include <cstdint>

#include "common/pfa.h"
#include "common/row_layout.h"

namespace pfa::norm {

struct ForwardParams {
  DType dtype;
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;
  RowLayout x_rows;
  const void* residual = nullptr;  // add_layer_norm only: normalizes x + residual
  RowLayout residual_rows;
  void* sum_out = nullptr;         // (rows, cols) contiguous: x + residual, in dtype
  const void* weight = nullptr;    // (cols,) or null
  const void* bias = nullptr;      // (cols,) or null
  void* y = nullptr;               // (rows, cols) contiguous
  void* mean = nullptr;            // (rows, 2) accumulation type: the mean as hi + lo
                                   // (norm_math.h row_statistics); null for RMS norm
  void* rstd = nullptr;            // (rows,) accumulation type
  double eps = 1e-5;
  bool center = true;              // layer norm subtracts the mean; RMS norm does not
};

struct BackwardParams {
  DType dtype;
  int64_t rows = 0, cols = 0;
  const void* dy = nullptr;
  RowLayout dy_rows;
  const void* x = nullptr;         // what was normalized (x + residual for add_layer_norm)
  RowLayout x_rows;
  const void* weight = nullptr;
  const void* mean = nullptr;      // (rows, 2) hi + lo as saved by forward; null for RMS norm
  const void* rstd = nullptr;
  const void* dsum = nullptr;      // (rows, cols) contiguous gradient of sum_out, added to dx
  void* dx = nullptr;              // (rows, cols) contiguous
  // Deterministic two-stage reduction for dweight/dbias: per-chunk partials in the
  // accumulation type, (partial_rows, cols), then a fixed-order sum over chunks.
  void* partials = nullptr;        // 2 * partial_rows * cols accumulators (dweight, dbias)
  int64_t partial_rows = 0;
  void* dweight = nullptr;         // (cols,) or null
  void* dbias = nullptr;           // (cols,) or null
  bool center = true;
};

// How many row chunks the dweight/dbias reduction uses; it depends only on the shape,
// so results are bitwise reproducible whatever the thread count.
int64_t reduction_chunks(int64_t rows, int64_t cols, bool cuda);

void forward_cpu(const ForwardParams& p);
void backward_cpu(const BackwardParams& p);
#ifdef PFA_WITH_CUDA
void forward_cuda(const ForwardParams& p, uintptr_t stream);
void backward_cuda(const BackwardParams& p, uintptr_t stream);
#endif

}  // namespace pfa::norm
