"""The trade-off study: memorisation against sample quality, per posterior and scale.

For each training seed the study trains the MAP velocity net (and an early-stopped one), builds
the frozen objective and a Laplace posterior
(:func:`rbmem_tutorial.laplace.pipeline.fit_flow_posterior`),
then fills one *cell* per (method, scale, training seed, sampling seed):

- ``map``: the refined mode θ*; ``early-stop``: the net after ``early_steps`` SGD steps;
- ``isotropic``: θ* + α s̄ z, isotropic weight noise with the Laplace posterior's mean variance
  s̄² per parameter (the same total variance as ``laplace`` at the same α);
- ``laplace``: θ* + v with v = α Σ^{1/2} z (Euclidean Laplace);
- ``riemannian``: Exp_θ*(v) along geodesics of the loss surface, for the same v, at each of
  the study's metric temperatures;
- ``riemannian-linearised``: the same on the loss of the net linearised at θ*;
- ``riemannian-fisher``: Exp_θ*(v) of the Fisher (pull-back) metric, for the same v;
- ``drift-control``: one network moved by gradient flow on L to the mean loss of the
  ``riemannian`` cell at the same scale and temperature (:mod:`.geodesic_cells`, :mod:`.drift`);
  ``drift-control-centre``: the same flow stopped at the loss of that cell's mean weights θ̄;
  ``ensemble-centre``: θ̄ itself, the cell's common drift without its spread.

θ* stands for the posterior's base point (``base_point``: the refined mode, or θ_SGD as it is
or tilted); the prior is centred at θ_SGD or zero (``prior_mean``). The cells are computed in
:mod:`.cell_compute`.

All parameter samples of a cell generate from the same x_0, and ``laplace`` and the geodesic
methods share their z draws at every scale, so methods are compared on paired draws. Every
random draw is seeded from the cell's own coordinates: a cell's numbers do not depend on which
other cells ran, in what order, or on how many processes.

Scaling up (chapter 8): images (``dataset="digits"`` or a user's ``data_file``) with an MLP or
the convolutional net (``net="conv"``); a posterior over a weight subset (``param_subset``,
see :mod:`rbmem_tutorial.laplace.subsets`); geodesics on a fixed mini-batch of ``geodesic_batch``
frozen pairs; profiles sized for one GPU. Several processes share the work cell by cell (a cell's
parameter samples are not split across processes).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rbmem_tutorial._checks import check_choice
from rbmem_tutorial.data import DIGITS_COUNT
from rbmem_tutorial.experiments import resume, store
from rbmem_tutorial.experiments.cell_compute import (
    SeedContext,
    parameter_samples,  # noqa: F401  (chapter 7 calls it from here)
    run_cell,
    seed_context,
)
from rbmem_tutorial.experiments.cell_errors import CELL_ERRORS, failure_record
from rbmem_tutorial.experiments.config import METHODS, SCALED, TradeoffConfig, scale_key
from rbmem_tutorial.experiments.flows import (
    study_data,
    study_image_shape,
    study_images,
    study_net,
    trained_flow,
)
from rbmem_tutorial.experiments.geodesic_cells import TEMPERED, temperature_key
from rbmem_tutorial.experiments.map_check import annotate as annotate_map_quality
from rbmem_tutorial.experiments.map_check import map_quality_warning
from rbmem_tutorial.experiments.progress import StudyProgress
from rbmem_tutorial.laplace.subsets import parameter_subset
from rbmem_tutorial.memorisation.ratio import nearest_two

DIGITS = dict(dataset="digits", lr=2e-3, methods=METHODS[:5])
PROFILES = {
    "quick": dict(hidden=(32, 32), steps=2000, early_steps=400, draws_per_point=8,
                  methods=METHODS, scales=(0.25,), n_param_samples=2, n_x0=100),
    "cpu": dict(methods=METHODS[:5], scales=(0.25, 0.5, 1.0, 2.0), train_seeds=(0, 1, 2),
                sample_seeds=(0,), n_param_samples=8, n_x0=250),
    "gpu": dict(hidden=(128, 128, 128), steps=20_000, early_steps=4000, methods=METHODS,
                scales=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0), train_seeds=(0, 1, 2, 3, 4),
                sample_seeds=(0, 1), n_param_samples=32, n_x0=500, device="cuda"),
    # the digits study of chapter 8 (book/data/digits-study): its net, training, frozen
    # draws, temperature (the mean loss) and geodesic tolerance (bosh3 at 1e-4 ends within
    # 0.25% of the displacement at α = 8, T = mean, against dopri5 at 1e-8)
    "cpu-digits": {**DIGITS, "n_train": 20, "hidden": (128, 128, 128), "batch_size": 128,
                   "steps": 8000, "early_steps": 1600, "draws_per_point": 4,
                   "scales": (1.0, 4.0, 16.0), "train_seeds": (0, 1), "n_param_samples": 32,
                   "n_x0": 32, "geodesic_rtol": 1e-4, "temperatures": ("mean",),
                   "refine_iterations": 200, "newton_steps": 2},
    "gpu-digits": {**DIGITS, "n_train": 20, "hidden": (128, 128, 128), "batch_size": 128,
                   "steps": 8000, "early_steps": 1600, "draws_per_point": 4,
                   "methods": METHODS[:5], "scales": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
                   "train_seeds": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), "sample_seeds": (0,),
                   "n_param_samples": 32, "n_x0": 32, "geodesic_rtol": 1e-4,
                   "temperatures": ("mean",), "refine_iterations": 200, "newton_steps": 2,
                   "device": "cuda"},
}


def profile_config(profile: str, **overrides) -> TradeoffConfig:
    """The configuration of a named profile, with any field overridden."""
    check_choice("profile", profile, PROFILES)
    return TradeoffConfig(**{**PROFILES[profile], "profile": profile, **overrides})


def check_config(config: TradeoffConfig) -> None:
    """The checks that need the data or the net: the data file and the weight subset.

    Cheap (no training); run before any work so that a bad option fails at once.
    """
    images = study_images(config)
    count = DIGITS_COUNT if config.dataset == "digits" else None
    count = count if images is None else len(images)
    if count is not None and count - config.n_train < 2:
        raise ValueError(f"n_train ({config.n_train}) leaves {count - config.n_train} of the "
                         f"{count} examples of the data set for testing; lower --n-train to at "
                         f"most {count - 2}.")
    if config.net == "conv" and study_image_shape(config, images) is None:
        raise ValueError("net 'conv' needs images, and the data file holds points N x d; use "
                         "--net mlp.")
    train, _ = study_data(config, images)
    if config.param_subset is not None:
        parameter_subset(study_net(config, train.shape[1], images), config.param_subset)


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method at a scale (and, for a tempered method, a temperature; None
    means ``"sum"``), for one training and one sampling seed."""

    method: str
    scale: float
    train_seed: int
    sample_seed: int
    temperature: float | str | None = None

    @property
    def key(self) -> str:
        scale = scale_key(self.scale) + temperature_key(self.method, self.temperature)
        return f"{self.method}__a{scale}__train{self.train_seed}__sample{self.sample_seed}"


