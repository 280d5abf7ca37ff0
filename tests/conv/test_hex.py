"""hex_conv2d against F.conv2d with a hexagon-masked square kernel; hex grid tools; HexagDLy interop."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
import pyfastattn.hex as hx
from pyfastattn._C import conv as _conv
from conv_testutil import DEVICES, check_parity, dtypes_for


def masked_ref(x, w, b, stride=1, groups=1):
    k = (int(round(math.sqrt((4 * w.shape[-1] - 1) / 3))) - 1) // 2
    return F.conv2d(x, hx.hex_to_square_weight(w), b, stride=stride, padding=k, groups=groups)


def test_taps_and_mask():
    for k in range(0, 5):
        t = hx.taps(k)
        assert t.shape == (3 * k * (k + 1) + 1, 2) == (hx.tap_count(k), 2)
        assert t.tolist() == [list(_conv.hex_tap_offset(k, i)) for i in range(t.shape[0])]
        dr, dq = t[:, 0], t[:, 1]
        assert bool(((dr.abs() <= k) & (dq.abs() <= k) & ((dr + dq).abs() <= k)).all())
        # row-major order = order of the mask's true entries
        m = hx.hex_mask(k)
        assert int(m.sum()) == t.shape[0]
        assert torch.equal(torch.nonzero(m) - k, t)
    assert hx.taps(1).tolist() == [[-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0]]
    w = torch.randn(3, 2, 19)
    assert torch.equal(hx.square_to_hex_weight(hx.hex_to_square_weight(w)), w)


# (N, Cin, Cout, R, Q, radius, stride, groups)
CASES = [
    (2, 3, 5, 7, 8, 1, 1, 1),
    (3, 4, 6, 9, 5, 1, 2, 2),
    (1, 2, 3, 6, 11, 2, 1, 1),
    (2, 6, 6, 10, 9, 2, 2, 6),
    (1, 5, 33, 13, 13, 1, 1, 1),
    (2, 3, 4, 3, 1, 1, 2, 1),
    (1, 1, 2, 8, 8, 3, 3, 1),
    (2, 16, 24, 9, 10, 1, 2, 1),   # >= 8 channels per group: packed planes
    (1, 16, 8, 7, 7, 2, 1, 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_hex_conv2d_float64(case, seed):
    N, Cin, Cout, R, Q, k, s, g = case
    x = torch.randn(N, Cin, R, Q, dtype=torch.float64)
    w = torch.randn(Cout, Cin // g, hx.tap_count(k), dtype=torch.float64)
    b = torch.randn(Cout, dtype=torch.float64)
    check_parity(lambda x, w, b: pyfastattn.hex_conv2d(x, w, b, s, g),
                 lambda x, w, b: masked_ref(x, w, b, s, g), [x, w, b], torch.float64, "cpu", what="hex_conv2d")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4], CASES[7]], ids=lambda c: "-".join(map(str, c)))
def test_hex_conv2d_dtypes(case, device, seed):
    N, Cin, Cout, R, Q, k, s, g = case
    x = torch.randn(N, Cin, R, Q, dtype=torch.float64)
    w = torch.randn(Cout, Cin // g, hx.tap_count(k), dtype=torch.float64)
    b = torch.randn(Cout, dtype=torch.float64)
    for dtype in dtypes_for(device):
        check_parity(lambda x, w, b: pyfastattn.hex_conv2d(x, w, b, s, g),
                     lambda x, w, b: masked_ref(x, w, b, s, g), [x, w, b], dtype, device, what=f"hex {dtype}")


def test_hex_conv2d_gradcheck_opcheck_compile(seed):
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    for s in (1, 2):
        assert torch.autograd.gradcheck(lambda x, w, b: pyfastattn.hex_conv2d(x, w, b, s, 2), (x, w, b))
    geom = [1, 2, 2, 0, 0, 0, 0, 1, 1, 1, 5, 5, 1, 1, 2]
    torch.library.opcheck(torch.ops.pyfastattn.tap_conv,
                          (torch.randn(2, 3, 7, 6), torch.randn(4, 3, 19), torch.randn(4), geom))
    xf, wf = x.float().detach().requires_grad_(), w.float().detach().requires_grad_()
    fn = torch.compile(lambda x, w: pyfastattn.hex_conv2d(x, w, stride=2, groups=2).square().sum(), fullgraph=True)
    loss = fn(xf, wf)
    loss.backward()
    x2, w2 = xf.detach().clone().requires_grad_(), wf.detach().clone().requires_grad_()
    ref = masked_ref(x2, w2, None, 2, 2).square().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(wf.grad, w2.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", ["odd-q", "even-q", "odd-r", "even-r"])
def test_offset_axial_roundtrip_and_neighbours(layout):
    H, W = 6, 7
    x = torch.randn(2, H, W)
    a = hx.offset_to_axial(x, layout)
    assert a.shape[-2:] == hx.axial_shape(H, W, layout)
    assert torch.equal(hx.axial_to_offset(a, (H, W), layout), x)
    assert float(a.abs().sum()) == pytest.approx(float(x.abs().sum()), rel=1e-6)
    i = torch.arange(H).repeat_interleave(W)
    j = torch.arange(W).repeat(H)
    r, q = hx.offset_to_axial_coords(i, j, layout)
    i2, j2 = hx.axial_to_offset_coords(r, q, layout)
    assert torch.equal(i2, i) and torch.equal(j2, j)
    # Geometric check: in the offset layout's own picture, cells that touch are axial neighbours.
    if layout.endswith("q"):
        shift = (j % 2 == (1 if layout == "odd-q" else 0)).double() * 0.5
        px, py = j.double() * math.sqrt(3) / 2, i.double() + shift
    else:
        shift = (i % 2 == (1 if layout == "odd-r" else 0)).double() * 0.5
        px, py = j.double() + shift, i.double() * math.sqrt(3) / 2
    d = ((px[:, None] - px[None]) ** 2 + (py[:, None] - py[None]) ** 2).sqrt()
    touching = (d - 1).abs() < 1e-9
    dr, dq = r[:, None] - r[None], q[:, None] - q[None]
    axial_nb = ((dr.abs() <= 1) & (dq.abs() <= 1) & ((dr + dq).abs() <= 1)) & ~((dr == 0) & (dq == 0))
    assert torch.equal(touching, axial_nb)


def test_positions_to_axial(seed):
    k = 6
    cells = hx.taps(k)  # a hexagonal array of 127 stations
    keep = torch.rand(cells.shape[0]) > 0.15
    cells = cells[keep]
    spacing, angle, origin = 1.5, 0.3, (100.0, -20.0)
    xy = hx.axial_to_positions(cells, spacing, angle, origin)
    xy = xy + (torch.rand_like(xy) - 0.5) * 0.05  # survey noise
    # given geometry: exact recovery up to the shift to a zero minimum
    idx = hx.positions_to_axial(xy, spacing=spacing, angle=angle)
    assert torch.equal(idx.rq, cells - cells.min(0).values)
    assert idx.shape == tuple((cells.max(0).values - cells.min(0).values + 1).tolist())
    # inferred geometry: spacing found, and neighbours (distance = spacing) stay axial neighbours
    idx2 = hx.positions_to_axial(xy)
    assert idx2.spacing == pytest.approx(spacing, rel=0.05)
    d = torch.cdist(xy, xy)
    near = (d > 0.5 * spacing) & (d < 1.3 * spacing)
    rq = idx2.rq
    dr, dq = rq[:, None, 0] - rq[None, :, 0], rq[:, None, 1] - rq[None, :, 1]
    nb = (dr.abs() <= 1) & (dq.abs() <= 1) & ((dr + dq).abs() <= 1) & ~((dr == 0) & (dq == 0))
    assert torch.equal(near, nb)
    with pytest.raises(ValueError):
        hx.positions_to_axial(torch.cat([xy, xy[:1] + 0.01]), spacing=spacing, angle=angle)
    with pytest.raises(ValueError):
        hx.positions_to_axial(xy + torch.tensor([[0.5 * spacing, 0.0]]) * (torch.arange(len(xy)) % 2)[:, None],
                              spacing=spacing, angle=angle)


@pytest.mark.parametrize("k", [1, 2])
def test_agrees_with_hexagdly_conv(k, seed):
    """Same input and weights on HexagDLy's own layout, through the conversion tools."""
    hexagdly = pytest.importorskip("hexagdly")
    Cin, Cout, H, W = 3, 4, 7, 8
    m = hexagdly.Conv2d(Cin, Cout, k, 1).double()
    x = torch.randn(2, Cin, H, W, dtype=torch.float64)
    w, b = hx.hexagdly_conv_weight(m, Cin, k)
    ours = pyfastattn.hex_conv2d(hx.offset_to_axial(x, "hexagdly"), w, b)
    torch.testing.assert_close(hx.axial_to_offset(ours, (H, W), "hexagdly"), m(x), rtol=0, atol=1e-12)
    # stride 2: HexagDLy keeps offset cells (2i + j%2, 2j) = axial cells with even unshifted r, q.
    m2 = hexagdly.Conv2d(Cin, Cout, k, 2).double()
    m2.load_state_dict(m.state_dict())
    y2 = m2(x)
    r0, _ = hx.axial_origin(H, W, "hexagdly")
    xa = hx.offset_to_axial(x, "hexagdly")
    lead = r0 % 2  # prepend a zero row so that the tensor's first row has an even axial r
    xa = F.pad(xa, (0, 0, lead, 0))
    ours2 = pyfastattn.hex_conv2d(xa, w, b, stride=2)
    Ho, Wo = y2.shape[-2:]
    ii, jj = torch.meshgrid(torch.arange(Ho), torch.arange(Wo), indexing="ij")
    r, q = hx.offset_to_axial_coords(2 * ii + jj % 2, 2 * jj, "hexagdly")
    picked = ours2[..., (r - (r0 - lead)) // 2, q // 2]
    torch.testing.assert_close(picked, y2, rtol=0, atol=1e-12)


def test_agrees_with_hexagdly_max_pool(seed):
    """HexagDLy pads with zeros, pyfastattn leaves out-of-grid cells out: equal for positive inputs."""
    hexagdly = pytest.importorskip("hexagdly")
    x = torch.rand(2, 3, 7, 8, dtype=torch.float64) + 0.5
    for k in (1, 2):
        y = hexagdly.MaxPool2d(k, 1)(x)
        ours = pyfastattn.hex_max_pool2d(hx.offset_to_axial(x, "hexagdly"), k, 1)
        torch.testing.assert_close(hx.axial_to_offset(ours, (7, 8), "hexagdly"), y, rtol=0, atol=0)
