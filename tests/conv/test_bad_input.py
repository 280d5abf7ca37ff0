"""Bad input raises a clear TypeError/ValueError/RuntimeError naming the argument."""
from __future__ import annotations

import pytest
import torch

import pyfastattn
import pyfastattn.hex as hx

x4 = torch.randn(2, 4, 6, 6)
w4 = torch.randn(3, 4, 3, 3)
wh = torch.randn(3, 4, 7)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: pyfastattn.conv2d(torch.randn(4, 6, 6, 1, 1), w4), ValueError, "input"),
    (lambda: pyfastattn.conv2d(torch.randn(6, 6), w4), ValueError, "input"),
    (lambda: pyfastattn.conv2d(x4, torch.randn(3, 4, 3)), ValueError, "weight"),
    (lambda: pyfastattn.conv2d(x4, torch.randn(3, 5, 3, 3)), ValueError, "input channels"),
    (lambda: pyfastattn.conv2d(x4, torch.randn(3, 2, 3, 3), groups=2), ValueError, "groups"),
    (lambda: pyfastattn.conv2d(x4, torch.randn(4, 3, 3, 3), groups=3), ValueError, "groups"),
    (lambda: pyfastattn.conv2d(x4, w4, groups=0), ValueError, "groups"),
    (lambda: pyfastattn.conv2d(x4, w4, torch.randn(4)), ValueError, "bias"),
    (lambda: pyfastattn.conv2d(x4, w4, stride=0), ValueError, "stride"),
    (lambda: pyfastattn.conv2d(x4, w4, stride=(1, 2, 3)), TypeError, "stride"),
    (lambda: pyfastattn.conv2d(x4, w4, padding=-1), ValueError, "padding"),
    (lambda: pyfastattn.conv2d(x4, w4, padding="full"), ValueError, "padding"),
    (lambda: pyfastattn.conv2d(x4, w4, padding="same", stride=2), ValueError, "same"),
    (lambda: pyfastattn.conv2d(x4, w4, dilation=0), ValueError, "dilation"),
    (lambda: pyfastattn.conv2d(x4, torch.randn(3, 4, 7, 7)), ValueError, "larger"),
    (lambda: pyfastattn.conv2d(x4, w4, dilation=4), ValueError, "larger"),
    (lambda: pyfastattn.conv2d(x4.int(), w4), TypeError, "dtype"),
    (lambda: pyfastattn.conv2d(x4, w4.double()), TypeError, "weight"),
    (lambda: pyfastattn.conv2d(x4.numpy(), w4), TypeError, "input"),
    (lambda: pyfastattn.conv2d(x4, w4, padding=1.5), TypeError, "padding"),
    (lambda: pyfastattn.hex_conv2d(x4, torch.randn(3, 4, 8)), ValueError, "3k"),
    (lambda: pyfastattn.hex_conv2d(x4, torch.randn(3, 4, 1)), ValueError, "3k"),
    (lambda: pyfastattn.hex_conv2d(x4, torch.randn(3, 4, 3, 3)), ValueError, "weight"),
    (lambda: pyfastattn.hex_conv2d(x4, torch.randn(3, 2, 7)), ValueError, "input channels"),
    (lambda: pyfastattn.hex_conv2d(x4, wh, stride=0), ValueError, "stride"),
    (lambda: pyfastattn.hex_conv2d(x4, wh, groups=2), ValueError, "groups"),
    (lambda: pyfastattn.hex_conv2d(torch.randn(1, 4, 3, 3), torch.randn(3, 4, 19)), ValueError, "larger"),
    (lambda: pyfastattn.hex_max_pool2d(x4, radius=0), ValueError, "radius"),
    (lambda: pyfastattn.hex_avg_pool2d(x4, stride=0), ValueError, "stride"),
    (lambda: pyfastattn.hex_avg_pool2d(torch.randn(6, 6)), ValueError, "input"),
    (lambda: pyfastattn.hex_max_pool2d(x4.long()), TypeError, "dtype"),
    (lambda: pyfastattn.indexed_conv(torch.randn(2, 3, 5), torch.randn(4, 3, 2), torch.tensor([[0, 5]])),
     ValueError, "neighbors"),
    (lambda: pyfastattn.indexed_conv(torch.randn(2, 3, 5), torch.randn(4, 3, 2), torch.tensor([[0, -2]])),
     ValueError, "neighbors"),
    (lambda: pyfastattn.indexed_conv(torch.randn(2, 3, 5), torch.randn(4, 3, 2), torch.tensor([[0.0, 1.0]])),
     TypeError, "neighbors"),
    (lambda: pyfastattn.indexed_conv(torch.randn(2, 3, 5), torch.randn(4, 3, 3), torch.tensor([[0, 1]])),
     ValueError, "taps"),
    (lambda: pyfastattn.indexed_conv(torch.randn(2, 3, 5), torch.randn(4, 2, 2), torch.tensor([[0, 1]])),
     ValueError, "input channels"),
    (lambda: pyfastattn.indexed_conv(torch.randn(3, 5), torch.randn(4, 3, 2), torch.tensor([[0, 1]])),
     ValueError, "input"),
    (lambda: pyfastattn.indexed_conv(torch.randn(2, 3, 5), torch.randn(4, 3, 2), torch.tensor([0, 1])),
     ValueError, "neighbors"),
    (lambda: hx.taps(-1), ValueError, "radius"),
    (lambda: hx.offset_to_axial(torch.randn(3, 3), "diagonal"), ValueError, "layout"),
    (lambda: hx.axial_to_offset(torch.randn(3, 3), (4, 4)), ValueError, "expected"),
    (lambda: hx.positions_to_axial(torch.randn(5, 3)), ValueError, "xy"),
    (lambda: hx.conv_neighbors(torch.tensor([[0, 0], [0, 0]])), ValueError, "duplicates"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cuda_tensor_without_cuda_build():
    if pyfastattn.cuda_built() or not torch.cuda.is_available():
        pytest.skip("needs a GPU with a CPU-only build")
    with pytest.raises(RuntimeError, match="CUDA"):
        pyfastattn.conv2d(x4.cuda(), w4.cuda())


def test_float64_on_cuda_rejected():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    with pytest.raises((TypeError, RuntimeError)):
        pyfastattn.hex_conv2d(x4.double().cuda(), wh.double().cuda())


def test_bad_geometry_reaching_the_binding():
    """The bindings re-check what would be memory unsafe."""
    from pyfastattn._C import conv as c
    with pytest.raises(ValueError):
        c.tap_conv_forward(False, 0, [1, 4, 6, 6, 3, 4, 4, 3, 1, 1, 0, 0, 0, 3, 3, 1, 1, 0], 0, [0, 0, 0], 0, 0, 0, 0)
    with pytest.raises(ValueError):
        c.tap_conv_forward(False, 0, [1, 4, 6, 6], 0, [0, 0, 0], 0, 0, 0, 0)
    with pytest.raises(ValueError):
        c.tap_conv_forward(False, 0, [1, 4, 6, 6, 3, 4, 4, 1, 1, 1, 0, 0, 0, 3, 3, 1, 1, 0], 0, [96, 36, 6], 0, 0,
                           0, 0)


def test_too_many_taps():
    with pytest.raises(ValueError, match="taps"):
        pyfastattn.conv2d(torch.randn(1, 1, 70, 70), torch.randn(1, 1, 65, 65))
