"""Figures of the trade-off study: the frontier and panels of generated samples."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

COLOURS = {"map": "black", "early-stop": "grey", "isotropic": "tab:green",
           "laplace": "tab:blue", "riemannian": "tab:red", "riemannian-linearised": "tab:orange"}
QUALITY = (("mmd2", "MMD² to held-out data (lower is better)"),
           ("precision", "k-NN precision (higher is better)"))


def summarise(rows: list[dict], metric: str) -> dict[str, list[tuple]]:
    """Per method, a list over scales of (scale, mean memorised fraction, its std over seeds,
    mean metric, its std over seeds)."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["scale"])].append((row["mem_strict"], row[metric]))
    curves = defaultdict(list)
    for (method, scale), values in sorted(groups.items()):
        mem, value = np.array(values).T
        curves[method].append((scale, mem.mean(), mem.std(), value.mean(), value.std()))
    return dict(curves)


def frontier_figure(rows: list[dict]):
    """Memorised fraction (ratio < 1/3) against each quality measure, one curve per method
    across the scale sweep, with error bars of one standard deviation over seeds."""
    fig, axes = plt.subplots(1, len(QUALITY), figsize=(5.2 * len(QUALITY), 4.2))
    for ax, (metric, label) in zip(axes, QUALITY, strict=True):
        for method, points in summarise(rows, metric).items():
            scale, mem, mem_sd, value, value_sd = np.array(points).T
            ax.errorbar(mem, value, xerr=mem_sd, yerr=value_sd, marker="o", capsize=3,
                        color=COLOURS.get(method), label=method)
            for s, x, y in zip(scale, mem, value, strict=True):
                if s > 0:
                    ax.annotate(f"α={s:g}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        true_value = np.mean([row[f"baseline_{metric}"] for row in rows])
        ax.axhline(true_value, ls=":", color="k", lw=1, label="true samples")
        ax.axvline(np.mean([row["true_mem_strict"] for row in rows]), ls=":", color="k", lw=1)
        ax.set_xlabel("memorised fraction (d₁/d₂ < 1/3)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def samples_figure(out, rows: list[dict], train: np.ndarray, seed: int = 0):
    """Generated 2-D samples of every (method, scale) of one training seed, over the training
    set; ``None`` for data that are not 2-D."""
    if train.shape[1] != 2:
        return None
    chosen = sorted((r for r in rows if r["train_seed"] == seed),
                    key=lambda r: (list(COLOURS).index(r["method"]), r["scale"]))
    chosen = list({(r["method"], r["scale"]): r for r in chosen}.values())
    margin = 0.5 * (train.max(0) - train.min(0)) + 0.3
    limits = np.stack([train.min(0) - margin, train.max(0) + margin], axis=1)
    cols = min(len(chosen), 5)
    nrows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.8 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, chosen, strict=False):
        samples = np.load(Path(out) / "cells" / f"{row['key']}.npz")["samples"]
        ax.scatter(*samples.T, s=2, alpha=0.3, color=COLOURS.get(row["method"]))
        ax.scatter(*train.T, s=12, color="k", marker="x")
        title = row["method"] + (f", α={row['scale']:g}" if row["scale"] else "")
        ax.set_title(f"{title}\nmemorised {row['mem_strict']:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
    fig.tight_layout()
    return fig
