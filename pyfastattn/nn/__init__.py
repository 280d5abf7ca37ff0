"""torch.nn modules on pyfastattn kernels (drop-in replacements where torch has one)."""
from .attention import MultiheadAttention
from .conv import Conv2d, HexAvgPool2d, HexConv2d, HexMaxPool2d, IndexedConv
from .norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "MultiheadAttention", "Conv2d", "HexConv2d", "HexMaxPool2d",
           "HexAvgPool2d", "IndexedConv"]