def cells(config: TradeoffConfig) -> list[Cell]:
    """Every cell of the study, in a fixed order (ranks shard this list)."""
    return [
        Cell(method, scale, train_seed, sample_seed, temperature)
        for train_seed in config.train_seeds
        for sample_seed in config.sample_seeds
        for method in config.methods
        for scale in (config.scales if method in SCALED else (0.0,))
        for temperature in (config.temperatures if method in TEMPERED else (None,))
    ]


def shard(config: TradeoffConfig, rank: int, world_size: int) -> list[Cell]:
    """The cells of rank ``rank`` out of ``world_size``.

    When the training seeds divide evenly among the ranks, each rank takes whole seeds (seeds
    ``r, r + W, ...``), so no two ranks train the same nets or fit the same posterior.
    Otherwise rank ``r`` takes cells ``r, r + W, r + 2W, ...`` of :func:`cells`, which balances
    the cells but repeats each seed's training and posterior fit on every rank that needs it.
    """
    everything = cells(config)
    if len(config.train_seeds) % world_size == 0:
        seeds = set(config.train_seeds[rank::world_size])
        return [cell for cell in everything if cell.train_seed in seeds]
    return everything[rank::world_size]


def _setup(config: TradeoffConfig, seed: int, report: StudyProgress, progress: bool):
    start = time.perf_counter()
    report.say(f"seed {seed}: MAP net ({config.steps} Adam steps) and early-stopped net "
               f"({config.early_steps} Adam steps), trained or loaded from the cache")
    for steps in (config.steps, config.early_steps):  # cached: seed_context loads them
        trained_flow(config, seed, steps, progress)
    report.say(f"seed {seed}: fitting the {config.structure} Laplace posterior")
    context = seed_context(config, seed)
    report.seed_ready(seed, time.perf_counter() - start)
    return context


