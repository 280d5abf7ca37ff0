"""torch.nn modules on pyfastattn kernels (drop-in replacements where torch has one)."""
from .norm import LayerNorm, RMSNorm
from .conv import Conv2d, HexAvgPool2d, HexConv2d, HexMaxPool2d, IndexedConv

__all__ = ["LayerNorm", "RMSNorm", "Conv2d", "HexConv2d", "HexMaxPool2d", "HexAvgPool2d", "IndexedConv"]
