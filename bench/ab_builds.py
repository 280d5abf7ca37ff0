"""Same-process A/B of two builds of the compiled module, on the CPU.

The public ops run through this tree's Python layer; each call is routed to one build's kernels
by pointing the family module the wrappers call (pyfastattn.norm._norm, pyfastattn.attention._attn,
pyfastattn.conv._conv) at that build's. Both builds are timed in the same interleaved rounds
(`time_fns`), so they see the same host: on a shared VM, where separate processes differ by
10-20 % from one minute to the next, a change of a few % becomes visible.

  cp build/dev/_C*.so /tmp/before.so        # before rebuilding
  PYTHONPATH=$PWD python bench/ab_builds.py /tmp/before.so [--case hex13 attn ...] [--reps 15]

Prints per case and pass: this tree's time, the other build's, and their ratio (< 1: this tree
is faster), plus the largest difference between the two builds' results.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import math

import torch
import torch.nn.functional as F

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


def _hex(n, cin, cout, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, size, size, generator=g, requires_grad=True)
    w = (torch.randn(cout, cin, 7, generator=g) / math.sqrt(7 * cin)).requires_grad_()
    b = torch.randn(cout, generator=g, requires_grad=True)
    return lambda: pyfastattn.hex_conv2d(x, w, b), [x, w, b]


def _conv2d(n, cin, cout, size, k, s):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, size, size, generator=g, requires_grad=True)
    w = (torch.randn(cout, cin, k, k, generator=g) / math.sqrt(k * k * cin)).requires_grad_()
    b = torch.randn(cout, generator=g, requires_grad=True)
    return lambda: pyfastattn.conv2d(x, w, b, s, k // 2), [x, w, b]


def _attention(shape, causal=False, bias=False):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g, requires_grad=True) for _ in range(3))
    m = torch.randn(shape[0], shape[1], shape[2], shape[2], generator=g, requires_grad=True) if bias else None
    ins = [q, k, v] + ([m] if bias else [])
    return lambda: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal), ins


def _layer_norm(rows, cols, rms=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cols, generator=g, requires_grad=True)
    w = torch.randn(cols, generator=g, requires_grad=True)
    if rms:
        return lambda: pyfastattn.rms_norm(x, (cols,), w), [x, w]
    b = torch.randn(cols, generator=g, requires_grad=True)
    return lambda: pyfastattn.layer_norm(x, (cols,), w, b), [x, w, b]


CASES = {
    "hex13": lambda: _hex(256, 32, 64, 13),
    "hex13-2": lambda: _hex(256, 2, 32, 13),
    "conv2d": lambda: _conv2d(128, 32, 64, 32, 3, 1),
    "conv2d-k5s2": lambda: _conv2d(256, 2, 64, 14, 5, 2),
    "attn": lambda: _attention((2, 8, 1024, 64)),
    "attn-causal": lambda: _attention((2, 8, 1024, 64), causal=True),
    "attn-bias": lambda: _attention((2, 8, 512, 64), bias=True),
    "layer_norm": lambda: _layer_norm(8192, 1024),
    "rms_norm": lambda: _layer_norm(8192, 1024, rms=True),
}


def compare(other, case: str, reps: int) -> None:
    fn, inputs = CASES[case]()
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
        t = time_fns({b: (lambda m=m: run(m)) for b, m in builds.items()}, "cpu", reps=reps)
        print(f"{case:12s} {name:8s} this {t['this'] * 1e3:8.2f} ms  other {t['other'] * 1e3:8.2f} ms  "
              f"this/other {t['this'] / t['other']:.3f}  max |diff| {diff:.2e}", flush=True)
    route(_C)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", help="the other build's _C*.so")
    ap.add_argument("--case", nargs="*", default=["hex13", "attn"], choices=sorted(CASES))
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    other = load_build(a.other)
    for c in a.case:
        compare(other, c, a.reps)
