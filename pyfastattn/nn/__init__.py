"""torch.nn modules on pyfastattn kernels (drop-in replacements where torch has one)."""
from .norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
