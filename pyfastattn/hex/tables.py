"""Neighbour tables for pyfastattn.indexed_conv on arbitrary sets of hex cells.

A table is (P_out, T) int64 with, per output cell, the index of the input cell at each
tap offset of pyfastattn.hex.taps(radius), or -1 where there is none (a missing station,
the array's border).
"""
from __future__ import annotations

import torch

from .taps import taps

__all__ = ["conv_neighbors", "pool_neighbors", "grid_cells"]


def _cells(rq) -> torch.Tensor:
    try:
        rq = torch.as_tensor(rq)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"hex: cells must be an integer tensor of shape (P, 2) (r, q), got "
                        f"{type(rq).__name__}") from None
    if rq.dim() != 2 or rq.shape[1] != 2 or rq.dtype.is_floating_point or rq.dtype == torch.bool:
        raise ValueError(f"hex: cells must be an integer tensor of shape (P, 2) (r, q), got "
                         f"{tuple(rq.shape)} {rq.dtype}")
    return rq.to(torch.int64)


def _lookup(cells: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index in `cells` of every query cell, -1 where absent."""
    if cells.shape[0] == 0:
        return torch.full(queries.shape[:-1], -1, dtype=torch.int64)
    # Dense ids of the distinct (r, q) pairs: a linear key r * Q + q would overflow int64
    # for far-apart coordinates and make distinct cells collide.
    P = cells.shape[0]
    _, ids = torch.unique(torch.cat([cells, queries.reshape(-1, 2)]), dim=0, return_inverse=True)
    key, qkey = ids[:P], ids[P:]
    if torch.unique(key).numel() != key.numel():
        raise ValueError("hex: the cell list has duplicates")
    order = torch.argsort(key)
    skey = key[order]
    pos = torch.searchsorted(skey, qkey.reshape(-1)).clamp(max=skey.numel() - 1)
    found = skey[pos] == qkey.reshape(-1)
    return torch.where(found, order[pos], torch.full_like(pos, -1)).reshape(queries.shape[:-1])


def conv_neighbors(rq, radius: int = 1) -> torch.Tensor:
    """(P, T) table for a stride-1 convolution over the cells `rq` (P, 2) (r, q)."""
    cells = _cells(rq)
    off = taps(radius)
    return _lookup(cells, cells[:, None, :] + off[None, :, :])


def pool_neighbors(rq, radius: int = 1, stride: int = 2):
    """Table for a strided convolution (or pooling) over `rq`: output cells are the input
    cells with r and q multiples of `stride` (the coarse lattice is hexagonal again).

    Returns (table (P_out, T), coarse_rq (P_out, 2) = fine cell // stride, out_index (P_out,)
    = the output cells' indices in rq).
    """
    cells = _cells(rq)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"hex.pool_neighbors: stride must be a positive int, got {stride!r}")
    keep = ((cells[:, 0] % stride) == 0) & ((cells[:, 1] % stride) == 0)
    out_index = torch.nonzero(keep).reshape(-1)
    centers = cells[out_index]
    off = taps(radius)
    table = _lookup(cells, centers[:, None, :] + off[None, :, :])
    return table, centers // stride, out_index


def grid_cells(R: int, Q: int) -> torch.Tensor:
    """All cells of an (R, Q) axial tensor, in row-major order (flat index r*Q + q)."""
    r = torch.arange(R).repeat_interleave(Q)
    q = torch.arange(Q).repeat(R)
    return torch.stack([r, q], dim=1)
