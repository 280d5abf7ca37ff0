"""Backend parity: every model gives the same outputs and parameter gradients on the
pyfastattn kernels as on torch.nn.functional, in float64 and float32.

Judged against the torch backend in float64 (DESIGN.md "Numerics"): float64 must agree to
1e-10 of the output's scale (1e-9 for gradients, which pass through deeper chains); float32
must meet the float32 rule or, for a whole network, be no worse than 4x torch's own float32
error against that reference (the FlashAttention criterion, applied model-wide).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pyfastattn.testing import error_report
from python_models import airshower as A
from python_models import ops
from python_models.airshower_sim import simulate
from python_models.transformer import ATTN_OPS, SeqTask, Transformer
from python_models.vit import ViT

def _events(seed):
    return simulate(6, seed=seed, traces=True, n_bins=40)


def _transformer(seed, pre_norm):
    task = SeqTask("sort", max_len=7)
    src, tgt = task.sample(5, seed=seed)

    def build(backend):
        return Transformer(task.vocab, dim=32, heads=4, layers=2, hidden=48, pre_norm=pre_norm,
                           max_len=16, backend=backend)
    return build, (src, task.decoder_input(tgt))


def _vit(seed):
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))

    def build(backend):
        return ViT(dim=32, heads=4, layers=2, hidden=48, backend=backend)
    return build, (x,)


def _hexcnn(seed, traces):
    ev = _events(seed)
    inputs = (A.station_features(ev),) + ((A.trace_features(ev),) if traces else ())

    def build(backend):
        return A.HexCNN(width=8, blocks=2, hidden=16, trace_bins=40 if traces else None,
                        trace_channels=6, backend=backend)
    return build, inputs


def _shower_transformer(seed, traces):
    tok, xy, valid, *tr = A.station_tokens(_events(seed))
    inputs = (tok, xy, valid) + ((tr[0],) if traces else ())

    def build(backend):
        return A.ShowerTransformer(dim=16, heads=2, layers=2, hidden=24, pair_hidden=8,
                                   trace_bins=40 if traces else None, trace_dim=8, backend=backend)
    return build, inputs


CASES = {
    "transformer-prenorm": lambda s: _transformer(s, True),
    "transformer-postnorm": lambda s: _transformer(s, False),
    "vit": _vit,
    "hexcnn": lambda s: _hexcnn(s, False),
    "hexcnn-traces": lambda s: _hexcnn(s, True),
    "shower-transformer": lambda s: _shower_transformer(s, False),
    "shower-transformer-traces": lambda s: _shower_transformer(s, True),
}


def _run(model, inputs, dtype, seed):
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    out = model(*inputs)
    # a fixed random projection of the output, so every output element gets a gradient
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    (out * w).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), grads


def _close(out, ref, base, what, dtype, floor=0.0):
    """`floor`: the largest gradient in the model; a tensor whose exact gradient is ~0 (e.g.
    through a softmax's shift invariance) is judged on that scale, not on its own."""
    rep = error_report(out, ref)
    if dtype == torch.float64:
        tol = (1e-10 if what == "output" else 1e-9) * max(rep["scale"], floor) + 1e-12
        assert rep["max_abs"] <= tol, f"{what}: {rep} > {tol:.3g}"
        return
    ok32 = (rep["rel_l2"] <= 1e-5 and rep["max_abs"] <= 1e-4 * rep["scale"] + 1e-7) \
        or rep["max_abs"] <= 1e-6 * floor
    base_rep = error_report(base, ref)
    ok_rel = rep["max_abs"] <= 4 * base_rep["max_abs"] + 1e-6 * (rep["scale"] + 1e-3)
    assert ok32 or ok_rel, f"{what}: {rep}; torch float32 itself: {base_rep}"


def _check_parity(pair, case, seed):
    seed %= 2**31
    build, inputs = CASES[case](seed)
    torch_model, pfa_model = pair(build, seed)
    ref_out, ref_grads = _run(torch_model, inputs, torch.float64, seed)
    assert all(g.abs().sum() > 0 for g in ref_grads.values()), "some parameter gets no gradient"
    out64, grads64 = _run(pfa_model, inputs, torch.float64, seed)
    _close(out64, ref_out, None, "output", torch.float64)
    floor = max(float(g.abs().max()) for g in ref_grads.values())
    for n in ref_grads:
        _close(grads64[n], ref_grads[n], None, f"grad {n}", torch.float64, floor)
    base_out, base_grads = _run(torch_model, inputs, torch.float32, seed)
    out32, grads32 = _run(pfa_model, inputs, torch.float32, seed)
    _close(out32, ref_out, base_out, "output", torch.float32)
    for n in ref_grads:
        _close(grads32[n], ref_grads[n], base_grads[n], f"grad {n}", torch.float32, floor)


NEEDS = {
    "transformer-prenorm": ATTN_OPS, "transformer-postnorm": ATTN_OPS, "vit": ATTN_OPS + ("conv2d",),
    "hexcnn": ("hex_conv2d",), "hexcnn-traces": ("hex_conv2d", "conv2d"),
    "shower-transformer": ATTN_OPS, "shower-transformer-traces": ATTN_OPS,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_parity(case, pair, require_kernels, seed):
    require_kernels(*NEEDS[case])
    _check_parity(pair, case, seed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_parity_landed_kernels(case, pair, partial_pyfastattn, seed):
    """The same check with the kernels that have landed (others substituted by torch's)."""
    if not any(n in partial_pyfastattn for n in NEEDS[case]):
        pytest.skip("every kernel this model needs has landed: test_backend_parity covers it")
    _check_parity(pair, case, seed)


def test_missing_kernel_message():
    missing = ops.missing_kernels(["sdpa"])
    if not missing:
        pytest.skip("attention kernel present")
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):
        Transformer(10, backend="pyfastattn")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        ViT(backend="jax")


# ---------------------------------------------------------------- the torch backend's hex ops

def _hex_conv_loop(x, w, b, stride):
    k = ops.hex_radius(w.shape[-1])
    N, C, R, Q = x.shape
    out = torch.zeros(N, w.shape[0], R, Q, dtype=x.dtype)
    for t, (dr, dq) in enumerate(ops.hex_taps(k)):
        shifted = torch.zeros_like(x)
        r0, r1 = max(0, -dr), min(R, R - dr)
        q0, q1 = max(0, -dq), min(Q, Q - dq)
        shifted[..., r0:r1, q0:q1] = x[..., r0 + dr:r1 + dr, q0 + dq:q1 + dq]
        out += torch.einsum("oc,ncrq->norq", w[..., t], shifted)
    return (out + b[None, :, None, None])[..., ::stride, ::stride]


@pytest.mark.parametrize("k,stride,size", [(1, 1, (5, 7)), (2, 2, (9, 6)), (1, 2, (1, 4))])
def test_torch_hex_conv_matches_tap_loop(k, stride, size):
    g = torch.Generator().manual_seed(k * 10 + stride)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    T = 3 * k * (k + 1) + 1
    w = torch.randn(4, 3, T, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    assert len(ops.hex_taps(k)) == T
    got = ops.get_ops("torch").hex_conv2d(x, w, b, stride=stride)
    torch.testing.assert_close(got, _hex_conv_loop(x, w, b, stride), rtol=0, atol=1e-12)


def test_torch_hex_max_pool_matches_loop():
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = ops.get_ops("torch").hex_max_pool2d(x, radius=1, stride=2)
    assert got.shape == (2, 3, 4, 3)
    for r in range(0, 7, 2):
        for q in range(0, 6, 2):
            cells = [(r + dr, q + dq) for dr, dq in ops.hex_taps(1) if 0 <= r + dr < 7 and 0 <= q + dq < 6]
            want = torch.stack([x[..., a, c] for a, c in cells]).amax(0)
            torch.testing.assert_close(got[..., r // 2, q // 2], want, rtol=0, atol=0)


def test_hexagon_mask_and_taps_agree():
    m = ops.axial_hexagon_mask(2)
    assert int(m.sum()) == 19 == len(ops.hex_taps(2))
    assert set(ops.hex_taps(2)) == {(r - 2, q - 2) for r, q in zip(*np.nonzero(m.numpy()))}
