"""layer_norm, rms_norm and add_layer_norm: drop-ins for F.layer_norm / F.rms_norm.

One pair of custom ops (`pyfastattn::norm_forward`, `pyfastattn::norm_backward`) serves all
three; `center` picks layer norm or RMS norm and an optional residual fuses the add.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _backend as B
from . import _checks as C
from . import _ops
from ._C import norm as _norm
from ._layout import row_view

__all__ = ["layer_norm", "rms_norm", "add_layer_norm"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _norm_forward(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], inner: int, eps: float, center: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, mean, rstd, x + residual); mean is empty for RMS norm, the sum empty without a residual."""
    xv, rows, cols, xs, xst = row_view(x, inner)
    acc = _acc_dtype(x.dtype)
    dev = x.device
    y = torch.empty(x.shape, dtype=x.dtype, device=dev)
    # the mean as hi + lo (csrc/norm/norm_math.h), saved for backward
    mean = torch.empty((rows, 2) if center else (0,), dtype=acc, device=dev)
    rstd = torch.empty(rows, dtype=acc, device=dev)
    if residual is not None:
        rv, _, _, rs, rst = row_view(residual, inner)
        total = torch.empty(x.shape, dtype=x.dtype, device=dev)
    else:
        rv, rs, rst, total = None, [], [], x.new_empty(0)
    with B.cuda_device_guard(x):
        _norm.forward(x.is_cuda, B.dtype_code(x), rows, cols, B.ptr(xv), xs, xst,
                      B.ptr(rv), rs, rst, B.ptr(total), B.ptr(weight), B.ptr(bias), B.ptr(y),
                      B.ptr(mean), B.ptr(rstd), float(eps), bool(center), B.stream_of(x))
    return y, mean, rstd, total


def _norm_forward_fake(x, residual, weight, bias, inner, eps, center):
    rows = 1
    for s in x.shape[: x.dim() - inner]:
        rows *= s
    acc = _acc_dtype(x.dtype)
    total = torch.empty_like(x) if residual is not None else x.new_empty(0)
    return (torch.empty_like(x), x.new_empty((rows, 2) if center else (0,), dtype=acc),
            x.new_empty(rows, dtype=acc), total)


