"""gradcheck (float64, incl. the mask gradient), opcheck, torch.compile and the memory bound."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import pyfastattn

sdpa = pyfastattn.scaled_dot_product_attention


def rand(*shape, g, requires_grad=True):
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(requires_grad)


@pytest.mark.parametrize("is_causal,mshape", [(False, None), (True, None), (False, (2, 2, 5, 7)),
                                              (True, (1, 2, 1, 7)), (False, (5, 7))])
def test_gradcheck(is_causal, mshape):
    g = torch.Generator().manual_seed(7)
    q, k, v = rand(2, 2, 5, 3, g=g), rand(2, 2, 7, 3, g=g), rand(2, 2, 7, 3, g=g)
    inputs = [q, k, v]
    if mshape is not None:
        inputs.append(rand(*mshape, g=g))
        fn = lambda q, k, v, m: sdpa(q, k, v, attn_mask=m, is_causal=is_causal)
    else:
        fn = lambda q, k, v: sdpa(q, k, v, is_causal=is_causal)
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_gqa_bool_mask_and_fully_masked_row():
    g = torch.Generator().manual_seed(8)
    q, k, v = rand(1, 4, 6, 3, g=g), rand(1, 2, 9, 3, g=g), rand(1, 2, 9, 3, g=g)
    mask = torch.rand(1, 1, 6, 9, generator=g) > 0.4
    mask[..., 2, :] = False
    fn = lambda q, k, v: sdpa(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_gradcheck_varlen():
    g = torch.Generator().manual_seed(9)
    cu_q = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 2, 6, 11], dtype=torch.int32)
    q, k, v = rand(8, 2, 3, g=g), rand(11, 1, 3, g=g), rand(11, 1, 3, g=g)
    for causal in (False, True):
        fn = lambda q, k, v: pyfastattn.varlen_attention(q, k, v, cu_q, cu_k, 5, 5, is_causal=causal)
        assert torch.autograd.gradcheck(fn, (q, k, v))


def test_opcheck():
    g = torch.Generator().manual_seed(10)
    cases = []
    for dt in (torch.float32, torch.float64):
        q = torch.randn(2, 2, 9, 8, generator=g).to(dt)
        k = torch.randn(2, 1, 11, 8, generator=g).to(dt)
        v = torch.randn(2, 1, 11, 8, generator=g).to(dt)
        fm = torch.randn(1, 2, 9, 11, generator=g).to(dt)
        bm = (torch.rand(2, 1, 1, 11, generator=g) > 0.3).view(torch.uint8)
        cases += [(q, k, v, None, None, None, 9, 11, 0.3, False),
                  (q, k, v, fm.requires_grad_(), None, None, 9, 11, 0.3, True),
                  (q, k, v, bm, None, None, 9, 11, 0.3, False)]
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    vq = torch.randn(9, 2, 8, generator=g)
    vk = torch.randn(9, 2, 8, generator=g)
    cases.append((vq, vk, vk.clone(), None, cu, cu, 5, 5, 0.5, True))
    for args in cases:
        args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]
        torch.library.opcheck(torch.ops.pyfastattn.attention_forward.default, args)


def test_opcheck_backward_op():
    g = torch.Generator().manual_seed(12)
    q = torch.randn(2, 9, 2, 8, generator=g).transpose(1, 2)  # (B, L, H, D) views
    k = torch.randn(2, 11, 2, 8, generator=g).transpose(1, 2)
    v = torch.randn(2, 11, 2, 8, generator=g).transpose(1, 2)
    mask = torch.randn(1, 2, 9, 11, generator=g)
    out, lse = torch.ops.pyfastattn.attention_forward(q, k, v, mask, None, None, 9, 11, 0.3, False)
    dout = torch.randn(out.shape, generator=g)
    torch.library.opcheck(torch.ops.pyfastattn.attention_backward.default,
                          (dout, q, k, v, mask, out, lse, None, None, 9, 11, 0.3, False, True))


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 4, 33, 16, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 4, 33, 33, generator=g, requires_grad=True)

    def f(q, k, v, bias):
        return sdpa(q, k, v, attn_mask=bias).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v, bias)
    grads = torch.autograd.grad(loss, (q, k, v, bias))
    want_loss = f(q, k, v, bias)
    want = torch.autograd.grad(want_loss, (q, k, v, bias))
    torch.testing.assert_close(loss, want_loss)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor_varlen():
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    q = torch.randn(10, 2, 8, requires_grad=True)

    def f(q):
        return pyfastattn.varlen_attention(q, q, q, cu, cu, 7, 7, is_causal=True).sum()

    out = torch.compile(f, fullgraph=True)(q)
    torch.testing.assert_close(out, f(q))


def test_peak_memory_far_below_one_score_matrix(tmp_path):
    """B=1, H=4, L=16384, D=64 causal forward + backward: one (L, L) float32 matrix is 1 GiB."""
    code = textwrap.dedent("""
        import resource, torch, pyfastattn
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 4, 16384, 64, requires_grad=True) for _ in range(3))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = pyfastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(torch.ones_like(out))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
    """)
    # cwd away from the checkout: `-c` puts cwd first on sys.path, and the source tree has no _C
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    extra = int(res.stdout.strip().splitlines()[-1])
    # out, dout, dq, dk, dv and the dQ partials are ~16 MiB each; one (L, L) fp32 matrix is 1 GiB
    assert extra < 256 * 2**20, f"extra peak memory {extra / 2**20:.0f} MiB"
