"""The bridge to the compiled module: dtype codes, raw pointers, streams, device checks.

Every family's Python wrapper goes through these few helpers, so the way tensors are
handed to C++ is defined once.
"""
from __future__ import annotations

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


def stream_of(t: torch.Tensor) -> int:
    """The current CUDA stream for t's device, as an integer (0 on the CPU)."""
    if t.device.type != "cuda":
        return 0
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


class cuda_device_guard:
    """Makes t's GPU the current device for the launch (a no-op on the CPU)."""

    def __init__(self, t: torch.Tensor):
        self._ctx = torch.cuda.device(t.device) if t.device.type == "cuda" else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
