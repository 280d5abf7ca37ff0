"""pyfastattn.nn.MultiheadAttention against torch's, and bad input for the attention API."""
from __future__ import annotations

import pytest
import torch

import pyfastattn
from pyfastattn.testing import assert_matches_reference

sdpa = pyfastattn.scaled_dot_product_attention


def _pair(embed, heads, bias=True, kdim=None, vdim=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True,
                                      dtype=dtype)
    with torch.no_grad():  # non-zero biases, so that loading them is tested
        for p in ref.parameters():
            p.normal_()
    ours = pyfastattn.nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True,
                                            dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "bool_attn", "float_attn", "both", "per_head"])
def test_mha_self_attention_matches_torch(bias, masks):
    ref, ours = _pair(32, 4, bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 21, 32, generator=g, dtype=torch.float64)
    kpm = attn = None
    if masks in ("padding", "both"):
        kpm = torch.zeros(3, 21, dtype=torch.bool)
        kpm[0, 15:] = True
        kpm[2, 3:9] = True
    if masks in ("bool_attn", "both"):
        attn = torch.rand(21, 21, generator=g) > 0.7
        attn.fill_diagonal_(False)  # every row keeps a key (torch would give NaN otherwise)
    if masks == "float_attn":
        attn = torch.randn(21, 21, generator=g, dtype=torch.float64)
    if masks == "per_head":
        attn = torch.randn(3 * 4, 21, 21, generator=g, dtype=torch.float64)
    want, _ = ref(x, x, x, key_padding_mask=kpm, attn_mask=attn, need_weights=False)
    got, weights = ours(x, x, x, key_padding_mask=kpm, attn_mask=attn, need_weights=False)
    assert weights is None
    assert_matches_reference(got, want)


def test_mha_cross_attention_kdim_vdim_causal_and_grad():
    ref, ours = _pair(24, 3, kdim=10, vdim=7)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 13, 24, generator=g, dtype=torch.float64)
    k = torch.randn(2, 13, 10, generator=g, dtype=torch.float64)
    v = torch.randn(2, 13, 7, generator=g, dtype=torch.float64)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(13, dtype=torch.float64)
    want, _ = ref(q, k, v, attn_mask=causal, is_causal=True, need_weights=False)
    got, _ = ours(q, k, v, attn_mask=causal, is_causal=True)
    assert_matches_reference(got, want)
    want.square().sum().backward()
    got.square().sum().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_matches_reference(a.grad, b.grad, what=name)


def test_mha_float32_and_unbatched():
    ref, ours = _pair(16, 2, dtype=torch.float32)
    x = torch.randn(9, 16)
    want, _ = ref(x, x, x, need_weights=False)
    got, _ = ours(x, x, x)
    ref64 = ref.double()
    want64, _ = ref64(x.double(), x.double(), x.double(), need_weights=False)
    assert got.shape == want.shape
    assert_matches_reference(got, want64)


def test_mha_rejects_what_it_cannot_do():
    _, ours = _pair(16, 2)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="need_weights"):
        ours(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="key_padding_mask"):
        ours(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        pyfastattn.nn.MultiheadAttention(16, 2, add_bias_kv=True)
    with pytest.raises(NotImplementedError, match="dropout"):
        pyfastattn.nn.MultiheadAttention(16, 2, dropout=0.1)
    with pytest.raises(ValueError, match="num_heads"):
        pyfastattn.nn.MultiheadAttention(10, 3)


# ------------------------------------------------------------------ bad input

def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: sdpa(_t(2, 4, 8), _t(2, 4, 8), _t(2, 4, 8)), ValueError, "query must have 4 dimensions"),
    (lambda: sdpa(_t(1, 2, 4, 300), _t(1, 2, 4, 300), _t(1, 2, 4, 300)), ValueError, "head dim"),
    (lambda: sdpa(_t(1, 4, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8)), ValueError, "enable_gqa"),
    (lambda: sdpa(_t(1, 3, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), enable_gqa=True), ValueError, "multiple"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8, dtype=torch.float64), _t(1, 2, 4, 8)), TypeError, "dtype"),
    (lambda: sdpa(_t(1, 2, 4, 8, dtype=torch.int32), _t(1, 2, 4, 8), _t(1, 2, 4, 8)), TypeError, "query"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), dropout_p=0.1), NotImplementedError,
     "dropout_p"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 5, 8)), ValueError, "value"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 6)), ValueError, "value"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 7), _t(1, 2, 4, 7)), ValueError, "key"),
    (lambda: sdpa(_t(2, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8)), ValueError, "batch"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), attn_mask=_t(1, 3, 4, 4)), ValueError,
     "attn_mask"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), attn_mask=_t(1, 1, 1, 4, 4)), ValueError,
     "attn_mask"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), attn_mask=_t(4, 4, dtype=torch.float64)),
     TypeError, "attn_mask"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), attn_mask=[[1.0]]), TypeError, "attn_mask"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), scale="a"), TypeError, "scale"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8), is_causal=1), TypeError, "is_causal"),
    (lambda: sdpa(_t(1, 2, 4, 16)[..., ::2], _t(1, 2, 4, 8), _t(1, 2, 4, 8)), ValueError, "contiguous"),
    (lambda: sdpa(_t(1, 2, 4, 8), _t(1, 2, 4, 8), _t(1, 2, 4, 8).to("meta")), RuntimeError, "device"),
    (lambda: sdpa(_t(1, 2, 4, 8), None, _t(1, 2, 4, 8)), TypeError, "key"),
])
def test_sdpa_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _cu(*vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype)


