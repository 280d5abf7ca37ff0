"""Per-call host (Python) overhead of pyfastattn's functional API next to torch's own ops.

Tiny tensors, so that the kernels cost next to nothing and the time per call is what the
Python wrapper, the validation and torch's dispatch cost. On CUDA the calls are timed
without synchronizing inside the loop (launches are asynchronous), which is the host time a
training step pays per op; the queue is drained between batches.

    PYTHONPATH=$PWD python bench/host_overhead.py [--device cuda] [--calls 200] [--repeats 51]

Prints one row per case: median microseconds per call for pyfastattn and for torch.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import pyfastattn


def per_call_us(fn, device, calls: int, repeats: int) -> float:
    """Median over `repeats` batches of the mean wall time of `calls` back-to-back calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(max(50, calls // 10)):
        fn()
    sync()
    batches = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        batches.append((time.perf_counter() - t0) / calls)
        sync()
    return statistics.median(batches) * 1e6


def cases(device, dtype):
    def t(*shape, grad=False):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=grad)

    out = []
    for grad in (False, True):
        tag = " (requires_grad)" if grad else ""
        x, w, b, r = t(8, 64, grad=grad), t(64, grad=grad), t(64, grad=grad), t(8, 64, grad=grad)
        out += [
            ("layer_norm" + tag, lambda x=x, w=w, b=b: pyfastattn.layer_norm(x, (64,), w, b),
             lambda x=x, w=w, b=b: F.layer_norm(x, (64,), w, b)),
            ("rms_norm" + tag, lambda x=x, w=w: pyfastattn.rms_norm(x, (64,), w),
             lambda x=x, w=w: F.rms_norm(x, (64,), w)),
            ("add_layer_norm" + tag, lambda x=x, r=r, w=w, b=b: pyfastattn.add_layer_norm(x, r, w, b),
             lambda x=x, r=r, w=w, b=b: (F.layer_norm(x + r, (64,), w, b), x + r)),
        ]
        q, k, v = t(1, 2, 8, 16, grad=grad), t(1, 2, 8, 16, grad=grad), t(1, 2, 8, 16, grad=grad)
        mask = torch.rand(1, 1, 8, 8, device=device) > 0.2
        out += [
            ("sdpa" + tag, lambda q=q, k=k, v=v: pyfastattn.scaled_dot_product_attention(q, k, v),
             lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)),
            ("sdpa bool mask" + tag,
             lambda q=q, k=k, v=v: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask),
             lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
        ]
        xc, wc, bc, wh = t(1, 4, 8, 8, grad=grad), t(4, 4, 3, 3, grad=grad), t(4, grad=grad), t(4, 4, 7, grad=grad)
        out += [
            ("conv2d 3x3" + tag, lambda x=xc, w=wc, b=bc: pyfastattn.conv2d(x, w, b, padding=1),
             lambda x=xc, w=wc, b=bc: F.conv2d(x, w, b, padding=1)),
            # torch has no hexagonal conv: the dense 3x3 conv is the nearest yardstick
            ("hex_conv2d k=1 (vs F.conv2d 3x3)" + tag, lambda x=xc, w=wh, b=bc: pyfastattn.hex_conv2d(x, w, b),
             lambda x=xc, w=wc, b=bc: F.conv2d(x, w, b, padding=1)),
        ]
    # one full training step of a tiny op: forward + backward
    x, w, b = t(8, 64, grad=True), t(64, grad=True), t(64, grad=True)
    q, k, v = t(1, 2, 8, 16, grad=True), t(1, 2, 8, 16, grad=True), t(1, 2, 8, 16, grad=True)
    xc, wc, bc, wh = t(1, 4, 8, 8, grad=True), t(4, 4, 3, 3, grad=True), t(4, grad=True), t(4, 4, 7, grad=True)
    out += [
        ("layer_norm fwd+bwd", lambda: pyfastattn.layer_norm(x, (64,), w, b).sum().backward(),
         lambda: F.layer_norm(x, (64,), w, b).sum().backward()),
        ("sdpa fwd+bwd", lambda: pyfastattn.scaled_dot_product_attention(q, k, v).sum().backward(),
         lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()),
        ("conv2d 3x3 fwd+bwd", lambda: pyfastattn.conv2d(xc, wc, bc, padding=1).sum().backward(),
         lambda: F.conv2d(xc, wc, bc, padding=1).sum().backward()),
        ("hex_conv2d k=1 fwd+bwd (vs F.conv2d 3x3)", lambda: pyfastattn.hex_conv2d(xc, wh, bc).sum().backward(),
         lambda: F.conv2d(xc, wc, bc, padding=1).sum().backward()),
    ]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--repeats", type=int, default=51)
    p.add_argument("--only", default="", help="run only the cases whose name contains this")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    print(f"torch {torch.__version__}, pyfastattn {pyfastattn.__version__}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"{a.dtype}, {torch.get_num_threads()} threads; median of {a.repeats} x {a.calls} calls")
    rows = []
    print(f"{'case':50s} {'pyfastattn us':>14s} {'torch us':>9s} {'ratio':>6s}")
    for name, ours, ref in cases(device, dtype):
        if a.only not in name:
            continue
        us_ours = per_call_us(ours, device, a.calls, a.repeats)
        us_ref = per_call_us(ref, device, a.calls, a.repeats)
        rows.append({"case": name, "pyfastattn_us": us_ours, "torch_us": us_ref})
        print(f"{name:50s} {us_ours:14.1f} {us_ref:9.1f} {us_ours / us_ref:6.1f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": str(device), "dtype": a.dtype, "torch": torch.__version__, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
