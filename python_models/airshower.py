"""Air-shower reconstruction networks for the hexagonal surface-detector footprints of
`airshower_sim`: energy, arrival direction and core (and Xmax when traces are given).

- `HexCNN`: residual hexagonal convolutions (`hex_conv2d`) on the 9x9 axial tensor of the
  patch, with the station positions as two extra input channels; with
  traces, a strided `conv2d` along time encodes each station's trace into channels first.
  Feature maps are re-masked to the hexagon after every layer (cells outside the patch are not
  stations).
- `ShowerTransformer`: stations as tokens. Pairwise geometry (offsets, distance, time and
  signal differences) passes through a small MLP into a per-head additive attention bias, as
  Particle Transformer's interaction matrix (Qu, Li, Qian, ICML 2022) does; the bias gets
  gradients through the attention kernel. Optionally each station's trace is encoded by an
  attention layer along time (sequence length = trace bins, batch = events x stations), where
  fused attention's O(L) memory matters.

Both take `backend` ("pyfastattn" | "torch") and give identical parameters either way.
Outputs are one tensor (N, 6) or (N, 7): normalised log10 energy, axis (3), core (2)[, Xmax];
`decode` turns it into physical quantities and `shower_loss` compares it with `targets`.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .airshower_sim import C_LIGHT, SPACING, patch_mask, patch_xy
from .ops import get_ops, hex_taps
from .transformer import ATTN_OPS, EncoderLayer, LayerNorm

LG_E_MEAN, LG_E_SCALE = 19.25, 0.45
CORE_SCALE = 750.0          # m
XMAX_MEAN, XMAX_SCALE = 750.0, 70.0
TIME_SCALE = 1000.0         # ns
# shower_loss weights of the energy, axis, core and Xmax terms: about 1 / (goal resolution)² in
# the normalised units (7 % ≈ 0.066, 1.5° ≈ 0.026, 25 m ≈ 0.033, 20 g/cm² ≈ 0.29), relative to
# the energy's, so that no task's error dominates the gradient (with equal weights the energy
# term did; with traces, an Xmax weight of 1 made the Xmax term 50x the energy's)
LOSS_WEIGHTS = (1.0, 6.0, 4.0, 0.05)


# ---------------------------------------------------------------- data -> tensors

def station_features(events: dict) -> torch.Tensor:
    """(N, 3, R, Q) float32: log10(1 + S/VEM), time, triggered.

    The time (relative to the centre station) is in units of the light travel time over one
    station spacing, the unit of the position channels HexCNN adds: a plane front from axis u
    then reads t = -(u_x x + u_y y), of order 1 per spacing.
    """
    s = np.log10(1.0 + events["signal"])
    t = events["time"] * (C_LIGHT / SPACING)
    return torch.from_numpy(np.stack([s, t, events["triggered"].astype(np.float32)], axis=1).astype(np.float32))


def trace_features(events: dict, chunk: int = 8192) -> torch.Tensor:
    """(N, T, R, Q) float16: log(1 + trace / VEM per bin), kept in half precision (the models
    convert the stations they encode) so that a training set of traces fits in memory."""
    tr = events["traces"]
    out = torch.empty((tr.shape[0], tr.shape[3], tr.shape[1], tr.shape[2]), dtype=torch.float16)
    for s in range(0, tr.shape[0], chunk):
        part = np.log1p(tr[s:s + chunk].astype(np.float32))
        out[s:s + chunk] = torch.from_numpy(np.moveaxis(part, -1, 1))
    return out


def targets(events: dict, with_xmax: bool = False) -> torch.Tensor:
    cols = [(events["log10_energy"][:, None] - LG_E_MEAN) / LG_E_SCALE, events["axis"],
            events["core"] / CORE_SCALE]
    if with_xmax:
        cols.append((events["xmax"][:, None] - XMAX_MEAN) / XMAX_SCALE)
    return torch.from_numpy(np.concatenate(cols, axis=1).astype(np.float32))


def decode(out: torch.Tensor) -> dict:
    out = out.detach().double()
    d = {"log10_energy": out[:, 0] * LG_E_SCALE + LG_E_MEAN,
         "axis": nn.functional.normalize(out[:, 1:4], dim=1),
         "core": out[:, 4:6] * CORE_SCALE}
    if out.shape[1] > 6:
        d["xmax"] = out[:, 6] * XMAX_SCALE + XMAX_MEAN
    return d


def shower_loss(out: torch.Tensor, target: torch.Tensor, weights=LOSS_WEIGHTS) -> torch.Tensor:
    """Mean squared errors over the normalised targets (the axis compared as a unit vector),
    energy, axis, core and Xmax weighted by `weights` (default `LOSS_WEIGHTS`; missing trailing
    weights take their defaults)."""
    out = out.float()
    axis = nn.functional.normalize(out[:, 1:4], dim=1)
    pred = torch.cat([out[:, :1], axis, out[:, 4:]], dim=1)
    se = ((pred - target) ** 2).mean(0)
    w_e, w_axis, w_core, w_xmax = tuple(weights) + LOSS_WEIGHTS[len(weights):]
    return w_e * se[0] + w_axis * se[1:4].sum() + w_core * se[4:6].sum() + w_xmax * se[6:].sum()


def resolutions(out: torch.Tensor, target: torch.Tensor) -> dict:
    """Energy: std of E_rec/E - 1; direction and core: 68% quantiles; Xmax: std (g/cm²)."""
    p, t = decode(out), decode(target)
    rel = 10.0 ** (p["log10_energy"] - t["log10_energy"]) - 1.0
    cos = (p["axis"] * t["axis"]).sum(1).clamp(-1.0, 1.0)
    res = {"energy": float(rel.std()), "energy_bias": float(rel.mean()),
           "angle_deg_68": float(torch.quantile(torch.rad2deg(torch.acos(cos)), 0.68)),
           "core_m_68": float(torch.quantile((p["core"] - t["core"]).norm(dim=1), 0.68))}
    if "xmax" in p:
        res["xmax_g_cm2"] = float((p["xmax"] - t["xmax"]).std())
    return res


# ---------------------------------------------------------------- patch symmetries

@lru_cache(maxsize=None)
def patch_symmetries(radius: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 symmetries of the hexagonal patch about its centre station: rotations by
    multiples of 60°, each with and without a mirror (x -> -x). Returns (source (12, n*n) long,
    mats (12, 2, 2) float32): symmetry g moves the station at xy to mats[g] @ xy, so the
    transformed map is x.flatten(-2)[..., source[g]]; cells outside the patch map to themselves.
    Symmetry 0 is the identity."""
    n = 2 * radius + 1
    xy = patch_xy(radius).reshape(-1, 2).astype(np.float64)
    inside = patch_mask(radius).reshape(-1)
    mats, sources = [], []
    for mirror in (False, True):
        for k in range(6):
            c, s = math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)
            m = np.array([[c, -s], [s, c]]) @ (np.diag([-1.0, 1.0]) if mirror else np.eye(2))
            # the station that lands on cell j came from m^-1 xy_j = m^T xy_j
            back = xy @ m  # rows: (m^T xy_j)^T
            dist = np.linalg.norm(back[:, None, :] - xy[None, :, :], axis=2)
            src = np.where(inside, dist.argmin(1), np.arange(n * n))
            if not (np.all(dist[inside, src[inside]] < 1e-6 * SPACING) and np.all(inside[src[inside]])):
                raise AssertionError("the patch is not symmetric under this map")  # by construction it is
            mats.append(m)
            sources.append(src)
    return (torch.from_numpy(np.stack(sources)).long(),
            torch.from_numpy(np.stack(mats).astype(np.float32)))


