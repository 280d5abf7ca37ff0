"""The hexagonal patch's 12 symmetries: training augmentation and symmetry-averaged prediction."""
from __future__ import annotations

import torch
from torch import nn

from python_models import airshower as A
from python_models.airshower_sim import patch_mask, patch_xy, simulate


def test_the_twelve_maps_are_the_patch_symmetries():
    source, mats = A.patch_symmetries()
    assert source.shape == (12, 81) and mats.shape == (12, 2, 2)
    assert torch.equal(source[0], torch.arange(81))
    assert len({tuple(s.tolist()) for s in source}) == 12  # all distinct
    eye = torch.eye(2)
    for m in mats:  # orthogonal
        torch.testing.assert_close(m @ m.T, eye, atol=1e-6, rtol=0)
    # station at xy moves to mats[g] @ xy: the cell that receives a station holds its position rotated
    xy = torch.from_numpy(patch_xy()).reshape(81, 2).double()
    inside = torch.from_numpy(patch_mask()).reshape(81)
    for g in range(12):
        moved = xy[source[g]] @ mats[g].double().T
        torch.testing.assert_close(moved[inside], xy[inside], atol=1e-2, rtol=0)  # metres (float32 table)
    # closed under composition: each product is one of the 12 matrices
    for a in mats:
        for b in mats:
            assert min(float((a @ b - c).abs().max()) for c in mats) < 1e-6


def test_a_transformed_event_moves_its_footprint_with_its_core():
    ev = simulate(500, seed=11)
    x, y = A.station_features(ev), A.targets(ev)
    source, mats = A.patch_symmetries()
    xy = torch.from_numpy(patch_xy()).reshape(81, 2)
    g = torch.randint(0, 12, (500,), generator=torch.Generator().manual_seed(0))
    xg, yg = A.apply_symmetry(x, g, source), A.transform_targets(y, g, mats)
    w, wg = x[:, 0].reshape(500, 81), xg[:, 0].reshape(500, 81)
    centroid, centroid_g = (w @ xy) / w.sum(1, keepdim=True), (wg @ xy) / wg.sum(1, keepdim=True)
    torch.testing.assert_close(centroid_g, torch.einsum("nij,nj->ni", mats[g], centroid), atol=1e-2, rtol=0)
    torch.testing.assert_close(A.transform_targets(yg, g, mats, inverse=True), y, atol=1e-6, rtol=0)
    # energy and the vertical axis component are invariant
    torch.testing.assert_close(yg[:, [0, 3]], y[:, [0, 3]])
    torch.testing.assert_close(xg.sum((2, 3)), x.sum((2, 3)))  # every channel only moves between cells


class _Constant(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out.expand(x.shape[0], -1)


def test_symmetric_predict_averages_the_mapped_back_predictions():
    x = torch.randn(4, 3, 9, 9)
    # a model blind to its input predicts the same core in every frame: mapped back and averaged
    # over the group, the horizontal vectors cancel; energy and the vertical axis stay
    out = torch.tensor([[0.3, 0.6, 0.0, 0.8, 0.5, -0.2]])
    avg = A.symmetric_predict(_Constant(out), x)
    torch.testing.assert_close(avg[:, [0, 3]], out[:, [0, 3]].expand(4, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(avg[:, [1, 2, 4, 5]], torch.zeros(4, 4), atol=1e-6, rtol=0)
    # an exactly equivariant model gives back its own prediction
    source, mats = A.patch_symmetries()

    class Equivariant(nn.Module):
        def forward(self, x):  # core = signal-weighted centroid, axis straight down, energy = total
            xy = torch.from_numpy(patch_xy()).reshape(81, 2) / 750.0
            w = x[:, 0].reshape(x.shape[0], 81)
            c = (w @ xy) / w.sum(1, keepdim=True)
            axis = torch.tensor([0.0, 0.0, 1.0]).expand(x.shape[0], 3)
            return torch.cat([w.sum(1, keepdim=True), axis, c], dim=1)

    xs = A.station_features(simulate(8, seed=3))
    torch.testing.assert_close(A.symmetric_predict(Equivariant(), xs), Equivariant()(xs), atol=1e-5, rtol=0)
