"""A Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

Patch embedding is one strided convolution (`conv2d` with kernel = stride = patch size),
followed by a learned CLS token, learned positional embeddings, pre-norm encoder blocks with
GELU FFNs, a final layer norm and a linear head on the CLS token.

Demo data: scikit-learn's bundled `load_digits` (1797 8x8 grey images, no download).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .ops import get_ops
from .transformer import ATTN_OPS, EncoderLayer, LayerNorm


class ViT(nn.Module):
    def __init__(self, image_size: int = 8, patch_size: int = 2, in_channels: int = 1,
                 num_classes: int = 10, dim: int = 64, heads: int = 4, layers: int = 4,
                 hidden: int = 128, dropout: float = 0.0, backend: str = "pyfastattn"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"ViT: image_size={image_size} is not a multiple of patch_size={patch_size}")
        self.ops = get_ops(backend, ATTN_OPS + ("conv2d",), "ViT")
        self.backend, self.patch_size = backend, patch_size
        n_patches = (image_size // patch_size) ** 2
        self.patch_weight = nn.Parameter(torch.empty(dim, in_channels, patch_size, patch_size))
        self.patch_bias = nn.Parameter(torch.zeros(dim))
        nn.init.kaiming_uniform_(self.patch_weight, a=5 ** 0.5)  # torch's Conv2d init
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderLayer(dim, heads, hidden, self.ops, dropout, True, nn.GELU)
                                    for _ in range(layers))
        self.norm = LayerNorm(dim, self.ops)
        self.head = nn.Linear(dim, num_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, images):
        x = self.ops.conv2d(images, self.patch_weight, self.patch_bias, stride=self.patch_size)
        x = x.flatten(2).transpose(1, 2)  # (B, patches, dim)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos.to(x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def load_digits_split(seed: int = 0, test_fraction: float = 0.2):
    """Digits as float tensors in [0, 1], shape (N, 1, 8, 8); stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_fraction,
                                          random_state=seed, stratify=d.target)
    t = torch.from_numpy
    return t(xtr), t(ytr).long(), t(xte), t(yte).long()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts by up to one pixel (zero fill): cheap, label-preserving for digits."""
    B = images.shape[0]
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (B,), generator=generator)
    dy = torch.randint(0, 3, (B,), generator=generator)
    H, W = images.shape[-2:]
    rows = (dy[:, None] + torch.arange(H)[None, :])[:, None, :, None].expand(B, images.shape[1], H, W + 2)
    out = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(W)[None, :])[:, None, None, :].expand(B, images.shape[1], H, W)
    return torch.gather(out, 3, cols)
