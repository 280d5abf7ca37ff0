"""GPU time per call, ours vs PyTorch, split into device time and eager wall time.

device: the summed durations of every GPU kernel, memset and copy one call launches
(torch.profiler, CUDA activity only), i.e. the speed of the kernels with host overhead removed;
wall: back-to-back eager calls between CUDA events (pyfastattn.benchmark.common.time_fn), what
a model sees, host overhead included. Ratios are torch / ours (> 1: ours is faster).

  python bench/kernel_time.py [norm] [norm-staged] [attention] [attention-tiles] [conv] [--json out.json]
  (needs a GPU)

conv also lists the kernels that take the time in our forward+backward, per case; norm-staged
times our layer norm forward+backward with the staged backward at its default widths, at every
width from 1024, and nowhere; attention-tiles times our forward at D = 96 / 128 with 64- and
32-key tiles and at D = 64 / 96 / 128 with the sm_90a wgmma kernel, and forward+backward (also with
a bias that needs its gradient) with the one-pass (atomic dQ) and the two-pass backward, at
D = 128 each with 128- and 64-key blocks, and at D = 64 / 96 / 128 the sm_90a wgmma one pass.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import pyfastattn
from pyfastattn.benchmark.common import time_fn


def device_activities(fn, iters: int = 10) -> list[tuple[str, float]]:
    """[(name, us per call)] of every GPU activity (kernel, memset, copy) one call of fn launches."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return [(e.key, (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)) / iters)
            for e in prof.key_averages()]


def device_seconds(fn) -> float:
    """Summed GPU activity per call of fn, in seconds."""
    return sum(us for _, us in device_activities(fn)) / 1e6


def copy_row():
    """The card's device-to-device copy rate (bytes read + written), the ceiling for the norms."""
    x = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    t = device_seconds(lambda: y.copy_(x))
    row = {"case": "copy 512 MiB bf16", "unit": "GB/s", "device_us": t * 1e6, "rate": 2 * x.numel() * 2 / t / 1e9}
    print(f"{row['case']:44s} device {t * 1e6:9.1f} us = {row['rate']:7.1f} GB/s (read + write)", flush=True)
    return [row]


