"""conv2d, hex_conv2d, hex_max_pool2d, hex_avg_pool2d and indexed_conv.

conv2d and hex_conv2d are one op, a "tap convolution" over a list of (dr, dc) offsets
(csrc/conv/conv.h): conv2d's taps are the kh x kw grid scaled by the dilation, hex_conv2d's
the hexagon of radius k in axial coordinates (pyfastattn.hex.taps). Custom ops:
`pyfastattn::tap_conv` / `tap_conv_backward`, `tap_pool` / `tap_pool_backward`,
`indexed_conv` / `indexed_conv_backward`, each with a fake impl and autograd.

Geometry list passed to the ops (ints): [groups, stride_h, stride_w, pad_h, pad_w,
pad_h_end, pad_w_end, extent_h, extent_w, tap_kind, kh, kw, dil_h, dil_w, radius]. Output
size per axis: (in + pad + pad_end - extent) // stride + 1. hex: pads 0, extent 1, so
that stride s keeps the cells whose coordinates are multiples of s.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _backend as B
from . import _checks as C
from . import _ops
from ._C import conv as _conv

__all__ = ["conv2d", "hex_conv2d", "hex_max_pool2d", "hex_avg_pool2d", "indexed_conv"]

_GRID, _HEX = 0, 1
_MAX_TAPS = 4096  # csrc/conv/conv_bindings.cpp: kMaxTaps
_MAX, _AVG = 0, 1


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _out_size(n, geom, axis: int):
    stride, pad, pad_end, extent = geom[1 + axis], geom[3 + axis], geom[5 + axis], geom[7 + axis]
    return (n + pad + pad_end - extent) // stride + 1


def _tap_count(geom) -> int:
    if geom[9] == _HEX:
        k = geom[14]
        return 3 * k * (k + 1) + 1
    return geom[10] * geom[11]


def _cols_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels read rows through any strides but need each row contiguous."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _strides3(t: torch.Tensor):
    return [t.stride(0), t.stride(1), t.stride(2)]


def _kernel_geom(x: torch.Tensor, cout: int, geom) -> list:
    """The list the C++ side takes: sizes first, then the tap geometry."""
    N, Cin, H, W = x.shape
    Ho, Wo = _out_size(H, geom, 0), _out_size(W, geom, 1)
    return [N, Cin, H, W, cout, Ho, Wo, geom[0], geom[1], geom[2], geom[3], geom[4], *geom[9:]]


# --------------------------------------------------------------------------------------------
# Tap convolution


def _tap_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              geom: list[int]) -> torch.Tensor:
    x = _cols_contiguous(x)
    kg = _kernel_geom(x, weight.shape[0], geom)
    y = torch.empty(kg[0], kg[4], kg[5], kg[6], dtype=x.dtype, device=x.device)
    if x.shape[1] == 0:  # no input channels: the output is the bias (the kernels pack input rows)
        return y.copy_(bias.view(1, -1, 1, 1).expand_as(y)) if bias is not None else y.zero_()
    with B.cuda_device_guard(x):
        _conv.tap_conv_forward(x.is_cuda, B.dtype_code(x), kg, B.ptr(x), _strides3(x),
                               B.ptr(weight), B.ptr(bias), B.ptr(y), B.stream_of(x))
    return y


def _tap_conv_fake(x, weight, bias, geom):
    N, _, H, W = x.shape
    return x.new_empty(N, weight.shape[0], _out_size(H, geom, 0), _out_size(W, geom, 1))


def _tap_conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geom: list[int],
                       need_dx: bool, need_dw: bool, need_db: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db); each is empty when not asked for."""
    x = _cols_contiguous(x)
    dy = _cols_contiguous(dy)
    cout = weight.shape[0]
    kg = _kernel_geom(x, cout, geom)
    cuda = x.is_cuda
    stream = B.stream_of(x)
    dx = torch.empty(x.shape if need_dx else 0, dtype=x.dtype, device=x.device)
    dw = torch.empty(weight.shape if need_dw else 0, dtype=x.dtype, device=x.device)
    db = torch.empty(cout if need_db else 0, dtype=x.dtype, device=x.device)
    with B.cuda_device_guard(x):
        if need_dx:
            _conv.tap_conv_backward_input(cuda, B.dtype_code(x), kg, B.ptr(dy), _strides3(dy),
                                          B.ptr(weight), B.ptr(dx), stream)
        need_dw = need_dw and dw.numel() > 0  # an empty weight (no channels): nothing to compute
        if need_dw or need_db:
            T = _tap_count(geom)
            cig = x.shape[1] // geom[0]
            chunks = _conv.weight_chunks(kg[0], cout * cig * T * kg[5] * kg[6], cuda)
            partials = torch.empty(chunks * (cout * cig * T + cout), dtype=_acc_dtype(x.dtype),
                                   device=x.device)
            _conv.tap_conv_backward_weight(cuda, B.dtype_code(x), kg, B.ptr(dy), _strides3(dy), B.ptr(x),
                                           _strides3(x), B.ptr(dw) if need_dw else 0,
                                           B.ptr(db) if need_db else 0, B.ptr(partials), chunks, stream)
            if chunks == 0:  # empty batch: the gradients are zero
                dw.zero_()
                db.zero_()
    return dx, dw, db


