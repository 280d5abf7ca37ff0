"""The bad-input sweep's cases: for every public function and module, each argument fed the
wrong thing (dtype, device, rank, shape, strides, sizes, NaN/Inf, indices, None, ...).

A case either must raise TypeError/ValueError/RuntimeError/NotImplementedError whose message
names the argument (`names`), or must return the documented result (`check_result` returns
"ok" or says what is wrong). Loaded by bad_input_child.py in a subprocess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import pyfastattn


@dataclass
class Case:
    op: str
    id: str
    call: Callable[[], object]
    names: tuple = ()                      # words, one of which the message must contain
    check_result: Optional[Callable[[object], str]] = None  # None: must raise


def _raise(op, what, call, *names):
    return Case(op, f"{op}: {what}", call, names)


def _returns(op, what, call, check):
    return Case(op, f"{op}: {what}", call, (), check)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def nan_propagates(out) -> str:
    out = _first(out)
    return "ok" if torch.isnan(out).any() else "NaN input gave no NaN output"


def empty_out(shape):
    def check(out):
        out = _first(out)
        return "ok" if tuple(out.shape) == tuple(shape) else f"empty input gave shape {tuple(out.shape)}"
    return check


def returns_something(out) -> str:
    return "ok" if out is not None else "returned None"


def grads_of(fn, *inputs):
    """Runs fn forward and backward with every input requiring grad; returns the grads."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = _first(fn(*leaves))
    return torch.autograd.grad(out.sum(), leaves, allow_unused=True)


def zero_grads(grads) -> str:
    return "ok" if all(g is None or not g.abs().sum() for g in grads) else "non-zero gradient"


def tensor_mutations(op, name, make_call, good: torch.Tensor, *, rank_fixed=True, strided="raise"):
    """Generic wrong things for a tensor argument; make_call(value) -> thunk.

    rank_fixed: a different rank must raise (False: leading batch dims are legal).
    strided: a non-contiguous last dim must "raise", or is "ok" (small parameters that are
    documented to be copied).
    """
    cases = [
        _raise(op, f"{name} int32", make_call(good.to(torch.int32)), name, "dtype"),
        _raise(op, f"{name} bool", make_call(good.bool()), name, "dtype"),
        _raise(op, f"{name} complex", make_call(good.to(torch.complex64)), name, "dtype"),
        _raise(op, f"{name} list", make_call(good.tolist()), name),
        _raise(op, f"{name} numpy", make_call(good.numpy()), name),
        _raise(op, f"{name} meta device", make_call(good.to("meta")), name, "device"),
    ]
    if rank_fixed:
        cases.append(_raise(op, f"{name} extra dim", make_call(good.unsqueeze(0).unsqueeze(0)), name, "shape", "dim"))
        if good.dim() > 1:
            cases.append(_raise(op, f"{name} missing dim", make_call(good[0]), name, "shape", "dim"))
    if good.dim() >= 1 and good.shape[-1] > 1:
        wide = torch.cat([good, good], dim=-1)[..., ::2]
        if strided == "raise":
            cases.append(_raise(op, f"{name} strided last dim", make_call(wide), name, "contiguous"))
        else:
            cases.append(_returns(op, f"{name} strided last dim", make_call(wide), returns_something))
    return cases


def norm_cases():
    out = []
    x = torch.randn(4, 6, 16)
    w, b, r = torch.randn(16), torch.randn(16), torch.randn(4, 6, 16)
    ln = pyfastattn.layer_norm
    out += tensor_mutations("layer_norm", "input", lambda v: lambda: ln(v, (16,), w, b), x, rank_fixed=False)
    out += tensor_mutations("layer_norm", "weight", lambda v: lambda: ln(x, (16,), v, b), w, strided="ok")
    out += tensor_mutations("layer_norm", "bias", lambda v: lambda: ln(x, (16,), w, v), b, strided="ok")
    out += [
        _raise("layer_norm", "input None", lambda: ln(None, (16,)), "input"),
        _raise("layer_norm", "normalized_shape mismatch", lambda: ln(x, (15,)), "normalized_shape"),
        _raise("layer_norm", "normalized_shape too long", lambda: ln(x, (1, 4, 6, 16)), "normalized_shape"),
        _raise("layer_norm", "normalized_shape negative", lambda: ln(x, (-16,)), "normalized_shape"),
        _raise("layer_norm", "normalized_shape huge", lambda: ln(x, (2**62,)), "normalized_shape"),
        _raise("layer_norm", "normalized_shape float", lambda: ln(x, (16.0,)), "normalized_shape"),
        _raise("layer_norm", "normalized_shape None", lambda: ln(x, None), "normalized_shape"),
        _raise("layer_norm", "eps negative", lambda: ln(x, (16,), eps=-1e-5), "eps"),
        _raise("layer_norm", "eps nan", lambda: ln(x, (16,), eps=math.nan), "eps"),
        _raise("layer_norm", "eps string", lambda: ln(x, (16,), eps="1e-5"), "eps"),
        _raise("layer_norm", "weight float64 vs float32 input", lambda: ln(x, (16,), w.double()), "weight"),
        _returns("layer_norm", "NaN input", lambda: ln(torch.full_like(x, math.nan), (16,)), nan_propagates),
        _returns("layer_norm", "Inf input", lambda: ln(torch.full_like(x, math.inf), (16,)), nan_propagates),
        _returns("layer_norm", "empty batch", lambda: ln(torch.empty(0, 6, 16), (16,), w, b), empty_out((0, 6, 16))),
        _returns("layer_norm", "float64", lambda: ln(x.double(), (16,)), lambda o: "ok"),
    ]
    rms = pyfastattn.rms_norm
    out += tensor_mutations("rms_norm", "input", lambda v: lambda: rms(v, (16,), w), x, rank_fixed=False)
    out += tensor_mutations("rms_norm", "weight", lambda v: lambda: rms(x, (16,), v), w, strided="ok")
    out += [
        _raise("rms_norm", "eps zero", lambda: rms(x, (16,), w, 0.0), "eps"),
        _raise("rms_norm", "normalized_shape mismatch", lambda: rms(x, (6, 15)), "normalized_shape"),
        _returns("rms_norm", "NaN input", lambda: rms(torch.full_like(x, math.nan), (16,)), nan_propagates),
        _returns("rms_norm", "empty batch", lambda: rms(torch.empty(0, 16), (16,)), empty_out((0, 16))),
    ]
    aln = pyfastattn.add_layer_norm
    out += tensor_mutations("add_layer_norm", "input", lambda v: lambda: aln(v, r, w, b), x)
    out += tensor_mutations("add_layer_norm", "residual", lambda v: lambda: aln(x, v, w, b), r)
    out += tensor_mutations("add_layer_norm", "weight", lambda v: lambda: aln(x, r, v, b), w, strided="ok")
    out += [
        _raise("add_layer_norm", "residual None", lambda: aln(x, None), "residual"),
        _raise("add_layer_norm", "residual broadcast shape", lambda: aln(x, r[:1]), "residual"),
        _returns("add_layer_norm", "NaN residual", lambda: aln(x, torch.full_like(r, math.nan)), nan_propagates),
        _returns("add_layer_norm", "empty", lambda: aln(x[:0], r[:0]), empty_out((0, 6, 16))),
    ]
    nn = pyfastattn.nn
    out += [
        _raise("nn.LayerNorm", "input wrong trailing shape", lambda: nn.LayerNorm(16)(torch.randn(3, 15)), "normalized_shape"),
        _raise("nn.LayerNorm", "input int", lambda: nn.LayerNorm(16)(torch.ones(3, 16, dtype=torch.long)), "input"),
        _raise("nn.RMSNorm", "input wrong trailing shape", lambda: nn.RMSNorm(16)(torch.randn(3, 17)), "normalized_shape"),
    ]
    return out