def apply_symmetry(maps: torch.Tensor, g: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """maps (N, C, R, Q) with symmetry g[i] applied to event i (g: (N,) long)."""
    N, C, R, Q = maps.shape
    idx = source.to(maps.device)[g].unsqueeze(1).expand(N, C, R * Q)
    return maps.reshape(N, C, R * Q).gather(2, idx).reshape(N, C, R, Q)


def transform_targets(y: torch.Tensor, g: torch.Tensor, mats: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotates/mirrors the axis' and core's horizontal parts of y (N, 6+) by mats[g[i]] (or
    its inverse, the transpose); the energy, the axis' vertical part and Xmax are invariant."""
    m = mats.to(y.device, y.dtype)[g]
    if inverse:
        m = m.transpose(1, 2)
    out = y.clone()
    out[:, 1:3] = torch.einsum("nij,nj->ni", m, y[:, 1:3])
    out[:, 4:6] = torch.einsum("nij,nj->ni", m, y[:, 4:6])
    return out


@torch.no_grad()
def symmetric_predict(model: nn.Module, x: torch.Tensor, traces: torch.Tensor | None = None,
                      radius: int = 4) -> torch.Tensor:
    """HexCNN output averaged over the patch's 12 symmetries: each transformed footprint is
    reconstructed, the prediction mapped back, and the 12 averaged (the axis as unit vectors).
    Same layout as model(x)."""
    source, mats = patch_symmetries(radius)
    outs = []
    for k in range(len(mats)):
        g = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        args = (apply_symmetry(x, g, source),)
        if traces is not None:
            args += (apply_symmetry(traces, g, source),)
        out = model(*args).float()
        out = torch.cat([out[:, :1], nn.functional.normalize(out[:, 1:4], dim=1), out[:, 4:]], dim=1)
        outs.append(transform_targets(out, g, mats, inverse=True))
    return torch.stack(outs).mean(0)


# ---------------------------------------------------------------- HexCNN

class HexConv(nn.Module):
    """Hexagonal convolution of kernel radius k, weight (Cout, Cin, T) initialised like Conv2d."""

    def __init__(self, cin: int, cout: int, ops, radius: int = 1, stride: int = 1):
        super().__init__()
        self.ops, self.stride = ops, stride
        taps = len(hex_taps(radius))
        self.weight = nn.Parameter(torch.empty(cout, cin, taps))
        self.bias = nn.Parameter(torch.empty(cout))
        bound = 1.0 / math.sqrt(cin * taps)
        nn.init.uniform_(self.weight, -bound * math.sqrt(3), bound * math.sqrt(3))
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return self.ops.hex_conv2d(x, self.weight, self.bias, stride=self.stride)


class HexCNN(nn.Module):
    """A hexagonal convolution from the inputs to `width` channels, `blocks` residual blocks
    x + GELU(hex_conv(x)), all at the patch's full 9x9 resolution (no pooling: on a patch this
    small, pooling lost the sub-spacing position detail the core and direction need), then the
    flattened map through an MLP head."""

    STATION_GROUPS = 16

    def __init__(self, radius: int = 4, width: int = 32, blocks: int = 4, trace_bins: int | None = None,
                 trace_channels: int = 32, hidden: int = 512, backend: str = "pyfastattn"):
        super().__init__()
        needs = ("hex_conv2d",) + (("conv2d",) if trace_bins else ())
        self.ops = ops = get_ops(backend, needs, "HexCNN")
        self.backend, self.trace_bins = backend, trace_bins
        if trace_bins is not None and trace_bins < 36:
            raise ValueError(f"HexCNN: trace_bins must be >= 36 (two stride-4 convolutions of 8 bins), "
                             f"got {trace_bins}")
        # 3 station channels + 2 constant channels of station position (CoordConv), which
        # let the convolutions tell where in the patch a feature sits (the core regression needs it)
        cin = 5
        if trace_bins:
            self.tw1 = nn.Parameter(torch.empty(16, 1, 8, 1))
            self.tw2 = nn.Parameter(torch.empty(trace_channels, 16, 8, 1))
            self.tb1 = nn.Parameter(torch.zeros(16))
            self.tb2 = nn.Parameter(torch.zeros(trace_channels))
            for w in (self.tw1, self.tw2):
                nn.init.kaiming_uniform_(w, a=5 ** 0.5)
            cin += trace_channels
        mask = torch.from_numpy(patch_mask(radius)).float()[None, None]
        xy = torch.from_numpy(patch_xy(radius) / SPACING).permute(2, 0, 1)[None]
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("coords", xy * mask, persistent=False)
        self.stem = HexConv(cin, width, ops)
        self.blocks = nn.ModuleList(HexConv(width, width, ops) for _ in range(blocks))
        self.act = nn.GELU()
        self.head = nn.Sequential(nn.Linear(width * mask.numel(), hidden), nn.GELU(),
                                  nn.Linear(hidden, 7 if trace_bins else 6))

    def encode_traces(self, traces):
        """(N, T, R, Q) -> (N, C, R, Q): two strided convolutions along time, then a mean over
        time. Only stations with a trace are encoded (the others, ~85 % of a patch, get zero
        features); they are laid out as `STATION_GROUPS` groups of stations so the convolutions
        have a batch to spread over threads."""
        N, T, R, Q = traces.shape
        flat = traces.permute(0, 2, 3, 1).reshape(N * R * Q, T)
        idx = (flat != 0).any(1).nonzero().squeeze(1)
        if idx.numel() == 0:
            return traces.new_zeros((N, self.tw2.shape[0], R, Q), dtype=self.tw1.dtype)
        groups = self.STATION_GROUPS
        per = -(-idx.numel() // groups)
        x = torch.zeros(groups * per, T, dtype=self.tw1.dtype, device=traces.device)
        x[: idx.numel()] = flat[idx].to(x.dtype)
        x = x.reshape(groups, 1, per, T).transpose(2, 3)  # (groups, 1, T, stations per group)
        x = self.act(self.ops.conv2d(x, self.tw1, self.tb1, stride=(4, 1)))
        x = self.act(self.ops.conv2d(x, self.tw2, self.tb2, stride=(4, 1)))
        feats = x.mean(2).permute(0, 2, 1).reshape(groups * per, -1)[: idx.numel()]
        out = feats.new_zeros(N * R * Q, feats.shape[1]).index_copy(0, idx, feats)
        return out.reshape(N, R, Q, -1).permute(0, 3, 1, 2)

    def forward(self, x, traces=None):
        x = torch.cat([x, self.coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)
        if self.trace_bins:
            if traces is None:
                raise ValueError("HexCNN: built with trace_bins, so forward needs traces")
            x = torch.cat([x, self.encode_traces(traces).to(x.dtype)], dim=1)
        # feature maps are re-masked to the stations after every convolution
        mask = self.mask.to(x.dtype)
        x = self.act(self.stem(x)) * mask
        for conv in self.blocks:
            x = x + self.act(conv(x)) * mask
        return self.head(x.flatten(1))


# ---------------------------------------------------------------- ShowerTransformer

def station_tokens(events: dict):
    """(tokens (N, P, 5), xy (N, P, 2) km, valid (N, P) bool[, traces (N, P, T)]) of the patch.

    Token features: log10(1+S), time/µs, x/km, y/km, triggered. The centre station (the
    largest signal) is always valid, so no event has an empty token set.
    """
    from .airshower_sim import station_list
    st = station_list(events)
    n, p = st["signal"].shape
    xy = (st["xy"] / 1000.0).astype(np.float32)
    trig = st["triggered"].copy()
    trig[:, p // 2] = True
    tok = np.concatenate([np.log10(1.0 + st["signal"])[..., None], (st["time"] / TIME_SCALE)[..., None],
                          xy, st["triggered"][..., None].astype(np.float32)], axis=-1).astype(np.float32)
    out = [torch.from_numpy(tok), torch.from_numpy(np.ascontiguousarray(xy)), torch.from_numpy(trig)]
    if "traces" in st:
        out.append(torch.from_numpy(np.log1p(st["traces"].astype(np.float32))))
    return tuple(out)


class TraceEncoder(nn.Module):
    """One station's trace -> a vector: per-bin embedding, attention along time, mean pool."""

    def __init__(self, bins: int, dim: int, heads: int, ops):
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.pos = nn.Parameter(torch.randn(1, bins, dim) * 0.02)
        self.layer = EncoderLayer(dim, heads, 2 * dim, ops, act=nn.GELU)
        self.norm = LayerNorm(dim, ops)

    def forward(self, traces):
        N, P, T = traces.shape
        x = self.embed(traces.reshape(N * P, T, 1)) + self.pos.to(traces.dtype)
        return self.norm(self.layer(x)).mean(1).reshape(N, P, -1)


class ShowerTransformer(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 3, hidden: int = 128,
                 pair_hidden: int = 32, trace_bins: int | None = None, trace_dim: int = 32,
                 backend: str = "pyfastattn"):
        super().__init__()
        self.ops = ops = get_ops(backend, ATTN_OPS, "ShowerTransformer")
        self.backend, self.heads, self.trace_bins = backend, heads, trace_bins
        self.embed = nn.Sequential(nn.Linear(5, dim), nn.GELU(), nn.Linear(dim, dim))
        # no bias on the last layer: a per-head constant on every logit cancels in the softmax
        self.pair = nn.Sequential(nn.Linear(5, pair_hidden), nn.GELU(), nn.Linear(pair_hidden, heads, bias=False))
        self.traces = None
        if trace_bins:
            self.traces = TraceEncoder(trace_bins, trace_dim, 2, ops)
            self.trace_proj = nn.Linear(trace_dim, dim)
        self.blocks = nn.ModuleList(EncoderLayer(dim, heads, hidden, ops, act=nn.GELU) for _ in range(layers))
        self.norm = LayerNorm(dim, ops)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 7 if trace_bins else 6))

    def interaction(self, tokens, xy, valid):
        """(N, H, P, P) additive attention bias from pairwise geometry; -inf on padded keys."""
        d = xy[:, :, None, :] - xy[:, None, :, :]
        dist = d.norm(dim=-1, keepdim=True)
        dt = tokens[:, :, None, 1:2] - tokens[:, None, :, 1:2]
        ds = tokens[:, :, None, 0:1] - tokens[:, None, :, 0:1]
        pair = torch.cat([d / 1.5, torch.log1p(dist / 1.5), dt, ds], dim=-1)
        bias = self.pair(pair).permute(0, 3, 1, 2)
        return bias.masked_fill(~valid[:, None, None, :], float("-inf"))

    def forward(self, tokens, xy, valid, traces=None):
        x = self.embed(tokens)
        if self.traces is not None:
            if traces is None:
                raise ValueError("ShowerTransformer: built with trace_bins, so forward needs traces")
            x = x + self.trace_proj(self.traces(traces.to(x.dtype)))
        bias = self.interaction(tokens, xy, valid)
        for block in self.blocks:
            x = block(x, attn_mask=bias)
        x = self.norm(x)
        w = valid.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1)
        return self.head(pooled)
