"""Small forward+backward cases of every CUDA op, run under compute-sanitizer by
bench/gpu_check.sh: `python bench/sanitize_cases.py all` or a list of families."""
from __future__ import annotations

import os
import sys

import torch

import pyfastattn


def norm_cases(dev):
    for dt in (torch.float32, torch.bfloat16):
        # every kernel path: warp and block row groups, several rows per block, the staged
        # backward (8192-16384 columns; 260 rows: some blocks take two, alternating stages),
        # the forward's register limit (16384) and just past them
        for rows, cols in ((5, 7), (70, 64), (70, 300), (5, 1000), (5, 4097), (3, 8192), (3, 8193),
                           (260, 8192), (3, 16384), (3, 16385)):
            x = torch.randn(rows, cols, device=dev, dtype=dt, requires_grad=True)
            r = torch.randn(rows, cols, device=dev, dtype=dt, requires_grad=True)
            w = torch.randn(cols, device=dev, dtype=dt, requires_grad=True)
            b = torch.randn(cols, device=dev, dtype=dt, requires_grad=True)
            y, s = pyfastattn.add_layer_norm(x, r, w, b)
            strided = pyfastattn.layer_norm(x[::2], (cols,), w, b)  # unaligned rows: scalar path
            loss = y.float().sum() + s.float().sum() + strided.float().sum()
            (loss + pyfastattn.rms_norm(x, (cols,), w).float().sum()).backward()


def attention_cases(dev):
    f = getattr(pyfastattn, "scaled_dot_product_attention", None)
    if f is None:
        print("attention: not in this build")
        return
    for dt in (torch.float32, torch.bfloat16):
        for (lq, lk, d) in ((1, 1, 8), (37, 53, 64), (130, 70, 128), (65, 65, 256)):
            q = torch.randn(2, 4, lq, d, device=dev, dtype=dt, requires_grad=True)
            k = torch.randn(2, 2, lk, d, device=dev, dtype=dt, requires_grad=True)
            v = torch.randn(2, 2, lk, d, device=dev, dtype=dt, requires_grad=True)
            bias = torch.randn(2, 1, lq, lk, device=dev, dtype=dt, requires_grad=True)
            out = f(q, k, v, attn_mask=bias, enable_gqa=True)
            out2 = f(q, k, v, is_causal=True, enable_gqa=True)
            (out.float().sum() + out2.float().sum()).backward()
        if dt != torch.float32:  # the one-pass backward at head dim 128 (by default only up to 64)
            os.environ["PYFASTATTN_ATTN_BWD_DQ"] = "atomic"
            q, k, v = (torch.randn(2, 2, 130, 128, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
            bias = torch.randn(2, 2, 130, 130, device=dev, dtype=dt, requires_grad=True)
            (f(q, k, v, is_causal=True).float().sum() +
             f(q, k, v, attn_mask=bias, is_causal=True).float().sum()).backward()  # dMask from the key pass
            del os.environ["PYFASTATTN_ATTN_BWD_DQ"]
            # the sm_90a forward and one-pass backward (mma.sync elsewhere)
            os.environ["PYFASTATTN_ATTN_FWD_WGMMA"] = os.environ["PYFASTATTN_ATTN_BWD_WGMMA"] = "1"
            for lq, lk, d in ((130, 70, 128), (37, 200, 64)):
                q = torch.randn(2, 4, lq, d, device=dev, dtype=dt, requires_grad=True)
                k, v = (torch.randn(2, 2, lk, d, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
                bias = torch.randn(2, 4, lq, lk, device=dev, dtype=dt, requires_grad=True)
                (f(q, k, v, enable_gqa=True).float().sum() +
                 f(q, k, v, is_causal=True, enable_gqa=True).float().sum() +
                 # the masked variants (64-key forward tiles; dMask from the key pass)
                 f(q, k, v, attn_mask=bias, is_causal=True, enable_gqa=True).float().sum()).backward()
            del os.environ["PYFASTATTN_ATTN_FWD_WGMMA"], os.environ["PYFASTATTN_ATTN_BWD_WGMMA"]
        lens = torch.tensor([0, 0, 1, 38, 38, 131], device=dev, dtype=torch.int32)  # lengths 0, 1, 37, 0, 93
        tq = torch.randn(131, 4, 64, device=dev, dtype=dt, requires_grad=True)
        tk = torch.randn(131, 2, 64, device=dev, dtype=dt, requires_grad=True)
        tv = torch.randn(131, 2, 64, device=dev, dtype=dt, requires_grad=True)
        pyfastattn.varlen_attention(tq, tk, tv, lens, lens, 93, 93, is_causal=True).float().sum().backward()


def conv_cases(dev):
    if not hasattr(pyfastattn, "hex_conv2d"):
        print("conv: not in this build")
        return
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 8, 9, 11, device=dev, dtype=dt, requires_grad=True)
        w = torch.randn(16, 8, 3, 3, device=dev, dtype=dt, requires_grad=True)
        y = pyfastattn.conv2d(x, w, padding=1, stride=2)
        wh = torch.randn(16, 8, 7, device=dev, dtype=dt, requires_grad=True)
        z = pyfastattn.hex_conv2d(x, wh)
        p = pyfastattn.hex_max_pool2d(z)
        a = pyfastattn.hex_avg_pool2d(z)
        nb = pyfastattn.hex.conv_neighbors(pyfastattn.hex.grid_cells(9, 11), radius=1).to(dev)
        nb[::5, 2] = -1  # holes
        wi = torch.randn(16, 8, nb.shape[1], device=dev, dtype=dt, requires_grad=True)
        i = pyfastattn.indexed_conv(x.flatten(2), wi, nb)
        (y.float().sum() + p.float().sum() + a.float().sum() + i.float().sum()).backward()


FAMILIES = {"norm": norm_cases, "attention": attention_cases, "conv": conv_cases}

if __name__ == "__main__":
    names = sys.argv[1:] or ["all"]
    if names == ["all"]:
        names = list(FAMILIES)
    for n in names:
        FAMILIES[n]("cuda")
        torch.cuda.synchronize()
        print(f"{n}: ok")
