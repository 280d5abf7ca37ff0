"""Convolution benchmarks: forward and forward+backward times and ratios.

Hexagonal cases (Auger-like: N=256, 2->32 and 32->64 channels, 9x9 and 13x13 footprints,
plus a whole array of 1660 stations in a 48x48 box) compare pyfastattn.hex_conv2d (and
indexed_conv on the irregular array) with:
- "masked F.conv2d": F.conv2d on the axial tensor with the (2k+1)^2 kernel masked to the
  hexagon (oneDNN on the CPU, cuDNN on the GPU) -- the row's `vs_torch`;
- HexagDLy (`hexagdly.Conv2d`, its offset layout) and IndexedConv (`indexedconv`, its
  gather + matmul over an index table), each on its own layout with the same cell count,
  when installed -- `ours_speedup` on their rows is their time / pyfastattn's.
conv2d cases (lecture shapes: 14x14x2 -> 32/64 with 3x3/5x5 kernels, stride 1 and 2;
CIFAR-like 32x32x3 -> 32 -> 64) compare pyfastattn.conv2d with F.conv2d.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import pyfastattn
from pyfastattn import hex as hx

from .common import time_fns


def _hex_cases(quick: bool):
    n = 32 if quick else 256
    cases = [("auger 13x13 32->64", n, 32, 64, 13)]
    if not quick:
        cases += [("auger 13x13 2->32", n, 2, 32, 13), ("auger 9x9 2->32", n, 2, 32, 9),
                  ("auger 9x9 32->64", n, 32, 64, 9)]
    return cases


def _conv_cases(quick: bool):
    if quick:
        return [("14x14x2->32 k3 s1", 64, 2, 32, 14, 3, 1), ("32x32x3->32 k3 s1", 16, 3, 32, 32, 3, 1)]
    return [("14x14x2->32 k3 s1", 256, 2, 32, 14, 3, 1), ("14x14x2->64 k3 s1", 256, 2, 64, 14, 3, 1),
            ("14x14x2->32 k5 s1", 256, 2, 32, 14, 5, 1), ("14x14x2->32 k3 s2", 256, 2, 32, 14, 3, 2),
            ("14x14x2->64 k5 s2", 256, 2, 64, 14, 5, 2), ("32x32x3->32 k3 s1", 128, 3, 32, 32, 3, 1),
            ("32x32x32->64 k3 s1", 128, 32, 64, 32, 3, 1)]


def _auger_array(target: int = 1660):
    """Axial cells of a hexagonal array of about `target` stations in a 48x48 box, with a
    ragged border and a few missing stations (deterministic)."""
    k = 23
    cells = hx.taps(k) + k  # 1657 cells of the radius-23 hexagon
    g = torch.Generator().manual_seed(1660)
    extra = torch.tensor([[-1, k], [k, -1], [2 * k + 1, k], [k, 2 * k + 1], [-1, k + 1], [2 * k + 1, k - 1],
                          [k + 1, -1], [k - 1, 2 * k + 1]]) + 1
    cells = torch.cat([cells + 1, extra])
    drop = torch.randperm(cells.shape[0], generator=g)[: cells.shape[0] - target]
    keep = torch.ones(cells.shape[0], dtype=torch.bool)
    keep[drop] = False
    return cells[keep]


def _peers(cin, cout, R, Q, cells, device, dtype):
    """{name: (module, input)} for HexagDLy and IndexedConv, when installed."""
    peers = {}
    try:
        import hexagdly
        peers["hexagdly"] = (hexagdly.Conv2d(cin, cout, 1, 1).to(device, dtype), (R, Q))
    except ImportError:
        pass
    try:
        from indexedconv.engine import IndexedConv
        from indexedconv.utils import neighbours_extraction
        index = torch.full((1, 1, R, Q), -1.0)
        index[0, 0, cells[:, 0], cells[:, 1]] = torch.arange(cells.shape[0], dtype=torch.float)
        indices = neighbours_extraction(index, "Hex", 1)
        peers["indexedconv"] = (IndexedConv(cin, cout, indices).to(device, dtype), cells.shape[0])
    except ImportError:
        pass
    return peers


def _timings(fns: dict, device, reps: int, params) -> dict:
    """{impl: (fwd seconds, fwd+bwd seconds)}; fns[impl] = (forward closure, its inputs).
    The implementations are timed in interleaved rounds, one pass at a time."""
    fwd, fwdbwd = {}, {}
    for impl, (fn, inputs) in fns.items():
        def f(fn=fn):
            with torch.no_grad():
                fn()

        def fb(fn=fn, targets=inputs + params.get(impl, [])):
            y = fn()
            torch.autograd.grad(y, targets, torch.ones_like(y))
        fwd[impl], fwdbwd[impl] = f, fb
    t_fwd, t_fb = time_fns(fwd, device, reps=reps), time_fns(fwdbwd, device, reps=reps)
    return {impl: (t_fwd[impl], t_fb[impl]) for impl in fns}


def _rows(case: str, times: dict, ref: str, flops: float) -> list[dict]:
    rows = []
    for p, name in enumerate(("fwd", "fwd+bwd")):
        ours = times["pyfastattn"][p]
        for impl, t in times.items():
            row = {"case": case, "pass": name, "impl": impl, "ms": t[p] * 1e3,
                   "tflops": flops * (1 if p == 0 else 3) / t[p] / 1e12}
            if impl == "pyfastattn":
                row["vs_torch"] = times[ref][p] / ours
            else:
                row["ours_speedup"] = t[p] / ours
            rows.append(row)
    return rows


def run(device: str, dtype: torch.dtype, quick: bool) -> list[dict]:
    reps = 3 if quick else (30 if device == "cuda" else 11)
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device, dtype)
    rows = []
    mask = hx.hex_mask(1).to(device, dtype)
    for case, N, cin, cout, S in _hex_cases(quick):
        x = rnd(N, cin, S, S).requires_grad_()
        w = (rnd(cout, cin, 7) / math.sqrt(7 * cin)).requires_grad_()
        b = rnd(cout).requires_grad_()
        wsq = hx.hex_to_square_weight(w.detach()).requires_grad_()
        cells = hx.grid_cells(S, S)
        fns = {"pyfastattn": (lambda: pyfastattn.hex_conv2d(x, w, b), [x, w, b]),
               "masked F.conv2d": (lambda: F.conv2d(x, wsq * mask, b, padding=1), [x, wsq, b])}
        params = {}
        for name, (mod, shape) in _peers(cin, cout, S, S, cells, device, dtype).items():
            xp = rnd(N, cin, *shape) if isinstance(shape, tuple) else rnd(N, cin, shape)
            xp.requires_grad_()
            fns[name] = ((lambda m=mod, xi=xp: m(xi)), [xp])
            params[name] = list(mod.parameters())
        times = _timings(fns, device, reps, params)
        rows += _rows(f"hex {case}", times, "masked F.conv2d", 2.0 * N * S * S * cout * cin * 7)
    # whole array: 1660 stations in a 48x48 box
    N = 32 if quick else 256
    cells = _auger_array()
    R, Q = (int(v) + 1 for v in cells.max(0).values)
    nb = hx.conv_neighbors(cells, 1).to(device)
    for cin, cout in ((2, 32),) if quick else ((2, 32), (32, 64)):
        x = rnd(N, cin, R, Q).requires_grad_()
        xi = rnd(N, cin, cells.shape[0]).requires_grad_()
        w = (rnd(cout, cin, 7) / math.sqrt(7 * cin)).requires_grad_()
        b = rnd(cout).requires_grad_()
        wsq = hx.hex_to_square_weight(w.detach()).requires_grad_()
        fns = {"pyfastattn": (lambda: pyfastattn.hex_conv2d(x, w, b), [x, w, b]),
               "pyfastattn indexed": (lambda: pyfastattn.indexed_conv(xi, w, nb, b), [xi, w, b]),
               "masked F.conv2d": (lambda: F.conv2d(x, wsq * mask, b, padding=1), [x, wsq, b])}
        params = {}
        for name, (mod, shape) in _peers(cin, cout, R, Q, cells, device, dtype).items():
            xp = rnd(N, cin, *shape) if isinstance(shape, tuple) else rnd(N, cin, shape)
            xp.requires_grad_()
            fns[name] = ((lambda m=mod, xi_=xp: m(xi_)), [xp])
            params[name] = list(mod.parameters())
        times = _timings(fns, device, reps, params)
        rows += _rows(f"hex array {cells.shape[0]} in {R}x{Q} {cin}->{cout}", times, "masked F.conv2d",
                      2.0 * N * R * Q * cout * cin * 7)
    for case, N, cin, cout, S, k, s in _conv_cases(quick):
        x = rnd(N, cin, S, S).requires_grad_()
        w = (rnd(cout, cin, k, k) / math.sqrt(k * k * cin)).requires_grad_()
        b = rnd(cout).requires_grad_()
        fns = {"pyfastattn": (lambda: pyfastattn.conv2d(x, w, b, s, k // 2), [x, w, b]),
               "F.conv2d": (lambda: F.conv2d(x, w, b, s, k // 2), [x, w, b])}
        times = _timings(fns, device, reps, {})
        So = (S + 2 * (k // 2) - k) // s + 1
        rows += _rows(f"conv2d {case}", times, "F.conv2d", 2.0 * N * So * So * cout * cin * k * k)
    return rows
