"""The toy air-shower simulation: shapes, determinism and physical sanity."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats

from python_models import airshower_sim as S

EV = S.simulate(6000, seed=11)


def test_shapes_and_ranges():
    n = 6000
    assert EV["signal"].shape == EV["time"].shape == EV["triggered"].shape == (n, 9, 9)
    assert EV["axis"].shape == (n, 3) and EV["core"].shape == (n, 2)
    assert EV["patch_mask"].sum() == 61 and EV["patch_xy"].shape == (9, 9, 2)
    lg = EV["log10_energy"]
    assert lg.min() >= 18.5 and lg.max() <= 20.0
    assert EV["zenith"].min() >= 0 and EV["zenith"].max() <= math.radians(60) + 1e-6
    np.testing.assert_allclose(np.linalg.norm(EV["axis"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(EV["axis"][:, 2], np.cos(EV["zenith"]), atol=1e-5)
    assert 500 < EV["xmax"].min() and EV["xmax"].max() < 1300
    assert set(np.unique(EV["mass"])) <= {1, 4, 14, 56}
    # stations outside the hexagon, and untriggered ones, are empty
    outside = ~EV["patch_mask"]
    assert not EV["signal"][:, outside].any() and not EV["triggered"][:, outside].any()
    assert (EV["signal"][~EV["triggered"]] == 0).all() and (EV["time"][~EV["triggered"]] == 0).all()
    assert (EV["signal"][EV["triggered"]] >= 3.0).all()
    assert (EV["n_triggered"] == EV["triggered"].sum((1, 2))).all()
    # the patch is centred on the largest signal; the core lies within ~ one spacing of it
    centre = EV["signal"][:, 4, 4]
    assert np.mean(centre == EV["signal"].max((1, 2))) > 0.999
    assert np.linalg.norm(EV["core"], axis=1).max() < 1.6 * S.SPACING


def test_deterministic_for_a_seed():
    a = S.simulate(300, seed=5, traces=True, n_bins=80)
    b = S.simulate(300, seed=5, traces=True, n_bins=80)
    c = S.simulate(300, seed=6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["signal"], c["signal"])
    # chunking does not change the stream's meaning: same statistics, reproducible per chunk size
    d = S.simulate(300, seed=5, chunk=100)
    np.testing.assert_array_equal(d["signal"], S.simulate(300, seed=5, chunk=100)["signal"])


def test_signal_falls_with_distance():
    # mean signal per hexagonal ring around the centre station
    r = np.arange(9)[:, None] - 4
    q = np.arange(9)[None, :] - 4
    ring = np.maximum(np.maximum(np.abs(r), np.abs(q)), np.abs(r + q))
    means = [EV["signal"][:, ring == k].mean() for k in range(5)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    # and the LDF itself is monotonic at fixed energy and geometry
    f = S._ldf(np.linspace(100, 4000, 50), -2.5)
    assert np.all(np.diff(f) < 0)


def test_trigger_count_rises_with_energy():
    lg = EV["log10_energy"]
    edges = np.linspace(18.5, 20.0, 6)
    counts = [EV["n_triggered"][(lg >= a) & (lg < b)].mean() for a, b in zip(edges, edges[1:])]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    assert stats.spearmanr(lg, EV["n_triggered"]).statistic > 0.5


def test_zenith_distribution_is_sin_cos():
    # pdf ∝ sinθ cosθ on [0, 60°]  <=>  CDF = sin²θ / sin²60°
    cdf = lambda th: np.sin(th) ** 2 / math.sin(math.radians(60)) ** 2  # noqa: E731
    assert stats.kstest(EV["zenith"], cdf).pvalue > 1e-3
    # a cos-weighted uniform-in-solid-angle law is rejected, so the test has power
    wrong = lambda th: (1 - np.cos(th)) / (1 - math.cos(math.radians(60)))  # noqa: E731
    assert stats.kstest(EV["zenith"], wrong).pvalue < 1e-6


@pytest.mark.parametrize("lg,mass", [(19.0, 1), (18.7, 56), (19.8, 4)])
def test_xmax_matches_gumbel_parametrisation(lg, mass):
    rng = np.random.default_rng(int(lg * 10) + mass)
    x = S.sample_xmax(rng, np.full(200_000, lg), np.full(200_000, mass))
    mean, std = S.xmax_moments(lg, mass)
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(len(x))
    assert abs(x.std() / std - 1) < 0.02


def test_xmax_published_values():
    # EPOS-LHC at 10 EeV (De Domenico et al. 2013): <Xmax> ≈ 809 (p) and ≈ 709 (Fe) g/cm²,
    # σ ≈ 55 (p) and ≈ 19 (Fe) g/cm² (cf. their figure 4 and the CONEX moments)
    mp, sp = S.xmax_moments(19.0, 1)
    mfe, sfe = S.xmax_moments(19.0, 56)
    assert 795 < mp < 820 and 690 < mfe < 720
    assert 45 < sp < 65 and 12 < sfe < 28


def test_simulated_xmax_follows_composition():
    ev = S.simulate(4000, seed=2, masses=(1,))
    mean, std = S.xmax_moments(ev["log10_energy"].astype(np.float64), 1)
    pull = (ev["xmax"] - mean) / std
    assert abs(pull.mean()) < 0.1 and abs(pull.std() - 1) < 0.1


def test_traces():
    ev = S.simulate(200, seed=4, traces=True, n_bins=100)
    tr = ev["traces"].astype(np.float32)
    assert tr.shape == (200, 9, 9, 100) and ev["traces"].dtype == np.float16
    assert (tr >= 0).all() and not tr[~ev["triggered"]].any()
    trig = ev["triggered"]
    ratio = tr.sum(-1)[trig] / ev["signal"][trig]
    assert np.median(ratio) > 0.7 and np.quantile(ratio, 0.99) < 1.05


def test_station_list():
    st = S.station_list(EV)
    assert st["signal"].shape == (6000, 61) and st["xy"].shape == (6000, 61, 2)
    assert st["signal"].sum() == pytest.approx(EV["signal"].sum(), rel=1e-6)
    np.testing.assert_allclose(st["xy"][0, 30], 0.0)  # the centre station
    d = np.linalg.norm(st["xy"][0][:, None] - st["xy"][0][None], axis=-1)
    np.testing.assert_allclose(np.sort(d[30])[1:7], S.SPACING, rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_events"):
        S.simulate(0)
    with pytest.raises(ValueError, match="model"):
        S.simulate(10, model="nope")
    with pytest.raises(ValueError, match="radius"):
        S.simulate(10, radius=0)


def test_speed_sanity():
    """Prints the rate (a sanity number, not a timed assertion: the CI machine is shared)."""
    t = time.perf_counter()
    S.simulate(20_000, seed=1)
    rate = 20_000 / (time.perf_counter() - t)
    print(f"airshower_sim: {rate:.0f} events/s without traces")
    assert rate > 0