def _tap_conv_backward_fake(dy, x, weight, geom, need_dx, need_dw, need_db):
    return (x.new_empty(x.shape if need_dx else 0), x.new_empty(weight.shape if need_dw else 0),
            x.new_empty(weight.shape[0] if need_db else 0))


def _tap_conv_setup(ctx, inputs, output):
    x, weight, bias, geom = inputs
    ctx.save_for_backward(x, weight)
    ctx.geom = geom
    ctx.has_bias = bias is not None


def _tap_conv_grad(ctx, dy):
    x, weight = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dw, db = tap_conv_backward(dy, x, weight, ctx.geom, need_dx, need_dw, need_db)
    return dx if need_dx else None, dw if need_dw else None, db if need_db else None, None


tap_conv = _ops.define("tap_conv", _tap_conv, _tap_conv_fake, backward=_tap_conv_grad,
                       setup_context=_tap_conv_setup)
tap_conv_backward = _ops.define("tap_conv_backward", _tap_conv_backward, _tap_conv_backward_fake)


# --------------------------------------------------------------------------------------------
# Validation helpers


def _pair(op: str, name: str, v, *, minimum: int) -> tuple[int, int]:
    if type(v) is int and minimum <= v < 2**24:  # the common case; the rest also explains errors
        return v, v
    if isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        v = (v, v)
    try:
        vals = tuple(v)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or any(isinstance(e, bool) or not isinstance(e, int) for e in vals):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if any(e < minimum for e in vals):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    if any(e >= 2**24 for e in vals):
        raise ValueError(f"{op}: {name} is too large ({v!r})")
    return vals


def _positive_int(op: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {v}")
    return v


def _check_input(op: str, input, weight, bias, *, weight_ndim: int):
    """Common checks; returns (input as 4-D, was_unbatched)."""
    C.tensor(op, "input", input, ndim=(3, 4))
    # weight and bias: one comparison per property when all is well (C.like explains failures)
    C.like(op, "input", input, "weight", weight)
    C.tensor(op, "weight", weight, ndim=weight_ndim)
    if bias is not None:
        C.like(op, "input", input, "bias", bias)
        C.tensor(op, "bias", bias, ndim=1)
    if input.device.type != "cpu":
        B.device_kind(input, op)
        C.float64_only_on_cpu(op, "input", input)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{op}: bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},) "
                         "(one per output channel)")
    if max(x.shape) > C.INT32_MAX:
        for name, n in zip(("input batch", "input channels", "input height", "input width"), x.shape):
            C.int32_indexable(op, name, n)
    return x, unbatched


