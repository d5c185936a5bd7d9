"""Figures of the trade-off study: the frontier and panels of generated samples."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from rbmem_tutorial.experiments.matched import curve_label, curves, t_interval
from rbmem_tutorial.memorisation.ratio import LOOSE_C, RATIO_THRESHOLD

COLOURS = {"map": "black", "early-stop": "grey", "isotropic": "tab:green",
           "laplace": "tab:blue", "riemannian": "tab:red", "riemannian-linearised": "tab:orange",
           "riemannian-fisher": "tab:purple", "drift-control": "tab:brown",
           "drift-control-centre": "sienna", "ensemble-centre": "tab:olive"}


def _order(method: str) -> int:
    """Position of a method in the figures' fixed order (unknown methods last)."""
    return list(COLOURS).index(method) if method in COLOURS else len(COLOURS)

QUALITY = (("mmd2", "MMD² to held-out data (lower is better)"),
           ("precision", "k-NN precision (higher is better)"))


MEMORISATION = (("mem_strict", "d₁/d₂ < 1/3"), ("mem_loose", "d₁/d₂ < 0.577"))


def label_spaced(ax, labels, *, min_distance: float = 16.0, offset=(3, 3), **style) -> int:
    """Write ``labels`` (``(x, y, text)`` in data coordinates) next to their points on ``ax``,
    skipping any whose point lies closer than ``min_distance`` typographic points to the point
    of a label already written, so that neighbouring labels never print over each other.

    Call it once per axes, after everything is drawn (it reads the final data limits). The
    distance is Euclidean in display space, ``sqrt(dx² + dy²)`` in points (1/72 inch).
    Returns the number of labels written.

    Example
    -------
    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([0.0, 0.001, 1.0], [0.0, 0.0, 1.0], "o")
    >>> label_spaced(ax, [(0.0, 0.0, "a"), (0.001, 0.0, "b"), (1.0, 1.0, "c")])
    2
    >>> plt.close(fig)
    """
    ax.autoscale_view()
    to_points = 72.0 / ax.figure.dpi
    placed: list[np.ndarray] = []
    for x, y, text in labels:
        at = np.asarray(ax.transData.transform((x, y))) * to_points
        if not np.isfinite(at).all() or any(np.hypot(*(at - q)) < min_distance for q in placed):
            continue
        placed.append(at)
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", **style)
    return len(placed)


def summarise(rows: list[dict], metric: str, memorised: str = "mem_strict"
              ) -> dict[str, list[tuple]]:
    """Per curve (the method, with its temperature where it has one), a list over scales of
    (scale, mean memorised fraction, its std over seeds, mean metric, its std over seeds);
    ``memorised`` picks the threshold's column."""
    groups = defaultdict(list)
    for row in rows:
        groups[(curve_label(row), row["scale"])].append((row[memorised], row[metric]))
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
        labels = []
        for method, points in summarise(rows, metric, memorised).items():
            scale, mem, mem_sd, value, value_sd = np.array(points).T
            ax.errorbar(mem, value, xerr=mem_sd, yerr=value_sd, marker="o", capsize=3,
                        color=CURVE_COLOURS.get(method, COLOURS.get(method.split(" ")[0])),
                        label=method)
            labels += [(x, y, f"α={s:g}") for s, x, y in zip(scale, mem, value, strict=True)
                       if s > 0]
        true_value = np.mean([row[f"baseline_{metric}"] for row in rows])
        ax.axhline(true_value, ls=":", color="k", lw=1, label="true samples")
        ax.axvline(np.mean([row[f"true_{memorised}"] for row in rows]), ls=":", color="k", lw=1)
        label_spaced(ax, labels, fontsize=7)
        ax.set_xlabel(f"memorised fraction ({threshold})")
        ax.set_ylabel(label)


CURVE_COLOURS = {"laplace": "tab:blue", "isotropic": "tab:green", "riemannian T=sum": "tab:red",
                 "riemannian T=16.0": "firebrick", "riemannian T=mean": "darkred",
                 "riemannian T=data-mean": "tab:pink",
                 "riemannian-fisher": "tab:purple", "riemannian-linearised": "tab:orange",
                 "drift-control T=sum": "tab:brown"}
METRIC_LABELS = {"mmd2": "MMD² to held-out data", "precision": "k-NN precision",
                 "recall": "k-NN recall", "energy": "energy distance"}


