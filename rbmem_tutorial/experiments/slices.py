"""The trade-off study in a chapter: a live slice of cells, weight samples, and a stored sweep.

Chapter 7 runs a few cells of the study live and then reads the full sweep that the experiment
script stored. These calls keep the study's plumbing (seed contexts, cells, seeded draws) out
of the chapter:

- :func:`run_slice` computes every cell of a small configuration for one training seed and
  returns its rows and generated samples;
- :func:`weight_samples` returns the parameter vectors one method draws at one scale (the same
  seeded draws as the study's cell);
- :func:`load_study` reads a stored study folder (rows, configuration, README, matched table).

Example
-------
>>> study = load_study("book/data/paper-setting")  # doctest: +SKIP
>>> sorted({row["method"] for row in study.rows})[:3]  # doctest: +SKIP
['drift-control', 'drift-control-centre', 'ensemble-centre']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rbmem_tutorial.experiments.cell_compute import (
    SeedContext,
    parameter_samples,
    run_cell,
    seed_context,
)
from rbmem_tutorial.experiments.matched import curve_label, matched_table
from rbmem_tutorial.experiments.tradeoff import Cell, TradeoffConfig, cells


@dataclass
class Slice:
    """The cells of a live slice: ``rows[label]`` and ``samples[label]`` (``[n, d]`` arrays) by
    curve label (``"laplace"``, ``"riemannian T=mean"``, ...) and scale, and the seed's
    shared context (trained nets, data and the fitted posterior)."""

    rows: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    context: SeedContext | None = None


def run_slice(config: TradeoffConfig, train_seed: int = 0) -> Slice:
    """Compute every cell of ``config`` for one training seed (first sampling seed), in this
    process, without writing files; nets and posterior come from the model cache."""
    if not isinstance(config, TradeoffConfig):
        raise TypeError(f"config must be a TradeoffConfig, got {type(config).__name__}.")
    if train_seed not in config.train_seeds:
        raise ValueError(f"train_seed {train_seed} is not in config.train_seeds "
                         f"{config.train_seeds}; pick one of them.")
    ctx = seed_context(config, train_seed)
    out = Slice(context=ctx)
    for cell in cells(config):
        if cell.train_seed != train_seed or cell.sample_seed != config.sample_seeds[0]:
            continue
        row, arrays = run_cell(config, ctx, cell)
        key = (curve_label(row), cell.scale)
        out.rows[key], out.samples[key] = row, arrays["samples"]
    return out


def weight_samples(config: TradeoffConfig, context: SeedContext, method: str, scale: float,
                   temperature=None, train_seed: int = 0, sample_seed: int = 0):
    """The ``[S, D]`` parameter vectors that ``method`` draws at ``scale`` (the study's own
    seeded draws for that cell), ``config.n_param_samples`` rows; ``context`` must be the one
    :func:`run_slice` built for ``train_seed``."""
    cell = Cell(method, scale, train_seed, sample_seed, temperature)
    return parameter_samples(config, context, cell)[0]


@dataclass
class StoredStudy:
    """A study folder as written by ``rbmem tradeoff``: ``rows`` (one dict per cell),
    ``config`` (the options; for a folder of several studies, a dict of them by subfolder),
    ``readme`` (how it was made) and ``folder``."""

    folder: Path
    rows: list
    config: dict
    readme: str

    def matched(self, **options) -> list[dict]:
        """The matched-memorisation table of these rows (:func:`.matched.matched_table`; a
        study whose posterior cells share x0 needs ``shared_noise=True``: a diagnostic)."""
        return matched_table(self.rows, **options)

    def select(self, **fields) -> list[dict]:
        """The rows whose fields equal the given values, e.g. ``select(prior_mean="zero")``."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in fields.items())]

    def cell_samples(self, row: dict) -> np.ndarray:
        """The generated samples stored for one row's cell, ``[n, d]``."""
        found = list(self.folder.glob(f"**/cells/{row['key']}.npz"))
        if not found:
            raise FileNotFoundError(f"no stored samples for cell {row['key']} under "
                                    f"{self.folder}; rerun its command (README) to get them.")
        return np.load(found[0])["samples"]


def load_study(folder) -> StoredStudy:
    """Read a stored study folder (``results.json``, ``config.json``, ``README.md``), or a
    folder whose subfolders each hold one study (their rows are concatenated, each row keeps
    its own ``prior_mean``, ``base_point`` and ``temperature``)."""
    folder = Path(folder)
    studies = [folder] if (folder / "results.json").is_file() else sorted(
        p.parent for p in folder.glob("*/results.json"))
    if not studies:
        raise FileNotFoundError(f"{folder / 'results.json'} not found (nor in a subfolder); "
                                "pass a folder written by `rbmem tradeoff` (and merged).")
    rows, configs = [], {}
    for study in studies:
        if not (study / "config.json").is_file():
            raise FileNotFoundError(f"{study / 'config.json'} not found; pass a folder written "
                                    "by `rbmem tradeoff`.")
        rows += json.loads((study / "results.json").read_text())
        configs[study.name] = json.loads((study / "config.json").read_text())
    config = configs[folder.name] if studies == [folder] else configs
    readme = folder / "README.md"
    return StoredStudy(folder, rows, config, readme.read_text() if readme.exists() else "")