def norm_rows():
    rows = copy_row()
    dt = torch.bfloat16
    for n, c in [(32768, 768), (16384, 1024), (8192, 4096), (4096, 8192), (2048, 16384), (1024, 65536),
                 (65536, 128)]:
        x = torch.randn(n, c, device="cuda", dtype=dt, requires_grad=True)
        w = torch.randn(c, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(c, device="cuda", dtype=dt, requires_grad=True)
        dy = torch.randn(n, c, device="cuda", dtype=dt)
        nbytes = n * c * x.element_size()
        for name, ours, theirs, passes in [
            ("layer_norm fwd", lambda: pyfastattn.layer_norm(x.detach(), (c,), w.detach(), b.detach()),
             lambda: F.layer_norm(x.detach(), (c,), w.detach(), b.detach()), 2),
            ("rms_norm fwd", lambda: pyfastattn.rms_norm(x.detach(), (c,), w.detach()),
             lambda: F.rms_norm(x.detach(), (c,), w.detach()), 2),
            ("layer_norm fwd+bwd", lambda: torch.autograd.grad(pyfastattn.layer_norm(x, (c,), w, b), (x, w, b), dy),
             lambda: torch.autograd.grad(F.layer_norm(x, (c,), w, b), (x, w, b), dy), 5),
        ]:
            rows.append(measure(f"{name} {n}x{c}", ours, theirs, "GB/s", passes * nbytes / 1e9))
    return rows


def env_setter(*names):
    """A setting_rows `configure`: sets the environment variables `names` to the value (one
    name) or to the tuple's values (several; a None entry or value unsets), which the library
    reads at every call (the CUDA launch code, or Python for PYFASTATTN_ATTN_BWD_DQ)."""
    def configure(value):
        values = value if len(names) > 1 and value is not None else (value,) * len(names)
        for name, v in zip(names, values):
            if v is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = v
    return configure


def setting_rows(case, fn, configure, settings, unit, amount):
    """Device time of fn under each setting ({label: value}, applied by configure(value); None =
    the default), one row per setting, in one process; configure(None) at the end."""
    rows = []
    for label, value in settings.items():
        configure(value)
        t = device_seconds(fn)
        rows.append({"case": case, "setting": label, "device_us_ours": t * 1e6, "unit": unit,
                     "rate_ours": amount / t})
        print(f"{case:36s} {label:22s} device {t * 1e6:9.1f} us ({amount / t:7.1f} {unit})", flush=True)
    configure(None)
    return rows


def norm_staged_rows():
    """Our layer_norm fwd+bwd device time with the staged backward from the default width, from
    1024 columns (every aligned row up to 16384 staged) and never: where it pays
    (PYFASTATTN_NORM_STAGED_MIN_COLS)."""
    rows, dt = [], torch.bfloat16
    settings = {"default": None, "staged from 1024": "1024", "never staged": str(1 << 40)}
    for n, c in [(16384, 1024), (8192, 4096), (4096, 8192), (2048, 16384)]:
        x = torch.randn(n, c, device="cuda", dtype=dt, requires_grad=True)
        w = torch.randn(c, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(c, device="cuda", dtype=dt, requires_grad=True)
        dy = torch.randn(n, c, device="cuda", dtype=dt)
        fn = lambda: torch.autograd.grad(pyfastattn.layer_norm(x, (c,), w, b), (x, w, b), dy)
        rows += setting_rows(f"layer_norm fwd+bwd {n}x{c}", fn, env_setter("PYFASTATTN_NORM_STAGED_MIN_COLS"),
                             settings, "GB/s", 5 * n * c * x.element_size() / 1e9)
    return rows


def attention_tile_rows():
    """Our bf16 attention two ways each: the unmasked forward at D = 96 / 128 with 64-key tiles
    (the default) and 32-key tiles (PYFASTATTN_ATTN_FWD_KEY_TILE=32), and at D = 64 / 96 / 128, with
    and without a bias, the sm_90a warpgroup-MMA forward (PYFASTATTN_ATTN_FWD_WGMMA=1; the
    mma.sync one again where the device or build has no sm_90a code); forward+backward with the
    one-pass backward (dQ by atomics; with a bias, dMask from the same pass) and the two-pass
    one (PYFASTATTN_ATTN_BWD_DQ), at D = 128 each with the key pass's 128-key blocks (8 warps,
    the default) and 64-key blocks (PYFASTATTN_ATTN_BWD_KEY_BLOCK=64), and at D = 64 / 96 / 128 the
    sm_90a one pass on warpgroup MMA (PYFASTATTN_ATTN_BWD_WGMMA=1)."""
    rows, dt = [], torch.bfloat16
    for b, h, l, d, causal, bias in [(4, 16, 4096, 128, False, False), (4, 16, 4096, 128, True, False),
                                     (16, 16, 1024, 128, False, False), (4, 16, 4096, 96, False, False),
                                     (4, 32, 4096, 64, False, False), (8, 16, 2048, 128, False, True),
                                     (8, 32, 2048, 64, False, True)]:
        q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
        m = torch.randn(b, h, l, l, device="cuda", dtype=dt, requires_grad=True) if bias else None
        do = torch.randn(b, h, l, d, device="cuda", dtype=dt)
        ins = [q, k, v] + ([m] if bias else [])
        flops = 4.0 * b * h * l * l * d / (2 if causal else 1)
        name = f"B={b} H={h} L={l} D={d}{' causal' if causal else ''}{' bias+grad' if bias else ''}"
        fwd = lambda: pyfastattn.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(),
                                                              attn_mask=None if m is None else m.detach(),
                                                              is_causal=causal)
        fwd_bwd = lambda: torch.autograd.grad(
            pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal), ins, do)
        # the forward: mma.sync (unmasked D > 64: 64-key tiles, the default, or 32), and the
        # sm_90a wgmma kernel at D = 64 / 96 / 128
        settings = {"mma.sync (default)": (None, None)}
        if d > 64 and not bias:
            settings = {"64-key tiles (default)": (None, None), "32-key tiles": ("32", None)}
        if d in (64, 96, 128):  # 96 runs at 128 there
            settings["wgmma"] = (None, "1")
        if len(settings) > 1:
            rows += setting_rows(f"fwd {name}", fwd,
                                 env_setter("PYFASTATTN_ATTN_FWD_KEY_TILE", "PYFASTATTN_ATTN_FWD_WGMMA"), settings,
                                 "TFLOP/s", flops / 1e12)
        modes = {"one pass (atomic dQ)": ("atomic", None, None), "two pass": ("pass", None, None)}
        if d == 128:  # key blocks of 128 keys (8 warps, the default) and of 64 (4 warps)
            modes = {f"{mode}, {keys}-key blocks": (dq, block, None) for mode, (dq, _, _) in modes.items()
                     for keys, block in (("128", None), ("64", "64"))}
        if d in (64, 96, 128):  # the sm_90a one pass (the mma.sync one where there is no sm_90a code)
            modes["wgmma one pass"] = ("atomic", None, "1")
        rows += setting_rows(f"fwd+bwd {name}", fwd_bwd,
                             env_setter("PYFASTATTN_ATTN_BWD_DQ", "PYFASTATTN_ATTN_BWD_KEY_BLOCK",
                                        "PYFASTATTN_ATTN_BWD_WGMMA"), modes,
                             "TFLOP/s", 3.5 * flops / 1e12)
    return rows


