// A batch of rows addressed through the strides of up to kMaxRowDims leading dims, so
// kernels read non-contiguous inputs (x[:, ::2], a transposed batch) without a copy.
// The elements inside a row are contiguous.
#pragma once
#include <cstdint>

#include "common/pfa.h"

namespace pfa {

constexpr int kMaxRowDims = 6;

struct RowLayout {
  int ndim = 0;                    // 0: a single row
  int64_t size[kMaxRowDims] = {};  // leading dims, outermost first
  int64_t stride[kMaxRowDims] = {};

  // Element offset of row `row` < the product of the sizes (row-major over the leading
  // dims). The outermost index is what is left of `row`: no division for it, so a collapsed
  // (one-dim) layout costs a multiply.
  PFA_HD int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int d = ndim - 1; d > 0; --d) {
      const int64_t i = row % size[d];
      row /= size[d];
      off += i * stride[d];
    }
    return ndim > 0 ? off + row * stride[0] : off;
  }
};

}  // namespace pfa