#: Fields of a cell's row that merging reads, with their types (see :func:`check_row`).
ROW_FIELDS = {"key": str, "method": str, "scale": (int, float), "train_seed": int,
              "sample_seed": int, "mem_strict": (int, float), "true_mem_strict": (int, float),
              "precision": (int, float), "baseline_precision": (int, float)}


def check_row(row: dict) -> None:
    """Raise ``KeyError`` or ``TypeError`` for a stored row that lacks a field merging reads
    (:data:`ROW_FIELDS`) or holds a value of another type there, or names no known method.

    Example
    -------
    >>> check_row({"key": "map", "method": "map"})
    Traceback (most recent call last):
    ...
    KeyError: 'the row has no field scale'
    """
    for name, kind in ROW_FIELDS.items():
        if name not in row:
            raise KeyError(f"the row has no field {name}")
        if isinstance(row[name], bool) or not isinstance(row[name], kind):
            raise TypeError(f"the row's {name} is {row[name]!r}")
    if row["method"] not in METHODS:
        raise TypeError(f"the row's method {row['method']!r} is not one of this study's")


def sample_columns(config: TradeoffConfig, images: torch.Tensor | None = None) -> int:
    """The width of a cell's sample array: the data's row size."""
    return study_data(config, images).train.shape[1]


def run_study(config: TradeoffConfig, out, *, progress: bool = True, rank: int = 0,
              world_size: int = 1, force: bool = False, computed: list | None = None,
              failed: list | None = None) -> list[Cell]:
    """Run this rank's share of the unfinished cells (:func:`shard`), writing each one as it
    finishes. Returns the cells computed by this call (finished ones are skipped).

    The folder's saved options must agree with ``config`` up to added seeds, scales or
    methods, which extend the study (:func:`.resume.study_config`); ``force`` deletes its
    cells first (on rank 0: other ranks must wait for it). Each cell is claimed
    (:func:`.store.claim`) before it is computed, so processes sharing ``out`` never compute a
    cell twice, and a damaged finished cell is moved aside and computed again.

    A cell that fails while computing (:data:`.cell_errors.CELL_ERRORS`, e.g. the ODE solver's
    step size underflowing) does not stop the study: it is named on stderr, its record
    (:func:`.cell_errors.failure_record`) is stored as ``cells/<key>.failed``, its claim is
    released and the next cell starts. A failed cell is not finished, so a later call retries
    it (one that another process sharing ``out`` saw fail during this call is left alone).
    ``computed`` and ``failed``, when given, receive each stored cell and each failure record
    as they happen (so a caller knows them also after an interruption).
    """
    out = store.check_writable(out)
    if rank == 0:
        config = resume.prepare(config, out, force)
    else:
        config = resume.study_config(config, out, force)
    columns = sample_columns(config)
    mine = [c for c in shard(config, rank, world_size)
            if store.read_cell(out, c.key, check_row, columns) is None]
    report = StudyProgress(mine, rank, progress)
    contexts: dict[int, SeedContext] = {}
    computed = [] if computed is None else computed
    failed = [] if failed is None else failed
    start_count, taken, began = len(computed), [], time.time()
    for cell in mine:
        if not store.claim(out, cell.key):
            taken.append(cell.key)
            report.remaining.remove(cell)
            continue
        try:
            if store.is_done(out, cell.key) or store.failed_since(out, cell.key, began):
                report.remaining.remove(cell)  # finished or failed in another process
                continue
            if cell.train_seed not in contexts:
                contexts[cell.train_seed] = _setup(config, cell.train_seed, report, progress)
            start = time.perf_counter()
            try:
                row, arrays = run_cell(config, contexts[cell.train_seed], cell)
            except CELL_ERRORS as err:
                failed.append(failure_record(cell, err))
                store.save_failure(out, cell.key, failed[-1])
                print(f"error: {failed[-1]['message']}", file=sys.stderr)
                report.cell_failed(cell, time.perf_counter() - start)
                continue
            store.save_cell(out, cell.key, row, **arrays)
            store.clear_failure(out, cell.key)
        finally:
            store.release(out, cell.key)
        computed.append(cell)
        report.cell_done(cell, time.perf_counter() - start)
        if cell.method == "map" and map_quality_warning(row):
            print(f"WARNING: {map_quality_warning(row)}", file=sys.stderr)
    if taken:
        print(f"[rank {rank}] {len(taken)} cell(s) were being computed by other processes and "
              "were left to them (a claim of a dead process on this machine is taken over; "
              "one of another machine's is kept in cells/*.claim).", file=sys.stderr)
    return computed[start_count:]


