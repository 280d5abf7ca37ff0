"""Describing strided tensors to the kernels without copying them."""
from __future__ import annotations

import torch

MAX_ROW_DIMS = 6  # csrc/common/row_layout.h: kMaxRowDims


def collapse_dims(sizes, strides):
    """Merges adjacent dims that are contiguous with each other; drops size-1 dims."""
    out_sizes, out_strides = [], []
    for size, stride in zip(sizes, strides):
        if size == 1:
            continue
        if out_sizes and out_strides[-1] == stride * size:
            out_sizes[-1] *= size
            out_strides[-1] = stride
        else:
            out_sizes.append(size)
            out_strides.append(stride)
    return out_sizes, out_strides


def row_view(t: torch.Tensor, inner: int):
    """(t, rows, cols, sizes, strides) for `t` seen as rows of its last `inner` dims.

    The inner block must be contiguous; the leading dims may have any strides. When the
    inner block is not contiguous, or the leading dims do not collapse to MAX_ROW_DIMS,
    a contiguous copy is made (the one case where this library copies an input).
    """
    shape = t.shape
    split = len(shape) - inner
    lead, inner_shape = shape[:split], shape[split:]
    cols = 1
    for s in inner_shape:
        cols *= s
    rows = 1
    for s in lead:
        rows *= s
    if rows and cols and t.is_contiguous():  # the common case: what collapse_dims gives for it
        return (t, rows, cols, [rows], [cols]) if rows > 1 else (t, rows, cols, [], [])
    all_strides = t.stride()
    expected = 1
    inner_ok = True
    for size, stride in zip(reversed(inner_shape), reversed(all_strides[split:])):
        if size != 1 and stride != expected:
            inner_ok = False
        expected *= size
    sizes, strides = collapse_dims(list(lead), list(all_strides[:split]))
    if not inner_ok or len(sizes) > MAX_ROW_DIMS:
        t = t.contiguous()
        sizes, strides = ([rows], [cols]) if rows > 1 else ([], [])
    return t, rows, cols, sizes, strides
