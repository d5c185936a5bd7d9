"""Figures of the trade-off study: the frontier and panels of generated samples."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..memorisation import LOOSE_C, RATIO_THRESHOLD

COLOURS = {"map": "black", "early-stop": "grey", "isotropic": "tab:green",
           "laplace": "tab:blue", "riemannian": "tab:red", "riemannian-linearised": "tab:orange"}
QUALITY = (("mmd2", "MMD² to held-out data (lower is better)"),
           ("precision", "k-NN precision (higher is better)"))


MEMORISATION = (("mem_strict", "d₁/d₂ < 1/3"), ("mem_loose", "d₁/d₂ < 0.577"))


def summarise(rows: list[dict], metric: str, memorised: str = "mem_strict"
              ) -> dict[str, list[tuple]]:
    """Per method, a list over scales of (scale, mean memorised fraction, its std over seeds,
    mean metric, its std over seeds); ``memorised`` picks the threshold's column."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["scale"])].append((row[memorised], row[metric]))
    curves = defaultdict(list)
    for (method, scale), values in sorted(groups.items()):
        mem, value = np.array(values).T
        curves[method].append((scale, mem.mean(), mem.std(), value.mean(), value.std()))
    return dict(curves)


def frontier_figure(rows: list[dict]):
    """Memorised fraction against each quality measure, one curve per method across the scale
    sweep, with error bars of one standard deviation over seeds; top row ratio < 1/3, bottom
    row ratio < 0.577 (the poster's squared form with c = 1/3)."""
    fig, grid = plt.subplots(len(MEMORISATION), len(QUALITY),
                             figsize=(5.2 * len(QUALITY), 4.2 * len(MEMORISATION)), squeeze=False)
    for axes, (memorised, threshold) in zip(grid, MEMORISATION, strict=True):
        _frontier_row(axes, rows, memorised, threshold)
    grid[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _frontier_row(axes, rows, memorised, threshold):
    for ax, (metric, label) in zip(axes, QUALITY, strict=True):
        for method, points in summarise(rows, metric, memorised).items():
            scale, mem, mem_sd, value, value_sd = np.array(points).T
            ax.errorbar(mem, value, xerr=mem_sd, yerr=value_sd, marker="o", capsize=3,
                        color=COLOURS.get(method), label=method)
            for s, x, y in zip(scale, mem, value, strict=True):
                if s > 0:
                    ax.annotate(f"α={s:g}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        true_value = np.mean([row[f"baseline_{metric}"] for row in rows])
        ax.axhline(true_value, ls=":", color="k", lw=1, label="true samples")
        ax.axvline(np.mean([row[f"true_{memorised}"] for row in rows]), ls=":", color="k", lw=1)
        ax.set_xlabel(f"memorised fraction ({threshold})")
        ax.set_ylabel(label)


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


def _cell_label(key: str) -> str:
    method, scale = key.split("__")[:2]
    return method + ("" if scale == "a0" else f", α={scale[1:]}")


def image_samples_figure(preview, image_shape, keys=None, columns: int = 8):
    """Generated images with their nearest training images, one pair of rows per cell.

    ``preview`` holds the arrays of ``preview.npz`` (see :func:`.tradeoff.write_preview`).
    ``keys`` picks and orders the cells; by default every method at its largest scale for the
    first training and sampling seed. Each sample is titled with its ratio d₁/d₂ (red when
    below 1/3, orange when below 0.577).
    """
    all_keys = [str(k) for k in preview["keys"]]
    if keys is None:
        first = all_keys[0].split("__")[2:]
        chosen = {}
        for key in all_keys:
            method, scale, *seeds = key.split("__")
            if seeds == first:
                chosen[method] = max(chosen.get(method, key), key,
                                     key=lambda k: float(k.split("__")[1][1:]))
        keys = sorted(chosen.values(), key=lambda k: list(COLOURS).index(k.split("__")[0]))
    columns = min(columns, preview["samples"].shape[1])
    fig, axes = plt.subplots(2 * len(keys), columns, figsize=(1.1 * columns, 2.4 * len(keys)),
                             squeeze=False)
    for r, key in enumerate(keys):
        i = all_keys.index(key)
        for c in range(columns):
            ratio = float(preview["ratio"][i, c])
            colour = ("red" if ratio < RATIO_THRESHOLD
                      else "darkorange" if ratio < LOOSE_C**0.5 else "black")
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            _show(top, preview["samples"][i, c], image_shape)
            top.set_title(f"{ratio:.2f}", fontsize=7, color=colour)
            _show(bottom, preview["train"][preview["nearest"][i, c]], image_shape)
        axes[2 * r, 0].set_ylabel(_cell_label(key), fontsize=7, rotation=0, ha="right")
        axes[2 * r + 1, 0].set_ylabel("nearest\ntraining", fontsize=7, rotation=0, ha="right")
    fig.suptitle("generated (with d₁/d₂) above their nearest training images", fontsize=9)
    fig.tight_layout()
    return fig


def _show(ax, flat, image_shape):
    """One flattened image in [-1, 1] (grey, or RGB for three channels)."""
    image = np.clip((np.asarray(flat).reshape(image_shape) + 1) / 2, 0, 1)
    if image_shape[0] == 3:
        ax.imshow(image.transpose(1, 2, 0))
    else:
        ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
