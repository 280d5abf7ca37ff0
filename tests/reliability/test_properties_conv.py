"""Property-based tests (hypothesis) of the conv family against float64 references:
conv2d (groups, stride, padding incl. 'same'/'valid', dilation), hex_conv2d (radius,
stride, groups), hex max/avg pooling (radius, stride) and indexed_conv (neighbour tables
with holes); random shapes (0, 1, odd sizes), dtypes, transposed/strided input views,
unbatched inputs; forward and every input gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import pyfastattn
import pyfastattn.hex as hx
from pyfastattn.testing import assert_matches_reference

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HALF = (torch.bfloat16, torch.float16)


def _view(t64: torch.Tensor, dtype, layout: str) -> torch.Tensor:
    """t64 as `dtype` (same values) through a non-contiguous view when asked."""
    if layout == "channels_last" and t64.dim() == 4:
        return t64.to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other row of a taller buffer
        big = torch.zeros(*t64.shape[:-2], 2 * t64.shape[-2], t64.shape[-1], dtype=dtype) \
            if t64.dim() >= 2 else None
        if big is not None:
            big[..., ::2, :] = t64
            return big[..., ::2, :]
    if layout == "transposed" and t64.dim() >= 2:
        return t64.transpose(-1, -2).to(dtype).contiguous().transpose(-1, -2)
    return t64.to(dtype)


def _check(ours, ref, inputs64, dtype, layout, seed):
    """ours(*inputs in dtype) vs ref(*float64 inputs): output and grads of the float inputs."""
    g = torch.Generator().manual_seed(seed)
    inputs64 = [t.to(dtype).double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in inputs64]

    def leaves(cast):
        return [cast(t, i).requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for i, t in enumerate(inputs64)]

    ref_in = leaves(lambda t, i: t.clone())
    our_in = leaves(lambda t, i: _view(t, dtype, layout) if i == 0 else t.to(dtype))
    ref_out = ref(*ref_in)
    out = ours(*our_in)
    assert out.dtype == dtype and out.shape == ref_out.shape
    dout = torch.randn(ref_out.shape, generator=g, dtype=torch.float64).to(dtype).double()
    diff = lambda xs: [t for t in xs if isinstance(t, torch.Tensor) and t.requires_grad]
    same, same_grads = None, None
    if dtype in HALF:
        t_in = leaves(lambda t, i: t.to(dtype))
        same = ref(*t_in)
        same_grads = torch.autograd.grad(same, diff(t_in), dout.to(dtype)) if same.numel() else None
    assert_matches_reference(out, ref_out, same, what="out")
    if out.numel() == 0:
        return
    got = torch.autograd.grad(out, diff(our_in), dout.to(dtype))
    want = torch.autograd.grad(ref_out, diff(ref_in), dout)
    for i, (a, w) in enumerate(zip(got, want)):
        assert_matches_reference(a, w, same_grads[i] if same_grads else None, what=f"grad {i}",
                                 atol=1e-7 if dtype == torch.float64 else 1e-5)


@st.composite
def conv2d_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding == "same":
        stride = (1, 1)
    pad = {"int": draw(st.integers(0, 3)), "pair": (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
           "same": "same", "valid": "valid"}[padding]
    n = draw(st.integers(0, 2))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    unbatched = draw(st.booleans()) and n == 1
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided", "transposed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, groups, cin, cout, kh, kw, stride, dil, pad, n, h, w, unbatched, bias, layout, seed


@given(conv2d_problem())
def test_conv2d_matches_reference(p):
    dtype, groups, cin, cout, kh, kw, stride, dil, pad, n, h, w, unbatched, bias, layout, seed = p
    pp = (0, 0) if pad in ("same", "valid") else ((pad, pad) if isinstance(pad, int) else pad)
    # the (dilated) kernel must fit the padded input (else a clear error: the bad-input sweep)
    assume(pad == "same" or (h + 2 * pp[0] >= dil[0] * (kh - 1) + 1 and w + 2 * pp[1] >= dil[1] * (kw - 1) + 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g, dtype=torch.float64)
    x = x[0] if unbatched else x
    wt = torch.randn(cout, cin // groups, kh, kw, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    fn = lambda conv: lambda x, wt, b: conv(x, wt, b, stride=stride, padding=pad, dilation=dil, groups=groups)
    _check(fn(pyfastattn.conv2d), fn(F.conv2d), [x, wt, b], dtype, layout, seed)


@st.composite
def hex_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    op = draw(st.sampled_from(["conv", "max", "avg"]))
    radius = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 2))
    n = draw(st.integers(0, 2))
    r, q = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, op, radius, stride, groups, cin, cout, n, r, q, bias, layout, seed


def _patches(x, k, fill):
    """(N, C, T, R, Q): the hexagon's cells around every cell, `fill` outside the grid."""
    N, C, R, Q = x.shape
    u = F.unfold(F.pad(x, (k, k, k, k), value=fill), 2 * k + 1).reshape(N, C, (2 * k + 1) ** 2, R, Q)
    return u[:, :, hx.hex_mask(k).reshape(-1)]


