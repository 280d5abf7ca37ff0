r"""A toy simulation of a Pierre-Auger-like surface detector (SD), written from published physics.

It produces labelled footprints of ultra-high-energy air showers on a triangular grid of water
Cherenkov stations, fast enough to train networks on the fly (vectorized numpy, > 10^4 events/s
per core without traces). It is a *toy*: the parametrisations below are simple closed forms
chosen to reproduce the published orders of magnitude and trends, not a detector simulation.
All random numbers come from one `numpy.random.Generator` seeded by the caller: a seed fixes
every event.

Array
-----
Stations on a triangular grid of spacing d = 1500 m at 1400 m a.s.l. (Auger SD [1]). Station
(r, q) in axial coordinates sits at x = d (q + r/2), y = d r sqrt(3)/2; its six neighbours are
(r, q±1), (r±1, q), (r-1, q+1), (r+1, q-1), matching pyfastattn's axial tensor layout. The
ground is flat (z = 0 at the array altitude).

Primary
-------
- Energy: log10(E/eV) ~ U[18.5, 20].
- Arrival direction: zenith θ with pdf ∝ sinθ cosθ on [0°, 60°] (isotropic flux through a flat
  array), sampled as sin²θ ~ U[0, sin²60°]; azimuth φ ~ U[0, 2π). The axis unit vector points
  to where the shower comes from: u = (sinθ cosφ, sinθ sinφ, cosθ).
- Core: uniform over the central cell (the hexagonal Voronoi cell of station (0, 0)); sampled
  uniform over the rhombus r, q ∈ [-1/2, 1/2) of fractional axial coordinates and folded into
  the hexagon by rounding to the nearest station (both are fundamental domains of the lattice).
- Mass A drawn uniformly from `masses` (default p, He, N, Fe).

Depth of shower maximum
-----------------------
Xmax follows the generalized Gumbel distribution of De Domenico et al. [2]:

    g(X) = λ^λ / (σ Γ(λ)) · exp(-λ z - λ e^{-z}),   z = (X - μ)/σ,

with, for ε = log10(E / 10^19 eV) and lnA,
    μ = p0(lnA) + p1(lnA) ε + p2(lnA) ε²,  σ = s0(lnA) + s1(lnA) ε,  λ = l0(lnA) + l1(lnA) ε,
each p, s, l a quadratic in lnA whose coefficients are tabulated in [2] for several hadronic
interaction models (`GUMBEL_PARAMS`; default EPOS-LHC). It is sampled exactly: if
G ~ Gamma(λ, 1) then z = -ln(G/λ). Its moments are <X> = μ + σ (ln λ - ψ(λ)) and
Var X = σ² ψ'(λ) (ψ the digamma function).

Atmosphere and geometry
-----------------------
Isothermal atmosphere X_v(h) = X_sea exp(-h/H), X_sea = 1033 g/cm², H = 8.0 km, so the vertical
depth of the array is X_v(1.4 km) ≈ 867 g/cm² (Auger: ≈ 875 g/cm²). Flat-Earth slant depth of
the ground X_g = X_v(1.4 km)/cosθ. Distance from the ground to Xmax along the axis:
D = (H ln(X_sea cosθ / Xmax) - 1.4 km)/cosθ (clipped at 0). ΔX = X_g - Xmax (clipped at 0) is
the slant depth the shower travels after its maximum.

Signal (in VEM, vertical-equivalent muons)
------------------------------------------
For a station at perpendicular distance r from the axis (r ≥ r_min = 100 m), the expected signal
is the sum of an electromagnetic and a muonic part, each with a lateral distribution function of
the modified-NKG form used by Auger [1, 3],

    f_β(r) = (r/1000 m)^β ((r + 700 m)/1700 m)^β,

    S_em(r) = S_em,ref (E/10 EeV)^1.0     exp(-(ΔX - ΔX_ref)/Λ_em) f_{β_em}(r),
    S_μ(r)  = S_μ,ref  (E/10 EeV)^0.93 A^0.07 exp(-(ΔX - ΔX_ref)/Λ_μ) f_{β_μ}(r),

- S_em,ref = 30 VEM, S_μ,ref = 18 VEM at ΔX_ref = 350 g/cm² (a 10 EeV shower at 38°), so the
  total S(1000) ≈ 48 VEM matches Auger's S38 ≈ 47 VEM at 10 EeV (E = 0.186 EeV · S38^1.031 [3]);
- the muon number grows as E^0.93 A^0.07 (Heitler-Matthews, β ≈ 0.93 [4]);
- attenuation lengths Λ_em = 500 g/cm² (the EM cascade dies out after its maximum) and
  Λ_μ = 1500 g/cm² (muons barely attenuate), which reproduce the ~2.5x drop of S(1000) from 38° to
  60° seen in Auger's constant-intensity cut [3];
- slopes flatten with shower age: β_em = -3.1 + 0.9 ΔX/1000, β_μ = -2.5 + 0.6 ΔX/1000 (ΔX in
  g/cm², clipped at 1200), giving β ≈ -2.6 (vertical) to -2.0 (60°) for the sum, as in [1].
Fluctuations: n_μ ~ Poisson(S_μ / 1 VEM) muons and n_em ~ Poisson(S_em / q_em) EM particles of
q_em = 0.1 VEM each, S = n_μ + q_em n_em. A station triggers when S ≥ `threshold` (default 3 VEM,
about the Auger T1 level); untriggered stations read zero signal, time and trace.

Arrival times
-------------
The shower front is a sphere around a virtual origin at distance R_c = D + 6 km upstream of the
core on the axis (toy: measured radii of curvature of ~8-20 km grow with the distance to the
shower maximum [1]); a station at p is reached at t = (|p - c - R_c u| - R_c)/c_light. The
measured time adds Gaussian noise σ_t = sqrt(σ_0² + T_s(r)²/(1 + S/VEM)), with σ_0 = 10 ns (GPS
and electronics) and T_s(r) = 40 ns + 0.08 ns/m · r (the particle time spread, whose first
arrival is known better for larger signals; cf. Auger's time-variance model [5]). Times are
given relative to the station with the largest signal.

Traces (optional)
-----------------
`n_bins` bins of 25 ns (default 120; Auger's 40 MHz FADC), the front arriving at bin 8.
Particle delays after the front follow Gamma(2, τ) laws with τ_μ = 10 ns + r²/(2 c_light D_μ)
(geometric delay of muons produced at D_μ = D + 8 km upstream; the offset keeps the
toy's delays within the short window) and τ_em = 1.5 τ_μ + 20 ns (EM
particles scatter more); the n_μ muons and n_em EM particles are distributed over bins by a
multinomial draw, each depositing 1 VEM (muon) or q_em (EM), convolved with the exponential
light decay of the tank (τ_d = 60 ns), and clipped at 3000 VEM per bin (FADC saturation,
toy value). Traces are in VEM per bin (sum = signal, up to late particles and saturation) and
stored as float16.

Output
------
Events are cut to a hexagonal patch of `radius` (default 4: 61 stations in a 9x9 axial tensor,
cells outside the hexagon zero) centred on the station with the largest signal. Per station:
`signal` (VEM), `time` (ns), `triggered`, optionally `traces` (N, 2R+1, 2R+1, n_bins). Per event:
`log10_energy`, `zenith`, `azimuth`, `axis` (unit vector u), `core` (m, relative to the
centre station), `xmax` (g/cm²), `mass` (A), `n_triggered`. `patch_xy` (2R+1, 2R+1, 2) holds the
station positions relative to the centre station; `station_list` turns events into padded lists
of stations with (x, y) for set/transformer models.

References
----------
[1] Pierre Auger Collaboration, "The Pierre Auger Cosmic Ray Observatory", NIM A 798 (2015) 172.
[2] M. De Domenico, M. Settimo, S. Riggi, E. Bertin, "Reinterpreting the development of extensive
    air showers initiated by nuclei and photons", JCAP 07 (2013) 050, arXiv:1305.2331 (Table 1).
[3] Pierre Auger Collaboration, "Measurement of the cosmic-ray energy spectrum above 2.5x10^18 eV
    using the Pierre Auger Observatory", Phys. Rev. D 102 (2020) 062005.
[4] J. Matthews, "A Heitler model of extensive air showers", Astropart. Phys. 22 (2005) 387.
[5] C. Bonifazi et al. (Auger), "The angular resolution of the Pierre Auger Observatory",
    Nucl. Phys. B Proc. Suppl. 190 (2009) 20.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SPACING = 1500.0            # m
ALTITUDE = 1400.0           # m a.s.l.
X_SEA = 1033.0              # g/cm^2
SCALE_HEIGHT = 8000.0       # m
X_GROUND = X_SEA * math.exp(-ALTITUDE / SCALE_HEIGHT)
C_LIGHT = 0.299792458       # m/ns
LG_E_RANGE = (18.5, 20.0)
ZENITH_MAX = math.radians(60.0)
S_EM_REF, S_MU_REF, DX_REF = 30.0, 18.0, 350.0
LAMBDA_EM, LAMBDA_MU = 500.0, 1500.0
Q_EM = 0.1
R_MIN = 100.0
SIGMA_T0 = 10.0             # ns
BIN_NS = 25.0
FRONT_BIN = 8
SAT_VEM_PER_BIN = 3000.0
TANK_DECAY_NS = 60.0
SEARCH_RADIUS = 2           # the max-signal station is looked for this close to the core

# De Domenico et al. (2013), Table 1: mu = (a0, a1, a2 | b0, b1, b2 | c0, c1, c2) for the
# constant, linear and quadratic terms in epsilon, each a quadratic in lnA; sigma and lambda
# are (a0, a1, a2 | b0, b1, b2) for the constant and linear terms.
GUMBEL_PARAMS = {
    "EPOS-LHC": {
        "mu": (775.589, -7.047, -2.427, 57.589, -0.743, 0.214, -0.820, -0.169, -0.027),
        "sigma": (29.403, 13.553, -3.154, 0.096, -0.961, 0.150),
        "lambda": (0.563, 0.711, 0.058, 0.039, 0.067, -0.004),
    },
    "QGSJetII-04": {
        "mu": (761.383, -11.719, -1.372, 57.344, -1.731, 0.309, -0.355, 0.273, -0.137),
        "sigma": (35.221, 12.335, -2.889, 0.307, -1.147, 0.271),
        "lambda": (0.673, 0.694, -0.007, 0.060, -0.019, 0.017),
    },
    "Sibyll2.1": {
        "mu": (770.104, -15.873, -0.960, 58.668, -0.124, -0.023, -1.423, 0.977, -0.191),
        "sigma": (31.717, 1.335, -0.601, -1.912, 0.007, 0.086),
        "lambda": (0.683, 0.278, 0.012, 0.008, 0.051, 0.003),
    },
}


def gumbel_parameters(log10_energy, mass, model: str = "EPOS-LHC"):
    """(μ, σ, λ) of the Xmax Gumbel law of [2] for log10(E/eV) and mass number A."""
    p = GUMBEL_PARAMS[model]
    eps = np.asarray(log10_energy, dtype=np.float64) - 19.0
    lna = np.log(np.asarray(mass, dtype=np.float64))

    def quad(c):
        return c[0] + c[1] * lna + c[2] * lna ** 2

    m = p["mu"]
    mu = quad(m[0:3]) + quad(m[3:6]) * eps + quad(m[6:9]) * eps ** 2
    sigma = quad(p["sigma"][0:3]) + quad(p["sigma"][3:6]) * eps
    lam = quad(p["lambda"][0:3]) + quad(p["lambda"][3:6]) * eps
    return mu, sigma, lam


def xmax_moments(log10_energy, mass, model: str = "EPOS-LHC"):
    """Mean and standard deviation of Xmax implied by the Gumbel law."""
    from scipy.special import digamma, polygamma
    mu, sigma, lam = gumbel_parameters(log10_energy, mass, model)
    return mu + sigma * (np.log(lam) - digamma(lam)), sigma * np.sqrt(polygamma(1, lam))


def sample_xmax(rng: np.random.Generator, log10_energy, mass, model: str = "EPOS-LHC"):
    mu, sigma, lam = gumbel_parameters(log10_energy, mass, model)
    g = rng.standard_gamma(lam)
    return mu - sigma * np.log(g / lam)


# ---------------------------------------------------------------- lattice

def hexagon_cells(radius: int) -> np.ndarray:
    """(T, 2) axial offsets (r, q) of the hexagon of `radius`, row-major in (r, q)."""
    return np.array([(r, q) for r in range(-radius, radius + 1) for q in range(-radius, radius + 1)
                     if abs(r + q) <= radius], dtype=np.int64)


def axial_to_xy(rq: np.ndarray) -> np.ndarray:
    r, q = rq[..., 0], rq[..., 1]
    return np.stack([SPACING * (q + 0.5 * r), SPACING * (math.sqrt(3) / 2) * r], axis=-1)


def _axial_round(fr, fq):
    # cube-coordinate rounding: nearest lattice point of a fractional axial position
    fs = -fr - fq
    r, q, s = np.round(fr), np.round(fq), np.round(fs)
    dr, dq, ds = np.abs(r - fr), np.abs(q - fq), np.abs(s - fs)
    fix_r = (dr > dq) & (dr > ds)
    fix_q = ~fix_r & (dq > ds)
    r = np.where(fix_r, -q - s, r)
    q = np.where(fix_q, -r - s, q)
    return r, q


def patch_mask(radius: int = 4) -> np.ndarray:
    """(2R+1, 2R+1) bool: the cells of the axial tensor inside the hexagonal patch."""
    n = 2 * radius + 1
    r = np.arange(n)[:, None] - radius
    q = np.arange(n)[None, :] - radius
    return np.abs(r + q) <= radius


def patch_xy(radius: int = 4) -> np.ndarray:
    """(2R+1, 2R+1, 2) station positions (m) relative to the patch centre (outside cells too)."""
    n = 2 * radius + 1
    r, q = np.meshgrid(np.arange(n) - radius, np.arange(n) - radius, indexing="ij")
    return axial_to_xy(np.stack([r, q], axis=-1)).astype(np.float32)


@lru_cache(maxsize=None)
def _lattice(radius: int):
    """Simulated stations, candidate centres and, per centre, the patch cells' station indices."""
    big = hexagon_cells(SEARCH_RADIUS + radius)  # every patch around a candidate centre fits
    index = {tuple(c): i for i, c in enumerate(big)}
    centres = hexagon_cells(SEARCH_RADIUS)
    cells = hexagon_cells(radius)
    table = np.array([[index[(c[0] + d[0], c[1] + d[1])] for d in cells] for c in centres])
    centre_idx = np.array([index[tuple(c)] for c in centres])
    flat = ((cells[:, 0] + radius) * (2 * radius + 1) + cells[:, 1] + radius)
    return big, axial_to_xy(big), centre_idx, table, flat


