"""indexed_conv against gather + matmul, and against hex_conv2d on a full grid."""
from __future__ import annotations

import pytest
import torch

import pyfastattn
import pyfastattn.hex as hx
from conv_testutil import DEVICES, check_parity, dtypes_for


def ref_indexed(x, w, b, nb):
    """Gather + matmul: cols[n, ci, o, t] = x[n, ci, nb[o, t]] (0 where -1)."""
    nb = nb.to(torch.int64)
    valid = (nb >= 0).to(x.dtype)
    cols = x[:, :, nb.clamp(min=0)] * valid  # (N, Cin, P_out, T)
    y = torch.einsum("nipt,oit->nop", cols, w)
    return y if b is None else y + b[None, :, None]


def _table(P_out, T, P, holes=0.2):
    nb = torch.randint(0, P, (P_out, T))
    nb[torch.rand(P_out, T) < holes] = -1
    return nb


CASES = [(2, 3, 5, 20, 15, 7), (1, 4, 2, 1, 1, 1), (3, 2, 17, 40, 40, 19), (2, 33, 6, 9, 30, 4)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_indexed_float64(case, seed):
    N, Cin, Cout, P, P_out, T = case
    x = torch.randn(N, Cin, P, dtype=torch.float64)
    w = torch.randn(Cout, Cin, T, dtype=torch.float64)
    b = torch.randn(Cout, dtype=torch.float64)
    nb = _table(P_out, T, P)
    check_parity(lambda x, w, b: pyfastattn.indexed_conv(x, w, nb, b), lambda x, w, b: ref_indexed(x, w, b, nb),
                 [x, w, b], torch.float64, "cpu", what="indexed_conv")


@pytest.mark.parametrize("device", DEVICES)
def test_indexed_dtypes(device, seed):
    N, Cin, Cout, P, P_out, T = 3, 6, 10, 50, 45, 7
    x = torch.randn(N, Cin, P, dtype=torch.float64)
    w = torch.randn(Cout, Cin, T, dtype=torch.float64)
    b = torch.randn(Cout, dtype=torch.float64)
    nb = _table(P_out, T, P).to(device)
    for dtype in dtypes_for(device):
        check_parity(lambda x, w, b: pyfastattn.indexed_conv(x, w, nb, b),
                     lambda x, w, b: ref_indexed(x, w, b, nb.cpu()), [x, w, b], dtype, device, what=f"{dtype}")


@pytest.mark.parametrize("k", [1, 2])
def test_indexed_matches_hex_conv_on_full_grid(k, seed):
    R, Q = 7, 9
    x = torch.randn(2, 3, R, Q, dtype=torch.float64)
    w = torch.randn(4, 3, hx.tap_count(k), dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    cells = hx.grid_cells(R, Q)
    y = pyfastattn.indexed_conv(x.reshape(2, 3, R * Q), w, hx.conv_neighbors(cells, k), b)
    torch.testing.assert_close(y.reshape(2, 4, R, Q), pyfastattn.hex_conv2d(x, w, b), rtol=0, atol=1e-12)
    # stride 2 through the pooling table
    table, coarse, out_index = hx.pool_neighbors(cells, k, 2)
    y2 = pyfastattn.indexed_conv(x.reshape(2, 3, R * Q), w, table, b)
    ref = pyfastattn.hex_conv2d(x, w, b, stride=2)
    torch.testing.assert_close(y2, ref[:, :, coarse[:, 0], coarse[:, 1]], rtol=0, atol=1e-12)
    assert coarse.shape[0] == ref.shape[2] * ref.shape[3]
    # avg pooling: divide by the table's valid count
    yp = pyfastattn.indexed_conv(x.reshape(2, 3, R * Q)[:, :1], torch.ones(1, 1, table.shape[1], dtype=torch.float64),
                                 table) / (table >= 0).sum(1)
    torch.testing.assert_close(yp, pyfastattn.hex_avg_pool2d(x[:, :1], k, 2)[:, :, coarse[:, 0], coarse[:, 1]])


def test_irregular_array_with_missing_stations(seed):
    cells = hx.taps(5) + 5  # a hexagonal array, with stations missing
    cells = cells[torch.rand(cells.shape[0]) > 0.1]
    nb = hx.conv_neighbors(cells, 1)
    assert nb.shape == (cells.shape[0], 7) and int((nb == -1).sum()) > 0
    # each valid entry points to the cell at that offset
    off = hx.taps(1)
    o, t = torch.nonzero(nb >= 0, as_tuple=True)
    assert torch.equal(cells[nb[o, t]], cells[o] + off[t])
    x = torch.randn(2, 3, cells.shape[0], dtype=torch.float64)
    w = torch.randn(5, 3, 7, dtype=torch.float64)
    check_parity(lambda x, w: pyfastattn.indexed_conv(x, w, nb), lambda x, w: ref_indexed(x, w, None, nb),
                 [x, w], torch.float64, "cpu", what="array")


def test_indexed_gradcheck_opcheck_compile(seed):
    nb = _table(6, 4, 8)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: pyfastattn.indexed_conv(x, w, nb, b), (x, w, b))
    torch.library.opcheck(torch.ops.pyfastattn.indexed_conv,
                          (x.float().detach().requires_grad_(), w.float().detach().requires_grad_(), None, nb))
    fn = torch.compile(lambda x, w: pyfastattn.indexed_conv(x, w, nb).relu().sum(), fullgraph=True)
    xf, wf = x.float().detach().requires_grad_(), w.float().detach().requires_grad_()
    fn(xf, wf).backward()
    x2, w2 = xf.detach().clone().requires_grad_(), wf.detach().clone().requires_grad_()
    ref_indexed(x2, w2, None, nb).relu().sum().backward()
    torch.testing.assert_close(wf.grad, w2.grad)
    torch.testing.assert_close(xf.grad, x2.grad)
