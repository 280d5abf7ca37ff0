"""Same-process A/B of two builds of the compiled module, on the CPU or a GPU.

The public ops run through this tree's Python layer; each call is routed to one build's kernels
by pointing the family module the wrappers call (pyfastattn.norm._norm, pyfastattn.attention._attn,
pyfastattn.conv._conv) at that build's. Both builds are timed in the same interleaved rounds
(`time_fns`), so they see the same host: on a shared VM, where separate processes differ by
10-20 % from one minute to the next, a change of a few % becomes visible.

  cp build/dev/_C*.so /tmp/before.so        # before rebuilding
  PYTHONPATH=$PWD python bench/ab_builds.py /tmp/before.so [--case hex13 attn ...] [--reps 15]
  python bench/ab_builds.py OTHER_SO --device cuda --dtype bfloat16 --case hex13 conv2d   # both built with CUDA

Prints per case and pass: this tree's time, the other build's, and their ratio (< 1: this tree
is faster), plus the largest difference between the two builds' results.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import math

import torch

import pyfastattn
import pyfastattn.attention
import pyfastattn.conv
import pyfastattn.norm
from pyfastattn import _C
from pyfastattn.benchmark.common import time_fns


def load_build(path: str):
    """Another build's compiled module, under a name of its own."""
    name = "pyfastattn_other_build._C"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path, loader=loader))
    loader.exec_module(module)
    return module


def route(build) -> None:
    """Sends the wrappers' kernel calls to `build`."""
    pyfastattn.norm._norm = build.norm
    pyfastattn.attention._attn = build.attention
    pyfastattn.conv._conv = build.conv


def _tensors(spec, *shapes, grad=True):
    """Fresh random tensors on the A/B's device and dtype (same seed for every build)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g).to(spec.device, spec.dtype).requires_grad_(grad) for s in shapes]


def _hex(spec, n, cin, cout, size):
    x, w, b = _tensors(spec, (n, cin, size, size), (cout, cin, 7), (cout,))
    with torch.no_grad():
        w /= math.sqrt(7 * cin)
    return lambda: pyfastattn.hex_conv2d(x, w, b), [x, w, b]


def _conv2d(spec, n, cin, cout, size, k, s):
    x, w, b = _tensors(spec, (n, cin, size, size), (cout, cin, k, k), (cout,))
    with torch.no_grad():
        w /= math.sqrt(k * k * cin)
    return lambda: pyfastattn.conv2d(x, w, b, s, k // 2), [x, w, b]


def _attention(spec, shape, causal=False, bias=False):
    L = shape[2]
    ins = _tensors(spec, shape, shape, shape, *([(shape[0], shape[1], L, L)] if bias else []))
    q, k, v, m = ins + [None] * (4 - len(ins))
    return lambda: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal), ins


def _layer_norm(spec, rows, cols, rms=False):
    x, w, b = _tensors(spec, (rows, cols), (cols,), (cols,))
    if rms:
        return lambda: pyfastattn.rms_norm(x, (cols,), w), [x, w]
    return lambda: pyfastattn.layer_norm(x, (cols,), w, b), [x, w, b]


CASES = {
    "hex13": lambda s: _hex(s, 256, 32, 64, 13),
    "hex13-2": lambda s: _hex(s, 256, 2, 32, 13),
    "hex49": lambda s: _hex(s, 256, 32, 64, 49),
    "conv2d": lambda s: _conv2d(s, 128, 32, 64, 32, 3, 1),
    "conv2d-k5s2": lambda s: _conv2d(s, 256, 2, 64, 14, 5, 2),
    "attn": lambda s: _attention(s, (2, 8, 1024, 64)),
    "attn-causal": lambda s: _attention(s, (2, 8, 1024, 64), causal=True),
    "attn-bias": lambda s: _attention(s, (2, 8, 512, 64), bias=True),
    "layer_norm": lambda s: _layer_norm(s, 8192, 1024),
    "rms_norm": lambda s: _layer_norm(s, 8192, 1024, rms=True),
    "layer_norm-8192": lambda s: _layer_norm(s, 4096, 8192),
    "layer_norm-16384": lambda s: _layer_norm(s, 2048, 16384),
}


def compare(other, case: str, reps: int, spec) -> None:
    fn, inputs = CASES[case](spec)
    builds = {"this": _C, "other": other}
    dy = torch.randn_like(fn().detach())

    def forward(build):
        route(build)
        with torch.no_grad():
            return fn()

    def forward_backward(build):
        route(build)
        return torch.autograd.grad(fn(), inputs, dy)

    for name, run in (("fwd", forward), ("fwd+bwd", forward_backward)):
        results = {b: run(m) for b, m in builds.items()}
        ours, theirs = (torch.atleast_1d(results[b]) if torch.is_tensor(results[b]) else results[b] for b in builds)
        diff = max(float((a - c).abs().max()) for a, c in zip(ours, theirs))
        t = time_fns({b: (lambda m=m: run(m)) for b, m in builds.items()}, spec.device, reps=reps)
        print(f"{case:12s} {name:8s} this {t['this'] * 1e3:8.2f} ms  other {t['other'] * 1e3:8.2f} ms  "
              f"this/other {t['this'] / t['other']:.3f}  max |diff| {diff:.2e}", flush=True)
    route(_C)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", help="the other build's _C*.so")
    ap.add_argument("--case", nargs="*", default=["hex13", "attn"], choices=sorted(CASES))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: both builds need it)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    a = ap.parse_args()
    other = load_build(a.other)
    spec = argparse.Namespace(device=torch.device(a.device), dtype=getattr(torch, a.dtype))
    print(f"{spec.device} {a.dtype}: this tree's build against {a.other}", flush=True)
    for c in a.case:
        compare(other, c, a.reps, spec)
