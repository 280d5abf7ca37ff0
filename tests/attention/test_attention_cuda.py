"""CUDA parity of the attention kernels (run on a GPU machine; skipped elsewhere).

float16/bfloat16 use FlashAttention's criterion: max |ours - ref| <= 2 max |torch same dtype - ref|
+ 1e-5, for the output and for every gradient; float32 uses DESIGN.md's float32 rule.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
from pyfastattn.testing import assert_matches_reference, wgmma_selftest
from _attention_reference import attention_ref, varlen_ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and pyfastattn.cuda_built()),
                       reason="needs a CUDA GPU and a CUDA build"),
]

sdpa = pyfastattn.scaled_dot_product_attention
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _leaf(t):
    return t.detach().clone().requires_grad_()


def run_case(b, hq, hk, lq, lk, d, dtype, *, mask_kind=None, mask_shape=None, is_causal=False,
             fully_masked_rows=False, key_ramp=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g)
    k = torch.randn(b, hk, lk, d, generator=g)
    # key_ramp: the logits grow by key_ramp per key (the running max moves, or lags, tile by
    # tile), through the float mask when there is one, else through k
    if key_ramp and mask_kind != "float":
        q[..., 0] = 1.0
        k[..., 0] += key_ramp * d**0.5 * torch.arange(lk)
    v = torch.randn(b, hk, lk, d, generator=g)
    dout = torch.randn(b, hq, lq, d, generator=g)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(mask_shape or (b, 1, lq, lk), generator=g) > 0.3
        if fully_masked_rows:
            mask[..., ::5, :] = False
    elif mask_kind == "float":
        mask = torch.randn(mask_shape or (b, hq, lq, lk), generator=g) + key_ramp * torch.arange(lk)
    dev = "cuda"
    ins = [t.to(dev, dtype) for t in (q, k, v)]
    m = None if mask is None else mask.to(dev) if mask.dtype == torch.bool else mask.to(dev, dtype)
    # ours
    leaves = [_leaf(t) for t in ins]
    m_ours = _leaf(m) if m is not None and m.is_floating_point() else m
    out = sdpa(*leaves, attn_mask=m_ours, is_causal=is_causal, enable_gqa=hq != hk)
    targets = leaves + ([m_ours] if m_ours is not None and m_ours.is_floating_point() else [])
    grads = torch.autograd.grad(out, targets, dout.to(dev, dtype))
    # float64 reference on the CPU
    rl = [t.detach().double().cpu().requires_grad_() for t in ins]
    rm = None if m is None else m.cpu() if m.dtype == torch.bool else m.detach().double().cpu().requires_grad_()
    ref, _ = attention_ref(*rl, mask=rm, is_causal=is_causal)
    rtargets = rl + ([rm] if rm is not None and rm.is_floating_point() else [])
    rgrads = torch.autograd.grad(ref, rtargets, dout.double())
    # torch in the same dtype (math backend handles every mask); fully masked rows give NaN there
    tl = [_leaf(t) for t in ins]
    tm = _leaf(m) if m is not None and m.is_floating_point() else m
    tk, tv = tl[1], tl[2]
    if hq != hk:
        tk, tv = tk.repeat_interleave(hq // hk, 1), tv.repeat_interleave(hq // hk, 1)
    tout = F.scaled_dot_product_attention(tl[0], tk, tv, attn_mask=tm, is_causal=is_causal)
    ttargets = tl + ([tm] if tm is not None and tm.is_floating_point() else [])
    tgrads = torch.autograd.grad(tout, ttargets, dout.to(dev, dtype))
    clean = lambda t: torch.nan_to_num(t, nan=0.0)
    assert torch.isfinite(out).all()
    base = None if dtype == torch.float32 else clean(tout)
    assert_matches_reference(out, ref, base, what="out")
    # float32: a gradient that is exactly 0 in exact arithmetic (one visible key makes dq = 0)
    # comes out as rounding noise of O(1) terms, ~1e-6 on a GPU (seen on an H100)
    atol = 1e-5 if dtype == torch.float32 else 1e-7
    for name, a, r, t in zip(("dq", "dk", "dv", "dmask"), grads, rgrads, tgrads):
        assert torch.isfinite(a).all(), name
        assert_matches_reference(a, r, None if dtype == torch.float32 else clean(t), what=name, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1, 8, 32, 40, 64, 80, 96, 128, 256])
@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_head_dims(dtype, d, is_causal):
    run_case(2, 3, 3, 77, 130, d, dtype, is_causal=is_causal, seed=d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens", [(1, 1), (1, 300), (300, 1), (129, 257), (1000, 1000)])
def test_cuda_lengths(dtype, lens):
    run_case(1, 2, 2, lens[0], lens[1], 64, dtype, is_causal=lens[0] == lens[1], seed=sum(lens))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,shape", [("bool", (2, 1, 1, 90)), ("bool", (2, 3, 70, 90)), ("bool", (70, 90)),
                                        ("float", (2, 3, 70, 90)), ("float", (1, 3, 70, 90)),
                                        ("float", (2, 1, 1, 90)), ("float", (70, 90))])
def test_cuda_masks(dtype, kind, shape):
    run_case(2, 3, 3, 70, 90, 64, dtype, mask_kind=kind, mask_shape=shape, seed=len(shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_fully_masked_rows_and_gqa(dtype):
    run_case(2, 6, 2, 70, 90, 128, dtype, mask_kind="bool", fully_masked_rows=True)
    run_case(2, 8, 1, 100, 100, 64, dtype, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,ramp", [(None, 0.05), ("float", 0.05), ("float", 0.3)])
def test_cuda_rising_logits(dtype, kind, ramp):
    """The lazy running max (attention_math.h): rescaled on some tiles, up to kRescaleSlack
    behind on others; through k (the scale folded into the exponent) and through a bias.
    260 keys keep the logits below ~80, where float32's own rounding of q.k (and of d q with k
    this large) stays within the float32 tolerance, as in the CPU test_rising_logits."""
    run_case(1, 2, 2, 70, 260, 64, dtype, mask_kind=kind, key_ramp=ramp, seed=7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [96, 128])
@pytest.mark.parametrize("key_tile", ["64", "32"])
def test_cuda_forward_key_tiles(dtype, d, key_tile, monkeypatch):
    """The unmasked D = 96 / 128 forward with 64-key tiles (default) and with 32-key tiles
    (PYFASTATTN_ATTN_FWD_KEY_TILE, read at every launch): whole tiles, a partial last tile,
    causal diagonals and the lazy max moving on some tiles."""
    monkeypatch.setenv("PYFASTATTN_ATTN_FWD_KEY_TILE", key_tile)
    run_case(2, 2, 2, 200, 333, d, dtype, key_ramp=0.05, seed=11)
    run_case(1, 2, 1, 257, 257, d, dtype, is_causal=True, seed=12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [40, 64, 80, 128])
def test_cuda_wgmma(dtype, d, monkeypatch):
    """The sm_90a warpgroup-MMA forward and one-pass backward, opt-in with
    PYFASTATTN_ATTN_FWD_WGMMA=1 and PYFASTATTN_ATTN_BWD_WGMMA=1 (read at every launch; on other
    GPUs, or a build without sm_90a code, the request runs the mma.sync kernels, which this then
    checks again): whole and partial 128-row / 128-key blocks, causal diagonals inside them,
    GQA, padded head dims (40 -> 64, 80 -> 96 -> 128), the lazy max moving, float (with its gradient, dMask from
    the key pass) and bool masks, (B, L, H, D) views and varlen."""
    if torch.cuda.get_device_capability() == (9, 0) and "90a" in pyfastattn.BUILD_INFO["cuda_archs"]:
        assert pyfastattn._C.attention.wgmma_available(), "sm_90a build on an sm_90 GPU: wgmma expected"
    monkeypatch.setenv("PYFASTATTN_ATTN_FWD_WGMMA", "1")
    monkeypatch.setenv("PYFASTATTN_ATTN_BWD_WGMMA", "1")
    run_case(2, 2, 2, 200, 333, d, dtype, key_ramp=0.05, seed=21)
    run_case(1, 4, 2, 257, 257, d, dtype, is_causal=True, seed=22)
    # with a mask: 64-key tiles, a tile above the first warpgroup's causal diagonal
    run_case(1, 2, 2, 150, 200, d, dtype, mask_kind="float", is_causal=True, seed=23)
    run_case(2, 2, 1, 100, 170, d, dtype, mask_kind="bool", mask_shape=(2, 1, 1, 170), seed=24)
    if d == 64:
        test_cuda_noncontiguous_views(dtype)
        for is_causal in (False, True):
            test_cuda_varlen(dtype, is_causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_wgmma_primitives(dtype):
    """Each warpgroup-MMA operand form the sm_90a kernels use, alone: one exact product of small
    integers per form (pyfastattn.testing.wgmma_selftest). When test_cuda_wgmma fails, this
    names the form at fault."""
    if not pyfastattn._C.attention.wgmma_available():
        pytest.skip("needs an sm_90 GPU and a build with sm_90a code")
    wrong = wgmma_selftest(dtype)
    assert len(wrong) == len(pyfastattn._C.attention.wgmma_selftest_cases())
    assert not any(wrong.values()), {name: f"{n} of the products' elements wrong" for name, n in wrong.items() if n}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_large_logits(dtype):
    g = torch.Generator().manual_seed(5)
    q = (torch.randn(1, 2, 64, 64, generator=g) * 30).cuda().to(dtype)
    k, v = (torch.randn(1, 2, 64, 64, generator=g).cuda().to(dtype) for _ in range(2))
    bias = (1e4 * (torch.rand(1, 2, 64, 64, generator=g) > 0.5).float()).cuda().to(dtype)
    out = sdpa(q, k, v, attn_mask=bias)
    ref, _ = attention_ref(q.cpu(), k.cpu(), v.cpu(), mask=bias.cpu())
    base = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.isfinite(out).all()
    err = (out.double().cpu() - ref).abs().max()
    assert err <= 2 * (base.double().cpu() - ref).abs().max() + 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_noncontiguous_views(dtype):
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 100, 4, 64, generator=g).cuda().to(dtype).transpose(1, 2) for _ in range(3))
    out = sdpa(q, k, v)
    ref, _ = attention_ref(q.cpu(), k.cpu(), v.cpu())
    assert_matches_reference(out, ref, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_varlen(dtype, is_causal):
    lens_q, lens_k = [0, 1, 37, 200, 5], [3, 0, 50, 180, 1]
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(int(cu_q[-1]), 4, 64, generator=g).cuda().to(dtype).requires_grad_()
    k = torch.randn(int(cu_k[-1]), 2, 64, generator=g).cuda().to(dtype).requires_grad_()
    v = torch.randn(int(cu_k[-1]), 2, 64, generator=g).cuda().to(dtype).requires_grad_()
    out = pyfastattn.varlen_attention(q, k, v, cu_q.cuda(), cu_k.cuda(), 200, 180, is_causal=is_causal)
    rq, rk, rv = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    ref, _ = varlen_ref(rq, rk, rv, cu_q, cu_k, is_causal=is_causal)
    # same-dtype baseline: the reference rounded to dtype per sequence is not torch's own, so use
    # our CPU float32 kernel's error at twice the dtype's epsilon as the floor
    tol = 4 * torch.finfo(dtype).eps * float(ref.abs().max()) + 1e-5
    assert (out.double().cpu() - ref).abs().max() <= tol
    dout = torch.randn(out.shape, generator=g).cuda().to(dtype)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (rq, rk, rv), dout.double().cpu())
    for a, b in zip(got, want):
        assert (a.double().cpu() - b).abs().max() <= 8 * torch.finfo(dtype).eps * float(b.abs().max()) + 1e-4


def test_cuda_backward_deterministic():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 8, 500, 64, generator=g).cuda().half().requires_grad_() for _ in range(3))
    bias = torch.randn(1, 8, 500, 500, generator=g).cuda().half().requires_grad_()
    out = sdpa(q, k, v, attn_mask=bias)
    dout = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v, bias), dout, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v, bias), dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.fixture
def deterministic_mode():
    prev, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: torch's own cuBLAS calls in run_case
    yield
    torch.use_deterministic_algorithms(prev, warn_only=warn)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d,is_causal", [(64, False), (128, True), (40, False)])
def test_cuda_backward_two_pass(dtype, d, is_causal, deterministic_mode):
    """The float16/bfloat16 backward at head dims <= 64 runs one pass that adds dQ with float32
    atomics (the other tests); torch.use_deterministic_algorithms(True) selects the two-pass
    backward instead, which must match the reference too and repeat bitwise, with and without
    a bias that needs its gradient."""
    run_case(2, 4, 2, 150, 170, d, dtype, is_causal=is_causal, seed=13)
    run_case(2, 4, 2, 150, 170, d, dtype, mask_kind="float", is_causal=is_causal, seed=20)
    g = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(1, 4, 300, d, generator=g).cuda().to(dtype).requires_grad_() for _ in range(3))
    bias = torch.randn(1, 4, 300, 300, generator=g).cuda().to(dtype).requires_grad_()
    for mask in (None, bias):
        ins = (q, k, v) + ((mask,) if mask is not None else ())
        out = sdpa(q, k, v, attn_mask=mask, is_causal=is_causal)
        dout = torch.randn_like(out)
        first = torch.autograd.grad(out, ins, dout, retain_graph=True)
        second = torch.autograd.grad(out, ins, dout)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d,key_block", [(80, "64"), (96, "64"), (128, "128"), (128, "64")])
@pytest.mark.parametrize("mode", ["atomic", "pass"])
def test_cuda_backward_dq_modes(dtype, d, key_block, mode, monkeypatch):
    """Head dims 96 / 128 default to the two-pass backward; PYFASTATTN_ATTN_BWD_DQ=atomic runs
    the one-pass backward there too, =pass the two passes; at 128 the key pass takes blocks of
    128 keys (8 warps) or, with PYFASTATTN_ATTN_BWD_KEY_BLOCK=64, of 64 (4 warps). All must
    match, causal, GQA, a bias with its gradient and partial tiles included."""
    monkeypatch.setenv("PYFASTATTN_ATTN_BWD_DQ", mode)
    monkeypatch.setenv("PYFASTATTN_ATTN_BWD_KEY_BLOCK", key_block)
    run_case(2, 4, 2, 150, 170, d, dtype, seed=15)
    run_case(1, 2, 1, 257, 200, d, dtype, is_causal=True, seed=16)
    run_case(1, 2, 2, 200, 257, d, dtype, mask_kind="float", is_causal=True, seed=21)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("mode", ["atomic", "pass"])
def test_cuda_masked_backward_dq_modes(dtype, d, mode, monkeypatch):
    """With a mask, the one-pass backward reads it once and writes dMask itself: dS for each
    visited pair, zeros for the query tiles that causal masking skips. Both modes must match:
    a full bias with GQA and causal, a broadcast bias (its float32 dMask, summed afterwards,
    keeps the two passes), a bool mask with dead rows."""
    monkeypatch.setenv("PYFASTATTN_ATTN_BWD_DQ", mode)
    run_case(2, 4, 2, 150, 170, d, dtype, mask_kind="float", is_causal=True, seed=17)
    run_case(2, 3, 3, 70, 90, d, dtype, mask_kind="float", mask_shape=(2, 1, 1, 90), seed=18)
    run_case(2, 3, 3, 70, 90, d, dtype, mask_kind="bool", fully_masked_rows=True, seed=19)


def test_cuda_compile_and_opcheck():
    # distinct q, k, v: with one tensor in all three slots, eager and AOT autograd add the
    # three float16 gradients in different orders and differ by an ulp (seen on an H100)
    q, k, v = (torch.randn(2, 4, 65, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 4, 65, 65, device="cuda", dtype=torch.float16, requires_grad=True)
    f = lambda q, k, v, b: sdpa(q, k, v, attn_mask=b).float().square().sum()
    loss = torch.compile(f, fullgraph=True)(q, k, v, bias)
    torch.testing.assert_close(loss, f(q, k, v, bias), rtol=1e-2, atol=1e-2)
    torch.library.opcheck(torch.ops.pyfastattn.attention_forward.default,
                          (q, k, v, bias, None, None, 65, 65, 0.125, False))
