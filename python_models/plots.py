"""Matplotlib figures for the training runs (Agg backend: no display needed)."""
from __future__ import annotations

import math

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def training_curves(history: list, path) -> None:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    keys = sorted({k for h in history for k, v in h["test"].items() if isinstance(v, (int, float))})
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if "loss" in keys:
        ax.plot(epochs, [h["test"].get("loss", np.nan) for h in history], "s-", label="test loss")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.legend()
    for ax, k in zip(axes[0, 1:], keys):
        ax.plot(epochs, [h["test"].get(k, np.nan) for h in history], "o-")
        ax.set_title(k)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def event_display(events: dict, i: int, path) -> None:
    """Footprint of event i: hexagons at the station positions, colour = log10 signal."""
    plt = _plt()
    from matplotlib.patches import RegularPolygon
    from matplotlib.collections import PatchCollection
    xy = events["patch_xy"].reshape(-1, 2) / 1000.0
    inside = events["patch_mask"].reshape(-1)
    sig = events["signal"][i].reshape(-1)
    trig = events["triggered"][i].reshape(-1)
    t = events["time"][i].reshape(-1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, values, label, cmap in ((axes[0], np.log10(np.maximum(sig, 1e-3)), "log10(S / VEM)", "viridis"),
                                    (axes[1], t / 1000.0, "time / µs", "coolwarm")):
        patches = [RegularPolygon((x, y), 6, radius=1.5 / math.sqrt(3), orientation=0.0)
                   for (x, y), k in zip(xy, inside) if k]
        col = PatchCollection(patches, cmap=plt.get_cmap(cmap).with_extremes(bad="white"),
                              edgecolor="grey", linewidth=0.5)
        v = np.where(trig, values, np.nan)[inside]
        col.set_array(np.ma.masked_invalid(v))
        ax.add_collection(col)
        fig.colorbar(col, ax=ax, label=label)
        cx, cy = events["core"][i] / 1000.0
        ax.plot(cx, cy, "r*", ms=12, label="core")
        ux, uy = events["axis"][i, :2]
        ax.arrow(cx, cy, -2 * ux, -2 * uy, color="r", width=0.03, length_includes_head=True)
        ax.set_aspect("equal")
        ax.set_xlim(xy[inside, 0].min() - 1, xy[inside, 0].max() + 1)
        ax.set_ylim(xy[inside, 1].min() - 1, xy[inside, 1].max() + 1)
        ax.set_xlabel("x / km")
        ax.set_ylabel("y / km")
    axes[0].set_title(f"lg(E/eV) = {events['log10_energy'][i]:.2f}, θ = {math.degrees(events['zenith'][i]):.1f}°, "
                      f"Xmax = {events['xmax'][i]:.0f} g/cm²", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _angles(pred, true):
    cos = (pred["axis"] * true["axis"]).sum(1).clamp(-1, 1)
    return np.degrees(np.arccos(cos.numpy()))


def resolution_vs_energy(pred: dict, true: dict, path, bins: int = 6) -> None:
    plt = _plt()
    lg = true["log10_energy"].numpy()
    edges = np.linspace(lg.min(), lg.max() + 1e-9, bins + 1)
    centre = 0.5 * (edges[1:] + edges[:-1])
    rel = 10.0 ** (pred["log10_energy"] - true["log10_energy"]).numpy() - 1.0
    ang = _angles(pred, true)
    core = (pred["core"] - true["core"]).norm(dim=1).numpy()
    which = np.digitize(lg, edges) - 1
    rows = [("energy resolution σ(E)/E", [rel[which == b].std() for b in range(bins)], 100.0, "%"),
            ("angular resolution (68%)", [np.quantile(ang[which == b], 0.68) for b in range(bins)], 1.0, "deg"),
            ("core resolution (68%)", [np.quantile(core[which == b], 0.68) for b in range(bins)], 1.0, "m")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (title, vals, scale, unit) in zip(axes, rows):
        ax.plot(centre, np.asarray(vals) * scale, "o-")
        ax.set_title(title)
        ax.set_xlabel("log10(E/eV)")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_vs_true(pred: dict, true: dict, path) -> None:
    plt = _plt()
    def zenith(d):
        return np.degrees(np.arccos(np.clip(d["axis"][:, 2].numpy(), -1.0, 1.0)))
    panels = [("log10(E/eV)", true["log10_energy"], pred["log10_energy"]),
              ("zenith / deg", zenith(true), zenith(pred)),
              ("core x / m", true["core"][:, 0], pred["core"][:, 0])]
    if "xmax" in pred:
        panels.append(("Xmax / g cm⁻²", true["xmax"], pred["xmax"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    for ax, (name, t, p) in zip(axes, panels):
        t, p = np.asarray(t), np.asarray(p)
        ax.hist2d(t, p, bins=60, cmap="Blues", cmin=1)
        lo, hi = np.quantile(t, [0.001, 0.999])
        ax.plot([lo, hi], [lo, hi], "r--", lw=1)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