# ---------------------------------------------------------------- physics pieces

def _ldf(r, beta):
    return (r / 1000.0) ** beta * ((r + 700.0) / 1700.0) ** beta


def _gamma2_cdf(x):
    x = np.maximum(x, 0.0)
    return 1.0 - np.exp(-x) * (1.0 + x)


def _tank_kernel():
    t = np.arange(0, 8) * BIN_NS
    k = np.exp(-t / TANK_DECAY_NS)
    return k / k.sum()


def _traces(rng, n_mu, n_em, r, d_xmax, n_bins, block: int = 2048):
    """(M, n_bins) float32 VEM per bin from particle counts and arrival-time laws (see module
    doc); n_mu, n_em, r and d_xmax are (M,), one entry per station. Blocks of stations keep
    the temporaries in cache."""
    edges = (np.arange(n_bins + 1) - FRONT_BIN) * BIN_NS
    tau_mu = 10.0 + r ** 2 / (2.0 * C_LIGHT * (d_xmax + 8000.0))
    tau_em = 1.5 * tau_mu + 20.0
    kernel = _tank_kernel().astype(np.float32)
    out = np.empty(r.shape + (n_bins,), dtype=np.float32)
    for s in range(0, len(r), block):
        deposit = np.zeros((min(block, len(r) - s), n_bins), dtype=np.float32)
        for n, tau, q in ((n_mu, tau_mu, 1.0), (n_em, tau_em, Q_EM)):
            cdf = _gamma2_cdf(edges / tau[s:s + block, None])
            p = np.diff(cdf, axis=-1)
            p = np.concatenate([p, np.clip(1.0 - cdf[:, -1:], 0.0, None)], axis=-1)  # late overflow
            p /= p.sum(axis=-1, keepdims=True)
            counts = rng.multinomial(n[s:s + block].astype(np.int64), p)[:, :n_bins]
            deposit += np.float32(q) * counts
        # light in the tank decays exponentially: causal FIR along time
        light = out[s:s + block]
        light[:] = 0.0
        for i, w in enumerate(kernel):
            light[:, i:] += w * deposit[:, : n_bins - i]
    return np.minimum(out, np.float32(SAT_VEM_PER_BIN), out=out)