def attention_rows():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows = []
    dt = torch.bfloat16
    for b, h, l, d, causal, bias in [(4, 16, 4096, 128, False, False), (4, 16, 4096, 128, True, False),
                                     (4, 32, 4096, 64, False, False), (4, 32, 4096, 64, True, False),
                                     (8, 16, 2048, 128, False, True), (8, 32, 2048, 64, False, True)]:
        q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
        m = torch.randn(b, h, l, l, device="cuda", dtype=dt, requires_grad=True) if bias else None
        do = torch.randn(b, h, l, d, device="cuda", dtype=dt)
        ins = [q, k, v] + ([m] if bias else [])
        flops = 4.0 * b * h * l * l * d / (2 if causal else 1)
        # torch's yardstick: its flash backend where it applies, else (bias) its efficient backend
        backend = SDPBackend.EFFICIENT_ATTENTION if bias else SDPBackend.FLASH_ATTENTION

        def torch_sdpa(*t):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*t[:3], attn_mask=t[3] if bias else None, is_causal=causal)

        def ours_sdpa(*t):
            return pyfastattn.scaled_dot_product_attention(*t[:3], attn_mask=t[3] if bias else None, is_causal=causal)

        name = f"B={b} H={h} L={l} D={d}{' causal' if causal else ''}{' bias+grad' if bias else ''}"
        det = [t.detach() for t in ins]
        rows.append(measure(f"{name} fwd", lambda: ours_sdpa(*det), lambda: torch_sdpa(*det), "TFLOP/s", flops / 1e12,
                            ref=backend.name.lower()))
        rows.append(measure(f"{name} fwd+bwd", lambda: torch.autograd.grad(ours_sdpa(*ins), ins, do),
                            lambda: torch.autograd.grad(torch_sdpa(*ins), ins, do), "TFLOP/s", 3.5 * flops / 1e12,
                            ref=backend.name.lower()))
    return rows


def kernel_breakdown(fn, top: int = 6) -> list[tuple[str, float]]:
    """The `top` GPU activities of one call of fn by device time: [(name, us per call)]."""
    return sorted((x for x in device_activities(fn) if x[1] > 0), key=lambda x: -x[1])[:top]


