"""scaled_dot_product_attention and varlen_attention: fused FlashAttention-2-style attention.

One pair of custom ops (`pyfastattn::attention_forward`, `pyfastattn::attention_backward`)
serves the dense (B, H, L, D) API and the packed varlen (total, H, D) API. Forward saves
only the output and the per-row log-sum-exp; backward recomputes the scores from them.
Masks are read through their strides (stride 0 along broadcast dims, never expanded in
memory); the mask gradient is computed at (B, Hq, Lq, Lk) and summed over the broadcast dims.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

from . import _backend as B
from . import _checks as C
from . import _ops
from ._C import attention as _attn

__all__ = ["scaled_dot_product_attention", "varlen_attention", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
_MASK_NONE, _MASK_BOOL, _MASK_FLOAT = 0, 1, 2


def _mask_kind(mask: Optional[torch.Tensor]) -> int:
    if mask is None or mask.numel() == 0:  # an empty mask (Lk = 0, ...) masks nothing
        return _MASK_NONE
    return _MASK_BOOL if mask.dtype == torch.uint8 else _MASK_FLOAT


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 keeps a float64 LSE internally so that its gradients stay exact.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _out_like(q: torch.Tensor) -> torch.Tensor:
    """Output with q's layout: (B, L, H, D)-major when q is a transposed (B, L, H, D) view."""
    if q.dim() == 4 and q.stride(1) < q.stride(2) and q.shape[1] > 1 and q.shape[2] > 1:
        b, h, l, d = q.shape
        return torch.empty((b, l, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _mask_strides(mask, batch, hq, lq, lk) -> list[int]:
    """Strides of the 4-d mask broadcast to (B, Hq, Lq, Lk): 0 along broadcast dims."""
    return [] if mask is None else list(mask.expand(batch, hq, lq, lk).stride())


def _strides(t: torch.Tensor, varlen: bool) -> list[int]:
    s = t.stride()
    if varlen:  # (total, H, D): (b unused, h, token)
        return [0, s[1], s[0]]
    return [s[0], s[1], s[2]]


def _sizes(q, k, cu_q, max_q, max_k):
    if cu_q is not None:
        return cu_q.shape[0] - 1, q.shape[1], k.shape[1], max_q, max_k, q.shape[2]
    return q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]


def _one_pass_backward(head_dim):
    """Whether the CUDA backward (float16/bfloat16) runs one pass over key blocks that also adds
    dQ into a float32 workspace with atomics, as FlashAttention does (dQ is then not bitwise
    reproducible), instead of a second deterministic pass over query blocks. With a mask, the
    one pass reads it once instead of twice and writes dMask itself.
    torch.use_deterministic_algorithms(True) always keeps the two passes. Default: head dims up
    to 64, whose key blocks of 128 keep the atomic traffic (one dQ tile per key block) at
    FlashAttention-2's. At 96 (key blocks of 64) it is twice that; at 128 the key blocks are
    128 where shared memory allows. Which path is faster there is not measured yet.
    PYFASTATTN_ATTN_BWD_DQ=atomic (head dims up to 128) or =pass forces either.
    PYFASTATTN_ATTN_BWD_WGMMA=1 (the experimental sm_90a one pass on warpgroup MMA, head dims
    33-128; others run the mma.sync one pass) implies atomic unless pass is forced."""
    if torch.are_deterministic_algorithms_enabled():
        return False
    mode = os.environ.get("PYFASTATTN_ATTN_BWD_DQ")
    if mode == "atomic" or (mode != "pass" and os.environ.get("PYFASTATTN_ATTN_BWD_WGMMA") == "1"):
        return head_dim <= 128
    return mode != "pass" and head_dim <= 64


def _lse_shape(q, cu_q):
    return (q.shape[1], q.shape[0]) if cu_q is not None else (q.shape[0], q.shape[1], q.shape[2])


def _check_cu_seqlens_values(cu_q, cu_k, total_q, total_k, max_q, max_k):
    """Memory safety of the offsets (runs in the op, so it also runs under torch.compile)."""
    for name, cu, total, mx in (("cu_seqlens_q", cu_q, total_q, max_q),
                                ("cu_seqlens_k", cu_k, total_k, max_k)):
        c = cu.to("cpu", torch.int64)
        if int(c[0]) != 0:
            raise ValueError(f"varlen_attention: {name}[0] must be 0, got {int(c[0])}")
        lens = c[1:] - c[:-1]
        if bool((lens < 0).any()):
            raise ValueError(f"varlen_attention: {name} must be sorted (non-decreasing)")
        if int(c[-1]) != total:
            raise ValueError(f"varlen_attention: {name}[-1] = {int(c[-1])} must equal the number of "
                             f"packed tokens ({total})")
        if lens.numel() and int(lens.max()) > mx:
            raise ValueError(f"varlen_attention: a sequence in {name} has length {int(lens.max())} > "
                             f"max_seqlen {mx}")


def _attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                       cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
                       max_seqlen_q: int, max_seqlen_k: int, scale: float, is_causal: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, lse); mask is uint8 (bool) or q's dtype, 4-d, broadcastable to (B, Hq, Lq, Lk)."""
    varlen = cu_seqlens_q is not None
    if varlen:
        _check_cu_seqlens_values(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q,
                                 max_seqlen_k)
    batch, hq, hkv, lq, lk, d = _sizes(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    out = _out_like(q)
    lse = torch.empty(_lse_shape(q, cu_seqlens_q), dtype=_lse_dtype(q.dtype), device=q.device)
    f64 = q.dtype == torch.float64
    mstrides = _mask_strides(mask, batch, hq, lq, lk)
    with B.cuda_device_guard(q):
        _attn.forward(q.is_cuda, B.dtype_code(q), batch, hq, hkv, lq, lk, d,
                      B.ptr(cu_seqlens_q), B.ptr(cu_seqlens_k), B.ptr(q), _strides(q, varlen),
                      B.ptr(k), _strides(k, varlen), B.ptr(v), _strides(v, varlen), B.ptr(out),
                      _strides(out, varlen), 0 if f64 else B.ptr(lse), B.ptr(lse) if f64 else 0,
                      _mask_kind(mask), B.ptr(mask), mstrides, float(scale), bool(is_causal),
                      B.stream_of(q))
    return out, lse


def _attention_forward_fake(q, k, v, mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, is_causal):
    out = _out_like(q)
    return out, q.new_empty(_lse_shape(q, cu_seqlens_q), dtype=_lse_dtype(q.dtype))


def _attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                        cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
                        max_seqlen_q: int, max_seqlen_k: int, scale: float, is_causal: bool,
                        need_dmask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, dmask); dmask has the mask's (4-d) shape when need_dmask, else empty."""
    varlen = cu_seqlens_q is not None
    batch, hq, hkv, lq, lk, d = _sizes(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    if dout.shape[-1] > 1 and dout.stride(-1) != 1:
        dout = dout.contiguous()
    cuda = q.is_cuda
    # dk/dv get heads_kv heads: the kernels sum the GQA group in a fixed order.
    kv_shape = k.shape
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(kv_shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(kv_shape, dtype=v.dtype, device=q.device)
    # float16/bfloat16 with a broadcast mask: dS in float32, rounded once after the broadcast
    # reduction; a full (B, Hq, Lq, Lk) mask gets dS in its own dtype (no extra pass over it).
    half = q.dtype in (torch.float16, torch.bfloat16)
    reduce_dims = [] if mask is None else [i for i in range(4) if mask.shape[i] == 1 and (batch, hq, lq, lk)[i] != 1]
    dmask_dtype = torch.float32 if half and reduce_dims else q.dtype
    if need_dmask:
        # The CPU kernel skips causal blocks above the diagonal: start from zeros there.
        alloc = torch.zeros if is_causal and not cuda else torch.empty
        dmask = alloc((batch, hq, lq, lk), dtype=dmask_dtype, device=q.device)
    else:
        dmask = q.new_empty(0)
    delta = dq_accum = None
    if cuda:
        delta = torch.empty(_lse_shape(q, cu_seqlens_q), dtype=torch.float32, device=q.device)
        # the one pass writes dMask in the input dtype: a broadcast mask's float32 dS takes two
        if half and _one_pass_backward(d) and not (need_dmask and reduce_dims):
            dq_accum = torch.zeros(_lse_shape(q, cu_seqlens_q) + (d,), dtype=torch.float32, device=q.device)
    f64 = q.dtype == torch.float64
    mstrides = _mask_strides(mask, batch, hq, lq, lk)
    with B.cuda_device_guard(q):
        _attn.backward(cuda, B.dtype_code(q), batch, hq, hkv, lq, lk, d, B.ptr(cu_seqlens_q),
                       B.ptr(cu_seqlens_k), B.ptr(q), _strides(q, varlen), B.ptr(k), _strides(k, varlen),
                       B.ptr(v), _strides(v, varlen), B.ptr(out), _strides(out, varlen),
                       0 if f64 else B.ptr(lse), B.ptr(lse) if f64 else 0, _mask_kind(mask),
                       B.ptr(mask), mstrides, float(scale), bool(is_causal), B.ptr(dout),
                       _strides(dout, varlen), B.ptr(dq), _strides(dq, varlen), B.ptr(dk),
                       _strides(dk, varlen), B.ptr(dv), _strides(dv, varlen), hkv, B.ptr(delta), B.ptr(dq_accum),
                       B.ptr(dmask) if need_dmask else 0,
                       list(dmask.stride()[:3]) if need_dmask else [], dmask_dtype != q.dtype,
                       B.stream_of(q))
    if need_dmask:
        # Sum over the mask's broadcast dims (deterministic torch reduction), round once.
        if reduce_dims:
            dmask = dmask.sum(reduce_dims, keepdim=True).to(mask.dtype)
    return dq, dk, dv, dmask


def _attention_backward_fake(dout, q, k, v, mask, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
      is_causal, need_dmask):
    if need_dmask:
        dmask = mask.new_empty(mask.shape)
    else:
        dmask = q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask


def _setup_context(ctx, inputs, output):
    q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, is_causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, out, lse, cu_q, cu_k)
    ctx.max_q, ctx.max_k, ctx.scale, ctx.is_causal = max_q, max_k, scale, is_causal
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, mask, out, lse, cu_q, cu_k = ctx.saved_tensors
    need_dmask = mask is not None and mask.dtype != torch.uint8 and ctx.needs_input_grad[3]
    kernel_dmask = need_dmask and mask.numel() > 0
    dq, dk, dv, dmask = attention_backward(
        dout, q, k, v, mask, out, lse, cu_q, cu_k, ctx.max_q, ctx.max_k, ctx.scale, ctx.is_causal,
        kernel_dmask)
    if need_dmask and not kernel_dmask:
        dmask = torch.zeros_like(mask)
    return dq, dk, dv, (dmask if need_dmask else None), None, None, None, None, None, None


attention_forward = _ops.define("attention_forward", _attention_forward, _attention_forward_fake,
                                backward=_backward, setup_context=_setup_context)
attention_backward = _ops.define("attention_backward", _attention_backward, _attention_backward_fake)


# ------------------------------------------------------------------ validation

def _check_qkv(op: str, query, key, value, ndim: int):
    # One expression accepts the usual case; the separate checks run to explain a failure.
    if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)
            and query.dim() == ndim and key.dim() == ndim and value.dim() == ndim
            and query.dtype in C.FLOAT_DTYPES and key.dtype == query.dtype and value.dtype == query.dtype
            and key.device == query.device and value.device == query.device):
        for name, t in (("query", query), ("key", key), ("value", value)):
            C.tensor(op, name, t, ndim=ndim)
        C.same_dtype(op, "query", query, key=key, value=value)
        C.same_device(op, "query", query, key=key, value=value)
    C.float64_only_on_cpu(op, "query", query)
    B.device_kind(query, op)
    for name, t in (("query", query), ("key", key), ("value", value)):
        C.last_dim_contiguous(op, name, t)
    d = query.shape[-1]
    if d < 1 or d > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dim (query.shape[-1]) must be in 1..{MAX_HEAD_DIM}, got {d}")
    if key.shape[-1] != d:
        raise ValueError(f"{op}: key has head dim {key.shape[-1]} but query has {d}; they must match")
    if value.shape[-1] != d:
        raise ValueError(f"{op}: value has head dim {value.shape[-1]} but query has {d}; "
                         "a different value head dim is not supported")


