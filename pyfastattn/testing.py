"""Parity checks as DESIGN.md's numerics section defines them (usable by users too).

`assert_matches_reference(out, ref, torch_same_dtype)` judges a result against a float64
reference:
- float64: max abs error <= 1e-10 * max|ref| (plus a tiny absolute floor);
- float32: ||out - ref|| / ||ref|| <= 1e-5 and max abs error <= 1e-4 * max|ref|;
  (float64 and float32 pass outright when every error is under `atol`, default 1e-7, so
  a reference that is rounding noise around zero, like d(layer_norm)/dx with one column,
  does not fail a relative test);
- float16 / bfloat16: max|out - ref| <= 2 * max|torch_same_dtype - ref| + 1e-5
  (FlashAttention's criterion: no worse than twice PyTorch's own error in that dtype),
  plus one rounding step of the dtype at the reference's scale (eps * max|ref|), so that a
  tensor of a few elements, where PyTorch may round luckily, does not fail by chance.
NaN/Inf must sit exactly where the reference has them.
"""
from __future__ import annotations

import torch

__all__ = ["assert_matches_reference", "error_report", "wgmma_selftest"]


def _finite_pattern_check(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    out_nan, ref_nan = torch.isnan(out), torch.isnan(ref)
    if not torch.equal(out_nan, ref_nan):
        raise AssertionError(f"{what}: NaN pattern differs from the reference "
                             f"({int(out_nan.sum())} NaN in output, {int(ref_nan.sum())} in reference)")
    out_inf, ref_inf = torch.isinf(out), torch.isinf(ref)
    if not torch.equal(out_inf, ref_inf) or not torch.equal(out[out_inf], ref[ref_inf]):
        raise AssertionError(f"{what}: Inf pattern differs from the reference")


def error_report(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out64 = out.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    finite = torch.isfinite(ref64)
    diff = (out64 - ref64)[finite]
    refs = ref64[finite]
    scale = float(refs.abs().max()) if refs.numel() else 0.0
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    ref_norm = float(refs.norm()) if refs.numel() else 0.0
    rel = float(diff.norm()) / ref_norm if ref_norm > 0 else float(diff.norm())
    return {"max_abs": max_abs, "scale": scale, "rel_l2": rel}


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor,
                             torch_same_dtype: torch.Tensor | None = None,
                             what: str = "output", atol: float = 1e-7,
                             relative_to_torch: bool = False) -> None:
    """Raises AssertionError with the numbers when `out` misses DESIGN.md's tolerance.

    relative_to_torch=True applies the half-precision rule (2x PyTorch's own error in the
    same dtype) to float32 too: for ill-conditioned cases no float32 code meets 1e-5.
    """
    if out.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    out64 = out.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    _finite_pattern_check(out64, ref64, what)
    if out64.numel() == 0:
        return
    rep = error_report(out64, ref64)
    dt = out.dtype
    if dt in (torch.float64, torch.float32) and rep["max_abs"] <= atol:
        return
    if dt == torch.float64:
        tol = 1e-10 * rep["scale"] + 1e-12
        ok = rep["max_abs"] <= tol
        rule = f"max_abs <= {tol:.3g}"
    elif dt == torch.float32 and not relative_to_torch:
        ok = rep["rel_l2"] <= 1e-5 and rep["max_abs"] <= 1e-4 * rep["scale"] + 1e-7
        rule = f"rel_l2 <= 1e-5 and max_abs <= {1e-4 * rep['scale'] + 1e-7:.3g}"
    else:
        if torch_same_dtype is None:
            raise ValueError(f"{what}: half-precision checks need torch_same_dtype")
        base = error_report(torch_same_dtype, ref64)["max_abs"]
        step = torch.finfo(dt).eps * rep["scale"]
        tol = 2.0 * base + 1e-5 + step
        ok = rep["max_abs"] <= tol
        rule = f"max_abs <= 2 * {base:.3g} + 1e-5 + {step:.3g}"
    if not ok:
        raise AssertionError(f"{what} ({str(dt).replace('torch.', '')}): max_abs={rep['max_abs']:.3g}, "
                             f"rel_l2={rep['rel_l2']:.3g}, scale={rep['scale']:.3g}; needs {rule}")


def wgmma_selftest(dtype: torch.dtype = torch.bfloat16, seed: int = 31) -> dict:
    """Runs each warpgroup-MMA operand form of the sm_90a attention kernels alone (the cases of
    csrc/attention/attention.h, kWgmmaSelftestCases: swizzled tiles, K-major and MN-major
    descriptors, register A, transpose flags) on small random integers, whose float32 products
    are exact, on the current CUDA device. Returns {case name: elements that differ from the
    exact product}, all 0 on a device that reads the operands as the kernels lay them out.
    Needs an sm_90 GPU and a build with sm_90a code (`pyfastattn._C.attention.wgmma_available()`)."""
    from . import _backend as B
    from ._C import attention as attn
    if not attn.wgmma_available():
        raise RuntimeError("wgmma_selftest: needs an sm_90 GPU and a build with sm_90a code")
    g = torch.Generator().manual_seed(seed)
    wrong = {}
    for i, case in enumerate(attn.wgmma_selftest_cases()):
        a = torch.randint(-4, 5, case["a_shape"], generator=g).to("cuda", dtype)
        b = torch.randint(-4, 5, case["b_shape"], generator=g).to("cuda", dtype)
        c = torch.full((64, case["n"]), float("nan"), device="cuda")
        attn.wgmma_selftest(i, B.dtype_code(a), a.data_ptr(), b.data_ptr(), c.data_ptr(), B.stream_of(a))
        a64, b64, n = a.double(), b.double(), case["n"]
        want = {"k_major": lambda: a64[-64:] @ b64.T,  # the second warpgroup's rows of A
                "registers": lambda: a64 @ b64,
                "mn_major": lambda: a64.T @ b64[:, -n:]}[case["form"]]()  # its columns of B
        wrong[case["name"]] = int((c.double() != want).sum())
    return wrong