@given(hex_problem())
def test_hex_ops_match_reference(p):
    dtype, op, k, s, groups, cin, cout, n, r, q, bias, layout, seed = p
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, r, q, generator=g, dtype=torch.float64)
    if op == "conv":
        assume(2 * k + 1 <= max(r, q))
        wt = torch.randn(cout, cin // groups, hx.tap_count(k), generator=g, dtype=torch.float64)
        b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
        ours = lambda x, wt, b: pyfastattn.hex_conv2d(x, wt, b, stride=s, groups=groups)
        ref = lambda x, wt, b: F.conv2d(x, hx.hex_to_square_weight(wt), b, stride=s, padding=k, groups=groups)
        _check(ours, ref, [x, wt, b], dtype, layout, seed)
    elif op == "max":
        ref = lambda x: _patches(x, k, float("-inf")).max(dim=2).values[..., ::s, ::s]
        _check(lambda x: pyfastattn.hex_max_pool2d(x, k, s), ref, [x], dtype, layout, seed)
    else:
        def ref(x):
            total = _patches(x, k, 0.0).sum(dim=2)
            count = _patches(torch.ones_like(x), k, 0.0).sum(dim=2)
            return (total / count)[..., ::s, ::s]
        _check(lambda x: pyfastattn.hex_avg_pool2d(x, k, s), ref, [x], dtype, layout, seed)


@st.composite
def indexed_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n, cin, cout = draw(st.integers(0, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p, p_out, t = draw(st.integers(1, 20)), draw(st.integers(0, 20)), draw(st.integers(0, 8))
    holes = draw(st.sampled_from([0.0, 0.3, 1.0]))
    int64 = draw(st.booleans())
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, n, cin, cout, p, p_out, t, holes, int64, bias, layout, seed


@given(indexed_problem())
def test_indexed_conv_matches_reference(pr):
    dtype, n, cin, cout, p, p_out, t, holes, int64, bias, layout, seed = pr
    g = torch.Generator().manual_seed(seed)
    nb = torch.randint(0, p, (p_out, t), generator=g)
    nb[torch.rand(p_out, t, generator=g) < holes] = -1
    nb = nb if int64 else nb.to(torch.int32)
    x = torch.randn(n, cin, p, generator=g, dtype=torch.float64)
    wt = torch.randn(cout, cin, t, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None

    def ref(x, wt, b):
        idx = nb.to(torch.int64)
        cols = x[:, :, idx.clamp(min=0)] * (idx >= 0).to(x.dtype)
        y = torch.einsum("nipt,oit->nop", cols, wt)
        return y if b is None else y + b[None, :, None]
    _check(lambda x, wt, b: pyfastattn.indexed_conv(x, wt, nb, b), ref, [x, wt, b], dtype, layout, seed)