def method_frontiers(rows: list[dict], metric: str = "mmd2", reference: str = "laplace",
                     columns: int = 4):
    """One panel per method (tempered methods: per temperature) of memorised fraction
    (d₁/d₂ < 1/3) against ``metric``, across the scale sweep.

    Each panel shows its method's curve (mean over training seeds, bars: 95% Student-t
    interval over seeds, points labelled by α), the ``reference`` method's curve in grey for
    comparison, the MAP (black square, α = 0) and the true samples (gold star: the memorised
    fraction chance alone reaches and their own score). Better means *towards the star*: less
    copying down to the true-sample floor, and a quality score as close to the true samples'
    as possible. The curves come from :func:`.matched.curves` (sampling seeds averaged, the
    MAP prepended at α = 0 when the base point is the refined θ*).
    """
    by_curve: dict[str, dict] = defaultdict(dict)
    for (group, seed), points in curves(rows).items():
        by_curve[group][seed] = points
    shown = [g for g in by_curve if g not in ("map", "early-stop")]
    shown.sort(key=lambda g: (g != reference, list(CURVE_COLOURS).index(g)
                              if g in CURVE_COLOURS else len(CURVE_COLOURS), g))

    def mean_curve(group):
        scales = sorted({p["scale"] for pts in by_curve[group].values() for p in pts})
        out = []
        for a in scales:
            at = [p for pts in by_curve[group].values() for p in pts if p["scale"] == a]
            out.append((a, t_interval([p["mem_strict"] for p in at]),
                        t_interval([p[metric] for p in at])))
        return out

    def half(stat):
        return 0.0 if stat["lo"] is None else stat["mean"] - stat["lo"]

    true_mem = float(np.mean([r["true_mem_strict"] for r in rows]))
    true_val = float(np.mean([r[f"baseline_{metric}"] for r in rows]))
    maps = [r for r in rows if r["method"] == "map"]
    cols = min(columns, len(shown))
    nrows = -(-len(shown) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 3.0 * nrows), squeeze=False,
                             sharex=True, sharey=True)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, group in zip(axes.flat, shown, strict=False):
        alpha_labels, alpha_colour = [], None
        for name, colour, width in ((reference, "0.75", 1.0), (group, None, 1.8)):
            if name not in by_curve or (name == reference and colour and group == reference):
                continue
            pts = mean_curve(name)
            colour = colour or CURVE_COLOURS.get(group, "tab:red")
            ax.errorbar([m["mean"] for _, m, _ in pts], [v["mean"] for _, _, v in pts],
                        xerr=[half(m) for _, m, _ in pts], yerr=[half(v) for _, _, v in pts],
                        color=colour, lw=width, marker="o", ms=3, capsize=2,
                        label=name if name == reference else None)
            if name == group:
                alpha_labels = [(m["mean"], v["mean"], f"{a:g}") for a, m, v in pts if a > 0]
                alpha_colour = colour
        if maps:
            ax.plot(np.mean([r["mem_strict"] for r in maps]),
                    np.mean([r[metric] for r in maps]), "ks", ms=6, zorder=5)
        ax.plot(true_mem, true_val, marker="*", color="gold", mec="k", ms=13, zorder=6)
        ax.axvline(true_mem, ls=":", color="k", lw=0.8)
        ax.set_title(group, fontsize=9)
        if metric in ("mmd2", "energy"):  # unbiased estimates can dip below zero
            ax.set_yscale("symlog", linthresh=0.01)
        label_spaced(ax, alpha_labels, offset=(4, 2), fontsize=7, color=alpha_colour)
    for ax in axes[-1]:
        ax.set_xlabel("memorised fraction (d₁/d₂ < 1/3)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
    handles = [plt.Line2D([], [], color="0.75", marker="o", label=f"{reference} (reference)"),
               plt.Line2D([], [], color="k", marker="s", ls="", label="MAP"),
               plt.Line2D([], [], color="gold", mec="k", marker="*", ms=12, ls="",
                          label="true samples (the target)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"Memorisation against {METRIC_LABELS.get(metric, metric)}; labels: α; "
                 "better = towards the star", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def samples_figure(out, rows: list[dict], train: np.ndarray, seed: int = 0):
    """Generated 2-D samples of every (method, scale) of one training seed, over the training
    set; ``None`` for data that are not 2-D."""
    if train.shape[1] != 2:
        return None
    chosen = sorted((r for r in rows if r["train_seed"] == seed),
                    key=lambda r: (_order(r["method"]), r["scale"]))
    chosen = list({(curve_label(r), r["scale"]): r for r in chosen}.values())
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
        title = curve_label(row) + (f", α={row['scale']:g}" if row["scale"] else "")
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
        keys = sorted(chosen.values(), key=lambda k: _order(k.split("__")[0]))
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