def _cu(*vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype)


def attention_cases():
    out = []
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k = torch.randn(2, 4, 7, 8, generator=g)
    v = torch.randn(2, 4, 7, 8, generator=g)
    m = torch.randn(2, 1, 5, 7, generator=g)
    sdpa = pyfastattn.scaled_dot_product_attention
    op = "scaled_dot_product_attention"
    out += tensor_mutations(op, "query", lambda t: lambda: sdpa(t, k, v), q)
    out += tensor_mutations(op, "key", lambda t: lambda: sdpa(q, t, v), k)
    out += tensor_mutations(op, "value", lambda t: lambda: sdpa(q, k, t), v)
    kv_gqa = torch.randn(2, 2, 7, 8, generator=g)
    out += [
        _raise(op, "query None", lambda: sdpa(None, k, v), "query"),
        _raise(op, "key None", lambda: sdpa(q, None, v), "key"),
        _raise(op, "value float64", lambda: sdpa(q, k, v.double()), "value"),
        _raise(op, "batch mismatch", lambda: sdpa(q, k[:1], v[:1]), "batch"),
        _raise(op, "key/value length mismatch", lambda: sdpa(q, k, v[:, :, :6]), "value", "length"),
        _raise(op, "head dim mismatch key", lambda: sdpa(q, k[..., :4], v), "key", "head dim"),
        _raise(op, "head dim mismatch value", lambda: sdpa(q, k, v[..., :4]), "value"),
        _raise(op, "head dim 257", lambda: sdpa(*(torch.randn(1, 1, 2, 257) for _ in range(3))), "head dim"),
        _raise(op, "head dim 0", lambda: sdpa(*(torch.randn(1, 1, 2, 0) for _ in range(3))), "head dim"),
        _raise(op, "heads mismatch without enable_gqa", lambda: sdpa(q, kv_gqa, kv_gqa), "enable_gqa", "heads"),
        _raise(op, "GQA heads not a multiple", lambda: sdpa(q, k[:, :3], v[:, :3], enable_gqa=True), "heads"),
        _raise(op, "key/value heads differ", lambda: sdpa(q, k, v[:, :2], enable_gqa=True), "heads"),
        _raise(op, "zero key heads", lambda: sdpa(q, k[:, :0], v[:, :0], enable_gqa=True), "heads"),
        _raise(op, "dropout_p 0.1", lambda: sdpa(q, k, v, dropout_p=0.1), "dropout_p"),
        _raise(op, "dropout_p string", lambda: sdpa(q, k, v, dropout_p="0"), "dropout_p"),
        _raise(op, "dropout_p nan", lambda: sdpa(q, k, v, dropout_p=math.nan), "dropout_p"),
        _raise(op, "is_causal int", lambda: sdpa(q, k, v, is_causal=1), "is_causal"),
        _raise(op, "is_causal None", lambda: sdpa(q, k, v, is_causal=None), "is_causal"),
        _raise(op, "enable_gqa string", lambda: sdpa(q, k, v, enable_gqa="yes"), "enable_gqa"),
        _raise(op, "return_lse int", lambda: sdpa(q, k, v, return_lse=1), "return_lse"),
        _raise(op, "scale nan", lambda: sdpa(q, k, v, scale=math.nan), "scale"),
        _raise(op, "scale inf", lambda: sdpa(q, k, v, scale=math.inf), "scale"),
        _raise(op, "scale string", lambda: sdpa(q, k, v, scale="0.5"), "scale"),
        _raise(op, "scale tensor", lambda: sdpa(q, k, v, scale=torch.tensor(0.5)), "scale"),
        _raise(op, "attn_mask int64", lambda: sdpa(q, k, v, attn_mask=m.long()), "attn_mask"),
        _raise(op, "attn_mask int32", lambda: sdpa(q, k, v, attn_mask=m.int()), "attn_mask"),
        _raise(op, "attn_mask uint8", lambda: sdpa(q, k, v, attn_mask=m.to(torch.uint8)), "attn_mask"),
        _raise(op, "attn_mask float64 vs float32 query", lambda: sdpa(q, k, v, attn_mask=m.double()), "attn_mask"),
        _raise(op, "attn_mask list", lambda: sdpa(q, k, v, attn_mask=m.tolist()), "attn_mask"),
        _raise(op, "attn_mask 5-d", lambda: sdpa(q, k, v, attn_mask=m[None]), "attn_mask"),
        _raise(op, "attn_mask wrong Lk", lambda: sdpa(q, k, v, attn_mask=m[..., :6]), "attn_mask"),
        _raise(op, "attn_mask wrong Lq", lambda: sdpa(q, k, v, attn_mask=m[:, :, :4]), "attn_mask"),
        _raise(op, "attn_mask wrong batch", lambda: sdpa(q, k, v, attn_mask=torch.randn(3, 1, 5, 7)), "attn_mask"),
        _raise(op, "attn_mask meta", lambda: sdpa(q, k, v, attn_mask=m.to("meta")), "attn_mask"),
        _returns(op, "attn_mask transposed view", lambda: sdpa(q, k, v, attn_mask=torch.randn(2, 1, 7, 5).transpose(-1, -2)),
                 returns_something),
        _returns(op, "attn_mask 0-d", lambda: sdpa(q, k, v, attn_mask=torch.tensor(0.5)), empty_out((2, 4, 5, 8))),
        _returns(op, "attn_mask all -inf row", lambda: sdpa(q, k, v, attn_mask=torch.full((5, 7), -math.inf)),
                 lambda o: "ok" if torch.equal(o, torch.zeros_like(o)) else "fully masked rows are not zero"),
        _returns(op, "attn_mask all False", lambda: sdpa(q, k, v, attn_mask=torch.zeros(5, 7, dtype=torch.bool)),
                 lambda o: "ok" if torch.equal(o, torch.zeros_like(o)) else "fully masked rows are not zero"),
        _returns(op, "attn_mask NaN", lambda: sdpa(q, k, v, attn_mask=torch.full((5, 7), math.nan)), nan_propagates),
        _returns(op, "NaN query", lambda: sdpa(torch.full_like(q, math.nan), k, v), nan_propagates),
        _returns(op, "Inf key", lambda: sdpa(q, torch.full_like(k, math.inf), v), nan_propagates),
        _returns(op, "NaN value", lambda: sdpa(q, k, torch.full_like(v, math.nan)), nan_propagates),
        _returns(op, "empty batch", lambda: sdpa(q[:0], k[:0], v[:0]), empty_out((0, 4, 5, 8))),
        _returns(op, "empty query length", lambda: sdpa(q[:, :, :0], k, v), empty_out((2, 4, 0, 8))),
        _returns(op, "empty key length", lambda: sdpa(q, k[:, :, :0], v[:, :, :0]),
                 lambda o: "ok" if o.shape == q.shape and not o.abs().sum() else "no keys gave non-zero output"),
        _returns(op, "head dim 256", lambda: sdpa(*(torch.randn(1, 1, 3, 256) for _ in range(3))), empty_out((1, 1, 3, 256))),
        _returns(op, "causal Lq > Lk", lambda: sdpa(torch.randn(1, 1, 9, 8), k[:1, :1], v[:1, :1], is_causal=True),
                 empty_out((1, 1, 9, 8))),
        _returns(op, "int scale", lambda: sdpa(q, k, v, scale=1), empty_out((2, 4, 5, 8))),
        # regression: a float mask with zero elements (Lk = 0) raised "attn_mask is a null pointer"
        _returns(op, "empty float mask, backward", lambda: grads_of(
            lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), q, k[:, :, :0], v[:, :, :0], m[..., :0]), zero_grads),
        _returns(op, "scale 0", lambda: sdpa(q, k, v, scale=0.0), empty_out((2, 4, 5, 8))),
    ]
    # varlen
    vl = pyfastattn.varlen_attention
    op = "varlen_attention"
    qv = torch.randn(7, 4, 8, generator=g)
    kvv = torch.randn(9, 2, 8, generator=g)
    cq, ck = _cu(0, 3, 3, 7), _cu(0, 4, 4, 9)

    def call(qq=qv, kk=kvv, vv=kvv, cu_q=cq, cu_k=ck, mq=4, mk=5, **kw):
        return lambda: vl(qq, kk, vv, cu_q, cu_k, mq, mk, **kw)
    out += tensor_mutations(op, "query", lambda t: call(qq=t), qv)
    out += tensor_mutations(op, "key", lambda t: call(kk=t), kvv)
    out += tensor_mutations(op, "value", lambda t: call(vv=t), kvv)
    out += [
        _raise(op, "cu_seqlens_q int64", call(cu_q=cq.long()), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_k float", call(cu_k=ck.float()), "cu_seqlens_k"),
        _raise(op, "cu_seqlens_q None", call(cu_q=None), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_q list", call(cu_q=[0, 3, 3, 7]), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_q 2-d", call(cu_q=cq[None]), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_q empty", call(cu_q=cq[:0], cu_k=ck[:0]), "cu_seqlens"),
        _raise(op, "cu_seqlens_q meta", call(cu_q=cq.to("meta")), "cu_seqlens_q"),
        _raise(op, "cu_seqlens batch mismatch", call(cu_q=_cu(0, 7)), "cu_seqlens"),
        _raise(op, "cu_seqlens_q unsorted", call(cu_q=_cu(0, 5, 3, 7)), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_k unsorted", call(cu_k=_cu(0, 6, 4, 9)), "cu_seqlens_k"),
        _raise(op, "cu_seqlens_q not starting at 0", call(cu_q=_cu(1, 3, 3, 7)), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_q negative start", call(cu_q=_cu(-2, 3, 3, 7)), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_q past the end", call(cu_q=_cu(0, 3, 3, 8)), "cu_seqlens_q"),
        _raise(op, "cu_seqlens_k short of the end", call(cu_k=_cu(0, 4, 4, 8)), "cu_seqlens_k"),
        _raise(op, "cu_seqlens_k huge", call(cu_k=_cu(0, 4, 4, 2**31 - 1)), "cu_seqlens_k"),
        _raise(op, "max_seqlen_q too small", call(mq=3), "max_seqlen"),
        _raise(op, "max_seqlen_k too small", call(mk=4), "max_seqlen"),
        _raise(op, "max_seqlen_q negative", call(mq=-1), "max_seqlen_q"),
        _raise(op, "max_seqlen_q float", call(mq=4.0), "max_seqlen_q"),
        _raise(op, "max_seqlen_k None", call(mk=None), "max_seqlen_k"),
        _raise(op, "max_seqlen_q huge", call(mq=2**40), "max_seqlen_q"),
        _raise(op, "GQA not a multiple", call(kk=torch.randn(9, 3, 8), vv=torch.randn(9, 3, 8)), "heads"),
        _raise(op, "key/value tokens differ", call(vv=kvv[:8]), "tokens", "value"),
        _raise(op, "head dim 300", call(qq=torch.randn(7, 4, 300), kk=torch.randn(9, 2, 300),
                                        vv=torch.randn(9, 2, 300)), "head dim"),
        _raise(op, "is_causal int", call(is_causal=1), "is_causal"),
        _raise(op, "scale nan", call(scale=math.nan), "scale"),
        _returns(op, "NaN query", call(qq=torch.full_like(qv, math.nan)), nan_propagates),
        _returns(op, "all sequences empty", call(qq=qv[:0], kk=kvv[:0], vv=kvv[:0], cu_q=_cu(0, 0, 0), cu_k=_cu(0, 0, 0),
                                                 mq=0, mk=0), empty_out((0, 4, 8))),
        _returns(op, "batch 0 (one offset)", call(qq=qv[:0], kk=kvv[:0], vv=kvv[:0], cu_q=_cu(0), cu_k=_cu(0), mq=0, mk=0),
                 empty_out((0, 4, 8))),
        _returns(op, "empty key sequence", call(cu_k=_cu(0, 0, 4, 9)),
                 lambda o: "ok" if not o[:3].abs().sum() else "a query with no keys gave non-zero output"),
        _returns(op, "max_seqlen larger than needed", call(mq=100, mk=100), empty_out((7, 4, 8))),
        # regression: max_seqlen > 0 over zero packed tokens raised "query is a null pointer"
        _returns(op, "max_seqlen > 0, no tokens", call(qq=qv[:0], kk=kvv[:0], vv=kvv[:0], cu_q=_cu(0, 0),
                                                       cu_k=_cu(0, 0), mq=3, mk=3), empty_out((0, 4, 8))),
        _returns(op, "queries but no keys at all", call(kk=kvv[:0], vv=kvv[:0], cu_k=_cu(0, 0, 0, 0), mk=2),
                 lambda o: "ok" if o.shape == (7, 4, 8) and not o.abs().sum() else "no keys gave non-zero output"),
    ]
    # nn.MultiheadAttention
    MHA = pyfastattn.nn.MultiheadAttention
    op = "nn.MultiheadAttention"
    x = torch.randn(2, 5, 16, generator=g)
    mha = MHA(16, 4)
    out += [
        _raise(op, "embed_dim not a multiple of heads", lambda: MHA(16, 3), "embed_dim"),
        _raise(op, "embed_dim 0", lambda: MHA(0, 1), "embed_dim"),
        _raise(op, "num_heads negative", lambda: MHA(16, -4), "num_heads"),
        _raise(op, "dropout 0.1", lambda: MHA(16, 4, dropout=0.1), "dropout"),
        _raise(op, "add_bias_kv", lambda: MHA(16, 4, add_bias_kv=True), "add_bias_kv"),
        _raise(op, "batch_first False", lambda: MHA(16, 4, batch_first=False), "batch_first"),
        _raise(op, "head dim 272", lambda: MHA(272, 1)(torch.randn(1, 2, 272), torch.randn(1, 2, 272),
                                                      torch.randn(1, 2, 272)), "head dim"),
        _raise(op, "need_weights", lambda: mha(x, x, x, need_weights=True), "need_weights"),
        _raise(op, "query wrong embed", lambda: mha(torch.randn(2, 5, 15), x, x), "embedding", "query"),
        _raise(op, "query 4-d", lambda: mha(x[None], x[None], x[None]), "query"),
        _raise(op, "query None", lambda: mha(None, x, x), "query"),
        _raise(op, "query int", lambda: mha(x.long(), x.long(), x.long()), "dtype", "query"),
        _raise(op, "key_padding_mask wrong shape", lambda: mha(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
               "key_padding_mask"),
        _raise(op, "key_padding_mask int", lambda: mha(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.long)),
               "mask"),
        _raise(op, "attn_mask wrong shape", lambda: mha(x, x, x, attn_mask=torch.zeros(5, 4)), "attn_mask"),
        _raise(op, "attn_mask list", lambda: mha(x, x, x, attn_mask=[[0.0] * 5] * 5), "attn_mask"),
        _raise(op, "key length mismatch with value", lambda: mha(x, x, x[:, :4]), "value", "length"),
        _returns(op, "NaN query", lambda: mha(torch.full_like(x, math.nan), x, x), nan_propagates),
        _returns(op, "empty batch", lambda: mha(x[:0], x[:0], x[:0]), empty_out((0, 5, 16))),
        _returns(op, "unbatched", lambda: mha(x[0], x[0], x[0]), empty_out((5, 16))),
        _returns(op, "all keys padded", lambda: mha(x, x, x, key_padding_mask=torch.ones(2, 5, dtype=torch.bool)),
                 lambda o: "ok" if torch.isfinite(o[0]).all() else "all-padded rows are not finite"),
    ]
    return out


def conv_cases():
    out = []
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 9, 10, generator=g)
    w = torch.randn(6, 4, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    c2 = pyfastattn.conv2d
    op = "conv2d"
    out += tensor_mutations(op, "input", lambda t: lambda: c2(t, w, b), x, rank_fixed=False, strided="ok")
    out += tensor_mutations(op, "weight", lambda t: lambda: c2(x, t, b), w, strided="ok")
    out += tensor_mutations(op, "bias", lambda t: lambda: c2(x, w, t), b, strided="ok")
    out += [
        _raise(op, "input 5-d", lambda: c2(x[None], w), "input"),
        _raise(op, "input 2-d", lambda: c2(x[0, 0], w), "input"),
        _raise(op, "input None", lambda: c2(None, w), "input"),
        _raise(op, "weight None", lambda: c2(x, None), "weight"),
        _raise(op, "weight float64", lambda: c2(x, w.double()), "weight"),
        _raise(op, "bias wrong length", lambda: c2(x, w, b[:5]), "bias"),
        _raise(op, "weight channels mismatch", lambda: c2(x, w[:, :3]), "input channels", "weight"),
        _raise(op, "groups 3 (channels not divisible)", lambda: c2(x, w[:, :1], groups=3), "groups"),
        _raise(op, "groups mismatch", lambda: c2(x, w[:, :2], groups=4), "groups"),
        _raise(op, "groups 0", lambda: c2(x, w, groups=0), "groups"),
        _raise(op, "groups float", lambda: c2(x, w, groups=1.0), "groups"),
        _raise(op, "stride 0", lambda: c2(x, w, stride=0), "stride"),
        _raise(op, "stride negative", lambda: c2(x, w, stride=(1, -1)), "stride"),
        _raise(op, "stride huge", lambda: c2(x, w, stride=2**40), "stride"),
        _raise(op, "stride triple", lambda: c2(x, w, stride=(1, 1, 1)), "stride"),
        _raise(op, "stride float", lambda: c2(x, w, stride=1.5), "stride"),
        _raise(op, "stride None", lambda: c2(x, w, stride=None), "stride"),
        _raise(op, "padding negative", lambda: c2(x, w, padding=-1), "padding"),
        _raise(op, "padding huge", lambda: c2(x, w, padding=2**31), "padding"),
        _raise(op, "padding bad string", lambda: c2(x, w, padding="full"), "padding"),
        _raise(op, "padding same with stride 2", lambda: c2(x, w, padding="same", stride=2), "padding", "stride"),
        _raise(op, "dilation 0", lambda: c2(x, w, dilation=0), "dilation"),
        _raise(op, "dilation huge", lambda: c2(x, w, dilation=2**30), "dilation"),
        _raise(op, "kernel larger than input", lambda: c2(x, torch.randn(6, 4, 11, 3)), "kernel", "larger"),
        _raise(op, "dilated kernel larger than input", lambda: c2(x, w, dilation=5), "kernel", "larger"),
        _raise(op, "empty kernel", lambda: c2(x, w[:, :, :0]), "weight", "kernel"),
        _returns(op, "weight with 0 output channels", lambda: c2(x, w[:0]), empty_out((2, 0, 7, 8))),
        # regression: the weight gradient of an empty weight (0 input channels) segfaulted
        _returns(op, "zero input channels, backward", lambda: grads_of(lambda x, w: c2(x, w), x[:, :0], w[:, :0]),
                 zero_grads),
        _returns(op, "zero output channels, backward", lambda: grads_of(lambda x, w: c2(x, w), x, w[:0]), zero_grads),
        _returns(op, "stride 3", lambda: c2(x, w, stride=3), empty_out((2, 6, 3, 3))),
        _returns(op, "large padding", lambda: c2(x, w, padding=20), empty_out((2, 6, 47, 48))),
        _returns(op, "NaN input", lambda: c2(torch.full_like(x, math.nan), w), nan_propagates),
        _returns(op, "Inf weight", lambda: c2(x, torch.full_like(w, math.inf)), nan_propagates),
        _returns(op, "empty batch", lambda: c2(x[:0], w, b), empty_out((0, 6, 7, 8))),
        _returns(op, "zero input channels", lambda: c2(x[:, :0], w[:, :0], b),
                 lambda o: "ok" if o.shape == (2, 6, 7, 8) and torch.equal(o, b.view(1, 6, 1, 1).expand_as(o)) else "bad"),
        _returns(op, "unbatched", lambda: c2(x[0], w, b), empty_out((6, 7, 8))),
        _returns(op, "padding same, even kernel", lambda: c2(x, torch.randn(6, 4, 2, 4), padding="same"),
                 empty_out((2, 6, 9, 10))),
    ]
    # hex_conv2d
    hc = pyfastattn.hex_conv2d
    op = "hex_conv2d"
    wh = torch.randn(6, 4, 7, generator=g)
    out += tensor_mutations(op, "input", lambda t: lambda: hc(t, wh, b), x, rank_fixed=False, strided="ok")
    out += tensor_mutations(op, "weight", lambda t: lambda: hc(x, t, b), wh, strided="ok")
    out += tensor_mutations(op, "bias", lambda t: lambda: hc(x, wh, t), b, strided="ok")
    out += [
        _raise(op, "input None", lambda: hc(None, wh), "input"),
        _raise(op, "weight 4-d (square kernel)", lambda: hc(x, w), "weight"),
        _raise(op, "weight 8 taps", lambda: hc(x, torch.randn(6, 4, 8)), "weight", "tap"),
        _raise(op, "weight 1 tap (radius 0)", lambda: hc(x, torch.randn(6, 4, 1)), "weight", "tap"),
        _raise(op, "weight 0 taps", lambda: hc(x, torch.randn(6, 4, 0)), "weight", "tap"),
        _raise(op, "kernel larger than the grid", lambda: hc(torch.randn(1, 4, 3, 3), torch.randn(6, 4, 19)), "grid", "kernel"),
        _raise(op, "groups mismatch", lambda: hc(x, wh, groups=2), "groups", "channels"),
        _raise(op, "groups 0", lambda: hc(x, wh, groups=0), "groups"),
        _raise(op, "stride 0", lambda: hc(x, wh, stride=0), "stride"),
        _raise(op, "stride pair", lambda: hc(x, wh, stride=(2, 2)), "stride"),
        _raise(op, "stride bool", lambda: hc(x, wh, stride=True), "stride"),
        _raise(op, "bias wrong length", lambda: hc(x, wh, b[:2]), "bias"),
        _returns(op, "stride 3", lambda: hc(x, wh, stride=3), empty_out((2, 6, 3, 4))),
        _returns(op, "zero input channels, backward", lambda: grads_of(lambda x, w: hc(x, w), x[:, :0], wh[:, :0]),
                 zero_grads),
        _returns(op, "stride larger than the grid", lambda: hc(x, wh, stride=50), empty_out((2, 6, 1, 1))),
        _returns(op, "NaN input", lambda: hc(torch.full_like(x, math.nan), wh), nan_propagates),
        _returns(op, "empty batch", lambda: hc(x[:0], wh), empty_out((0, 6, 9, 10))),
        _returns(op, "grid 1 x 9 (kernel fits one axis)", lambda: hc(torch.randn(1, 4, 1, 9), wh), empty_out((1, 6, 1, 9))),
    ]
    # pooling
    for name, pool in (("hex_max_pool2d", pyfastattn.hex_max_pool2d), ("hex_avg_pool2d", pyfastattn.hex_avg_pool2d)):
        out += tensor_mutations(name, "input", lambda t, pool=pool: lambda: pool(t), x, rank_fixed=False, strided="ok")
        out += [
            _raise(name, "input 5-d", lambda pool=pool: pool(x[None]), "input"),
            _raise(name, "input 2-d", lambda pool=pool: pool(x[0, 0]), "input"),
            _raise(name, "input None", lambda pool=pool: pool(None), "input"),
            _raise(name, "radius 0", lambda pool=pool: pool(x, 0), "radius"),
            _raise(name, "radius negative", lambda pool=pool: pool(x, -1), "radius"),
            _raise(name, "radius huge", lambda pool=pool: pool(x, 2**40), "radius"),
            _raise(name, "radius float", lambda pool=pool: pool(x, 1.0), "radius"),
            _raise(name, "radius None", lambda pool=pool: pool(x, None), "radius"),
            _raise(name, "stride 0", lambda pool=pool: pool(x, 1, 0), "stride"),
            _raise(name, "stride negative", lambda pool=pool: pool(x, 1, -2), "stride"),
            _raise(name, "stride string", lambda pool=pool: pool(x, 1, "2"), "stride"),
            _returns(name, "stride 3", lambda pool=pool: pool(x, 1, 3), empty_out((2, 4, 3, 4))),
            _returns(name, "radius larger than the grid", lambda pool=pool: pool(torch.randn(1, 2, 3, 3), 5, 1),
                     empty_out((1, 2, 3, 3))),
            _returns(name, "NaN input", lambda pool=pool: pool(torch.full_like(x, math.nan)), nan_propagates),
            _returns(name, "empty batch", lambda pool=pool: pool(x[:0]), empty_out((0, 4, 5, 5))),
            _returns(name, "empty grid", lambda pool=pool: pool(x[:, :, :0]), empty_out((2, 4, 0, 5))),
            _returns(name, "unbatched", lambda pool=pool: pool(x[0]), empty_out((4, 5, 5))),
        ]
    out.append(_returns("hex_max_pool2d", "-Inf input", lambda: pyfastattn.hex_max_pool2d(torch.full_like(x, -math.inf)),
                        lambda o: "ok" if bool((o == -math.inf).all()) else "-inf input did not give -inf"))
    # indexed_conv
    ic = pyfastattn.indexed_conv
    op = "indexed_conv"
    xi = torch.randn(2, 4, 12, generator=g)
    wi = torch.randn(6, 4, 5, generator=g)
    nb = torch.randint(-1, 12, (8, 5), generator=g)
    out += tensor_mutations(op, "input", lambda t: lambda: ic(t, wi, nb, b), xi, strided="ok")
    out += tensor_mutations(op, "weight", lambda t: lambda: ic(xi, t, nb, b), wi, strided="ok")
    out += tensor_mutations(op, "bias", lambda t: lambda: ic(xi, wi, nb, t), b, strided="ok")
    out += [
        _raise(op, "neighbors float", lambda: ic(xi, wi, nb.float()), "neighbors"),
        _raise(op, "neighbors bool", lambda: ic(xi, wi, nb >= 0), "neighbors"),
        _raise(op, "neighbors int16", lambda: ic(xi, wi, nb.short()), "neighbors"),
        _raise(op, "neighbors None", lambda: ic(xi, wi, None), "neighbors"),
        _raise(op, "neighbors list", lambda: ic(xi, wi, nb.tolist()), "neighbors"),
        _raise(op, "neighbors 1-d", lambda: ic(xi, wi, nb[0]), "neighbors"),
        _raise(op, "neighbors 3-d", lambda: ic(xi, wi, nb[None]), "neighbors"),
        _raise(op, "neighbors meta", lambda: ic(xi, wi, nb.to("meta")), "neighbors"),
        _raise(op, "neighbors index = P", lambda: ic(xi, wi, torch.full((8, 5), 12)), "neighbors"),
        _raise(op, "neighbors index huge", lambda: ic(xi, wi, torch.full((8, 5), 2**40)), "neighbors"),
        _raise(op, "neighbors index -2", lambda: ic(xi, wi, torch.full((8, 5), -2)), "neighbors"),
        _raise(op, "neighbors int64 min", lambda: ic(xi, wi, torch.full((8, 5), -2**63)), "neighbors"),
        _raise(op, "neighbors wraps to a valid int32", lambda: ic(xi, wi, torch.full((8, 5), 2**32 + 3)), "neighbors"),
        _raise(op, "taps mismatch", lambda: ic(xi, wi, nb[:, :4]), "taps", "neighbors"),
        _raise(op, "weight channels mismatch", lambda: ic(xi, wi[:, :3], nb), "channels"),
        _raise(op, "bias wrong length", lambda: ic(xi, wi, nb, b[:3]), "bias"),
        _raise(op, "input 4-d", lambda: ic(x, wi, nb), "input"),
        _returns(op, "neighbors strided", lambda: ic(xi, wi, torch.cat([nb, nb], 1)[:, ::2]), empty_out((2, 6, 8))),
        _returns(op, "neighbors all -1", lambda: ic(xi, wi, torch.full((8, 5), -1), b),
                 lambda o: "ok" if torch.equal(o, b.view(1, 6, 1).expand(2, 6, 8)) else "holes do not count as zero"),
        _returns(op, "no output points", lambda: ic(xi, wi, nb[:0]), empty_out((2, 6, 0))),
        _returns(op, "no input points, all holes", lambda: ic(xi[:, :, :0], wi, torch.full((8, 5), -1)), empty_out((2, 6, 8))),
        _raise(op, "no input points, an index", lambda: ic(xi[:, :, :0], wi, nb.clamp(min=0)), "neighbors"),
        _returns(op, "zero taps", lambda: ic(xi, wi[:, :, :0], nb[:, :0]), empty_out((2, 6, 8))),
        # regression: the input/weight gradients with zero taps raised / segfaulted
        _returns(op, "zero taps, backward", lambda: grads_of(lambda x, w: ic(x, w, nb[:, :0]), xi, wi[:, :, :0]),
                 zero_grads),
        _returns(op, "zero taps with bias, backward", lambda: grads_of(lambda x, w, b: ic(x, w, nb[:, :0], b),
                                                                       xi, wi[:, :, :0], b),
                 lambda g: "ok" if torch.equal(g[2], torch.full((6,), 16.0)) and not g[0].abs().sum() else "wrong"),
        _returns(op, "NaN input", lambda: ic(torch.full_like(xi, math.nan), wi, nb.clamp(min=0)), nan_propagates),
        _returns(op, "empty batch", lambda: ic(xi[:0], wi, nb), empty_out((0, 6, 8))),
    ]
    # modules
    nn = pyfastattn.nn
    op = "nn.Conv2d"
    out += [
        _raise(op, "input int", lambda: nn.Conv2d(4, 6, 3)(x.long()), "input"),
        _raise(op, "input wrong channels", lambda: nn.Conv2d(3, 6, 3)(x), "channels"),
        _raise(op, "input smaller than kernel", lambda: nn.Conv2d(4, 6, 5)(x[..., :3, :3]), "kernel"),
        _raise(op, "input float64 vs float32 weight", lambda: nn.Conv2d(4, 6, 3)(x.double()), "weight", "dtype"),
        _raise(op, "input None", lambda: nn.Conv2d(4, 6, 3)(None), "input"),
        _returns(op, "padding_mode reflect", lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")(x),
                 empty_out((2, 6, 9, 10))),
    ]
    op = "nn.HexConv2d"
    out += [
        _raise(op, "groups mismatch", lambda: nn.HexConv2d(4, 6, groups=4), "groups"),
        _raise(op, "radius 0", lambda: nn.HexConv2d(4, 6, radius=0), "radius"),
        _raise(op, "radius negative", lambda: nn.HexConv2d(4, 6, radius=-1), "radius"),
        _raise(op, "radius float", lambda: nn.HexConv2d(4, 6, radius=1.5), "radius"),
        _raise(op, "stride 0", lambda: nn.HexConv2d(4, 6, stride=0)(x), "stride"),
        _raise(op, "input wrong channels", lambda: nn.HexConv2d(3, 6)(x), "channels"),
        _raise(op, "input int", lambda: nn.HexConv2d(4, 6)(x.long()), "input"),
        _raise(op, "grid smaller than kernel", lambda: nn.HexConv2d(4, 6, radius=3)(x[..., :3, :3]), "grid"),
    ]
    for op, M in (("nn.HexMaxPool2d", nn.HexMaxPool2d), ("nn.HexAvgPool2d", nn.HexAvgPool2d)):
        out += [
            _raise(op, "radius 0", lambda M=M: M(0)(x), "radius"),
            _raise(op, "stride 0", lambda M=M: M(1, 0)(x), "stride"),
            _raise(op, "input int", lambda M=M: M()(x.long()), "input"),
            _raise(op, "input 2-d", lambda M=M: M()(x[0, 0]), "input"),
            _returns(op, "stride 3", lambda M=M: M(1, 3)(x), empty_out((2, 4, 3, 4))),
        ]
    op = "nn.IndexedConv"
    out += [
        _raise(op, "neighbors 1-d", lambda: nn.IndexedConv(4, 6, nb[0]), "neighbors"),
        _raise(op, "neighbors None", lambda: nn.IndexedConv(4, 6, None), "neighbors"),
        _raise(op, "neighbors float", lambda: nn.IndexedConv(4, 6, nb.float()), "neighbors"),
        _raise(op, "neighbors out of range for the input", lambda: nn.IndexedConv(4, 6, nb)(xi[..., :5]), "neighbors"),
        _raise(op, "input wrong channels", lambda: nn.IndexedConv(3, 6, nb)(xi), "channels"),
        _raise(op, "input int", lambda: nn.IndexedConv(4, 6, nb)(xi.long()), "input"),
    ]
    return out


def _only_self(out) -> str:
    """Cells 2**40 apart: each output cell sees only itself (the centre tap)."""
    t = _first(out)
    want = torch.full_like(t, -1)
    want[:, t.shape[1] // 2] = torch.arange(t.shape[0])
    return "ok" if torch.equal(t, want) else f"wrong table {t.tolist()}"


def hex_tool_cases():
    hx = pyfastattn.hex
    out = []
    op = "hex.taps"
    out += [
        _raise(op, "radius negative", lambda: hx.taps(-1), "radius"),
        _raise(op, "radius float", lambda: hx.taps(1.0), "radius"),
        _raise(op, "radius None", lambda: hx.taps(None), "radius"),
        _raise(op, "radius huge", lambda: hx.taps(2**40), "radius"),
        _returns(op, "radius 0", lambda: hx.taps(0), empty_out((1, 2))),
        _raise("hex.tap_count", "radius string", lambda: hx.tap_count("1"), "radius"),
        _raise("hex.hex_mask", "radius negative", lambda: hx.hex_mask(-2), "radius"),
        _raise("hex.hex_to_square_weight", "8 taps", lambda: hx.hex_to_square_weight(torch.randn(2, 8)), "taps"),
        _raise("hex.hex_to_square_weight", "None", lambda: hx.hex_to_square_weight(None), "weight"),
        _raise("hex.square_to_hex_weight", "even kernel", lambda: hx.square_to_hex_weight(torch.randn(2, 4, 4)), "kernel"),
        _raise("hex.square_to_hex_weight", "non-square kernel", lambda: hx.square_to_hex_weight(torch.randn(2, 3, 5)), "kernel"),
        _raise("hex.square_to_hex_weight", "1-d", lambda: hx.square_to_hex_weight(torch.randn(9)), "kernel"),
        _raise("hex.square_to_hex_weight", "None", lambda: hx.square_to_hex_weight(None), "weight"),
    ]
    op = "hex.offset_to_axial"
    x = torch.randn(2, 5, 6)
    out += [
        _raise(op, "layout unknown", lambda: hx.offset_to_axial(x, "odd"), "layout"),
        _raise(op, "layout None", lambda: hx.offset_to_axial(x, None), "layout"),
        _raise(op, "x 1-d", lambda: hx.offset_to_axial(x[0, 0]), "x"),
        _raise(op, "x None", lambda: hx.offset_to_axial(None), "x"),
        _raise(op, "x list", lambda: hx.offset_to_axial(x.tolist()), "x"),
        _raise(op, "empty grid", lambda: hx.offset_to_axial(x[:, :0, :0]), "shape"),
        _returns(op, "empty leading dims", lambda: hx.offset_to_axial(x[:0]), empty_out((0, 7, 6))),
        _returns(op, "NaN", lambda: hx.offset_to_axial(torch.full_like(x, math.nan)), nan_propagates),
        _raise("hex.axial_to_offset", "wrong axial shape", lambda: hx.axial_to_offset(x, (5, 6)), "axial", "expected"),
        _raise("hex.axial_to_offset", "shape negative", lambda: hx.axial_to_offset(x, (-5, 6)), "shape"),
        _raise("hex.axial_to_offset", "shape None", lambda: hx.axial_to_offset(x, None), "shape"),
        _raise("hex.axial_to_offset", "a None", lambda: hx.axial_to_offset(None, (5, 6)), "expected", "tensor"),
        _raise("hex.axial_shape", "negative", lambda: hx.axial_shape(-3, 4), "H", "shape"),
        _raise("hex.axial_shape", "layout unknown", lambda: hx.axial_shape(3, 4, "x"), "layout"),
        _raise("hex.axial_origin", "zero", lambda: hx.axial_origin(0, 4), "H", "shape"),
    ]
    op = "hex.positions_to_axial"
    xy = hx.axial_to_positions(hx.grid_cells(3, 3), spacing=2.0, angle=0.3)
    out += [
        _raise(op, "xy 1-d", lambda: hx.positions_to_axial(xy[:, 0]), "xy"),
        _raise(op, "xy empty", lambda: hx.positions_to_axial(xy[:0]), "xy"),
        _raise(op, "xy NaN", lambda: hx.positions_to_axial(torch.full_like(xy, math.nan)), "xy"),
        _raise(op, "xy None", lambda: hx.positions_to_axial(None), "xy"),
        _raise(op, "spacing 0", lambda: hx.positions_to_axial(xy, spacing=0.0), "spacing"),
        _raise(op, "spacing negative", lambda: hx.positions_to_axial(xy, spacing=-2.0), "spacing"),
        _raise(op, "spacing nan", lambda: hx.positions_to_axial(xy, spacing=math.nan), "spacing"),
        _raise(op, "off lattice", lambda: hx.positions_to_axial(xy + torch.rand(xy.shape) * 0.9), "lattice"),
        _raise(op, "duplicate stations", lambda: hx.positions_to_axial(torch.cat([xy, xy[:1]])), "same"),
        _raise(op, "single station without spacing", lambda: hx.positions_to_axial(xy[:1]), "spacing"),
        _raise(op, "angle nan", lambda: hx.positions_to_axial(xy, angle=math.nan), "angle"),
        _raise(op, "origin wrong shape", lambda: hx.positions_to_axial(xy, origin=(1.0, 2.0, 3.0)), "origin"),
        _raise(op, "tolerance negative", lambda: hx.positions_to_axial(xy, tolerance=-1.0), "tolerance"),
        _raise("hex.axial_to_positions", "rq 1-d", lambda: hx.axial_to_positions(torch.tensor([1, 2])), "rq"),
        _raise("hex.axial_to_positions", "spacing nan", lambda: hx.axial_to_positions(hx.grid_cells(2, 2), spacing=math.nan), "spacing"),
    ]
    cells = hx.grid_cells(3, 4)
    for op, fn in (("hex.conv_neighbors", hx.conv_neighbors), ("hex.pool_neighbors", hx.pool_neighbors)):
        out += [
            _raise(op, "cells float", lambda fn=fn: fn(cells.float()), "cells"),
            _raise(op, "cells 1-d", lambda fn=fn: fn(cells[:, 0]), "cells"),
            _raise(op, "cells (P, 3)", lambda fn=fn: fn(torch.zeros(3, 3, dtype=torch.long)), "cells"),
            _raise(op, "cells bool", lambda fn=fn: fn(cells.bool()), "cells"),
            _raise(op, "cells None", lambda fn=fn: fn(None), "cells"),
            _raise(op, "duplicate cells", lambda fn=fn: fn(torch.cat([cells, cells[:1]])), "duplicates"),
            _raise(op, "radius negative", lambda fn=fn: fn(cells, -1), "radius"),
            _raise(op, "radius float", lambda fn=fn: fn(cells, 1.5), "radius"),
            _returns(op, "no cells", lambda fn=fn: fn(cells[:0]), lambda o: "ok" if _first(o).shape[0] == 0 else "bad"),
            _returns(op, "radius 0", lambda fn=fn: fn(cells, 0), lambda o: "ok" if _first(o).shape[1] == 1 else "bad"),
            _returns(op, "negative coordinates", lambda fn=fn: fn(cells - 7), lambda o: "ok" if _first(o).shape[1] == 7 else "bad"),
            # regression: a linear key r * Q + q overflowed int64 here (false duplicates or wrong hits)
            _returns(op, "huge coordinates", lambda fn=fn: fn(cells * 2**40), _only_self),
        ]
    out += [
        _raise("hex.pool_neighbors", "stride 0", lambda: hx.pool_neighbors(cells, 1, 0), "stride"),
        _raise("hex.pool_neighbors", "stride float", lambda: hx.pool_neighbors(cells, 1, 2.0), "stride"),
        _raise("hex.grid_cells", "negative", lambda: hx.grid_cells(-1, 3), "R"),
        _raise("hex.grid_cells", "float", lambda: hx.grid_cells(2.5, 3), "R"),
        _returns("hex.grid_cells", "empty", lambda: hx.grid_cells(0, 3), empty_out((0, 2))),
        _raise("hex.hexagdly_conv_weight", "radius negative", lambda: hx.hexagdly_conv_weight(torch.nn.Identity(), 1, -1), "radius"),
        _raise("hex.hexagdly_conv_weight", "in_channels 0", lambda: hx.hexagdly_conv_weight(torch.nn.Identity(), 0, 1), "in_channels"),
        _raise("hex.hexagdly_conv_weight", "module None", lambda: hx.hexagdly_conv_weight(None, 1, 1), "module"),
    ]
    return out


FAMILY_CASES = [norm_cases, attention_cases, conv_cases, hex_tool_cases]


def all_cases():
    cases = []
    for make in FAMILY_CASES:
        cases.extend(make())
    return cases
