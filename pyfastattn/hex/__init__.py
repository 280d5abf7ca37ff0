"""Hexagonal-grid tools: kernel taps, offset <-> axial layouts (HexagDLy's included),
station positions -> axial cells, and neighbour tables for pyfastattn.indexed_conv.

Grids are stored in axial coordinates (N, C, R, Q): the six neighbours of (r, q) are
(r, q+-1), (r+-1, q), (r-1, q+1), (r+1, q-1).
"""
from .interop import hexagdly_conv_weight
from .layout import (LAYOUTS, axial_origin, axial_shape, axial_to_offset, axial_to_offset_coords,
                     offset_to_axial, offset_to_axial_coords)
from .stations import AxialIndex, axial_to_positions, positions_to_axial
from .tables import conv_neighbors, grid_cells, pool_neighbors
from .taps import hex_mask, hex_to_square_weight, square_to_hex_weight, tap_count, taps

__all__ = [
    "taps", "tap_count", "hex_mask", "hex_to_square_weight", "square_to_hex_weight",
    "LAYOUTS", "offset_to_axial", "axial_to_offset", "offset_to_axial_coords",
    "axial_to_offset_coords", "axial_shape", "axial_origin",
    "AxialIndex", "positions_to_axial", "axial_to_positions",
    "conv_neighbors", "pool_neighbors", "grid_cells",
    "hexagdly_conv_weight",
]
