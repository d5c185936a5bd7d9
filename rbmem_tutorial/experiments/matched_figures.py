"""The matched study in a chapter: load it, draw its frontiers, show its samples by level.

:func:`load_matched` reads a stored study folder (its cells, tables and README);
:func:`matched_frontiers` draws every method's quality against its memorised fraction at the
matched levels, the free baselines included; :func:`draw_level` shows the scored samples of
several methods at one matched level, for chapter 7's explorer.

Example
-------
>>> study = load_matched("book/data/matched-study")  # doctest: +SKIP
>>> sorted({row["method"] for row in study.flat})[:3]  # doctest: +SKIP
['early-stop', 'ensemble', 'isotropic']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rbmem_tutorial.experiments import store
from rbmem_tutorial.experiments.matched_stats import LEVELS, matched_rows, paired

COLOURS = {"map": "k", "early-stop": "tab:orange", "ensemble": "tab:olive",
           "isotropic": "tab:green", "laplace": "tab:blue", "riemannian-mean": "darkred",
           "riemannian-sum": "tab:red", "riemannian-data-mean": "tab:pink",
           "riemannian-fisher": "tab:purple"}
SPACING = 11.0  # the moons span about 10 units in x: one panel each, side by side
LABELS = {"mem": "memorised fraction (d₁/d₂ < 1/3)",
          "mem_loose": "memorised fraction (d₁/d₂ < 0.577)", "energy": "energy distance",
          "mmd2": "MMD²", "precision": "k-NN precision", "recall": "k-NN recall",
          "outliers": "outlier rate"}


@dataclass
class MatchedStudy:
    """A stored matched study: ``cells`` (one row per replicate and method), ``flat`` (one
    row per replicate, method and level), ``tables`` (``comparisons.json``), ``config`` and
    the README."""

    folder: Path
    cells: list[dict]
    flat: list[dict]
    tables: dict
    config: dict
    readme: str

    @property
    def levels(self) -> tuple[str, ...]:
        """The level labels of the matched rows, in the study's order."""
        return tuple(str(level) for level in self.config.get("levels", LEVELS))

    def samples(self, replicate: int, method: str) -> np.ndarray:
        """The scored samples ``[levels, n, d]`` of one cell (NaN where a level was not
        scored)."""
        with np.load(self.folder / "cells" / f"r{replicate:02d}__{method}.npz") as arrays:
            return arrays["samples"]

    def true_scores(self) -> dict:
        """The metrics of true samples, averaged over replicates (the target of every
        frontier)."""
        rows = [c["true"] for c in self.cells if c["method"] == "map"]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def load_matched(folder) -> MatchedStudy:
    """Read a matched study written by :mod:`.matched_run`."""
    folder = Path(folder)
    if not (folder / "comparisons.json").exists():
        raise FileNotFoundError(f"{folder} holds no matched study (comparisons.json); run "
                                "python -m rbmem_tutorial.experiments.matched_run --out it.")
    cells = store.collect(folder, dims=3)
    return MatchedStudy(folder, cells, matched_rows(cells),
                        json.loads((folder / "comparisons.json").read_text()),
                        json.loads((folder / "config.json").read_text()),
                        (folder / "README.md").read_text())


def common_replicates(flat: list[dict], methods, level: str) -> set[int]:
    """The replicates where every method of ``methods`` (the MAP aside) reached ``level``."""
    sets = [{r["replicate"] for r in flat if r["method"] == m and r["level"] == level
             and r["reached"]} for m in methods if m != "map"]
    return set.intersection(*sets) if sets else {r["replicate"] for r in flat}


