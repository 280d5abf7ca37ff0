"""conv2d against F.conv2d: parity (float64 reference), gradients, strides/views, compile, opcheck."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
from conv_testutil import DEVICES, HALF, check_parity, dtypes_for

# (N, Cin, Cout, H, W, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 3, 5, 7, 9, 3, 1, 1, 1, 1),
    (3, 6, 4, 8, 5, 3, 2, 0, 1, 2),
    (1, 3, 17, 11, 10, (2, 3), (2, 1), (1, 2), (2, 1), 1),
    (2, 8, 8, 6, 6, 3, 1, 1, 1, 8),            # depthwise
    (2, 4, 12, 6, 6, 3, 1, "same", 1, 4),      # depthwise multiplier 3
    (2, 5, 7, 9, 8, 1, 1, 0, 1, 1),            # 1x1
    (1, 2, 3, 5, 13, (4, 2), 1, "same", (1, 2), 1),  # even kernel: asymmetric 'same'
    (2, 3, 4, 10, 7, 5, 3, "valid", 1, 1),
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
    (2, 2, 33, 14, 14, 5, 2, 2, 1, 1),         # lecture shapes: 14x14x2 -> 32+
    (1, 3, 32, 32, 32, 3, 1, 1, 1, 1),         # CIFAR-like
    (3, 16, 20, 5, 4, 3, 1, 2, 2, 1),          # dilation larger than the input
    (2, 4, 6, 9, 10, 3, 1, 5, 1, 1),           # padding past the kernel: output rows wider than the taps reach
    # >= 8 input channels per group: the channel-last path (the cases above with fewer: planar)
    (2, 16, 12, 9, 8, 3, 2, 1, 1, 1),
    (1, 8, 5, 6, 7, 3, 2, (4, 6), 1, 1),
    (1, 24, 16, 10, 11, (3, 2), (2, 3), (1, 0), (1, 2), 2),
    (2, 9, 33, 7, 6, 3, 1, "same", 1, 1),
]


def _weights(case):
    N, Cin, Cout, H, W, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(N, Cin, H, W, dtype=torch.float64)
    w = torch.randn(Cout, Cin // g, kh, kw, dtype=torch.float64)
    b = torch.randn(Cout, dtype=torch.float64)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv2d_float64(case, seed):
    x, w, b, kw = _weights(case)
    check_parity(lambda x, w, b: pyfastattn.conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw),
                 [x, w, b], torch.float64, "cpu", what="conv2d")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[9], CASES[13]], ids=lambda c: "-".join(map(str, c)))
def test_conv2d_dtypes(case, device, seed):
    x, w, b, kw = _weights(case)
    for dtype in dtypes_for(device):
        check_parity(lambda x, w, b: pyfastattn.conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw),
                     [x, w, b], dtype, device, what=f"conv2d {dtype}")


def test_conv2d_no_bias_and_unbatched(seed):
    x = torch.randn(3, 9, 7, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    check_parity(lambda x, w: pyfastattn.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1),
                 [x, w], torch.float64, "cpu", what="unbatched")


def test_conv2d_strided_views(seed):
    """Non-contiguous batch/channel views are read in place; channels_last is accepted too."""
    big = torch.randn(6, 10, 9, 11, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    views = [big[::2, 3:7], big[1::3, ::2][:, 1:], big[:, 2:6, 1:8],
             big[:4, :4].contiguous(memory_format=torch.channels_last)]
    for x in views:
        y = pyfastattn.conv2d(x, w, stride=(1, 2), padding=1)
        torch.testing.assert_close(y, F.conv2d(x, w, stride=(1, 2), padding=1), rtol=0, atol=1e-12)
    # non-contiguous output gradient
    x = big[::2, 3:7].clone().requires_grad_(True)
    y = pyfastattn.conv2d(x, w, padding=1)
    g = torch.randn(y.shape[0], y.shape[1], y.shape[3], y.shape[2], dtype=torch.float64).transpose(2, 3)
    (dx,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().clone().requires_grad_(True)
    (dx2,) = torch.autograd.grad(F.conv2d(x2, w, padding=1), x2, g)
    torch.testing.assert_close(dx, dx2, rtol=0, atol=1e-12)


def test_conv2d_empty_batch():
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = pyfastattn.conv2d(x, w, b)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_conv2d_deterministic(seed):
    x = torch.randn(37, 6, 9, 9, requires_grad=True)
    w = torch.randn(8, 6, 3, 3, requires_grad=True)
    g = torch.randn(37, 8, 9, 9)
    grads = [torch.autograd.grad(pyfastattn.conv2d(x, w, padding=1), (x, w), g) for _ in range(2)]
    torch.set_num_threads(1)
    try:
        grads.append(torch.autograd.grad(pyfastattn.conv2d(x, w, padding=1), (x, w), g))
    finally:
        torch.set_num_threads(2)
    for a in grads[1:]:
        assert torch.equal(a[0], grads[0][0]) and torch.equal(a[1], grads[0][1])


def test_conv2d_gradcheck(seed):
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: pyfastattn.conv2d(x, w, b, (2, 1), 1, (1, 2), 2), (x, w, b))


def test_conv2d_opcheck(seed):
    x = torch.randn(2, 4, 6, 7, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    geom = [2, 1, 2, 1, 0, 1, 0, 3, 3, 0, 3, 3, 1, 1, 0]
    torch.library.opcheck(torch.ops.pyfastattn.tap_conv, (x, w, b, geom))
    dy = torch.randn(2, 6, 6, 3)
    torch.library.opcheck(torch.ops.pyfastattn.tap_conv_backward, (dy, x.detach(), w.detach(), geom, True, True, True))


def test_conv2d_compile(seed):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    fn = torch.compile(lambda x, w: pyfastattn.conv2d(x, w, padding="same").relu().sum(), fullgraph=True)
    loss = fn(x, w)
    loss.backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.conv2d(x2, w2, padding="same").relu().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-4)
