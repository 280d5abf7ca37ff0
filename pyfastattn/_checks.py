"""Argument validation shared by every public function.

Each check raises TypeError/ValueError/RuntimeError with a message that names the
function and the argument, so a user sees at once what to fix.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT32_MAX = 2**31 - 1


def tensor(op: str, name: str, t, *, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
           ndim: int | Iterable[int] | None = None) -> torch.Tensor:
    """Checks that `t` is a tensor of an accepted dtype (and rank); returns it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {name} has dtype {str(t.dtype).replace('torch.', '')}; "
                        f"expected one of {allowed}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ranks:
            raise ValueError(f"{op}: {name} must have {' or '.join(map(str, ranks))} dimensions, "
                             f"got shape {tuple(t.shape)}")
    return t


def optional_tensor(op: str, name: str, t, **kw):
    return None if t is None else tensor(op, name, t, **kw)


def float64_only_on_cpu(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype == torch.float64 and t.device.type != "cpu":
        raise TypeError(f"{op}: {name} is float64 on {t.device}; float64 runs on the CPU only "
                        "(use float32, float16 or bfloat16 on the GPU)")


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; "
                            "they must match")


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                               "all tensors must be on one device")


def like(op: str, ref_name: str, ref: torch.Tensor, name: str, t) -> None:
    """tensor(), same_dtype() and same_device() for `t` against `ref` (itself already checked).

    One comparison per property when all is well; the separate checks (and their messages)
    run only to explain a failure.
    """
    if isinstance(t, torch.Tensor) and t.dtype == ref.dtype and t.device == ref.device:
        return
    tensor(op, name, t)
    same_dtype(op, ref_name, ref, **{name: t})
    same_device(op, ref_name, ref, **{name: t})


def last_dim_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must be contiguous in its last dimension "
                         f"(stride(-1) is {t.stride(-1)}); call .contiguous() first")


def int32_indexable(op: str, name: str, count: int) -> None:
    if count > INT32_MAX:
        raise ValueError(f"{op}: {name} has {count} elements along a dimension indexed in 32 bits "
                         f"(at most {INT32_MAX})")


def positive_float(op: str, name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {type(x).__name__}")
    x = float(x)
    if not x > 0.0 or x == float("inf"):
        raise ValueError(f"{op}: {name} must be a positive finite number, got {x}")
    return x
