"""HexCNN's trace path: the features, the encoder of the stations that have a trace, the loss
weights with Xmax."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from python_models import airshower as A
from python_models.airshower_sim import simulate

EV = simulate(24, seed=11, traces=True, n_bins=40)


def test_trace_features_are_log1p_in_half_precision():
    tr = A.trace_features(EV, chunk=5)  # several chunks
    assert tr.dtype == torch.float16 and tr.shape == (24, 40, 9, 9)
    want = np.log1p(np.moveaxis(EV["traces"].astype(np.float32), -1, 1))
    np.testing.assert_allclose(tr.float().numpy(), want, rtol=2e-3, atol=1e-3)


def test_each_station_is_encoded_on_its_own():
    """The encoder packs the stations that have a trace into groups; a station's features must
    not depend on which others are in the batch, and a station without a trace gets zeros."""
    torch.manual_seed(0)
    model = A.HexCNN(width=8, blocks=1, hidden=16, trace_bins=40, trace_channels=8, backend="torch").double()
    tr = A.trace_features(EV).double()
    with torch.no_grad():
        whole = model.encode_traces(tr)
        alone = torch.cat([model.encode_traces(tr[i:i + 1]) for i in range(len(tr))])
    torch.testing.assert_close(whole, alone, rtol=1e-12, atol=1e-12)
    has_trace = tr.abs().sum(1, keepdim=True) > 0
    assert has_trace.any() and (~has_trace).any()
    assert not whole.masked_select(~has_trace).any()
    assert whole.masked_select(has_trace).abs().sum() > 0


def test_encoder_without_any_trace_gives_zeros():
    model = A.HexCNN(width=8, blocks=1, hidden=16, trace_bins=40, trace_channels=8, backend="torch")
    out = model.encode_traces(torch.zeros(3, 40, 9, 9, dtype=torch.float16))
    assert out.shape == (3, 8, 9, 9) and not out.any()


def test_loss_weights_default_the_xmax_term():
    torch.manual_seed(1)
    out, y = torch.randn(16, 7), torch.randn(16, 7)
    w = A.LOSS_WEIGHTS
    assert len(w) == 4
    assert A.shower_loss(out, y, w[:3]) == A.shower_loss(out, y, w)
    assert A.shower_loss(out, y, w[:3] + (0.0,)) < A.shower_loss(out, y, w)


def test_loss_weights_option_takes_three_or_four(capsys):
    from python_models import train
    with pytest.raises(SystemExit):
        train.main(["airshower", "--loss-weights", "1", "2"])
    assert "3 or 4 values" in capsys.readouterr().err
