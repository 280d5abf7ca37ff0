"""Moving HexagDLy models onto pyfastattn: weights read off by probing the module.

A HexagDLy convolution is linear; feeding it a one-hot input at a cell and reading its
output through offset_to_axial gives, at every output cell, the weight of the tap that
joins them. This works for any module with HexagDLy's layout and needs no knowledge of
its internal sub-kernels.
"""
from __future__ import annotations

import torch

from .layout import offset_to_axial
from .taps import _radius, taps

__all__ = ["hexagdly_conv_weight"]


@torch.no_grad()
def hexagdly_conv_weight(module, in_channels: int, radius: int, dtype=torch.float64):
    """(weight (Cout, Cin, T), bias (Cout,) or None) such that, on the axial tensor of
    `offset_to_axial(x, "hexagdly")`, `pyfastattn.hex_conv2d(x_axial, weight, bias)` equals
    `offset_to_axial(module(x), "hexagdly")` (stride 1)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"hex.hexagdly_conv_weight: module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"hex.hexagdly_conv_weight: in_channels must be a positive int, got {in_channels!r}")
    k = _radius(radius)
    size = 4 * k + 4  # room for the full hexagon around the probe cell, away from borders
    i0, j0 = size // 2, size // 2
    x = torch.zeros(in_channels, in_channels, size, size, dtype=dtype)
    for c in range(in_channels):
        x[c, c, i0, j0] = 1.0
    params = [p for p in module.parameters()]
    orig = [p.dtype for p in params]
    stride = getattr(module, "hexbase_stride", None)
    module.to(dtype)
    try:
        if stride is not None:  # probe at stride 1: the weights do not depend on the stride
            module.hexbase_stride = 1
        y = module(x)
        bias = getattr(module, "bias_tensor", None) if getattr(module, "bias", False) else None
        bias = None if bias is None else bias.detach().clone()
        if bias is not None:
            y = y - bias.reshape(1, -1, 1, 1)
    finally:
        if stride is not None:
            module.hexbase_stride = stride
        for p, dt in zip(params, orig):
            p.data = p.data.to(dt)
    ya = offset_to_axial(y, "hexagdly")  # (Cin_probe, Cout, R, Q)
    # Cell of the probe in the same axial tensor.
    r0 = i0 - j0 // 2 + (size - 1) // 2
    off = taps(k)
    # Output cell (r0 - dr, q0 - dq) reads the probe through tap (dr, dq).
    w = ya[:, :, r0 - off[:, 0], j0 - off[:, 1]]  # (Cin, Cout, T)
    return w.permute(1, 0, 2).contiguous(), bias
