"""Property-based tests (hypothesis) of the attention family against the float64 reference:
random shapes (0, 1, non-tile multiples), dtypes, layouts (contiguous, transposed
(B, L, H, D) views, head dim sliced out of a wider buffer), masks (bool/float, every
broadcast pattern, rank 2-4, float mask gradient), causal, GQA, scale; varlen with empty
sequences. Forward and backward."""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import pyfastattn
from pyfastattn.testing import assert_matches_reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "attention"))
from _attention_reference import (assert_rounding_noise, attention_ref,  # noqa: E402
                                  summed_dscore_magnitude, varlen_ref)

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HALF = (torch.bfloat16, torch.float16)


def _layout(t64: torch.Tensor, layout: str, dtype) -> torch.Tensor:
    """t64 (B, H, L, D) as `dtype` in the given memory layout (same values)."""
    if layout == "transposed":
        return t64.transpose(1, 2).to(dtype).contiguous().transpose(1, 2)
    if layout == "wide":  # head dim sliced out of a wider buffer: row stride > D
        wide = torch.zeros(*t64.shape[:-1], t64.shape[-1] + 3, dtype=dtype)
        wide[..., :t64.shape[-1]] = t64
        return wide[..., :t64.shape[-1]]
    return t64.to(dtype)


def _same_dtype_sdpa(q, k, v, mask, is_causal, scale):
    """torch's own attention in the inputs' dtype, pyfastattn's mask semantics (for the
    half-precision tolerance; rows always keep a visible key there)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    lq, lk = q.shape[2], k.shape[2]
    bias = torch.zeros(lq, lk, dtype=q.dtype)
    if is_causal:
        bias = bias.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        bias = bias + (torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, -math.inf)
                       if mask.dtype == torch.bool else mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


@st.composite
def sdpa_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    b = draw(st.integers(0, 2))
    hk = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    lq = draw(st.integers(0, 20))
    lk = draw(st.integers(0, 20))
    d = draw(st.sampled_from([1, 3, 8, 16, 33, 64]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "wide"]))
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    bcast = draw(st.tuples(*(st.booleans() for _ in range(4))))
    mask_rank = draw(st.integers(2, 4))
    is_causal = draw(st.booleans())
    scale = draw(st.sampled_from([None, 0.3, 2.0]))
    logit_scale = draw(st.sampled_from([1.0, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, b, hk, group, lq, lk, d, layout, mask_kind, bcast, mask_rank, is_causal, scale, logit_scale, seed


@given(sdpa_problem())
def test_sdpa_matches_reference(problem):
    (dtype, b, hk, group, lq, lk, d, layout, mask_kind, bcast, mask_rank, is_causal, scale, logit_scale,
     seed) = problem
    half = dtype in HALF
    hq = hk * group
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):  # float64 values exactly representable in dtype
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype).double()

    q64, k64, v64 = rnd(b, hq, lq, d, s=logit_scale), rnd(b, hk, lk, d), rnd(b, hk, lk, d)
    full = (b, hq, lq, lk)
    mshape = tuple(1 if bc else n for bc, n in zip(bcast, full))[4 - mask_rank:]
    mask64 = None
    if mask_kind == "bool":
        mask64 = torch.rand(mshape, generator=g) < 0.7
        if half and mask64.numel():  # torch's own half attention gives NaN on fully masked rows
            mask64[..., :1] = True
    elif mask_kind == "float":
        mask64 = rnd(*mshape, s=2.0)

    def leaves(cast_t, cast_m):
        ts = [cast_t(t).requires_grad_(True) for t in (q64, k64, v64)]
        m = None if mask64 is None else cast_m(mask64)
        if m is not None and m.is_floating_point():
            m.requires_grad_(True)
        return ts, m

    (q, k, v), m = leaves(lambda t: _layout(t, layout, dtype), lambda t: t.to(dtype) if t.is_floating_point() else t)
    out = pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=is_causal, scale=scale,
                                                  enable_gqa=group > 1)
    (rq, rk, rv), rm = leaves(lambda t: t.clone(), lambda t: t.clone())
    if lk == 0 or out.numel() == 0:  # no keys: zeros out, zero gradients (the reference needs keys)
        assert out.shape == (b, hq, lq, d) and not out.abs().sum()
        got = torch.autograd.grad(out, [t for t in (q, k, v, m) if t is not None and t.requires_grad],
                                  torch.randn(out.shape).to(dtype), allow_unused=True)
        assert all(gr is None or not gr.abs().sum() for gr in got)
        return
    ref, _ = attention_ref(rq, rk, rv, mask=None if rm is None else rm.reshape((1,) * (4 - rm.dim()) + rm.shape),
                           is_causal=is_causal, scale=scale)
    assert out.shape == (b, hq, lq, d) and out.dtype == dtype
    same, same_grads = None, None
    dout64 = rnd(b, hq, lq, d)
    targets = [q, k, v] + ([m] if m is not None and m.is_floating_point() else [])
    ref_targets = [rq, rk, rv] + ([rm] if rm is not None and rm.is_floating_point() else [])
    if half:
        (tq, tk, tv), tm = leaves(lambda t: t.to(dtype), lambda t: t.to(dtype) if t.is_floating_point() else t)
        same = _same_dtype_sdpa(tq, tk, tv, tm, is_causal, scale)
        t_targets = [tq, tk, tv] + ([tm] if tm is not None and tm.is_floating_point() else [])
        if same.numel():
            same_grads = torch.autograd.grad(same, t_targets, dout64.to(dtype), allow_unused=True)
    assert_matches_reference(out, ref, same, what="out")
    if out.numel() == 0:
        return
    got = torch.autograd.grad(out, targets, dout64.to(dtype))
    want = torch.autograd.grad(ref, ref_targets, dout64, allow_unused=True)
    for i, (name, a, w) in enumerate(zip(("dq", "dk", "dv", "dmask"), got, want)):
        w = torch.zeros_like(ref_targets[i]) if w is None else w
        assert a.shape == w.shape, name
        if not half and w.abs().max() < 1e-9:  # (nearly) zero: rounding noise only
            magnitude = summed_dscore_magnitude(rq, rk, rv, rm, dout64, is_causal, scale) if name == "dmask" else None
            assert_rounding_noise(a, name, magnitude)
            continue
        sg = None
        if same_grads is not None:
            sg = same_grads[i] if same_grads[i] is not None else torch.zeros_like(a)
        try:
            assert_matches_reference(a, w, sg, what=name)
        except AssertionError:
            if dtype == torch.float64:
                raise
            # A gradient that cancels to far below its terms (few keys, saturated softmax) is
            # ill-conditioned: judged at a few rounding steps of the terms dS = P (dP - D),
            # dP = dout v, times q or k (as the norm tests do for one-column rows).
            s = scale if scale is not None else 1 / math.sqrt(d)
            qk = max(float(q64.abs().max()), float(k64.abs().max()))
            terms = 2 * float(dout64.abs().max()) * float(v64.abs().max()) * max(1.0, qk * s)
            err = float((a.double() - w).abs().max())
            assert err <= 4 * torch.finfo(dtype).eps * terms, f"{name}: {err} > 4 eps * {terms}"


@st.composite
def varlen_problem(draw):
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    nseq = draw(st.integers(1, 4))
    lq = draw(st.lists(st.integers(0, 12), min_size=nseq, max_size=nseq))
    lk = draw(st.lists(st.integers(0, 12), min_size=nseq, max_size=nseq))
    hk = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2]))
    d = draw(st.sampled_from([1, 5, 16, 40]))
    is_causal = draw(st.booleans())
    extra = draw(st.integers(0, 3))  # max_seqlen may exceed the longest sequence
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, lq, lk, hk, group, d, is_causal, extra, seed


@given(varlen_problem())
def test_varlen_matches_reference(problem):
    dtype, lq, lk, hk, group, d, is_causal, extra, seed = problem
    g = torch.Generator().manual_seed(seed)
    hq = hk * group
    cu_q = torch.tensor([0] + lq, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lk, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    q64, k64, v64 = (torch.randn(n, h, d, generator=g, dtype=torch.float64).to(dtype).double()
                     for n, h in ((tq, hq), (tk, hk), (tk, hk)))
    q, k, v = (t.to(dtype).requires_grad_(True) for t in (q64, k64, v64))
    out, lse = pyfastattn.varlen_attention(q, k, v, cu_q, cu_k, max(lq) + extra, max(lk) + extra,
                                           is_causal=is_causal, return_lse=True)
    rq, rk, rv = (t.clone().requires_grad_(True) for t in (q64, k64, v64))
    ref, ref_lse = varlen_ref(rq, rk, rv, cu_q, cu_k, is_causal=is_causal)
    assert_matches_reference(out, ref, what="out")
    assert_matches_reference(lse, ref_lse.float() if dtype == torch.float64 else ref_lse, what="lse")
    if out.numel() == 0:
        return
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    want = torch.autograd.grad(ref, (rq, rk, rv), dout, allow_unused=True)
    for name, a, w, t in zip(("dq", "dk", "dv"), got, want, (rq, rk, rv)):
        w = torch.zeros_like(t) if w is None else w
        assert a.shape == w.shape, name
        if w.numel() == 0:
            continue
        if w.abs().max() < 1e-9:  # (nearly) zero: rounding noise only
            assert_rounding_noise(a, name)
            continue
        assert_matches_reference(a, w, what=name)