def _check_groups(op: str, x: torch.Tensor, weight: torch.Tensor, groups) -> int:
    groups = _positive_int(op, "groups", groups)
    cin, cout = x.shape[1], weight.shape[0]
    if cin % groups != 0:
        raise ValueError(f"{op}: input has {cin} channels, not divisible by groups={groups}")
    if cout % groups != 0:
        raise ValueError(f"{op}: weight has {cout} output channels, not divisible by groups={groups}")
    if weight.shape[1] * groups != cin:
        raise ValueError(f"{op}: weight expects {weight.shape[1] * groups} input channels "
                         f"(weight.shape[1]={weight.shape[1]} x groups={groups}), input has {cin}")
    return groups


def _param(t):
    return None if t is None else t.contiguous()


# --------------------------------------------------------------------------------------------
# Public functions


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: Union[int, Sequence[int]] = 1, padding: Union[int, Sequence[int], str] = 0,
           dilation: Union[int, Sequence[int]] = 1, groups: int = 1) -> torch.Tensor:
    """Drop-in for torch.nn.functional.conv2d (NCHW or unbatched CHW; padding int, pair,
    'same' or 'valid'; groups and depthwise; accumulation in float32, float64 for float64)."""
    op = "conv2d"
    x, unbatched = _check_input(op, input, weight, bias, weight_ndim=4)
    groups = _check_groups(op, x, weight, groups)
    stride = _pair(op, "stride", stride, minimum=1)
    dilation = _pair(op, "dilation", dilation, minimum=1)
    kh, kw = weight.shape[2], weight.shape[3]
    if kh == 0 or kw == 0:
        raise ValueError(f"{op}: weight has an empty kernel {tuple(weight.shape)}")
    if kh * kw > _MAX_TAPS:
        raise ValueError(f"{op}: kernel {kh}x{kw} has more than {_MAX_TAPS} taps")
    ext = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    if isinstance(padding, str):
        if padding == "valid":
            pad, pad_end = (0, 0), (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride={stride}")
            total = (ext[0] - 1, ext[1] - 1)
            pad = (total[0] // 2, total[1] // 2)
            pad_end = (total[0] - pad[0], total[1] - pad[1])
        else:
            raise ValueError(f"{op}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        pad = _pair(op, "padding", padding, minimum=0)
        pad_end = pad
    H, W = x.shape[2], x.shape[3]
    for axis, n in enumerate((H, W)):
        if n + pad[axis] + pad_end[axis] < ext[axis]:
            raise ValueError(f"{op}: the kernel ({kh}x{kw}, dilation {dilation}) is larger than the padded "
                             f"input ({H + pad[0] + pad_end[0]}x{W + pad[1] + pad_end[1]})")
    geom = [groups, stride[0], stride[1], pad[0], pad[1], pad_end[0], pad_end[1], ext[0], ext[1],
            _GRID, kh, kw, dilation[0], dilation[1], 0]
    y = tap_conv(x, _param(weight), _param(bias), geom)
    return y.squeeze(0) if unbatched else y


def _hex_radius(op: str, T: int) -> int:
    k = 0
    while 3 * k * (k + 1) + 1 < T:
        k += 1
    if 3 * k * (k + 1) + 1 != T or k == 0:
        raise ValueError(f"{op}: weight's last dim ({T}) must be a hexagon's tap count 3k(k+1)+1 with "
                         "k >= 1 (7, 19, 37, ...)")
    return k


def hex_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               stride: int = 1, groups: int = 1) -> torch.Tensor:
    """Hexagonal convolution on axial grids (N, Cin, R, Q); weight (Cout, Cin/groups, T) with
    T = 3k(k+1)+1 taps in pyfastattn.hex.taps(k) order; cells outside the grid are zero.
    stride s keeps the cells with r and q multiples of s (output (ceil(R/s), ceil(Q/s))).
    A kernel whose diameter 2k+1 exceeds both grid sizes is rejected (ValueError)."""
    op = "hex_conv2d"
    x, unbatched = _check_input(op, input, weight, bias, weight_ndim=3)
    groups = _check_groups(op, x, weight, groups)
    stride = _positive_int(op, "stride", stride)
    k = _hex_radius(op, weight.shape[2])
    R, Q = x.shape[2], x.shape[3]
    if 2 * k + 1 > max(R, Q):
        raise ValueError(f"{op}: the kernel of radius {k} (diameter {2 * k + 1}) is larger than the "
                         f"grid ({R}x{Q})")
    geom = [groups, stride, stride, 0, 0, 0, 0, 1, 1, _HEX, 2 * k + 1, 2 * k + 1, 1, 1, k]
    y = tap_conv(x, _param(weight), _param(bias), geom)
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------------------------
# Pooling


def _tap_pool(x: torch.Tensor, mode: int, geom: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, argmax); argmax (int32 winning tap) is empty for average pooling."""
    x = _cols_contiguous(x)
    kg = _kernel_geom(x, x.shape[1], geom)
    pg = kg[:4] + kg[5:7] + kg[8:]
    y = torch.empty(kg[0], kg[1], kg[5], kg[6], dtype=x.dtype, device=x.device)
    am = torch.empty(y.shape if mode == _MAX else 0, dtype=torch.int32, device=x.device)
    with B.cuda_device_guard(x):
        _conv.tap_pool_forward(x.is_cuda, B.dtype_code(x), mode, pg, B.ptr(x), _strides3(x),
                               B.ptr(y), B.ptr(am), B.stream_of(x))
    return y, am


def _tap_pool_fake(x, mode, geom):
    N, Cc, H, W = x.shape
    shape = (N, Cc, _out_size(H, geom, 0), _out_size(W, geom, 1))
    return x.new_empty(shape), x.new_empty(shape if mode == _MAX else 0, dtype=torch.int32)


def _tap_pool_backward(dy: torch.Tensor, argmax: torch.Tensor, x: torch.Tensor, mode: int,
                       geom: list[int]) -> torch.Tensor:
    dy = _cols_contiguous(dy)
    kg = _kernel_geom(x, x.shape[1], geom)
    pg = kg[:4] + kg[5:7] + kg[8:]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    with B.cuda_device_guard(x):
        _conv.tap_pool_backward(x.is_cuda, B.dtype_code(x), mode, pg, B.ptr(dy), _strides3(dy),
                                B.ptr(argmax), B.ptr(dx), B.stream_of(x))
    return dx


def _tap_pool_backward_fake(dy, argmax, x, mode, geom):
    return torch.empty_like(x)


def _tap_pool_setup(ctx, inputs, output):
    x, mode, geom = inputs
    # x is kept for its shape only (the op reads nothing else from it).
    ctx.save_for_backward(x, output[1])
    ctx.mode, ctx.geom = mode, geom


def _tap_pool_grad(ctx, dy, dargmax):
    x, argmax = ctx.saved_tensors
    return tap_pool_backward(dy, argmax, x, ctx.mode, ctx.geom), None, None


tap_pool = _ops.define("tap_pool", _tap_pool, _tap_pool_fake, backward=_tap_pool_grad,
                       setup_context=_tap_pool_setup)
tap_pool_backward = _ops.define("tap_pool_backward", _tap_pool_backward, _tap_pool_backward_fake)


def _hex_pool(op: str, input, radius, stride, mode):
    C.tensor(op, "input", input, ndim=(3, 4))
    B.device_kind(input, op)
    C.float64_only_on_cpu(op, "input", input)
    radius = _positive_int(op, "radius", radius)
    stride = _positive_int(op, "stride", stride)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    for name, n in (("input batch", x.shape[0]), ("input channels", x.shape[1]),
                    ("input height", x.shape[2]), ("input width", x.shape[3])):
        C.int32_indexable(op, name, n)
    if radius > 36:
        raise ValueError(f"{op}: radius {radius} is too large (at most 36)")
    geom = [1, stride, stride, 0, 0, 0, 0, 1, 1, _HEX, 2 * radius + 1, 2 * radius + 1, 1, 1, radius]
    y, _ = tap_pool(x, mode, geom)
    return y.squeeze(0) if unbatched else y


def hex_max_pool2d(input: torch.Tensor, radius: int = 1, stride: int = 2) -> torch.Tensor:
    """Max over the hexagon of `radius` around each kept cell of an axial grid (N, C, R, Q).

    stride s keeps the cells with r and q multiples of s. Cells outside the grid do not take
    part (as -inf padding); NaN propagates. The gradient goes to the first maximal tap."""
    return _hex_pool("hex_max_pool2d", input, radius, stride, _MAX)


def hex_avg_pool2d(input: torch.Tensor, radius: int = 1, stride: int = 2) -> torch.Tensor:
    """Mean over the hexagon of `radius` around each kept cell of an axial grid (N, C, R, Q).

    At the border the mean is over the cells inside the grid only: the sum divides by the
    number of in-grid cells of the hexagon (torch's count_include_pad=False), so a constant
    input stays constant up to the edges."""
    return _hex_pool("hex_avg_pool2d", input, radius, stride, _AVG)


# --------------------------------------------------------------------------------------------
# Indexed convolution


def _check_neighbors(neighbors: torch.Tensor, P: int) -> torch.Tensor:
    """int32 copy of the table after the range check (inside the op: no graph break)."""
    if neighbors.numel():
        lo, hi = int(neighbors.min()), int(neighbors.max())
        if lo < -1 or hi >= P:
            raise ValueError(f"indexed_conv: neighbors has indices in [{lo}, {hi}]; expected -1 (no "
                             f"neighbour) or an input point in [0, {P - 1}]")
    return neighbors.to(torch.int32).contiguous()


def _indexed_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  neighbors: torch.Tensor) -> torch.Tensor:
    x = _cols_contiguous(x)
    N, Cin, P = x.shape
    Pout, T = neighbors.shape
    nb = _check_neighbors(neighbors, P)
    cout = weight.shape[0]
    y = torch.empty(N, cout, Pout, dtype=x.dtype, device=x.device)
    with B.cuda_device_guard(x):
        _conv.indexed_forward(x.is_cuda, B.dtype_code(x), [N, Cin, cout, P, Pout, T], B.ptr(nb),
                              B.ptr(x), [x.stride(0), x.stride(1)], B.ptr(weight), B.ptr(bias), B.ptr(y),
                              B.stream_of(x))
    return y


def _indexed_conv_fake(x, weight, bias, neighbors):
    return x.new_empty(x.shape[0], weight.shape[0], neighbors.shape[0])


def _inverse_table(nb: torch.Tensor, P: int):
    """CSR of the transposed table: for input p, the entries o*T + t with nb[o, t] == p,
    sorted by (p, o, t) (a stable sort keeps the (o, t) order), as int32."""
    flat = nb.reshape(-1).to(torch.int64)
    entries = torch.nonzero(flat >= 0).reshape(-1)
    keys = flat[entries]
    order = torch.argsort(keys, stable=True)
    offsets = torch.zeros(P + 1, dtype=torch.int64, device=nb.device)
    offsets[1:] = torch.cumsum(torch.bincount(keys, minlength=P), 0)
    return offsets.to(torch.int32), entries[order].to(torch.int32).contiguous()


def _indexed_conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                           need_dx: bool, need_dw: bool, need_db: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _cols_contiguous(x)
    dy = _cols_contiguous(dy)
    N, Cin, P = x.shape
    Pout, T = neighbors.shape
    cout = weight.shape[0]
    nb = neighbors.to(torch.int32).contiguous()
    dims = [N, Cin, cout, P, Pout, T]
    cuda = x.is_cuda
    stream = B.stream_of(x)
    dx = torch.empty(x.shape if need_dx else 0, dtype=x.dtype, device=x.device)
    dw = torch.empty(weight.shape if need_dw else 0, dtype=x.dtype, device=x.device)
    db = torch.empty(cout if need_db else 0, dtype=x.dtype, device=x.device)
    with B.cuda_device_guard(x):
        if need_dx and weight.numel() == 0:  # no taps (or channels): nothing reaches the input
            dx.zero_()
        elif need_dx:
            offsets, entries = _inverse_table(nb, P)
            _conv.indexed_backward_input(cuda, B.dtype_code(x), dims, B.ptr(nb), B.ptr(offsets), B.ptr(entries),
                                         B.ptr(dy), [dy.stride(0), dy.stride(1)], B.ptr(weight), B.ptr(dx),
                                         stream)
        need_dw = need_dw and dw.numel() > 0  # an empty weight (no taps): nothing to compute
        if need_dw or need_db:
            chunks = _conv.weight_chunks(N, cout * Cin * T * Pout, cuda)
            partials = torch.empty(chunks * (cout * Cin * T + cout), dtype=_acc_dtype(x.dtype), device=x.device)
            _conv.indexed_backward_weight(cuda, B.dtype_code(x), dims, B.ptr(nb), B.ptr(x),
                                          [x.stride(0), x.stride(1)], B.ptr(dy), [dy.stride(0), dy.stride(1)],
                                          B.ptr(dw) if need_dw else 0, B.ptr(db) if need_db else 0,
                                          B.ptr(partials), chunks, stream)
            if chunks == 0:
                dw.zero_()
                db.zero_()
    return dx, dw, db


def _indexed_conv_backward_fake(dy, x, weight, neighbors, need_dx, need_dw, need_db):
    return (x.new_empty(x.shape if need_dx else 0), x.new_empty(weight.shape if need_dw else 0),
            x.new_empty(weight.shape[0] if need_db else 0))


def _indexed_setup(ctx, inputs, output):
    x, weight, bias, neighbors = inputs
    ctx.save_for_backward(x, weight, neighbors)
    ctx.has_bias = bias is not None


def _indexed_grad(ctx, dy):
    x, weight, neighbors = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dw, db = indexed_conv_backward(dy, x, weight, neighbors, need_dx, need_dw, need_db)
    return dx if need_dx else None, dw if need_dw else None, db if need_db else None, None


indexed_conv_op = _ops.define("indexed_conv", _indexed_conv, _indexed_conv_fake, backward=_indexed_grad,
                              setup_context=_indexed_setup)
indexed_conv_backward = _ops.define("indexed_conv_backward", _indexed_conv_backward,
                                    _indexed_conv_backward_fake)


def indexed_conv(input: torch.Tensor, weight: torch.Tensor, neighbors: torch.Tensor,
                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convolution over a neighbour table, for arbitrary layouts.

    input (N, Cin, P); neighbors (P_out, T) integer, entry [o, t] the input point read by tap
    t of output o, or -1 for none (counts as zero); weight (Cout, Cin, T); returns
    (N, Cout, P_out). pyfastattn.hex.conv_neighbors / pool_neighbors build tables."""
    op = "indexed_conv"
    C.tensor(op, "input", input, ndim=3)
    C.tensor(op, "weight", weight, ndim=3)
    C.optional_tensor(op, "bias", bias, ndim=1)
    C.tensor(op, "neighbors", neighbors, dtypes=(torch.int32, torch.int64), ndim=2)
    B.device_kind(input, op)
    C.float64_only_on_cpu(op, "input", input)
    C.same_dtype(op, "input", input, weight=weight, bias=bias)
    C.same_device(op, "input", input, weight=weight, bias=bias, neighbors=neighbors)
    N, Cin, P = input.shape
    if weight.shape[1] != Cin:
        raise ValueError(f"{op}: weight expects {weight.shape[1]} input channels, input has {Cin}")
    if weight.shape[2] != neighbors.shape[1]:
        raise ValueError(f"{op}: weight has {weight.shape[2]} taps but neighbors has {neighbors.shape[1]} "
                         "columns; they must match")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{op}: bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    for name, n in (("input points", P), ("neighbors", neighbors.numel()), ("input batch", N)):
        C.int32_indexable(op, name, n)
    return indexed_conv_op(input, _param(weight), _param(bias), neighbors.contiguous())
