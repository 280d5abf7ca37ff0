"""Parity of pyfastattn.scaled_dot_product_attention / varlen_attention with a float64 reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
from pyfastattn.testing import assert_matches_reference
from _attention_reference import assert_rounding_noise, attention_ref, summed_dscore_magnitude, varlen_ref

sdpa = pyfastattn.scaled_dot_product_attention


def seeded(*parts) -> torch.Generator:
    """Fresh inputs every run (str hashing is salted per process); the seed is printed, and
    pytest shows it with a failure (rerun a case with torch.Generator().manual_seed(seed))."""
    seed = hash(parts) % (2**31)
    print(f"seed for {parts}: {seed}")
    return torch.Generator().manual_seed(seed)


def randn(shape, g, dtype=torch.float32, scale=1.0):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def qkv(b, hq, hk, lq, lk, d, dtype, g, scale=1.0):
    return (randn((b, hq, lq, d), g, dtype, scale), randn((b, hk, lk, d), g, dtype),
            randn((b, hk, lk, d), g, dtype))


def check_all(q, k, v, mask=None, is_causal=False, scale=None, enable_gqa=False, grads=True):
    """Forward (out, lse) and, if grads, dq/dk/dv/dmask against the float64 reference."""
    leaves = [t.detach().requires_grad_(grads) for t in (q, k, v)]
    m = mask
    if mask is not None and mask.is_floating_point():
        m = mask.detach().requires_grad_(grads)
    out, lse = sdpa(*leaves, attn_mask=m, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
                    return_lse=True)
    ref_leaves = [t.detach().double().requires_grad_(grads) for t in (q, k, v)]
    rm = mask
    if mask is not None and mask.is_floating_point():
        rm = mask.detach().double().requires_grad_(grads)
    ref, ref_lse = attention_ref(*ref_leaves, mask=rm, is_causal=is_causal, scale=scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert_matches_reference(out, ref, what="out")
    # lse is float32 for every input dtype: compare to float32 rounding of the reference
    assert_matches_reference(lse, ref_lse.float(), what="lse") if q.dtype == torch.float64 else \
        assert_matches_reference(lse, ref_lse, what="lse")
    if not grads:
        return
    g = torch.Generator().manual_seed(1234)
    dout = randn(out.shape, g, q.dtype)
    targets = leaves + ([m] if m is not None and m.is_floating_point() else [])
    ref_targets = ref_leaves + ([rm] if rm is not None and rm.is_floating_point() else [])
    got = torch.autograd.grad(out, targets, dout)
    want = torch.autograd.grad(ref, ref_targets, dout.double())
    for name, a, b in zip(("dq", "dk", "dv", "dmask"), got, want):
        assert a.shape == b.shape, name
        magnitude = (lambda: summed_dscore_magnitude(q, k, v, rm, dout, is_causal, scale)) if name == "dmask" else None
        check_grad(a, b, name, magnitude)


def check_grad(got, want, name, summed_magnitude=None):
    """summed_magnitude: a callable giving the size of the terms a zero gradient sums (only
    evaluated for such a gradient: it costs another reference pass)."""
    assert torch.isfinite(got).all(), name
    if want.abs().max() < 1e-9:
        assert_rounding_noise(got, name, summed_magnitude and summed_magnitude())
    else:
        assert_matches_reference(got, want, what=name)


SHAPES = [  # b, hq, hk, lq, lk, d
    (1, 2, 2, 1, 5, 8),
    (2, 3, 3, 70, 130, 40),
    (1, 2, 2, 130, 1, 64),
    (2, 1, 1, 65, 65, 80),
    (1, 1, 1, 33, 200, 1),
    (1, 2, 2, 17, 30, 256),
    (1, 1, 1, 100, 100, 128),
    (1, 2, 2, 64, 128, 64),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parity_shapes(shape, is_causal, dtype):
    g = seeded("shapes", shape, is_causal, str(dtype))
    q, k, v = qkv(*shape, dtype, g)
    check_all(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_sdpa_and_custom_scale(dtype):
    g = seeded("torch", str(dtype))
    q, k, v = qkv(2, 4, 4, 50, 77, 32, dtype, g)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3)
    assert_matches_reference(sdpa(q, k, v, scale=0.3), ref)
    check_all(q, k, v, scale=0.3)


MASK_SHAPES = [  # broadcast patterns of (B=2, H=3, Lq=37, Lk=70)
    (2, 3, 37, 70), (2, 1, 1, 70), (1, 3, 37, 70), (37, 70), (70,), (2, 1, 37, 1), (1, 1, 1, 1), (3, 1, 70),
]


@pytest.mark.parametrize("mshape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masks_broadcast(mshape, kind, dtype):
    g = seeded("mask", mshape, kind, str(dtype))
    q, k, v = qkv(2, 3, 3, 37, 70, 24, dtype, g)
    if kind == "bool":
        mask = torch.rand(mshape, generator=g) > 0.3
    else:
        mask = randn(mshape, g, dtype, scale=2.0)
    check_all(q, k, v, mask=mask)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_noncontiguous_and_causal_combined(kind):
    g = seeded("mask-nc", kind)
    q, k, v = qkv(1, 2, 2, 45, 45, 16, torch.float64, g)
    base = (torch.rand(2, 45, 45, generator=g) > 0.5) if kind == "bool" else randn((2, 45, 45), g, torch.float64)
    mask = base.transpose(-1, -2)  # stride(-1) != 1: read through strides
    check_all(q, k, v, mask=mask)
    check_all(q, k, v, mask=mask, is_causal=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fully_masked_rows(dtype):
    g = seeded("fully", str(dtype))
    q, k, v = qkv(2, 2, 2, 40, 90, 32, dtype, g)
    mask = torch.rand(2, 1, 40, 90, generator=g) > 0.5
    mask[:, :, ::3] = False  # every third query row sees nothing
    out, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True)
    assert torch.equal(out[:, :, ::3], torch.zeros_like(out[:, :, ::3]))
    assert torch.isneginf(lse[:, :, ::3]).all()
    check_all(q, k, v, mask=mask)
    # a float mask of -inf is "masked" too: zeros, not NaN (torch gives NaN here)
    fmask = torch.zeros(2, 1, 40, 90, dtype=dtype).masked_fill(~mask, -math.inf)
    check_all(q, k, v, mask=fmask, grads=False)
    # Lk = 0: nothing to attend to at all
    out0 = sdpa(q, k[:, :, :0], v[:, :, :0])
    assert torch.equal(out0, torch.zeros_like(out0))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_large_logits(sign):
    g = seeded("large", sign)
    q, k, v = qkv(1, 2, 2, 50, 60, 32, torch.float64, g)
    bias = sign * 1e4 * (torch.rand(1, 2, 50, 60, generator=g, dtype=torch.float64) > 0.5).double()
    check_all(q, k, v, mask=bias)  # float64: exact
    # float32: a logit of size 1e4 is rounded by ~1e4 * 2^-24 for torch as for us, which moves
    # the softmax weights by as much. Judged like half precision (twice torch's own float32
    # error), with that rounding bound as the floor: one random case can be lucky for torch.
    q32, k32, v32, b32 = (t.float() for t in (q, k, v, bias))
    q32 = q32 * 100.0  # logits of order +-1e4 from q.k as well
    ref, _ = attention_ref(q32.double(), k32.double(), v32.double(), mask=b32.double())
    torch32 = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=b32)
    out = sdpa(q32, k32, v32, attn_mask=b32)
    assert torch.isfinite(out).all()
    logits = (q32.double() @ k32.double().transpose(-1, -2) / math.sqrt(32) + b32.double()).abs().max()
    rounding = float(logits) * 2.0**-24 * float(v32.abs().max())
    err, base = (out.double() - ref).abs().max(), (torch32.double() - ref).abs().max()
    assert err <= max(2 * base, rounding) + 1e-5, (err, base, rounding)


@pytest.mark.parametrize("ramp", [0.01, 0.05, 0.3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rising_logits(ramp, dtype):
    """Logits that grow by `ramp` per key: the lazy running max (attention_math.h) moves on
    some key tiles and lags up to kRescaleSlack behind on others. Without a mask (the scale
    folded into the exponent) and with the ramp as a float bias."""
    g = seeded("rising", ramp)
    # 260 keys: the logits stay below ~80, where float32's own rounding of q.k is within the
    # float32 tolerance (test_large_logits covers larger ones)
    q, k, v = qkv(1, 2, 2, 70, 260, 16, torch.float64, g)
    q[..., 0] = 1.0
    keys = torch.arange(260, dtype=torch.float64)
    # forward only: keys this long make d q float32-noisy by itself, and the backward
    # recomputes P from the LSE, not from the running max
    check_all(q.to(dtype), (k + torch.stack([ramp * 4.0 * keys] + [keys * 0] * 15, -1)).to(dtype), v.to(dtype),
              grads=False)
    check_all(q.to(dtype), k.to(dtype), v.to(dtype), mask=(ramp * keys).expand(1, 2, 70, 260).to(dtype))


@pytest.mark.parametrize("heads", [(6, 2), (4, 1), (3, 3)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gqa(heads, is_causal):
    hq, hk = heads
    g = seeded("gqa", heads, is_causal)
    q, k, v = qkv(2, hq, hk, 40, 75, 16, torch.float64, g)
    check_all(q, k, v, is_causal=is_causal, enable_gqa=True)
    if hq != hk:
        ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=is_causal)
        assert_matches_reference(sdpa(q, k, v, enable_gqa=True, is_causal=is_causal), ref)
    check_all(q.float(), k.float(), v.float(), is_causal=is_causal, enable_gqa=True)
    bias = randn((1, hq, 40, 75), g, torch.float64)  # per-query-head bias with its gradient
    check_all(q, k, v, mask=bias, is_causal=is_causal, enable_gqa=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noncontiguous_views(dtype):
    g = seeded("views", str(dtype))
    b, l, h, d = 2, 67, 3, 40
    q = randn((b, l, h, d), g, dtype).transpose(1, 2)
    k = randn((b, l + 9, h, d), g, dtype).transpose(1, 2)
    v = randn((b, l + 9, 2 * h, d), g, dtype)[:, :, ::2].transpose(1, 2)  # head stride 2*d
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    mask = randn((1, h, l, l + 9), g, dtype)
    check_all(q, k, v, mask=mask)
    out = sdpa(q, k, v)
    assert out.transpose(1, 2).is_contiguous()  # (B, L, H, D) layout kept: free reshape in MHA


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cpu(dtype):
    g = seeded("half", str(dtype))
    q, k, v = qkv(2, 2, 2, 70, 90, 64, dtype, g)
    mask = randn((2, 1, 70, 90), g, dtype)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    mask.requires_grad_()
    out = sdpa(*leaves, attn_mask=mask, is_causal=False)
    tq, tk, tv, tm = (t.detach().clone().requires_grad_() for t in (q, k, v, mask))
    tout = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm)
    rq, rk, rv, rm = (t.detach().double().requires_grad_() for t in (q, k, v, mask))
    ref, _ = attention_ref(rq, rk, rv, mask=rm)
    assert_matches_reference(out, ref, tout, what="out")
    dout = randn(out.shape, g, dtype)
    got = torch.autograd.grad(out, leaves + [mask], dout)
    base = torch.autograd.grad(tout, [tq, tk, tv, tm], dout)
    want = torch.autograd.grad(ref, [rq, rk, rv, rm], dout.double())
    for name, a, t, r in zip(("dq", "dk", "dv", "dmask"), got, base, want):
        assert_matches_reference(a, r, t, what=name)


VARLEN_LENS = [([0, 1, 37, 70, 5], [3, 0, 50, 70, 1]), ([64], [64]), ([1, 1], [1, 129])]


@pytest.mark.parametrize("lens", VARLEN_LENS, ids=["uneven", "one", "short"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_varlen(lens, is_causal, dtype):
    lq, lk = lens
    g = seeded("varlen", tuple(lq), tuple(lk), is_causal, str(dtype))
    hq, hk, d = 4, 2, 24
    cu_q = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), dtype=torch.int32)
    q = randn((int(cu_q[-1]), hq, d), g, dtype).requires_grad_()
    k = randn((int(cu_k[-1]), hk, d), g, dtype).requires_grad_()
    v = randn((int(cu_k[-1]), hk, d), g, dtype).requires_grad_()
    out, lse = pyfastattn.varlen_attention(q, k, v, cu_q, cu_k, max(lq), max(lk), is_causal=is_causal,
                                           return_lse=True)
    rq, rk, rv = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = varlen_ref(rq, rk, rv, cu_q, cu_k, is_causal=is_causal)
    assert_matches_reference(out, ref)
    assert lse.shape == (hq, q.shape[0])
    assert_matches_reference(lse, ref_lse.float() if dtype == torch.float64 else ref_lse, what="lse")
    dout = randn(out.shape, g, dtype)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (rq, rk, rv), dout.double())
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        check_grad(a, b, name)


def test_backward_is_deterministic():
    g = seeded("det")
    q, k, v = (t.requires_grad_() for t in qkv(1, 4, 2, 200, 300, 32, torch.float32, g))
    mask = randn((1, 1, 200, 300), g).requires_grad_()
    out = sdpa(q, k, v, attn_mask=mask, enable_gqa=True)
    dout = torch.randn(out.shape, generator=g)
    first = torch.autograd.grad(out, (q, k, v, mask), dout, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v, mask), dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_batch_and_heads():
    q = torch.randn(0, 2, 5, 8)
    assert sdpa(q, q, q).shape == (0, 2, 5, 8)
    q = torch.randn(2, 2, 0, 8, requires_grad=True)
    k = torch.randn(2, 2, 5, 8, requires_grad=True)
    out = sdpa(q, k, k)
    assert out.shape == (2, 2, 0, 8)
    out.sum().backward()
    assert torch.equal(k.grad, torch.zeros_like(k))