def _norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor,
                   rstd: torch.Tensor, dsum: Optional[torch.Tensor], inner: int, center: bool,
                   need_dweight: bool, need_dbias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias); the last two are empty when not needed."""
    xv, rows, cols, xs, xst = row_view(x, inner)
    dyv, _, _, ds, dst = row_view(dy, inner)
    dsv = dsum.contiguous() if dsum is not None else None
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    wshape = x.shape[x.dim() - inner:]
    dweight = (torch.zeros if rows == 0 else torch.empty)(wshape if need_dweight else 0, dtype=x.dtype, device=x.device)
    dbias = (torch.zeros if rows == 0 else torch.empty)(wshape if need_dbias else 0, dtype=x.dtype, device=x.device)
    cuda = x.is_cuda
    chunks = _norm.reduction_chunks(rows, cols, cuda) if (need_dweight or need_dbias) else 0
    partials = torch.empty(2 * chunks * cols, dtype=_acc_dtype(x.dtype), device=x.device)
    with B.cuda_device_guard(x):
        _norm.backward(cuda, B.dtype_code(x), rows, cols, B.ptr(dyv), ds, dst, B.ptr(xv), xs, xst,
                       B.ptr(weight), B.ptr(mean), B.ptr(rstd), B.ptr(dsv), B.ptr(dx), B.ptr(partials),
                       chunks, B.ptr(dweight), B.ptr(dbias), bool(center), B.stream_of(x))
    return dx, dweight, dbias


def _norm_backward_fake(dy, x, weight, mean, rstd, dsum, inner, center, need_dweight, need_dbias):
    wshape = x.shape[x.dim() - inner:]
    return (torch.empty_like(x), x.new_empty(wshape if need_dweight else 0),
            x.new_empty(wshape if need_dbias else 0))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, inner, eps, center = inputs
    _, mean, rstd, total = output
    ctx.save_for_backward(total if residual is not None else x, weight, mean, rstd)
    ctx.inner, ctx.center = inner, center
    ctx.has_residual = residual is not None
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _backward(ctx, dy, dmean, drstd, dtotal):
    normalized, weight, mean, rstd = ctx.saved_tensors
    need_dw = ctx.has_weight and ctx.needs_input_grad[2]
    need_db = ctx.has_bias and ctx.needs_input_grad[3]
    dsum = dtotal if ctx.has_residual else None
    dx, dw, db = norm_backward(dy, normalized, weight, mean, rstd, dsum,
                              ctx.inner, ctx.center, need_dw, need_db)
    return (dx, dx if ctx.has_residual else None, dw if need_dw else None,
            db if need_db else None, None, None, None)


norm_forward = _ops.define("norm_forward", _norm_forward, _norm_forward_fake, backward=_backward,
                           setup_context=_setup_context)
norm_backward = _ops.define("norm_backward", _norm_backward, _norm_backward_fake)


def _check_args(op, input, normalized_shape, weight, bias, residual=None):
    C.tensor(op, "input", input)
    C.float64_only_on_cpu(op, "input", input)
    B.device_kind(input, op)
    if isinstance(normalized_shape, int):
        normalized_shape = (int(normalized_shape),)
    elif type(normalized_shape) is torch.Size:  # ints by construction (x.shape[-1:])
        normalized_shape = tuple(normalized_shape)
    else:
        normalized_shape = _int_sequence(op, normalized_shape)
    inner = len(normalized_shape)
    if inner == 0:
        raise ValueError(f"{op}: normalized_shape must not be empty")
    shape = input.shape
    if inner > len(shape) or shape[len(shape) - inner:] != normalized_shape:
        raise ValueError(f"{op}: normalized_shape {list(normalized_shape)} does not match the trailing "
                         f"dims of input of shape {tuple(shape)}")
    C.last_dim_contiguous(op, "input", input)
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None:
            C.like(op, "input", input, name, t)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != normalized_shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {list(normalized_shape)}")
    if residual is not None:
        if residual.shape != shape:
            raise ValueError(f"{op}: residual has shape {tuple(residual.shape)} but input has "
                             f"{tuple(shape)}; they must match")
        C.last_dim_contiguous(op, "residual", residual)
    return inner


def _int_sequence(op, normalized_shape) -> tuple:
    try:
        if isinstance(normalized_shape, (str, bytes)) or not all(
                isinstance(s, int) or (isinstance(s, torch.Tensor) and s.dim() == 0) for s in normalized_shape):
            raise TypeError
        return tuple(int(s) for s in normalized_shape)
    except TypeError:
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, "
                        f"got {normalized_shape!r}") from None


def _contiguous_param(t):
    # weight/bias are tiny (one row); the kernels read them as a contiguous row.
    return None if t is None else t.contiguous()


def layer_norm(input: torch.Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Drop-in for torch.nn.functional.layer_norm (statistics in float32, Welford)."""
    inner = _check_args("layer_norm", input, normalized_shape, weight, bias)
    eps = C.positive_float("layer_norm", "eps", eps)
    y, _, _, _ = norm_forward(input, None, _contiguous_param(weight), _contiguous_param(bias), inner,
                              eps, True)
    return y


def rms_norm(input: torch.Tensor, normalized_shape: Union[int, Sequence[int]],
             weight: Optional[torch.Tensor] = None, eps: Optional[float] = None) -> torch.Tensor:
    """Drop-in for torch.nn.functional.rms_norm (eps=None means finfo(input.dtype).eps)."""
    inner = _check_args("rms_norm", input, normalized_shape, weight, None)
    eps = torch.finfo(input.dtype).eps if eps is None else C.positive_float("rms_norm", "eps", eps)
    y, _, _, _ = norm_forward(input, None, _contiguous_param(weight), None, inner, eps, False)
    return y


def add_layer_norm(input: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (layer_norm(input + residual), input + residual) in one pass over memory.

    Layer norm runs over the last dim (as in a pre-norm transformer block); the sum is
    rounded to input's dtype before it is normalized, exactly as the unfused code does.
    """
    op = "add_layer_norm"
    C.tensor(op, "residual", residual)
    if not isinstance(input, torch.Tensor) or input.dim() == 0:
        C.tensor(op, "input", input, ndim=range(1, 64))
    inner = _check_args(op, input, input.shape[-1:], weight, bias, residual)
    eps = C.positive_float(op, "eps", eps)
    y, _, _, total = norm_forward(input, residual, _contiguous_param(weight), _contiguous_param(bias),
                                  inner, eps, True)
    return y, total
