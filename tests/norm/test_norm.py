"""Parity, gradients, compile/opcheck and bad input for layer_norm, rms_norm, add_layer_norm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
from pyfastattn.testing import assert_matches_reference

CUDA = pytest.mark.cuda
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
HALF = [torch.float16, torch.bfloat16]


def dtypes_for(device):
    return [torch.float64, torch.float32, *HALF] if device == "cpu" else [torch.float32, *HALF]


def _torch_add_ln(x, r, w, b, eps=1e-5, sum_dtype=None):
    s = x + r
    if sum_dtype is not None:  # the op normalizes the sum as stored: round it (straight-through)
        s = s + (s.to(sum_dtype).to(s.dtype) - s).detach()
    return F.layer_norm(s, s.shape[-1:], w, b, eps), s


OPS = {
    "layer_norm": (lambda x, r, w, b, shape: pyfastattn.layer_norm(x, shape, w, b),
                   lambda x, r, w, b, shape: F.layer_norm(x, shape, w, b)),
    "rms_norm": (lambda x, r, w, b, shape: pyfastattn.rms_norm(x, shape, w, 1e-6),
                 lambda x, r, w, b, shape: F.rms_norm(x, shape, w, 1e-6)),
    "add_layer_norm": (lambda x, r, w, b, shape: pyfastattn.add_layer_norm(x, r, w, b),
                       lambda x, r, w, b, shape: _torch_add_ln(x, r, w, b)),
}


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _run(fn, tensors, shape, grads_out):
    """Forward, then backward of sum(out_i * g_i); returns outputs and input grads."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    outs = _as_tuple(fn(*leaves, shape))
    loss = sum((o.float() * g.to(o.device, torch.float32)).sum() for o, g in zip(outs, grads_out))
    diff = [t for t in leaves if t is not None]
    gr = torch.autograd.grad(loss, diff)
    return outs, gr


def check_op(name, x, shape, weight=True, bias=True, device="cpu", dtype=torch.float32, residual=None,
             ill_conditioned=False):
    ours, theirs = OPS[name]
    cols = 1
    for s in shape:
        cols *= s
    w = torch.randn(shape, dtype=torch.float64) if weight else None
    b = torch.randn(shape, dtype=torch.float64) if (bias and name != "rms_norm") else None
    r = residual if name == "add_layer_norm" else None
    n_out = 2 if name == "add_layer_norm" else 1
    gouts = [torch.randn(x.shape, dtype=torch.float64) for _ in range(n_out)]

    def cast(t):
        return None if t is None else t.to(device, dtype)

    def with_layout(t, like):
        # the kernel's input keeps the (possibly non-contiguous) layout of the original view
        if t is None:
            return None
        out = torch.empty_strided(like.shape, like.stride(), dtype=dtype, device=device)
        out.copy_(t)
        return out

    # the reference sees exactly the values the kernel sees: inputs rounded to dtype first
    x0, r0 = x, r
    x, r, w, b = (None if t is None else t.to(dtype).double() for t in (x, r, w, b))
    ref_in = [x, r, w, b]
    # ... and the output gradients as the kernel receives them (autograd rounds them to dtype)
    ref_gouts = [g.to(dtype).double() for g in gouts]
    if name == "add_layer_norm":
        ref_out, ref_grad = _run(lambda x, r, w, b, shape: _torch_add_ln(x, r, w, b, sum_dtype=dtype),
                                 ref_in, shape, ref_gouts)
    else:
        ref_out, ref_grad = _run(theirs, ref_in, shape, ref_gouts)
    our_in = [with_layout(x, x0), with_layout(r, r0), cast(w), cast(b)]
    our_out, our_grad = _run(ours, our_in, shape, gouts)
    same_out, same_grad = (None, None)
    loose = ill_conditioned and dtype == torch.float32
    if dtype in HALF or loose:
        same_out, same_grad = _run(theirs, [cast(x), cast(r), cast(w), cast(b)], shape, gouts)
    for i, (o, ro) in enumerate(zip(our_out, ref_out)):
        assert o.dtype == dtype and o.device.type == device
        assert_matches_reference(o, ro, same_out[i] if same_out else None, what=f"{name} out{i}")
    # dweight and dbias are sums over the rows: in float32 each may be off by about
    # (rows + a few) * eps * sum over rows |term| in any summation order, which a sum that
    # cancels (a small result, e.g. the single dbias of one column) makes large against the
    # result itself. That bound is the absolute floor for those gradients.
    floors = [1e-7] * len(our_grad)
    if dtype == torch.float32:
        rows = x.numel() // cols
        ones = torch.ones(shape, dtype=torch.float64)
        xhat = _as_tuple(theirs(x, r, ones, None if b is None else torch.zeros(shape, dtype=torch.float64),
                                shape))[0]
        dy = ref_gouts[0].reshape(rows, cols)
        terms = [t for t, given in (((dy * xhat.reshape(rows, cols)).abs(), w is not None), (dy.abs(), b is not None))
                 if given]
        first = len(our_grad) - len(terms)  # grads: x, (residual), weight, bias
        for i, t in enumerate(terms, first):
            floors[i] = max(1e-7, (rows + 8) * torch.finfo(dtype).eps / 2 * float(t.sum(0).max()))
    for i, (g, rg) in enumerate(zip(our_grad, ref_grad)):
        assert_matches_reference(g, rg, same_grad[i] if same_grad else None, what=f"{name} grad{i}",
                                 atol=floors[i], relative_to_torch=loose)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("cols", [1, 7, 33, 1000, 4097])
