"""torch.nn modules on pyfastattn kernels (drop-in replacements where torch has one)."""
from .norm import LayerNorm, RMSNorm
from .attention import MultiheadAttention

__all__ = ["LayerNorm", "RMSNorm", "MultiheadAttention"]
