"""nn modules: same init/parameters as torch.nn.Conv2d, forward through the kernels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import pyfastattn
import pyfastattn.hex as hx
from pyfastattn import nn as pnn


def test_conv2d_module_drop_in(seed):
    torch.manual_seed(seed)
    ours = pnn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
    torch.manual_seed(seed)
    ref = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), ref(x))
    ours.load_state_dict(ref.state_dict())
    circ = pnn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    refc = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    refc.load_state_dict(circ.state_dict())
    torch.testing.assert_close(circ(x), refc(x))


def test_hex_modules(seed):
    m = pnn.HexConv2d(4, 6, radius=2, stride=2, groups=2)
    assert m.weight.shape == (6, 2, 19) and m.bias.shape == (6,)
    bound = 1 / math.sqrt(2 * 19)
    assert float(m.weight.detach().abs().max()) <= bound * math.sqrt(3) * math.sqrt(2 / (1 + 5)) + 1e-6
    assert float(m.bias.detach().abs().max()) <= bound
    x = torch.randn(2, 4, 9, 8)
    y = m(x)
    ref = F.conv2d(x, hx.hex_to_square_weight(m.weight), m.bias, stride=2, padding=2, groups=2)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert m.weight.grad is not None
    assert torch.equal(pnn.HexMaxPool2d()(x), pyfastattn.hex_max_pool2d(x))
    assert torch.equal(pnn.HexAvgPool2d(2, 1)(x), pyfastattn.hex_avg_pool2d(x, 2, 1))
    cells = hx.grid_cells(9, 8)
    ic = pnn.IndexedConv(4, 5, hx.conv_neighbors(cells, 1))
    hc = pnn.HexConv2d(4, 5)
    hc.load_state_dict({"weight": ic.weight.detach(), "bias": ic.bias.detach()})
    torch.testing.assert_close(ic(x.reshape(2, 4, 72)).reshape(2, 5, 9, 8), hc(x))
    assert "neighbors" in dict(ic.named_buffers())
