"""The bridge to the compiled module: dtype codes, raw pointers, streams, device checks.

Every family's Python wrapper goes through these few helpers, so the way tensors are
handed to C++ is defined once.
"""
from __future__ import annotations

import contextlib

import torch

from . import _C

DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}

BUILD_INFO = dict(_C.build_info())


def cuda_built() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return bool(BUILD_INFO["cuda"])


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def ptr(t: torch.Tensor | None) -> int:
    """Address of a tensor's first element (0 for None or an empty tensor)."""
    if t is None or t.numel() == 0:
        return 0
    return t.data_ptr()


# The raw handle without building a torch.cuda.Stream object (what inductor's code uses);
# absent from CPU-only torch builds, where no tensor is on CUDA anyway.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream_of(t: torch.Tensor) -> int:
    """The current CUDA stream for t's device, as an integer (0 on the CPU)."""
    if not t.is_cuda:
        return 0
    if _raw_stream is not None:
        return _raw_stream(t.get_device())
    return torch.cuda.current_stream(t.device).cuda_stream


def device_kind(t: torch.Tensor, op: str) -> str:
    """'cpu' or 'cuda', or a clear error for devices this build cannot run on."""
    kind = t.device.type
    if kind == "cpu":
        return "cpu"
    if kind == "cuda":
        if not cuda_built():
            raise RuntimeError(
                f"{op}: got CUDA tensors, but this pyfastattn build has no CUDA kernels "
                "(it was built without nvcc); reinstall on a machine with the CUDA toolkit"
            )
        return "cuda"
    raise RuntimeError(f"{op}: device {t.device} is not supported (only cpu and cuda)")


_NO_GUARD = contextlib.nullcontext()


def cuda_device_guard(t: torch.Tensor):
    """Makes t's GPU the current device for the launch (a shared no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else _NO_GUARD
