"""Property-based tests (hypothesis) of the norm family against the float64 reference:
random shapes (0, 1, non-multiples of 16), dtypes, strided/transposed views, weight/bias
present or not, forward and backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import pyfastattn
from pyfastattn.testing import assert_matches_reference

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@st.composite
def norm_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    inner = draw(st.lists(st.integers(1, 70), min_size=1, max_size=2))
    transpose = draw(st.booleans()) and len(lead) >= 2
    step = draw(st.sampled_from([1, 2]))
    seed = draw(st.integers(0, 2**31 - 1))
    op = draw(st.sampled_from(["layer_norm", "rms_norm", "add_layer_norm"]))
    affine = draw(st.booleans())
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    offset = draw(st.sampled_from([0.0, 5.0, -1e3]))
    return dtype, lead, inner, transpose, step, seed, op, affine, scale, offset


def _reference(op, x, r, w, b, inner_shape, sum_dtype=None):
    if op == "layer_norm":
        return (F.layer_norm(x, inner_shape, w, b),)
    if op == "rms_norm":
        return (F.rms_norm(x, inner_shape, w, 1e-6),)
    s = x + r
    if sum_dtype is not None:  # the op normalizes the sum as stored: round it (straight-through)
        s = s + (s.to(sum_dtype).to(s.dtype) - s).detach()
    return F.layer_norm(s, inner_shape, w, b), s


def _ours(op, x, r, w, b, inner_shape):
    if op == "layer_norm":
        return (pyfastattn.layer_norm(x, inner_shape, w, b),)
    if op == "rms_norm":
        return (pyfastattn.rms_norm(x, inner_shape, w, 1e-6),)
    return pyfastattn.add_layer_norm(x, r, w, b)


@given(norm_problem())
def test_norm_matches_reference(problem):
    dtype, lead, inner, transpose, step, seed, op, affine, scale, offset = problem
    if op == "add_layer_norm":
        inner = inner[-1:]
    inner_shape = tuple(inner)
    g = torch.Generator().manual_seed(seed)
    full_lead = list(lead)
    if full_lead:
        full_lead[0] *= step
    base = torch.randn(*full_lead, *inner, generator=g, dtype=torch.float64) * scale + offset
    x64 = base[::step] if full_lead else base
    if transpose:
        x64 = x64.transpose(0, 1)
    r64 = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    w64 = torch.randn(inner_shape, generator=g, dtype=torch.float64) if affine else None
    b64 = torch.randn(inner_shape, generator=g, dtype=torch.float64) if affine and op != "rms_norm" else None
    # the reference sees exactly the values the kernel sees: inputs rounded to dtype first
    # (in place, so x64 keeps its strides)
    for t in (x64, r64, w64, b64):
        if t is not None:
            t.copy_(t.to(dtype))
    grads = None

    def run(fn, cast):
        leaves = [None if t is None else cast(t).requires_grad_(True) for t in (x64, r64, w64, b64)]
        outs = fn(op, *leaves, inner_shape)
        nonlocal grads
        if grads is None:
            grads = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs]
        loss = sum((o.double() * gr).sum() for o, gr in zip(outs, grads))
        used = [t for t in leaves if t is not None and (op == "add_layer_norm" or t is not leaves[1])]
        return outs, (torch.autograd.grad(loss, used, allow_unused=True) if loss.requires_grad else ())

    def as_dtype(t):
        # keep x's strides: the kernels must read the view, not a copy
        out = torch.empty_strided(t.shape, t.stride(), dtype=dtype)
        out.copy_(t)
        return out

    ref_out, ref_grad = run(lambda *a: _reference(*a, sum_dtype=dtype), lambda t: t.clone())
    our_out, our_grad = run(_ours, as_dtype)
    same_out, same_grad = (None, None)
    # With 1 (RMS) or 2 (layer norm) elements per row, dx is a cancellation of O(1) terms
    # down to O(eps) (see tests/norm): judged against torch's own float32 error instead.
    n = 1
    for s in inner_shape:
        n *= s
    rel = n <= 2
    if dtype in (torch.float16, torch.bfloat16) or (rel and dtype == torch.float32):
        same_out, same_grad = run(_reference, as_dtype)
    for i, (o, ro) in enumerate(zip(our_out, ref_out)):
        assert_matches_reference(o, ro, same_out[i] if same_out else None, what=f"{op} out{i}")
    for i, (gr, rg) in enumerate(zip(our_grad, ref_grad)):
        if gr is None and rg is None:
            continue
        assert_matches_reference(gr, rg, same_grad[i] if same_grad else None, what=f"{op} grad{i}",
                                 relative_to_torch=rel and dtype == torch.float32)
