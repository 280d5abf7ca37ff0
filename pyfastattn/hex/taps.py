"""Hexagonal kernel taps in axial coordinates (mirrors csrc/conv/conv_math.h).

The hexagon of radius k is the offsets (dr, dq) with |dr| <= k, |dq| <= k, |dr + dq| <= k:
T = 3k(k+1)+1 taps. Their order (the weight's last dim) is row-major: dr from -k to k,
then dq increasing. That is the order of the non-zero entries of the (2k+1) x (2k+1)
masked kernel flattened row-major, so a hex weight sits in a square F.conv2d kernel at
[dr + k, dq + k].
"""
from __future__ import annotations

import torch

__all__ = ["tap_count", "taps", "hex_mask", "hex_to_square_weight", "square_to_hex_weight"]

MAX_RADIUS = 1024


def _radius(k, what="radius") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"hex: {what} must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"hex: {what} must be >= 0, got {k}")
    if k > MAX_RADIUS:  # the tap list is built in Python: a huge radius would exhaust memory
        raise ValueError(f"hex: {what} {k} is too large (at most {MAX_RADIUS})")
    return k


def tap_count(k: int) -> int:
    """T = 3k(k+1)+1, the number of cells in the hexagon of radius k."""
    k = _radius(k)
    return 3 * k * (k + 1) + 1


def taps(k: int) -> torch.Tensor:
    """(T, 2) int64 tensor of the (dr, dq) offsets of radius k, in weight order."""
    k = _radius(k)
    out = [(dr, dq) for dr in range(-k, k + 1) for dq in range(max(-k, -k - dr), min(k, k - dr) + 1)]
    return torch.tensor(out, dtype=torch.int64).reshape(-1, 2)


def hex_mask(k: int, device=None) -> torch.Tensor:
    """(2k+1, 2k+1) bool mask of the hexagon in a square kernel (entry [dr+k, dq+k])."""
    k = _radius(k)
    r = torch.arange(-k, k + 1, device=device)
    dr, dq = r[:, None], r[None, :]
    return (dq.abs() <= k) & ((dr + dq).abs() <= k) & (dr.abs() <= k)


def hex_to_square_weight(weight: torch.Tensor) -> torch.Tensor:
    """(..., T) hex weight -> (..., 2k+1, 2k+1) square kernel, zero outside the hexagon.

    `F.conv2d(x, hex_to_square_weight(w), padding=k)` on the axial tensor equals
    `hex_conv2d(x, w)` (stride 1); with stride=2 it equals the stride-2 hex conv.
    """
    _weight(weight, "hex_to_square_weight")
    T = weight.shape[-1]
    k = _radius_of(T)
    mask = hex_mask(k, device=weight.device).reshape(-1)
    out = weight.new_zeros(*weight.shape[:-1], (2 * k + 1) ** 2)
    out[..., mask] = weight
    return out.reshape(*weight.shape[:-1], 2 * k + 1, 2 * k + 1)


def square_to_hex_weight(weight: torch.Tensor) -> torch.Tensor:
    """(..., 2k+1, 2k+1) square kernel -> (..., T): keeps the entries inside the hexagon."""
    _weight(weight, "square_to_hex_weight")
    s = weight.shape[-1]
    if weight.dim() < 2 or weight.shape[-2] != s or s % 2 == 0:
        raise ValueError(f"hex: expected a square kernel of odd size, got shape {tuple(weight.shape)}")
    k = (s - 1) // 2
    mask = hex_mask(k, device=weight.device).reshape(-1)
    return weight.reshape(*weight.shape[:-2], s * s)[..., mask]


def _weight(weight, op: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1:
        raise TypeError(f"hex.{op}: weight must be a torch.Tensor with at least 1 dim, got "
                        f"{type(weight).__name__}")


def _radius_of(T: int) -> int:
    """k with 3k(k+1)+1 == T, or ValueError."""
    k = 0
    while 3 * k * (k + 1) + 1 < T:
        k += 1
    if 3 * k * (k + 1) + 1 != T:
        raise ValueError(f"hex: {T} taps is not a hexagon (T must be 3k(k+1)+1: 1, 7, 19, 37, ...)")
    return k
