"""pyfastattn: hand-written CUDA and C++ kernels for attention, normalization and
hexagonal convolution, called from PyTorch (autograd, torch.compile and opcheck work).

The compiled module links no libtorch, so one build works with any torch >= 2.4.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._backend import BUILD_INFO, cuda_built
from .norm import add_layer_norm, layer_norm, rms_norm
from .attention import scaled_dot_product_attention, varlen_attention
from .conv import conv2d, hex_avg_pool2d, hex_conv2d, hex_max_pool2d, indexed_conv
from . import hex, nn, testing

__all__ = [
    "BUILD_INFO",
    "cuda_built",
    "layer_norm",
    "rms_norm",
    "add_layer_norm",
    "scaled_dot_product_attention",
    "varlen_attention",
    "conv2d",
    "hex_conv2d",
    "hex_max_pool2d",
    "hex_avg_pool2d",
    "indexed_conv",
    "hex",
    "nn",
    "testing",
]