def level_means(flat: list[dict], method: str, metric: str, replicates=None, levels=LEVELS,
                x: str = "mem") -> list[dict]:
    """Per level: the mean memorised fraction (``x``: ``"mem"`` at 1/3, ``"mem_loose"`` at
    0.577) and ``metric`` over the replicates where ``method`` reached it
    (``replicates(level)``, if given, restricts them), with the metric's 95% t-interval."""
    out = []
    for level in levels:
        keep = None if replicates is None else replicates(level)
        hit = [r for r in flat if r["method"] == method and r["level"] == level
               and (r["reached"] or method == "map") and r[metric] is not None
               and (keep is None or r["replicate"] in keep)]
        if hit:
            stat = paired([r[metric] for r in hit])
            out.append({"level": level, "n": len(hit), "mem": np.mean([r[x] for r in hit]),
                        "mean": stat["mean"], "lo": stat["lo"], "hi": stat["hi"]})
    return out


def matched_frontiers(study: MatchedStudy, methods, metrics=("energy", "precision", "recall",
                                                              "outliers"), x: str = "mem"):
    """One panel per metric: each method's mean quality against its mean memorised fraction
    at the matched levels (bars: 95% intervals over replicates), the MAP (square) and the true
    samples (star) — better is towards the star. ``x`` is the memorised fraction on the
    horizontal axis (``"mem"`` or ``"mem_loose"``).

    Quality varies much more between replicates (each has its own training set) than between
    methods, so at each level every mean is taken over the same replicates: those where all
    ``methods`` reached the level. The MAP, which has no knob, is the mean over all
    replicates, as in the study's summary table."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8),
                             layout="constrained")
    shared = {level: common_replicates(study.flat, methods, level) for level in study.levels}
    every = set.union(*shared.values())
    true_rows = [c for c in study.cells if c["method"] == "map" and c["replicate"] in every]
    floor = float(np.mean([c["true"][x] for c in true_rows]))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        true = float(np.mean([c["true"][metric] for c in true_rows]))
        for method in methods:
            keep = None if method == "map" else shared.get  # the MAP: every replicate
            points = level_means(study.flat, method, metric, keep, study.levels, x)
            if not points:
                continue
            xs = [p["mem"] for p in points]
            y = [p["mean"] for p in points]
            if method == "map":
                ax.plot(xs[:1], y[:1], "s", color="k", label="MAP", zorder=3)
                continue
            err = [[p["mean"] - p["lo"] if p["lo"] is not None else 0 for p in points],
                   [p["hi"] - p["mean"] if p["hi"] is not None else 0 for p in points]]
            ax.errorbar(xs, y, yerr=err, marker="o", ms=4, capsize=2, lw=1.2,
                        color=COLOURS.get(method), label=method)
        ax.plot([floor], [true], "*", ms=13, color="gold", mec="k", label="true samples",
                zorder=4)
        ax.set_xlabel(LABELS[x])
        ax.set_ylabel(LABELS[metric])
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    return fig


def draw_level(ax, study: MatchedStudy, level_index: int, methods, train: np.ndarray,
               replicate: int = 0, points: int = 600) -> None:
    """Scored samples of ``methods`` at one matched level of one replicate, side by side,
    each panel shifted along x, with the replicate's training points ``train`` (crosses)."""
    level = study.levels[level_index]
    rows = {r["method"]: r for r in study.flat
            if r["replicate"] == replicate and r["level"] == level}
    for offset, method in enumerate(methods):
        shift = np.array([SPACING * offset, 0.0])
        samples = study.samples(replicate, method)[level_index][:points]
        row = rows[method]
        if np.isfinite(samples).all():
            ax.scatter(*(samples + shift).T, s=1, alpha=0.35, color=COLOURS.get(method))
            text = f"memorised {row['mem']:.2f}\nprecision {row['precision']:.2f}"
        else:
            text = "cannot reach\nthis level"
        ax.scatter(*(train + shift).T, s=8, marker="x", color="k")
        ax.text(SPACING * offset, 3.2, f"{method}\n{text}", ha="center", fontsize=7)
    ax.set_xlim(-SPACING / 2, SPACING * (len(methods) - 0.5))
    ax.set_ylim(-3, 5.0)
    ax.set_xticks([])
    ax.set_yticks([])
