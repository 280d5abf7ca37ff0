"""Station positions (x, y) on a triangular lattice -> axial indices.

A lattice of spacing d rotated by `angle` has the axial basis e_q = d (cos a, sin a) and
e_r = d (cos(a + 60deg), sin(a + 60deg)): cell (r, q) sits at origin + q e_q + r e_r, and
its six neighbours (DESIGN.md's set) are at distance d.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

__all__ = ["AxialIndex", "positions_to_axial", "axial_to_positions"]


class AxialIndex(NamedTuple):
    rq: torch.Tensor          # (P, 2) int64 axial (r, q), shifted so that the minimum is 0
    shape: tuple              # (R, Q): the axial box that holds every station
    spacing: float
    angle: float              # radians, direction of e_q
    origin: tuple             # (x, y) of axial cell (0, 0)


def _as_float64(op: str, name: str, v) -> torch.Tensor:
    try:
        return torch.as_tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"hex.{op}: {name} must be a tensor or nested sequence of numbers ({e})") from None


def _nearest_neighbour_vectors(xy: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(xy, xy)
    d.fill_diagonal_(float("inf"))
    nn = d.argmin(dim=1)
    return xy[nn] - xy


def positions_to_axial(xy, spacing: Optional[float] = None, angle: Optional[float] = None,
                       origin=None, tolerance: float = 0.25) -> AxialIndex:
    """Maps station positions (P, 2) to axial cells.

    spacing: the lattice constant (default: the median nearest-neighbour distance).
    angle: direction of one lattice vector in radians (default: inferred from the
    nearest-neighbour directions, modulo 60 degrees). origin: the position of one station
    on the lattice (default: the first station). Raises ValueError when a station lies
    farther than `tolerance * spacing` from its lattice cell or two stations share a cell.
    """
    xy = _as_float64("positions_to_axial", "xy", xy)
    if xy.dim() != 2 or xy.shape[1] != 2 or xy.shape[0] < 1:
        raise ValueError(f"hex.positions_to_axial: xy must have shape (P, 2) with P >= 1, got {tuple(xy.shape)}")
    if not torch.isfinite(xy).all():
        raise ValueError("hex.positions_to_axial: xy has non-finite values")
    P = xy.shape[0]
    if spacing is None or angle is None:
        if P < 2:
            raise ValueError("hex.positions_to_axial: a single station needs spacing and angle")
        vec = _nearest_neighbour_vectors(xy)
    if spacing is None:
        spacing = float(vec.norm(dim=1).median())
    spacing = float(spacing)
    if not spacing > 0 or not math.isfinite(spacing):
        raise ValueError(f"hex.positions_to_axial: spacing must be positive, got {spacing}")
    if angle is None:
        theta = torch.atan2(vec[:, 1], vec[:, 0]) * 6.0  # the lattice is 60-degree symmetric
        angle = float(torch.atan2(theta.sin().mean(), theta.cos().mean())) / 6.0
    angle = float(angle)
    if not math.isfinite(angle):
        raise ValueError(f"hex.positions_to_axial: angle must be finite, got {angle}")
    o = xy[0] if origin is None else _as_float64("positions_to_axial", "origin", origin)
    if o.shape != (2,):
        raise ValueError(f"hex.positions_to_axial: origin must be an (x, y) pair, got shape {tuple(o.shape)}")
    if not tolerance >= 0:
        raise ValueError(f"hex.positions_to_axial: tolerance must be >= 0, got {tolerance}")
    # Solve p - o = q e_q + r e_r for fractional (r, q).
    eq = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64) * spacing
    er = torch.tensor([math.cos(angle + math.pi / 3), math.sin(angle + math.pi / 3)], dtype=torch.float64) * spacing
    basis = torch.stack([er, eq], dim=1)  # columns e_r, e_q
    frac = torch.linalg.solve(basis, (xy - o).T).T  # (P, 2): r, q
    # Cube rounding: round all three cube coordinates and fix the one that moved most.
    r, q = frac[:, 0], frac[:, 1]
    s = -r - q
    rr, rq_, rs = r.round(), q.round(), s.round()
    dr_, dq_, ds_ = (rr - r).abs(), (rq_ - q).abs(), (rs - s).abs()
    fix_r = (dr_ > dq_) & (dr_ > ds_)
    fix_q = ~fix_r & (dq_ > ds_)
    rr = torch.where(fix_r, -rq_ - rs, rr)
    rq_ = torch.where(fix_q, -rr - rs, rq_)
    cells = torch.stack([rr, rq_], dim=1)
    back = cells @ basis.T + o
    err = (back - xy).norm(dim=1).max()
    if err > tolerance * spacing:
        raise ValueError(f"hex.positions_to_axial: a station is {float(err) / spacing:.2f} spacings from "
                         "its lattice cell; check spacing/angle/origin (or raise tolerance)")
    cells = cells.to(torch.int64)
    lo = cells.min(dim=0).values
    cells = cells - lo
    shape = tuple(int(v) + 1 for v in cells.max(dim=0).values)
    if torch.unique(cells[:, 0] * shape[1] + cells[:, 1]).numel() != P:
        raise ValueError("hex.positions_to_axial: two stations fall on the same lattice cell")
    origin_xy = (lo.to(torch.float64) @ basis.T + o)
    return AxialIndex(cells, shape, spacing, angle, (float(origin_xy[0]), float(origin_xy[1])))


def axial_to_positions(rq, spacing: float = 1.0, angle: float = 0.0, origin=(0.0, 0.0)) -> torch.Tensor:
    """(P, 2) axial (r, q) -> (P, 2) float64 positions (the inverse of positions_to_axial)."""
    rq = _as_float64("axial_to_positions", "rq", rq)
    if rq.dim() != 2 or rq.shape[1] != 2:
        raise ValueError(f"hex.axial_to_positions: rq must have shape (P, 2), got {tuple(rq.shape)}")
    spacing, angle = float(spacing), float(angle)
    if not (spacing > 0 and math.isfinite(spacing) and math.isfinite(angle)):
        raise ValueError(f"hex.axial_to_positions: spacing must be positive and finite and angle finite, "
                         f"got spacing={spacing}, angle={angle}")
    eq = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64) * spacing
    er = torch.tensor([math.cos(angle + math.pi / 3), math.sin(angle + math.pi / 3)], dtype=torch.float64) * spacing
    return rq[:, :1] * er + rq[:, 1:] * eq + torch.as_tensor(origin, dtype=torch.float64)
