"""Convolution modules on pyfastattn kernels, initialised like torch.nn.Conv2d."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import conv as _F
from ..hex.taps import tap_count

__all__ = ["Conv2d", "HexConv2d", "HexMaxPool2d", "HexAvgPool2d", "IndexedConv"]


def _reset(weight: torch.Tensor, bias, fan_in: int) -> None:
    """torch.nn.Conv2d's init: kaiming_uniform(a=sqrt(5)) and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None and fan_in > 0:
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound)


class Conv2d(nn.Conv2d):
    """Drop-in for torch.nn.Conv2d (same arguments, parameters, init and state_dict)."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return _F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return _F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class HexConv2d(nn.Module):
    """Hexagonal convolution on axial grids (N, Cin, R, Q) with a kernel of `radius`.

    weight (out_channels, in_channels // groups, 3r(r+1)+1) in pyfastattn.hex.taps order."""

    def __init__(self, in_channels: int, out_channels: int, radius: int = 1, stride: int = 1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"HexConv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if radius < 1:
            raise ValueError(f"HexConv2d: radius must be >= 1, got {radius}")
        kw = dict(device=device, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.radius, self.stride, self.groups = radius, stride, groups
        T = tap_count(radius)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, T, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self.weight, self.bias, self.weight.shape[1] * self.weight.shape[2])

    def forward(self, input):
        return _F.hex_conv2d(input, self.weight, self.bias, self.stride, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, radius={self.radius}, stride={self.stride}"
                + (f", groups={self.groups}" if self.groups != 1 else "") + (", bias=False" if self.bias is None else ""))


class HexMaxPool2d(nn.Module):
    """pyfastattn.hex_max_pool2d as a module."""

    def __init__(self, radius: int = 1, stride: int = 2):
        super().__init__()
        self.radius, self.stride = radius, stride

    def forward(self, input):
        return _F.hex_max_pool2d(input, self.radius, self.stride)

    def extra_repr(self):
        return f"radius={self.radius}, stride={self.stride}"


class HexAvgPool2d(HexMaxPool2d):
    """pyfastattn.hex_avg_pool2d as a module (divides by the in-grid cell count at borders)."""

    def forward(self, input):
        return _F.hex_avg_pool2d(input, self.radius, self.stride)


class IndexedConv(nn.Module):
    """Convolution over a fixed neighbour table (P_out, T) (see pyfastattn.hex.conv_neighbors);
    input (N, in_channels, P) -> (N, out_channels, P_out)."""

    def __init__(self, in_channels: int, out_channels: int, neighbors: torch.Tensor, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if (not isinstance(neighbors, torch.Tensor) or neighbors.dim() != 2
                or neighbors.dtype not in (torch.int32, torch.int64)):
            raise ValueError("IndexedConv: neighbors must be a (P_out, T) int32 or int64 tensor")
        kw = dict(device=device, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.register_buffer("neighbors", neighbors.to(device=device, dtype=torch.int32).contiguous())
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, neighbors.shape[1], **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self.weight, self.bias, self.weight.shape[1] * self.weight.shape[2])

    def forward(self, input):
        return _F.indexed_conv(input, self.weight, self.neighbors, self.bias)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, taps={self.neighbors.shape[1]}, "
                f"points_out={self.neighbors.shape[0]}" + (", bias=False" if self.bias is None else ""))