VQ = lambda n=6: _t(n, 2, 8)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 4, 2, 6), _cu(0, 2, 4, 6), 4, 4), ValueError,
     "sorted"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 2, 6), _cu(0, 2, 6), 3, 6), ValueError,
     "max_seqlen"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 2, 5), _cu(0, 2, 6), 6, 6), ValueError,
     "packed tokens"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(1, 2, 6), _cu(0, 2, 6), 6, 6), ValueError,
     r"\[0\] must be 0"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 2, 6, dtype=torch.int64), _cu(0, 2, 6), 6, 6),
     TypeError, "cu_seqlens_q"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 2, 6), _cu(0, 6), 6, 6), ValueError,
     "batch"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 2, 6), _cu(0, 2, 6), 6.0, 6), TypeError,
     "max_seqlen_q"),
    (lambda: pyfastattn.varlen_attention(VQ(), VQ(), VQ(), _cu(0, 2, 6), _cu(0, 2, 6).to("meta"), 6, 6),
     RuntimeError, "device"),
    (lambda: pyfastattn.varlen_attention(_t(6, 3, 8), VQ(), VQ(), _cu(0, 2, 6), _cu(0, 2, 6), 6, 6),
     ValueError, "multiple"),
    (lambda: pyfastattn.varlen_attention(_t(1, 6, 2, 8), VQ(), VQ(), _cu(0, 6), _cu(0, 6), 6, 6),
     ValueError, "query must have 3 dimensions"),
])
def test_varlen_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cuda_tensors_without_cuda_build_raise_clearly():
    if pyfastattn.cuda_built():
        pytest.skip("this build has CUDA")
    q = torch.empty(1, 1, 1, 8, device="meta")
    with pytest.raises(RuntimeError):
        sdpa(q, q, q)


@pytest.mark.parametrize("dq_mode,wgmma,expected", [
    (None, None, {64: True, 96: False, 128: False, 256: False}),
    ("atomic", None, {64: True, 96: True, 128: True, 256: False}),
    ("pass", None, {64: False, 96: False, 128: False, 256: False}),
    (None, "1", {64: True, 96: True, 128: True, 256: False}),  # the wgmma one pass needs dq_accum
    ("pass", "1", {64: False, 96: False, 128: False, 256: False}),
])
def test_one_pass_backward_selection(dq_mode, wgmma, expected, monkeypatch):
    """Which CUDA backward the Python layer asks for (it allocates the one pass's dQ workspace):
    PYFASTATTN_ATTN_BWD_DQ, PYFASTATTN_ATTN_BWD_WGMMA, and deterministic mode over both."""
    from pyfastattn.attention import _one_pass_backward
    for name, value in (("PYFASTATTN_ATTN_BWD_DQ", dq_mode), ("PYFASTATTN_ATTN_BWD_WGMMA", wgmma)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert {d: _one_pass_backward(d) for d in expected} == expected
    prior = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not any(_one_pass_backward(d) for d in expected)
    finally:
        torch.use_deterministic_algorithms(prior)
