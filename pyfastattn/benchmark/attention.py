"""Attention benchmarks: pyfastattn.scaled_dot_product_attention vs torch SDPA (each backend
separately where it accepts the inputs, and the plain math path), and flash_attn if importable.

TFLOP/s counts 4 B H Lq Lk D for the forward and 2.5x that for the backward (halved when
causal), the usual FlashAttention convention; "vs_torch" is torch SDPA's (default dispatch)
time divided by ours. Peak memory is reported on CUDA (torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import pyfastattn

from .common import time_fns


def _cases(device: str, quick: bool):
    """(name, B, H, L, D, causal, bias): B * L = 16k on CUDA as in the issue's grid."""
    if quick:
        return [("L=512 D=64", 2, 4, 512, 64, False, False),
                ("L=512 D=64 causal", 2, 4, 512, 64, True, False),
                ("L=256 D=64 bias(B,H,N,N)", 2, 4, 256, 64, False, True)]
    if device == "cuda":
        cases = []
        for d in (64, 128):
            for l in (512, 1024, 2048, 4096, 8192, 16384):
                b, h = max(1, 16384 // l), 2048 // d
                cases.append((f"L={l} D={d}", b, h, l, d, False, False))
                cases.append((f"L={l} D={d} causal", b, h, l, d, True, False))
                if l <= 4096:  # the (B, H, L, L) bias itself is 4 GiB at L=4k fp16
                    cases.append((f"L={l} D={d} bias(B,H,L,L)", b, h, l, d, False, True))
        return cases
    return [("(2,8,1024,64)", 2, 8, 1024, 64, False, False),
            ("(1,8,4096,64)", 1, 8, 4096, 64, False, False),
            ("(1,8,4096,64) causal", 1, 8, 4096, 64, True, False),
            ("ParT (64,8,128,64) bias(B,H,N,N)", 64, 8, 128, 64, False, True),
            ("(2,8,1024,64) bias(B,H,N,N)", 2, 8, 1024, 64, False, True)]


def _flops(b, h, l, d, causal):
    f = 4.0 * b * h * l * l * d
    return f / 2 if causal else f


def _torch_backends(device):
    """(label, context manager factory or None) for torch SDPA."""
    out = [("torch", None)]
    if device != "cuda":
        return out
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return out
    for label, be in (("torch-flash", "FLASH_ATTENTION"), ("torch-efficient", "EFFICIENT_ATTENTION"),
                      ("torch-cudnn", "CUDNN_ATTENTION"), ("torch-math", "MATH")):
        if hasattr(SDPBackend, be):
            out.append((label, lambda be=be: sdpa_kernel(getattr(SDPBackend, be))))
    return out


def _flash_attn():
    try:
        from flash_attn import flash_attn_func  # type: ignore
        return flash_attn_func
    except Exception:
        return None


def _peak_mb(device, fn):
    """Runs fn once; on CUDA, returns the extra memory it peaked at (MiB)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(device: str, dtype: torch.dtype, quick: bool) -> list[dict]:
    # CPU: 7 single calls after 2 warm-ups; with 3 the median of a shared 2-core VM moved by 30 %
    reps = 3 if quick else (10 if device == "cuda" else 7)
    warmup = 1 if quick else 2
    g = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    flash = _flash_attn() if device == "cuda" and dtype in (torch.float16, torch.bfloat16) else None
    for name, b, h, l, d, causal, bias in _cases(device, quick):
        if device == "cuda" and dtype == torch.float32 and l > 4096:
            continue  # float32 runs on CUDA cores: the long cases would take minutes
        q, k, v, dout = (torch.randn(b, h, l, d, generator=g).to(device, dtype) for _ in range(4))
        mask = torch.randn(b, h, l, l, generator=g).to(device, dtype) if bias else None
        impls = [("pyfastattn", pyfastattn.scaled_dot_product_attention, None)]
        # torch's math path forms the (L, L) matrices: slow and memory-bound past L = 2k
        impls += [(label, F.scaled_dot_product_attention, ctx) for label, ctx in _torch_backends(device)
                  if label != "torch-math" or l <= 2048]
        if flash is not None and not bias:
            impls.append(("flash_attn", flash, None))
        flops = _flops(b, h, l, d, causal)
        steps = {"fwd": {}, "fwd+bwd": {}}  # pass -> {impl: step}, the impls that accept the inputs
        peaks = {}
        for label, fn, ctx in impls:
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            m = mask.clone().requires_grad_() if mask is not None else None
            targets = leaves + ([m] if m is not None else [])
            if label == "flash_attn":  # (B, L, H, D) layout
                lv = [t.detach().transpose(1, 2).contiguous().requires_grad_() for t in leaves]
                call = lambda lv=lv: flash(*lv, causal=causal).transpose(1, 2)
                targets = lv
            else:
                call = lambda fn=fn, leaves=leaves, m=m: fn(*leaves, attn_mask=m, is_causal=causal)

            def fwd(call=call):
                with torch.no_grad():
                    return call()

            def fwd_bwd(call=call, targets=targets):
                out = call()
                return torch.autograd.grad(out, targets, dout)

            for pass_name, step in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                def in_ctx(step=step, ctx=ctx):
                    with (ctx() if ctx is not None else contextlib.nullcontext()):
                        return step()
                try:
                    peaks[(label, pass_name)] = _peak_mb(device, in_ctx)
                except (RuntimeError, NotImplementedError) as e:  # backend refuses the inputs
                    if "out of memory" in str(e):
                        torch.cuda.empty_cache()
                    continue
                steps[pass_name][label] = in_ctx
        times = {}
        for pass_name, f in (("fwd", flops), ("fwd+bwd", 3.5 * flops)):
            # interleaved rounds over the implementations (see time_fns)
            for label, t in time_fns(steps[pass_name], device, warmup=warmup, reps=reps).items():
                times[(label, pass_name)] = t
                rows.append({"case": name, "impl": label, "pass": pass_name, "ms": t * 1e3,
                             "tflops": f / t / 1e12, "peak_mb": peaks[(label, pass_name)]})
        for r in rows:
            if r["case"] == name and r["impl"] == "pyfastattn" and ("torch", r["pass"]) in times:
                r["vs_torch"] = times[("torch", r["pass"])] / times[("pyfastattn", r["pass"])]
    return rows
