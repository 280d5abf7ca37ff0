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


FAMILY_CASES = [norm_cases]


def all_cases():
    cases = []
    for make in FAMILY_CASES:
        cases.extend(make())
    return cases
