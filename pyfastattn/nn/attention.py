"""MultiheadAttention on the fused attention kernel; its state_dict is torch's."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as TF

from .. import _checks as C
from ..attention import scaled_dot_product_attention


class MultiheadAttention(nn.Module):
    """Drop-in for torch.nn.MultiheadAttention(batch_first=True) without attention weights.

    Same constructor arguments, parameter names (in_proj_weight / q_proj_weight, k_proj_weight,
    v_proj_weight, in_proj_bias, out_proj) and forward signature, so a torch MHA state_dict
    loads and gives the same outputs. forward returns (out, None): the fused kernel never
    forms the attention weights, so need_weights=True is an error. Masks follow torch's MHA
    conventions (bool True = masked out, float = added). Unlike torch, a query row whose keys
    are all masked gives zeros instead of NaN.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = True, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be a positive multiple "
                             f"of num_heads ({num_heads})")
        if dropout != 0.0:
            raise NotImplementedError("MultiheadAttention: dropout > 0 is not supported yet (dropout=0.0)")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        if not batch_first:
            raise NotImplementedError("MultiheadAttention: only batch_first=True is supported")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty((3 * embed_dim, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, self.kdim), **factory))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, self.vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self):  # as torch
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)

    def _project(self, query, key, value):
        """(B, L, E) inputs -> q, k, v as (B, H, L, hd) views of (B, L, H, hd) (no copies)."""
        e, h, hd = self.embed_dim, self.num_heads, self.head_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if query is key and key is value:
                qkv = TF.linear(query, w, b).unflatten(-1, (3, h, hd))
                return tuple(qkv.select(2, i).transpose(1, 2) for i in range(3))
            wq, wk, wv = w[:e], w[e:2 * e], w[2 * e:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return tuple(TF.linear(x, wx, bx).unflatten(-1, (h, hd)).transpose(1, 2)
                     for x, wx, bx in ((query, wq, bq), (key, wk, bk), (value, wv, bv)))

    def _merge_masks(self, key_padding_mask, attn_mask, batch, lq, lk, dtype):
        """torch MHA masks (True = masked out) -> one SDPA mask (True = takes part, or float)."""
        op = "MultiheadAttention"
        masks = []
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (batch, lk):
                raise ValueError(f"{op}: key_padding_mask must have shape (batch, Lk) = {(batch, lk)}, "
                                 f"got {tuple(key_padding_mask.shape)}")
            masks.append(key_padding_mask.view(batch, 1, 1, lk))
        if attn_mask is not None:
            if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (lq, lk):
                masks.append(attn_mask.view(1, 1, lq, lk))
            elif attn_mask.dim() == 3 and tuple(attn_mask.shape) == (batch * self.num_heads, lq, lk):
                masks.append(attn_mask.view(batch, self.num_heads, lq, lk))
            else:
                raise ValueError(f"{op}: attn_mask must have shape (Lq, Lk) = {(lq, lk)} or "
                                 f"(batch * num_heads, Lq, Lk), got {tuple(attn_mask.shape)}")
        merged = None
        for m in masks:
            if m.dtype == torch.bool:
                m = ~m if all(x.dtype == torch.bool for x in masks) else \
                    torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf)
            elif not m.is_floating_point():
                raise TypeError(f"{op}: masks must be bool or floating point, got {m.dtype}")
            else:
                m = m.to(dtype)
            if merged is None:
                merged = m
            elif merged.dtype == torch.bool:
                merged = merged & m
            else:
                merged = merged + m
        return merged

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = False,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        if need_weights:
            raise ValueError("MultiheadAttention: need_weights=True is not supported: the fused kernel "
                             "never forms the attention weights; call with need_weights=False")
        op = "MultiheadAttention"
        for name, t in (("query", query), ("key", key), ("value", value)):
            C.tensor(op, name, t)
        for name, t in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError("MultiheadAttention: query, key and value must be (batch, L, E) "
                             f"(batch_first), got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        if query.shape[-1] != self.embed_dim or key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError(f"MultiheadAttention: expected embedding sizes (query {self.embed_dim}, key "
                             f"{self.kdim}, value {self.vdim}), got {query.shape[-1]}, {key.shape[-1]}, "
                             f"{value.shape[-1]}")
        batch, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = self._project(query, key, value)
        mask = self._merge_masks(key_padding_mask, attn_mask, batch, lq, lk, q.dtype)
        # is_causal: torch treats it as a hint that attn_mask is the causal mask; applying
        # both is the same attention.
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(is_causal))
        out = out.transpose(1, 2).reshape(batch, lq, self.embed_dim)
        out = self.out_proj(out)
        return (out.squeeze(0) if unbatched else out), None
