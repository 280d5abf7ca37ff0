"""Offset <-> axial conversion for hexagonal grids stored as 2-D arrays.

Axial (r, q), as pyfastattn stores grids: the neighbours of (r, q) are (r, q+-1),
(r+-1, q), (r-1, q+1), (r+1, q-1). Offset layouts store a hex grid as rows i and columns
j with every other column (or row) shifted by half a cell:

- "odd-q" (= "hexagdly"): columns are straight, odd columns sit half a cell lower (0-based
  even columns half a cell higher, HexagDLy's layout): r = i - j // 2, q = j.
- "even-q": even columns sit half a cell lower: r = i - (j + 1) // 2, q = j.
- "odd-r": rows are straight, odd rows shifted half a cell right: r = i, q = j - i // 2.
- "even-r": even rows shifted right: r = i, q = j - (i + 1) // 2.

An offset grid of shape (H, W) becomes an axial tensor that holds every cell (the cells
of the axial box that are not in the offset grid are zero, which is exactly "outside the
grid counts as zero" for a convolution).
"""
from __future__ import annotations

import torch

__all__ = ["LAYOUTS", "offset_to_axial_coords", "axial_to_offset_coords", "axial_shape", "axial_origin",
           "offset_to_axial", "axial_to_offset"]

LAYOUTS = ("odd-q", "even-q", "odd-r", "even-r", "hexagdly")


def _layout(layout: str) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"hex: layout must be one of {LAYOUTS}, got {layout!r}")
    return "odd-q" if layout == "hexagdly" else layout


def offset_to_axial_coords(i, j, layout: str = "odd-q"):
    """Integer offset coordinates (tensors or ints) -> unshifted axial (r, q)."""
    layout = _layout(layout)
    if layout == "odd-q":
        return i - j // 2, j
    if layout == "even-q":
        return i - (j + 1) // 2, j
    if layout == "odd-r":
        return i, j - i // 2
    return i, j - (i + 1) // 2


def axial_to_offset_coords(r, q, layout: str = "odd-q"):
    """Inverse of offset_to_axial_coords."""
    layout = _layout(layout)
    if layout == "odd-q":
        return r + q // 2, q
    if layout == "even-q":
        return r + (q + 1) // 2, q
    if layout == "odd-r":
        return r, q + r // 2
    return r, q + (r + 1) // 2


def _offset_grid(H: int, W: int, layout: str, device=None):
    """Flat axial index of every offset cell, and the axial shape (R, Q)."""
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in (H, W)):
        raise ValueError(f"hex: the offset grid shape (H, W) must be positive ints, got ({H!r}, {W!r})")
    i = torch.arange(H, device=device).repeat_interleave(W)
    j = torch.arange(W, device=device).repeat(H)
    r, q = offset_to_axial_coords(i, j, layout)
    r0, q0 = int(r.min()), int(q.min())
    R, Q = int(r.max()) - r0 + 1, int(q.max()) - q0 + 1
    return (r - r0) * Q + (q - q0), (R, Q), (r0, q0)


def axial_shape(H: int, W: int, layout: str = "odd-q") -> tuple[int, int]:
    """(R, Q) of the axial tensor that holds an (H, W) offset grid."""
    _, shape, _ = _offset_grid(H, W, _layout(layout))
    return shape


def axial_origin(H: int, W: int, layout: str = "odd-q") -> tuple[int, int]:
    """Unshifted axial (r, q) of the axial tensor's cell [0, 0]."""
    _, _, origin = _offset_grid(H, W, _layout(layout))
    return origin


def offset_to_axial(x: torch.Tensor, layout: str = "odd-q") -> torch.Tensor:
    """(..., H, W) offset-layout tensor -> (..., R, Q) axial tensor (zeros where no cell).

    For HexagDLy data use layout="hexagdly"; `axial_to_offset` brings results back.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("hex.offset_to_axial: x must be a tensor with at least 2 dims (..., H, W)")
    H, W = x.shape[-2:]
    flat, (R, Q), _ = _offset_grid(H, W, _layout(layout), device=x.device)
    out = x.new_zeros(*x.shape[:-2], R * Q)
    out[..., flat] = x.reshape(*x.shape[:-2], H * W)
    return out.reshape(*x.shape[:-2], R, Q)


def axial_to_offset(a: torch.Tensor, shape, layout: str = "odd-q") -> torch.Tensor:
    """(..., R, Q) axial tensor -> (..., H, W) offset tensor, for an offset grid `shape` (H, W)."""
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise ValueError(f"hex.axial_to_offset: shape must be the offset grid's (H, W), got {shape!r}")
    H, W = shape
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"hex.axial_to_offset: expected a tensor (..., R, Q), got {type(a).__name__}")
    flat, (R, Q), _ = _offset_grid(H, W, _layout(layout), device=a.device)
    if a.dim() < 2 or tuple(a.shape[-2:]) != (R, Q):
        raise ValueError(f"hex.axial_to_offset: expected a tensor (..., {R}, {Q}) for an offset grid "
                         f"({H}, {W}) in layout {layout!r}, got "
                         f"{tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__}")
    return a.reshape(*a.shape[:-2], R * Q)[..., flat].reshape(*a.shape[:-2], H, W)
