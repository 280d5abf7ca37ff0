"""Norm benchmarks: layer_norm, rms_norm, add_layer_norm vs PyTorch, forward and
forward+backward, in GB/s of the minimum traffic (each input read once, each output
written once)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import pyfastattn

from .common import time_fns


def _cases(device: str, quick: bool):
    if quick:
        return [(4096, 1024), (1024, 4097)]
    if device == "cuda":
        return [(32768, 768), (16384, 1024), (8192, 4096), (4096, 8192), (1024, 65536), (65536, 128)]
    return [(8192, 1024), (2048, 4097), (256, 65536), (32768, 64)]


def _torch_rms(x, shape, w):
    return F.rms_norm(x, shape, w)


def run(device: str, dtype: torch.dtype, quick: bool) -> list[dict]:
    reps = 3 if quick else (50 if device == "cuda" else 5)
    rows_out = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for rows, cols in _cases(device, quick):
        x = torch.randn(rows, cols, generator=g).to(device, dtype)
        r = torch.randn(rows, cols, generator=g).to(device, dtype)
        w = torch.randn(cols, generator=g).to(device, dtype)
        b = torch.randn(cols, generator=g).to(device, dtype)
        esize = x.element_size()
        ops = {
            "layer_norm": (lambda: pyfastattn.layer_norm(x, (cols,), w, b),
                           lambda: F.layer_norm(x, (cols,), w, b), 2),
            "rms_norm": (lambda: pyfastattn.rms_norm(x, (cols,), w),
                         lambda: _torch_rms(x, (cols,), w), 2),
            "add_layer_norm": (lambda: pyfastattn.add_layer_norm(x, r, w, b),
                               lambda: (F.layer_norm(x + r, (cols,), w, b), x + r), 4),
        }
        for name, (ours, theirs, passes) in ops.items():
            case = f"{name} {rows}x{cols}"
            t = time_fns({"ours": ours, "torch": theirs}, device, reps=reps)
            t_ours, t_torch = t["ours"], t["torch"]
            gbytes = passes * rows * cols * esize / 1e9
            for impl, t in (("pyfastattn", t_ours), ("torch", t_torch)):
                rows_out.append({"case": case, "pass": "fwd", "impl": impl, "ms": t * 1e3,
                                 "gbps": gbytes / t, "vs_torch": t_torch / t if impl == "pyfastattn" else None})
            if name != "layer_norm":
                continue
            # forward + backward: x, dy read, y written, then x, dy read and dx written (minimum 5 passes)
            xg = x.clone().requires_grad_(True)
            wg, bg = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
            dy = torch.randn(rows, cols, generator=g).to(device, dtype)

            def fb(fn):
                def step():
                    out = fn(xg, (cols,), wg, bg)
                    torch.autograd.grad(out, (xg, wg, bg), dy)
                return step
            t = time_fns({"ours": fb(pyfastattn.layer_norm), "torch": fb(F.layer_norm)}, device, reps=reps)
            t_ours, t_torch = t["ours"], t["torch"]
            gbytes = 5 * rows * cols * esize / 1e9
            for impl, t in (("pyfastattn", t_ours), ("torch", t_torch)):
                rows_out.append({"case": case, "pass": "fwd+bwd", "impl": impl, "ms": t * 1e3,
                                 "gbps": gbytes / t, "vs_torch": t_torch / t if impl == "pyfastattn" else None})
    return rows_out
