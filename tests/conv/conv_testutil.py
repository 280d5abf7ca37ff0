"""Helpers shared by the conv tests: run an op and its reference with the same inputs and
output gradient, and compare outputs and every input gradient by DESIGN.md's rules."""
from __future__ import annotations

import pytest
import torch

from pyfastattn.testing import assert_matches_reference

CUDA = pytest.mark.cuda
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
HALF = [torch.float16, torch.bfloat16]


def dtypes_for(device):
    return [torch.float64, torch.float32, *HALF] if device == "cpu" else [torch.float32, *HALF]


def run(fn, tensors, gout):
    """fn(*leaves) and d(sum(out * gout))/d(leaves that are float tensors)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for t in tensors]
    out = fn(*leaves)
    diff = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad((out.float() * gout.to(out.device, torch.float32)).sum(), diff)
    return out, grads


def check_parity(ours, ref, tensors64, dtype, device, *, what="op", same_dtype_ref=None):
    """Compares ours (in dtype, on device) with ref in float64 on the CPU.

    tensors64: the float64 CPU inputs (non-float entries pass through unchanged). For
    float16/bfloat16 the FlashAttention criterion needs torch's own result in that dtype:
    same_dtype_ref (default ref) run on the converted inputs.
    """
    conv = lambda t, dev, dt: t.to(dev, dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else (
        t.to(dev) if isinstance(t, torch.Tensor) else t)
    out_ref, g_ref = run(ref, tensors64, torch.ones(()))
    gout = torch.randn(out_ref.shape, dtype=torch.float64)
    out_ref, g_ref = run(ref, tensors64, gout)
    out, g = run(ours, [conv(t, device, dtype) for t in tensors64], gout)
    same = None
    if dtype in HALF:
        same_fn = same_dtype_ref or ref
        try:
            same = run(same_fn, [conv(t, "cpu", dtype) for t in tensors64], gout)
        except RuntimeError:  # torch has no CPU kernel in this dtype: compute on the device
            same = run(same_fn, [conv(t, device, dtype) for t in tensors64], gout)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert_matches_reference(out, out_ref, same[0] if same else None, what=f"{what} output")
    assert len(g) == len(g_ref)
    for i, (a, b) in enumerate(zip(g, g_ref)):
        assert_matches_reference(a, b, same[1][i] if same else None, what=f"{what} grad {i}")