def simulate(n_events: int, seed: int = 0, radius: int = 4, traces: bool = False, n_bins: int = 120,
             threshold: float = 3.0, masses=(1, 4, 14, 56), model: str = "EPOS-LHC",
             chunk: int = 20000) -> dict:
    """Simulates `n_events` showers; returns a dict of numpy arrays (see the module docstring)."""
    if n_events < 1:
        raise ValueError(f"simulate: n_events must be >= 1, got {n_events}")
    if not 1 <= radius <= 6:
        raise ValueError(f"simulate: radius must be in [1, 6], got {radius}")
    if traces and not 8 <= n_bins <= 1024:
        raise ValueError(f"simulate: n_bins must be in [8, 1024], got {n_bins}")
    if model not in GUMBEL_PARAMS:
        raise ValueError(f"simulate: model must be one of {sorted(GUMBEL_PARAMS)}, got {model!r}")
    rng = np.random.default_rng(seed)
    parts = [_simulate_chunk(rng, min(chunk, n_events - s), radius, traces, n_bins, threshold,
                             np.asarray(masses, dtype=np.float64), model)
             for s in range(0, n_events, chunk)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["patch_mask"] = patch_mask(radius)
    out["patch_xy"] = patch_xy(radius)
    return out


def _simulate_chunk(rng, n, radius, with_traces, n_bins, threshold, masses, model):
    big, big_xy, centre_idx, table, flat = _lattice(radius)
    lg_e = rng.uniform(*LG_E_RANGE, size=n)
    theta = np.arcsin(np.sqrt(rng.uniform(0.0, math.sin(ZENITH_MAX) ** 2, size=n)))
    phi = rng.uniform(0.0, 2 * math.pi, size=n)
    mass = masses[rng.integers(0, len(masses), size=n)]
    fr, fq = rng.uniform(-0.5, 0.5, size=(2, n))
    rr, qq = _axial_round(fr, fq)
    core = axial_to_xy(np.stack([fr - rr, fq - qq], axis=-1))          # (n, 2) in the central cell
    xmax = sample_xmax(rng, lg_e, mass, model)

    cos_t, sin_t = np.cos(theta), np.sin(theta)
    axis = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=-1)
    x_ground = X_GROUND / cos_t
    dx = np.clip(x_ground - xmax, 0.0, None)
    h_xmax = SCALE_HEIGHT * np.log(X_SEA * cos_t / xmax)
    d_xmax = np.clip((h_xmax - ALTITUDE) / cos_t, 0.0, None)

    # station geometry relative to the core
    d = big_xy[None, :, :] - core[:, None, :]                           # (n, S, 2)
    along = d[..., 0] * axis[:, None, 0] + d[..., 1] * axis[:, None, 1]
    r = np.sqrt(np.maximum((d ** 2).sum(-1) - along ** 2, 0.0))
    r = np.maximum(r, R_MIN)

    e10 = 10.0 ** (lg_e - 19.0)
    dxc = np.minimum(dx, 1200.0)[:, None] / 1000.0
    s_em = (S_EM_REF * e10 * np.exp(-(dx - DX_REF) / LAMBDA_EM))[:, None] * _ldf(r, -3.1 + 0.9 * dxc)
    s_mu = (S_MU_REF * e10 ** 0.93 * mass ** 0.07 * np.exp(-(dx - DX_REF) / LAMBDA_MU))[:, None] \
        * _ldf(r, -2.5 + 0.6 * dxc)
    n_mu = rng.poisson(s_mu)
    n_em = rng.poisson(s_em / Q_EM)
    signal = n_mu + Q_EM * n_em
    trig = signal >= threshold

    # spherical front around the virtual origin c + R_c u
    rc = d_xmax + 6000.0
    ox = d[..., 0] - rc[:, None] * axis[:, None, 0]
    oy = d[..., 1] - rc[:, None] * axis[:, None, 1]
    oz = -rc[:, None] * axis[:, None, 2]
    t = (np.sqrt(ox ** 2 + oy ** 2 + oz ** 2) - rc[:, None]) / C_LIGHT
    sigma_t = np.sqrt(SIGMA_T0 ** 2 + (40.0 + 0.08 * r) ** 2 / (1.0 + signal))
    t = t + sigma_t * rng.standard_normal(t.shape)

    # patch around the largest signal near the core
    best = np.argmax(signal[:, centre_idx], axis=1)
    idx = table[best]                                                   # (n, P)
    rows = np.arange(n)[:, None]
    centre = big_xy[centre_idx[best]]
    t_centre = t[np.arange(n), centre_idx[best]]
    side = 2 * radius + 1

    def to_grid(values, dtype):
        g = np.zeros((n, side * side) + values.shape[2:], dtype=dtype)
        g[:, flat] = values
        return g.reshape((n, side, side) + values.shape[2:])

    p_trig = trig[rows, idx]
    out = {
        "signal": to_grid(np.where(p_trig, signal[rows, idx], 0.0), np.float32),
        "time": to_grid(np.where(p_trig, t[rows, idx] - t_centre[:, None], 0.0), np.float32),
        "triggered": to_grid(p_trig, bool),
        "log10_energy": lg_e.astype(np.float32),
        "zenith": theta.astype(np.float32),
        "azimuth": phi.astype(np.float32),
        "axis": axis.astype(np.float32),
        "core": (core - centre).astype(np.float32),
        "xmax": xmax.astype(np.float32),
        "mass": mass.astype(np.float32),
        "n_triggered": p_trig.sum(1).astype(np.int32),
    }
    if with_traces:  # only the triggered stations have a trace: the others stay zero
        ev, st = np.nonzero(p_trig)
        sel = (ev, idx[ev, st])
        tr = np.zeros(p_trig.shape + (n_bins,), dtype=np.float16)
        tr[ev, st] = _traces(rng, n_mu[sel], n_em[sel], r[sel], d_xmax[ev], n_bins)
        out["traces"] = to_grid(tr, np.float16)
    return out


def station_list(events: dict) -> dict:
    """Patch stations as padded lists: xy (N, P, 2) m, signal/time/triggered (N, P)[, traces]."""
    flat = patch_mask(events["signal"].shape[-1] // 2).reshape(-1)
    n = events["signal"].shape[0]

    def pick(a):
        return a.reshape((n, -1) + a.shape[3:])[:, flat]

    out = {k: pick(events[k]) for k in ("signal", "time", "triggered") + (("traces",) if "traces" in events else ())}
    out["xy"] = np.broadcast_to(events["patch_xy"].reshape(-1, 2)[flat], (n, int(flat.sum()), 2))
    return out