def finish(config: TradeoffConfig, out) -> list[dict]:
    """Merge every finished cell into ``results.csv``/``results.json`` and draw the figures.

    Cells that failed (:func:`.store.failures`) have no row there: their records go to
    ``failed.json`` (an empty list when none failed) and one line on stderr names them.
    """
    from rbmem_tutorial.experiments.figures import (
        frontier_figure,
        image_samples_figure,
        samples_figure,
    )

    images = study_images(config)
    train = study_data(config, images).train
    rows = store.collect(out, check_row, train.shape[1])
    for warning in annotate_map_quality(rows):
        print(f"WARNING: {warning}", file=sys.stderr)
    store.write_table(out, rows)
    failures = store.failures(out)
    store.write_json(Path(out) / resume.FAILED_FILE, failures)
    if failures:
        print(f"{len(failures)} failed cell(s) are not in the tables (see "
              f"{Path(out) / resume.FAILED_FILE}): {', '.join(r['key'] for r in failures)}",
              file=sys.stderr)
    if not rows:
        return rows
    _save(frontier_figure(rows), Path(out) / "frontier.png")
    shape = study_image_shape(config, images)
    write_preview(out, rows, train, min(PREVIEW_SAMPLES, config.n_x0))
    if shape is None:
        fig = samples_figure(out, rows, train.numpy(), seed=config.train_seeds[0])
    else:
        fig = image_samples_figure(np.load(Path(out) / "preview.npz"), shape)
    if fig is not None:  # no scatter for vectors of more than two dimensions
        _save(fig, Path(out) / "samples.png")
    return rows


def _save(fig, path: Path) -> None:
    """Write a figure and close it (a long session of merges keeps no figures open)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


PREVIEW_SAMPLES = 8


def write_preview(out, rows: list[dict], train: torch.Tensor, count: int = PREVIEW_SAMPLES
                  ) -> None:
    """A small ``preview.npz`` beside the results, for figures that need no per-cell files.

    For every cell, its first ``count`` samples (the first parameter sample from the first
    ``count`` x_0 draws, so the same starting noise across methods), their nearest and second
    nearest training indices and their ratio d₁/d₂; plus the training set. Arrays: ``keys``
    [cells], ``samples`` [cells, P, d] (float32), ``nearest`` and ``second`` [cells, P],
    ``ratio`` [cells, P], ``train`` [n, d].
    """
    keys, samples, nearest, second, ratio = [], [], [], [], []
    for row in rows:
        cell = np.load(Path(out) / "cells" / f"{row['key']}.npz")["samples"][:count]
        found = nearest_two(torch.from_numpy(cell).double(), train.double())
        keys.append(row["key"])
        samples.append(cell.astype(np.float32))
        nearest.append(found.i1.cpu().numpy())
        second.append(found.i2.cpu().numpy())
        ratio.append((found.d1 / found.d2).cpu().numpy())
    store.write_npz(Path(out) / "preview.npz", keys=np.array(keys), samples=np.stack(samples),
                    nearest=np.stack(nearest), second=np.stack(second), ratio=np.stack(ratio),
                    train=train.numpy().astype(np.float32))
