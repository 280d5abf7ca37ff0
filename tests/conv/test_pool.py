"""hex_max_pool2d / hex_avg_pool2d against an unfold-based float64 reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
import pyfastattn.hex as hx
from conv_testutil import DEVICES, check_parity, dtypes_for


def _patches(x, k, fill):
    """(N, C, T, R, Q): the hexagon's cells around every cell, `fill` outside the grid."""
    N, C, R, Q = x.shape
    xp = F.pad(x, (k, k, k, k), value=fill)
    u = F.unfold(xp, 2 * k + 1).reshape(N, C, (2 * k + 1) ** 2, R, Q)
    return u[:, :, hx.hex_mask(k).reshape(-1)]


def ref_max(x, k, s):
    return _patches(x, k, float("-inf")).max(dim=2).values[..., ::s, ::s]


def ref_avg(x, k, s):
    total = _patches(x, k, 0.0).sum(dim=2)
    count = _patches(torch.ones_like(x), k, 0.0).sum(dim=2)
    return (total / count)[..., ::s, ::s]


CASES = [(2, 3, 7, 8, 1, 2), (1, 4, 9, 5, 1, 1), (2, 2, 6, 11, 2, 2), (1, 1, 1, 1, 1, 2), (3, 2, 13, 13, 2, 3)]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_pool_float64(case, kind, seed):
    N, C, R, Q, k, s = case
    x = torch.randn(N, C, R, Q, dtype=torch.float64)
    ours = pyfastattn.hex_max_pool2d if kind == "max" else pyfastattn.hex_avg_pool2d
    ref = ref_max if kind == "max" else ref_avg
    check_parity(lambda x: ours(x, k, s), lambda x: ref(x, k, s), [x], torch.float64, "cpu", what=kind)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_dtypes(kind, device, seed):
    x = torch.randn(2, 5, 9, 10, dtype=torch.float64)
    ours = pyfastattn.hex_max_pool2d if kind == "max" else pyfastattn.hex_avg_pool2d
    ref = ref_max if kind == "max" else ref_avg
    for dtype in dtypes_for(device):
        check_parity(lambda x: ours(x, 1, 2), lambda x: ref(x, 1, 2), [x], dtype, device, what=f"{kind} {dtype}")


def test_pool_border_average_and_nan():
    x = torch.full((1, 1, 4, 5), 3.0)
    assert torch.equal(pyfastattn.hex_avg_pool2d(x, 1, 2), torch.full((1, 1, 2, 3), 3.0))
    x = torch.randn(1, 1, 5, 5)
    x[0, 0, 2, 2] = float("nan")
    y = pyfastattn.hex_max_pool2d(x, 1, 1)
    assert torch.isnan(y[0, 0, 2, 2]) and torch.isnan(y[0, 0, 1, 2]) and not torch.isnan(y[0, 0, 0, 0])


def test_pool_gradcheck_opcheck_compile(seed):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pyfastattn.hex_avg_pool2d(x, 1, 2), (x,))
    assert torch.autograd.gradcheck(lambda x: pyfastattn.hex_max_pool2d(x, 2, 2), (x,))
    geom = [1, 2, 2, 0, 0, 0, 0, 1, 1, 1, 3, 3, 1, 1, 1]
    for mode in (0, 1):
        torch.library.opcheck(torch.ops.pyfastattn.tap_pool, (torch.randn(2, 3, 7, 6, requires_grad=True), mode, geom))
    fn = torch.compile(lambda x: pyfastattn.hex_max_pool2d(x).sum() + pyfastattn.hex_avg_pool2d(x).sum(),
                       fullgraph=True)
    xf = x.float().detach().requires_grad_()
    fn(xf).backward()
    x2 = xf.detach().clone().requires_grad_()
    (ref_max(x2, 1, 2).sum() + ref_avg(x2, 1, 2).sum()).backward()
    torch.testing.assert_close(xf.grad, x2.grad)