def test_parity_hidden_sizes(seed, device, name, cols):
    for dtype in dtypes_for(device):
        x = torch.randn(3, 5, cols, dtype=torch.float64) * 2 + 0.5
        r = torch.randn(3, 5, cols, dtype=torch.float64)
        # RMS norm of one element: dx = g * eps / (x^2 + eps) cancels catastrophically
        check_op(name, x, (cols,), device=device, dtype=dtype, residual=r,
                 ill_conditioned=(name == "rms_norm" and cols == 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("rows,cols", [(70, 300), (4, 4096), (4, 8192), (4, 8193), (4, 16384), (4, 16385)])
def test_parity_kernel_path_boundaries(seed, device, name, rows, cols):
    # many rows per block; the CUDA kernels' limits and one past them: the forward holds up
    # to 16384 values per row in registers; the backward holds up to 4096 in registers and
    # stages aligned rows of 8192-16384 in shared memory
    x = torch.randn(rows, cols, dtype=torch.float64) * 2 + 0.5
    for dtype in dtypes_for(device):
        check_op(name, x, (cols,), device=device, dtype=dtype, residual=torch.randn_like(x))


@CUDA
@pytest.mark.parametrize("name", list(OPS))
def test_staged_backward_walks_rows(seed, name):
    # 300 rows of 12288 with dweight/dbias: 256 chunks, so blocks of the staged backward take
    # two rows and alternate their shared-memory stages
    x = torch.randn(300, 12288, dtype=torch.float64) * 2 + 0.5
    for dtype in dtypes_for("cuda"):
        check_op(name, x, (12288,), device="cuda", dtype=dtype, residual=torch.randn_like(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_parity_65536(seed, device, name):
    dtypes = [torch.float32, torch.bfloat16] if device == "cpu" else dtypes_for(device)
    for dtype in dtypes:
        x = torch.randn(3, 65536, dtype=torch.float64)
        check_op(name, x, (65536,), device=device, dtype=dtype, residual=torch.randn_like(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
def test_multi_dim_shapes_and_noncontiguous_rows(seed, device, name):
    for dtype in dtypes_for(device):
        # 4-D input normalized over its last two dims, leading dims sliced and transposed
        base = torch.randn(6, 4, 9, 40, dtype=torch.float64)
        x = base.transpose(0, 1)[:, ::2]
        assert not x.is_contiguous()
        check_op(name, x, (9, 40), device=device, dtype=dtype)
        # 3-D, last dim only, strided rows, no weight / bias
        x3 = torch.randn(7, 10, 96, dtype=torch.float64)[:, 1::3]
        check_op(name, x3, (96,), weight=False, bias=False, device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_add_layer_norm_noncontiguous(seed, device):
    for dtype in dtypes_for(device):
        x = torch.randn(4, 12, 130, dtype=torch.float64).transpose(0, 1)
        r = torch.randn(12, 8, 130, dtype=torch.float64)[:, ::2]
        check_op("add_layer_norm", x, (130,), device=device, dtype=dtype, residual=r)
        check_op("add_layer_norm", x, (130,), weight=False, bias=False, device=device, dtype=dtype, residual=r)


@pytest.mark.parametrize("device", DEVICES)
def test_large_mean_is_stable(seed, device):
    # mean 1e4, std 1: a naive E[x^2] - E[x]^2 in float32 loses the variance entirely
    x = (torch.randn(64, 4097, dtype=torch.float64) + 1e4).float()
    ref = F.layer_norm(x.double(), (4097,))
    ours = pyfastattn.layer_norm(x.to(device), (4097,)).cpu().double()
    torch_f32 = F.layer_norm(x, (4097,)).double()
    # float32 storage of 1e4 has a 1e-3 step: judge against torch's own float32 error
    err = (ours - ref).abs().max().item()
    assert err <= 2 * (torch_f32 - ref).abs().max().item() + 1e-5, err
    assert err < 5e-3


def test_gradcheck_float64(seed):
    x = torch.randn(3, 4, 11, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 4, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: pyfastattn.layer_norm(x, (4, 11), w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: pyfastattn.rms_norm(x, (4, 11), w), (x, w))
    assert torch.autograd.gradcheck(lambda x: pyfastattn.layer_norm(x, (11,)), (x,))
    w1 = torch.randn(11, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, r, w, b: pyfastattn.add_layer_norm(x, r, w, b), (x, r, w1, b1))
    assert torch.autograd.gradgradcheck is not None  # double backward is not provided (as FlashAttention)


def test_opcheck(seed):
    x = torch.randn(5, 33)
    w, b = torch.randn(33), torch.randn(33)
    r = torch.randn(5, 33)
    for args in [(x, None, w, b, 1, 1e-5, True), (x, None, w, None, 1, 1e-6, False),
                 (x, r, w, b, 1, 1e-5, True), (x.view(5, 3, 11), None, None, None, 2, 1e-5, True)]:
        args = tuple(a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.pyfastattn.norm_forward, args)


def test_torch_compile_fullgraph(seed):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = pyfastattn.nn.LayerNorm(32)
            self.rms = pyfastattn.nn.RMSNorm(32)
            self.lin = torch.nn.Linear(32, 32)

        def forward(self, x, r):
            y, s = pyfastattn.add_layer_norm(x, r, self.ln.weight, self.ln.bias)
            return self.rms(self.lin(y)) + self.ln(s)

    m = Block()
    x, r = torch.randn(4, 7, 32, requires_grad=True), torch.randn(4, 7, 32)
    eager = m(x, r)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x, r)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_modules_load_torch_state_dicts(seed):
    t_ln = torch.nn.LayerNorm((4, 16))
    t_rms = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        t_ln.weight.normal_(), t_ln.bias.normal_(), t_rms.weight.normal_()
    ln, rms = pyfastattn.nn.LayerNorm((4, 16)), pyfastattn.nn.RMSNorm(16, eps=1e-6)
    ln.load_state_dict(t_ln.state_dict())
    rms.load_state_dict(t_rms.state_dict())
    x = torch.randn(3, 4, 16)
    torch.testing.assert_close(ln(x), t_ln(x))
    torch.testing.assert_close(rms(x), t_rms(x))
    assert pyfastattn.nn.LayerNorm(8, elementwise_affine=False).weight is None
    assert pyfastattn.nn.LayerNorm(8, bias=False).bias is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,cols", [(2048, 300), pytest.param(600, 12288, marks=CUDA)])
def test_backward_is_bitwise_deterministic(seed, device, rows, cols):
    x = torch.randn(rows, cols, device=device, requires_grad=True)
    w = torch.randn(cols, device=device, requires_grad=True)
    b = torch.randn(cols, device=device, requires_grad=True)
    dy = torch.randn(rows, cols, device=device)
    first = torch.autograd.grad(pyfastattn.layer_norm(x, (cols,), w, b), (x, w, b), dy)
    for _ in range(3):
        again = torch.autograd.grad(pyfastattn.layer_norm(x, (cols,), w, b), (x, w, b), dy)
        for a, c in zip(first, again):
            assert torch.equal(a, c)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_nonfinite(device):
    x = torch.empty(0, 5, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    y = pyfastattn.layer_norm(x, (16,), w)
    assert y.shape == (0, 5, 16)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))
    s, tot = pyfastattn.add_layer_norm(x.detach(), x.detach())
    assert s.shape == tot.shape == x.shape
    z = torch.randn(3, 8, device=device)
    z[1, 2] = float("nan")
    z[2, 0] = float("inf")
    y = pyfastattn.layer_norm(z, (8,))
    ref = F.layer_norm(z, (8,))
    assert torch.isfinite(y[0]).all()
    assert torch.isnan(y[1]).all() and torch.isnan(ref[1]).all()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: pyfastattn.layer_norm(torch.ones(4, 8, dtype=torch.int32), (8,)), TypeError, "input"),
    (lambda: pyfastattn.layer_norm([1.0, 2.0], (2,)), TypeError, "input"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), (7,)), ValueError, "normalized_shape"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), ()), ValueError, "normalized_shape"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), "8"), TypeError, "normalized_shape"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), (8,), torch.randn(7)), ValueError, "weight"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), (8,), torch.randn(8, dtype=torch.float64)), TypeError, "weight"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), (8,), None, torch.randn(8, device="meta")), RuntimeError, "bias"),
    (lambda: pyfastattn.layer_norm(torch.randn(8, 4).t(), (8,)), ValueError, "last dimension"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8), (8,), eps=-1.0), ValueError, "eps"),
    (lambda: pyfastattn.layer_norm(torch.randn(4, 8, device="meta"), (8,)), RuntimeError, "meta"),
    (lambda: pyfastattn.rms_norm(torch.randn(4, 8), (8,), torch.randn(8, 1)), ValueError, "weight"),
    (lambda: pyfastattn.add_layer_norm(torch.randn(4, 8), torch.randn(4, 7)), ValueError, "residual"),
    (lambda: pyfastattn.add_layer_norm(torch.randn(4, 8), None), TypeError, "residual"),
    (lambda: pyfastattn.add_layer_norm(torch.randn(4, 8), torch.randn(4, 8).half()), TypeError, "residual"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_row_offsets_past_2_31_elements(seed):
    # A view whose second row starts 2^31 + 5 elements in: 32-bit offsets would wrap.
    # torch.empty does not touch the pages, so only the rows written below cost memory.
    stride = 2**31 + 5
    base = torch.empty(stride + 64, dtype=torch.bfloat16)
    x = base.as_strided((2, 64), (stride, 1))
    x.copy_(torch.randn(2, 64))
    w = torch.randn(64, dtype=torch.bfloat16)
    y = pyfastattn.layer_norm(x, (64,), w)
    ref = F.layer_norm(x.double(), (64,), w.double())
    assert_matches_reference(y, ref, F.layer_norm(x.contiguous(), (64,), w))
    xg = x.detach().requires_grad_(True)
    g = torch.autograd.grad(pyfastattn.layer_norm(xg, (64,)).float().sum(), xg)[0]
    assert g.shape == x.shape and torch.isfinite(g).all()