def _check_heads(op: str, hq: int, hkv: int, hv: int, gqa: bool):
    if hv != hkv:
        raise ValueError(f"{op}: key has {hkv} heads but value has {hv}; they must match")
    if hkv == 0 or (hq % hkv != 0 if gqa else hq != hkv):
        if not gqa:
            raise ValueError(f"{op}: query has {hq} heads but key/value have {hkv}; pass "
                             "enable_gqa=True for grouped-query attention")
        raise ValueError(f"{op}: query heads ({hq}) must be a multiple of key/value heads ({hkv}) "
                         "for grouped-query attention")


def _scale(op: str, scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")
    return scale


def _flag(op: str, name: str, x) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(x).__name__}")
    return x


def _prepare_mask(op: str, attn_mask, query, target):
    """Validates attn_mask and returns it as a 4-d view (leading 1s; no copy)."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"{op}: attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    C.same_device(op, "query", query, attn_mask=attn_mask)
    if attn_mask.dtype == torch.bool:
        m = attn_mask.view(torch.uint8)
    elif attn_mask.dtype == query.dtype:
        m = attn_mask
    else:
        raise TypeError(f"{op}: attn_mask has dtype {attn_mask.dtype}; expected torch.bool or the "
                        f"query's dtype {query.dtype}")
    if attn_mask.dim() > 4:
        raise ValueError(f"{op}: attn_mask has {attn_mask.dim()} dims; at most 4 (B, H, Lq, Lk)")
    lead = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
    if any(m != 1 and m != t for m, t in zip(lead, target)):
        raise ValueError(f"{op}: attn_mask of shape {tuple(attn_mask.shape)} is not broadcastable to "
                         f"(B, H, Lq, Lk) = {tuple(target)}") from None
    return m.reshape(lead) if m.dim() < 4 else m


def _check_int32_sizes(op: str, **sizes):
    for name, n in sizes.items():
        C.int32_indexable(op, name, n)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, return_lse: bool = False):
    """Drop-in for torch.nn.functional.scaled_dot_product_attention on (B, H, L, D) tensors.

    attn_mask: bool (True = takes part) or float (added to the logits, same dtype as query),
    broadcastable to (B, H, Lq, Lk); a float mask that requires grad gets its gradient.
    is_causal is top-left aligned (key j visible to query i iff j <= i), as torch; unlike
    torch, is_causal and attn_mask may be combined (both apply).
    Rows with no key to attend to give zeros and LSE -inf. return_lse=True returns
    (out, lse) with lse (B, H, Lq) float32. dropout is not implemented yet.
    """
    op = "scaled_dot_product_attention"
    _check_qkv(op, query, key, value, 4)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"{op}: dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise NotImplementedError(f"{op}: dropout_p={dropout_p} is not supported yet (only "
                                  "dropout_p=0.0); apply dropout outside attention for now")
    is_causal = _flag(op, "is_causal", is_causal)
    enable_gqa = _flag(op, "enable_gqa", enable_gqa)
    return_lse = _flag(op, "return_lse", return_lse)
    b, hq, lq, d = query.shape
    if key.shape[0] != b or value.shape[0] != b:
        raise ValueError(f"{op}: batch sizes differ: query {b}, key {key.shape[0]}, value {value.shape[0]}")
    if value.shape[2] != key.shape[2]:
        raise ValueError(f"{op}: key has length {key.shape[2]} but value has {value.shape[2]}; they must match")
    _check_heads(op, hq, key.shape[1], value.shape[1], enable_gqa)
    lk = key.shape[2]
    _check_int32_sizes(op, query=lq, key=lk, batch=b, heads=hq)
    mask = _prepare_mask(op, attn_mask, query, (b, hq, lq, lk))
    scale = _scale(op, scale, d)
    out, lse = attention_forward(query, key, value, mask, None, None, lq, lk,
                                                      scale, is_causal)
    if return_lse:
        return out, lse.float() if lse.dtype != torch.float32 else lse
    return out


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                     max_seqlen_k: int, *, is_causal: bool = False, scale: Optional[float] = None,
                     return_lse: bool = False):
    """Attention over packed variable-length sequences (FlashAttention's varlen layout).

    query (total_q, Hq, D), key/value (total_k, Hkv, D) with Hq a multiple of Hkv (GQA);
    sequence b is rows cu_seqlens[b]:cu_seqlens[b+1] (int32, batch+1 offsets starting at 0).
    is_causal is top-left aligned within each sequence. return_lse=True returns (out, lse)
    with lse (Hq, total_q) float32. Sequences of length 0 are allowed.
    """
    op = "varlen_attention"
    _check_qkv(op, query, key, value, 3)
    is_causal = _flag(op, "is_causal", is_causal)
    return_lse = _flag(op, "return_lse", return_lse)
    if value.shape[0] != key.shape[0]:
        raise ValueError(f"{op}: key has {key.shape[0]} tokens but value has {value.shape[0]}")
    _check_heads(op, query.shape[1], key.shape[1], value.shape[1], True)
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        C.tensor(op, name, cu, dtypes=(torch.int32,), ndim=1)
        C.same_device(op, "query", query, **{name: cu})
        if cu.shape[0] < 1:
            raise ValueError(f"{op}: {name} must hold batch + 1 >= 1 offsets")
    if cu_seqlens_q.shape[0] != cu_seqlens_k.shape[0]:
        raise ValueError(f"{op}: cu_seqlens_q has {cu_seqlens_q.shape[0]} entries but cu_seqlens_k has "
                         f"{cu_seqlens_k.shape[0]}; both are batch + 1")
    for name, n in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{op}: {name} must be an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"{op}: {name} must be >= 0, got {n}")
    _check_int32_sizes(op, query=query.shape[0], key=key.shape[0], max_seqlen_q=max_seqlen_q,
                       max_seqlen_k=max_seqlen_k)
    # No sequence is longer than all tokens together: clamping keeps the launch within the
    # data (a max_seqlen > 0 over zero packed tokens would ask the kernel to read them).
    max_seqlen_q, max_seqlen_k = min(max_seqlen_q, query.shape[0]), min(max_seqlen_k, key.shape[0])
    scale = _scale(op, scale, query.shape[-1])
    cu_q = cu_seqlens_q.contiguous()
    cu_k = cu_seqlens_k.contiguous()
    out, lse = attention_forward(query, key, value, None, cu_q, cu_k,
                                                      max_seqlen_q, max_seqlen_k, scale, is_causal)
    if return_lse:
        return out, lse.float() if lse.dtype != torch.float32 else lse
    return out