def conv_rows():
    """hex_conv2d against the masked F.conv2d (cuDNN) and conv2d against F.conv2d, with the
    kernels that take the time in our forward+backward (where the gap is, per kernel)."""
    from pyfastattn import hex as hx
    rows = []
    dt = torch.bfloat16
    mask = hx.hex_mask(1).to("cuda", dt)
    cases = [("hex 13x13 32->64", 256, 32, 64, 13, None, 1), ("hex 9x9 32->64", 256, 32, 64, 9, None, 1),
             ("hex 49x49 32->64", 256, 32, 64, 49, None, 1), ("hex 13x13 2->32", 256, 2, 32, 13, None, 1),
             ("conv2d 14x14x2->32 k3 s2", 256, 2, 32, 14, 3, 2), ("conv2d 14x14x2->64 k5 s2", 256, 2, 64, 14, 5, 2),
             ("conv2d 32x32x3->32 k3 s1", 128, 3, 32, 32, 3, 1), ("conv2d 32x32x32->64 k3 s1", 128, 32, 64, 32, 3, 1)]
    for case, n, cin, cout, size, k, s in cases:
        x = torch.randn(n, cin, size, size, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(cout, device="cuda", dtype=dt, requires_grad=True)
        if k is None:
            w = torch.randn(cout, cin, 7, device="cuda", dtype=dt, requires_grad=True)
            wsq = hx.hex_to_square_weight(w.detach()).requires_grad_()
            ours, ours_in = (lambda x, w, b: pyfastattn.hex_conv2d(x, w, b)), [x, w, b]
            theirs, theirs_in = (lambda x, w, b: F.conv2d(x, w * mask, b, padding=1)), [x, wsq, b]
            macs = n * size * size * cout * cin * 7
        else:
            w = torch.randn(cout, cin, k, k, device="cuda", dtype=dt, requires_grad=True)
            ours, ours_in = (lambda x, w, b, s=s, k=k: pyfastattn.conv2d(x, w, b, s, k // 2)), [x, w, b]
            theirs, theirs_in = (lambda x, w, b, s=s, k=k: F.conv2d(x, w, b, s, k // 2)), [x, w, b]
            so = (size + 2 * (k // 2) - k) // s + 1
            macs = n * so * so * cout * cin * k * k
        dy = ours(*ours_in).detach().clone().normal_()
        det_o, det_t = [t.detach() for t in ours_in], [t.detach() for t in theirs_in]
        rows.append(measure(f"{case} fwd", lambda: ours(*det_o), lambda: theirs(*det_t), "TFLOP/s", 2 * macs / 1e12))
        fb_ours = lambda: torch.autograd.grad(ours(*ours_in), ours_in, dy)
        rows.append(measure(f"{case} fwd+bwd", fb_ours, lambda: torch.autograd.grad(theirs(*theirs_in), theirs_in, dy),
                            "TFLOP/s", 6 * macs / 1e12))
        rows[-1]["kernels_ours"] = kernel_breakdown(fb_ours)
        for name, us in rows[-1]["kernels_ours"]:
            print(f"    {us:9.1f} us  {name[:100]}", flush=True)
    return rows


def measure(case, ours, theirs, unit, amount, ref="torch"):
    dev_o, dev_t = device_seconds(ours), device_seconds(theirs)
    wall_o, wall_t = time_fn(ours, "cuda", reps=20), time_fn(theirs, "cuda", reps=20)
    row = {"case": case, "torch_ref": ref, "unit": unit, "device_us_ours": dev_o * 1e6, "device_us_torch": dev_t * 1e6,
           "device_ratio": dev_t / dev_o, "rate_ours": amount / dev_o, "rate_torch": amount / dev_t,
           "wall_us_ours": wall_o * 1e6, "wall_us_torch": wall_t * 1e6, "wall_ratio": wall_t / wall_o}
    print(f"{case:44s} {ref:19s} device {dev_o * 1e6:9.1f} us vs {dev_t * 1e6:9.1f} us = {dev_t / dev_o:5.2f}x "
          f"({amount / dev_o:7.1f} vs {amount / dev_t:7.1f} {unit}) | wall {wall_o * 1e6:9.1f} vs "
          f"{wall_t * 1e6:9.1f} us = {wall_t / wall_o:5.2f}x", flush=True)
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("families", nargs="*", default=["norm", "attention"])
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_time.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), "bf16")
    out = []
    for fam in a.families:
        out += {"norm": norm_rows, "norm-staged": norm_staged_rows, "attention": attention_rows,
                "attention-tiles": attention_tile_rows, "conv": conv_rows}[fam]()
        if a.json:  # after every family, so a run cut short by a timeout keeps what it measured
            with open(a.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "rows": out}, f, indent=1)
