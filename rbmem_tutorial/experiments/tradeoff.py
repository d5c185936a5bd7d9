"""The trade-off study: memorisation against sample quality, per posterior and scale.

For each training seed the study trains the MAP velocity net (and an early-stopped one), builds
the frozen objective and a Laplace posterior (:func:`rbmem_tutorial.pipeline.fit_flow_posterior`),
then fills one *cell* per (method, scale, training seed, sampling seed):

- ``map``: the refined mode θ*; ``early-stop``: the net after ``early_steps`` SGD steps;
- ``isotropic``: θ* + α s̄ z, isotropic weight noise with the Laplace posterior's mean variance
  s̄² per parameter (the same total variance as ``laplace`` at the same α);
- ``laplace``: θ* + v with v = α Σ^{1/2} z (Euclidean Laplace);
- ``riemannian``: Exp_θ*(v) along geodesics of the loss surface, for the same v;
- ``riemannian-linearised``: the same on the loss of the net linearised at θ*.

All parameter samples of a cell generate from the same x_0, and ``laplace`` and the geodesic
methods share their z draws at every scale, so methods are compared on paired draws. Every
random draw is seeded from the cell's own coordinates: a cell's numbers do not depend on which
other cells ran, in what order, or on how many processes.

Scaling up (chapter 6): images (``dataset="digits"`` or a user's ``data_file``) with an MLP or
the convolutional net (``net="conv"``); a posterior over a weight subset (``param_subset``,
see :mod:`rbmem_tutorial.subsets`); geodesics on a fixed mini-batch of ``geodesic_batch`` frozen
pairs; profiles sized for one GPU. Several processes share the work cell by cell (a cell's
parameter samples are not split across processes).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice, check_positive, check_positive_int
from ..data import DATASETS, DIGITS_COUNT, TOY_DATASETS, sample_dataset
from ..image_nets import NETS
from ..laplace import _STRUCTURES as STRUCTURES  # the structures fit_laplace accepts
from ..memorisation import LOOSE_C, RATIO_THRESHOLD, memorisation_report
from ..metrics import quality_report
from ..objective import parameters_vector
from ..pipeline import fit_flow_posterior
from ..posterior import generate
from ..reference import REFERENCE, FlowConfig
from ..riemannian import GeodesicSolveError, exp_map, linearised_objective
from ..subsets import anchored, minibatch_objective, parameter_subset
from . import resume, store
from .flows import study_data, study_image_shape, study_images, study_net, trained_flow
from .map_check import annotate as annotate_map_quality
from .map_check import map_quality_warning
from .progress import StudyProgress

METHODS = ("map", "early-stop", "isotropic", "laplace", "riemannian", "riemannian-linearised")
SCALED = ("isotropic", "laplace", "riemannian", "riemannian-linearised")


@dataclass(frozen=True)
class TradeoffConfig:
    """Everything that determines a trade-off study (saved beside its results).

    ``dataset`` is ``"file"`` exactly when ``data_file`` names a user's image array. ``hidden``
    holds the MLP's widths, ``channels`` the conv net's channels per level. ``n_test`` ``None``
    picks the held-out size: for the toy sets max(2000, generated samples); for images all the
    images not used for training (half of them score quality, the other half are the
    true-sample baseline). ``param_subset`` ``None`` puts the posterior on every weight;
    ``geodesic_batch`` ``None`` runs geodesics on all frozen pairs.
    """

    dataset: str = REFERENCE.dataset
    n_train: int = REFERENCE.n_train
    hidden: tuple[int, ...] = REFERENCE.hidden
    steps: int = REFERENCE.steps
    early_steps: int = REFERENCE.steps // 5
    batch_size: int = REFERENCE.batch_size
    lr: float = REFERENCE.lr
    methods: tuple[str, ...] = ("map", "early-stop", "isotropic", "laplace", "riemannian")
    scales: tuple[float, ...] = (0.25, 0.5, 1.0)
    structure: str = "diag"
    draws_per_point: int = 16
    train_seeds: tuple[int, ...] = (0,)
    sample_seeds: tuple[int, ...] = (0,)
    n_param_samples: int = 8
    n_x0: int = 250
    rtol: float = 1e-5
    geodesic_rtol: float = 1e-4
    max_geodesic_steps: int = 4000
    device: str = "cpu"
    profile: str = "custom"
    net: str = "mlp"
    channels: tuple[int, ...] = (32, 64)
    data_file: str | None = None
    n_test: int | None = None
    param_subset: str | None = None
    geodesic_batch: int | None = None
    refine_iterations: int = 1000
    newton_steps: int = 10

    def __post_init__(self):
        check_choice("dataset", self.dataset, (*DATASETS, "file"))
        if (self.dataset == "file") != (self.data_file is not None):
            raise ValueError("a data file and dataset 'file' go together: pass --data-file PATH "
                             "without --dataset, or a built-in --dataset without --data-file.")
        check_choice("net", self.net, NETS)
        if self.net == "conv" and self.dataset in TOY_DATASETS:
            raise ValueError(f"net 'conv' needs images; {self.dataset!r} is 2-D: use net 'mlp'.")
        check_positive_int("n_train", self.n_train, minimum=2)
        check_positive_int("steps", self.steps)
        check_positive_int("early_steps", self.early_steps)
        if self.early_steps >= self.steps:
            raise ValueError(f"early_steps ({self.early_steps}) must be fewer Adam steps than "
                             f"steps ({self.steps}): the early-stopped baseline stops before the "
                             "MAP net; lower --early-steps or raise --steps.")
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_choice("structure", self.structure, STRUCTURES)
        for name in ("rtol", "geodesic_rtol"):
            if not 0 < check_positive(name, getattr(self, name)) < 1:
                raise ValueError(f"{name} is a relative tolerance and must be below 1, got "
                                 f"{getattr(self, name)}; try 1e-4.")
        for name in ("draws_per_point", "max_geodesic_steps"):
            check_positive_int(name, getattr(self, name))
        for name in ("refine_iterations", "newton_steps"):
            check_positive_int(name, getattr(self, name), minimum=0)
        for name in ("hidden", "channels"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; pass at least one width.")
            for width in getattr(self, name):
                check_positive_int(name, width)
        if not self.methods:
            raise ValueError("methods is empty; pass at least one of " + ", ".join(METHODS))
        for method in self.methods:
            check_choice("method", method, METHODS)
        if not self.scales and set(self.methods) & set(SCALED):
            raise ValueError("scales is empty; pass at least one posterior scale, e.g. 0.5.")
        for scale in self.scales:
            check_positive("scale", scale)
        keys = [scale_key(scale) for scale in self.scales]
        if len(set(keys)) < len(keys):
            same = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"scales {list(self.scales)} repeat the cell key(s) {same} (scales "
                             "are keyed to 6 significant digits); pass distinct scales.")
        for name in ("train_seeds", "sample_seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; pass at least one seed.")
        if self.n_test is not None:
            check_positive_int("n_test", self.n_test, minimum=2)
        if self.geodesic_batch is not None:
            check_positive_int("geodesic_batch", self.geodesic_batch)
        check_positive_int("n_param_samples", self.n_param_samples)
        check_positive_int("n_x0", self.n_x0, minimum=2)
        check_choice("device", self.device.split(":")[0], ("cpu", "cuda"))
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available.")

    def flow_config(self, train_seed: int, steps: int | None = None) -> FlowConfig:
        """The trained model of one training seed (the data set is the same for every seed)."""
        return FlowConfig(
            dataset=self.dataset, n_train=self.n_train, hidden=tuple(self.hidden),
            steps=steps or self.steps, batch_size=self.batch_size, lr=self.lr,
            seed=train_seed, n_test=self.held_out_size(),
        )

    def held_out_size(self, count: int | None = None) -> int:
        """Held-out set size (see the class notes); ``count`` is the number of images of a
        data file."""
        if self.n_test is not None:
            return self.n_test
        if self.dataset in TOY_DATASETS:
            return max(REFERENCE.n_test, self.n_generated)
        return (DIGITS_COUNT if count is None else count) - self.n_train

    @property
    def n_generated(self) -> int:
        return self.n_param_samples * self.n_x0

    @property
    def net_widths(self) -> tuple[int, ...]:
        """The widths of the velocity net: ``hidden`` for the MLP, ``channels`` for the conv."""
        return self.hidden if self.net == "mlp" else self.channels


DIGITS = dict(dataset="digits", lr=2e-3, methods=METHODS[:5])
PROFILES = {
    "quick": dict(hidden=(32, 32), steps=2000, early_steps=400, draws_per_point=8,
                  methods=METHODS, scales=(0.25,), n_param_samples=2, n_x0=100),
    "cpu": dict(methods=METHODS[:5], scales=(0.25, 0.5, 1.0, 2.0), train_seeds=(0, 1, 2),
                sample_seeds=(0,), n_param_samples=8, n_x0=250),
    "gpu": dict(hidden=(128, 128, 128), steps=20_000, early_steps=4000, methods=METHODS,
                scales=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0), train_seeds=(0, 1, 2, 3, 4),
                sample_seeds=(0, 1), n_param_samples=32, n_x0=500, device="cuda"),
    # sized for about 10 minutes on a busy 2-core CPU with two processes (one seed each)
    "cpu-digits": {**DIGITS, "n_train": 10, "hidden": (128, 128, 128), "batch_size": 10,
                   "steps": 8000, "early_steps": 1600, "draws_per_point": 4,
                   "scales": (0.5, 1.0, 2.0), "train_seeds": (0, 1), "n_param_samples": 4,
                   "n_x0": 100, "geodesic_rtol": 1e-3, "refine_iterations": 200,
                   "newton_steps": 2},
    "gpu-digits": {**DIGITS, "n_train": 20, "hidden": (512, 512, 512), "batch_size": 20,
                   "steps": 16_000, "early_steps": 3000, "draws_per_point": 16,
                   "methods": METHODS, "scales": (0.125, 0.25, 0.5, 1.0, 2.0),
                   "train_seeds": (0, 1, 2, 3), "sample_seeds": (0, 1), "n_param_samples": 16,
                   "n_x0": 250, "device": "cuda"},
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


def scale_key(scale: float) -> str:
    """The text of a posterior scale in cell keys (``%g``: 6 significant digits)."""
    return f"{scale:g}"


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method at a scale, for one training and one sampling seed."""

    method: str
    scale: float
    train_seed: int
    sample_seed: int

    @property
    def key(self) -> str:
        scale = scale_key(self.scale)
        return f"{self.method}__a{scale}__train{self.train_seed}__sample{self.sample_seed}"


def cells(config: TradeoffConfig) -> list[Cell]:
    """Every cell of the study, in a fixed order (ranks shard this list)."""
    return [
        Cell(method, scale, train_seed, sample_seed)
        for train_seed in config.train_seeds
        for sample_seed in config.sample_seeds
        for method in config.methods
        for scale in (config.scales if method in SCALED else (0.0,))
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


@dataclass
class SeedContext:
    """What every cell of one training seed shares: data, nets and the posterior.

    ``geodesic_losses`` maps each geodesic method to the loss whose geodesics give its samples:
    the posterior's objective (restricted to the weight subset, if any), or its linearisation
    at θ*; on a mini-batch if asked for, then anchored so that its gradient at θ* is the
    full one (:func:`rbmem_tutorial.subsets.anchored`).
    """

    model: torch.nn.Module
    train: torch.Tensor
    test: torch.Tensor
    true: torch.Tensor
    flow_posterior: object
    theta_early: torch.Tensor
    geodesic_losses: dict
    geodesic_pairs: int


def seed_context(config: TradeoffConfig, train_seed: int, progress: bool = False) -> SeedContext:
    """Train (or load) the nets of one seed and fit the posterior; on ``config.device``."""
    device = torch.device(config.device)
    trained = trained_flow(config, train_seed, config.steps, progress)
    early = trained_flow(config, train_seed, config.early_steps, progress)
    model = trained.model.to(device)
    train, test = trained.train.to(device), trained.test.to(device)
    fp = fit_flow_posterior(model, train, structure=config.structure,
                            draws_per_point=config.draws_per_point, seed=train_seed,
                            param_subset=config.param_subset,
                            refine_iterations=config.refine_iterations,
                            newton_steps=config.newton_steps)
    if config.dataset in TOY_DATASETS:
        g = torch.Generator().manual_seed(10_000 + train_seed)
        true = sample_dataset(config.dataset, config.n_generated, generator=g).to(device)
    else:  # images: one half of the held-out images scores quality, the other is the baseline
        half = len(test) // 2
        test, true = test[:half], test[half:][: config.n_generated]
    theta_early = parameters_vector(early.model).detach().to(device, torch.float64)
    full, mean = fp.posterior.objective, fp.posterior.mean
    batch = full
    if config.geodesic_batch is not None and config.geodesic_batch < full.num_examples:
        batch = minibatch_objective(full, config.geodesic_batch, seed=train_seed)
    losses = {"riemannian": batch}
    if "riemannian-linearised" in config.methods:
        losses["riemannian-linearised"] = linearised_objective(batch, mean)
    if batch is not full:
        target = full.grad(mean)
        losses = {method: anchored(loss, mean, target) for method, loss in losses.items()}
    return SeedContext(model, train, test, true, fp, theta_early, losses, batch.num_examples)


def _generator(*coordinates: int) -> torch.Generator:
    """A CPU generator seeded by a cell's integer coordinates only."""
    seed = 0
    for c in coordinates:
        seed = (seed * 1_000_003 + int(c)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def parameter_samples(config: TradeoffConfig, ctx: SeedContext, cell: Cell):
    """The parameter vectors of a cell ``[S, D]`` and geodesic diagnostics (NFE, failures).

    Posterior samples live in the posterior's space (θ_S for a weight subset, centred at its
    mean θ*_S) and are mapped to full vectors with ``flow_posterior.full``.
    """
    fp = ctx.flow_posterior
    posterior, theta_star = fp.posterior, fp.posterior.mean
    info = {"nfe_mean": None, "n_failed": 0}  # None: no geodesics in this method
    if cell.method == "map":
        return fp.theta_map[None], info
    if cell.method == "early-stop":
        return ctx.theta_early[None], info
    n = config.n_param_samples
    if cell.method == "isotropic":
        z = torch.randn(n, theta_star.numel(), generator=_generator(cell.train_seed,
                        cell.sample_seed, 2), dtype=torch.float64).to(theta_star.device)
        return fp.full(theta_star + cell.scale * posterior.variance.mean().sqrt() * z), info
    v = posterior.sample_tangent(n, _generator(cell.train_seed, cell.sample_seed, 1),
                                 scale=cell.scale).to(theta_star.device)
    if cell.method == "laplace":
        return fp.full(theta_star + v), info
    loss = ctx.geodesic_losses[cell.method]
    endpoints, nfe = [], []
    for row in v:  # one at a time: a batch shares the step size of its stiffest member
        try:
            out = exp_map(loss, theta_star, row, rtol=config.geodesic_rtol,
                          atol=config.geodesic_rtol, max_num_steps=config.max_geodesic_steps)
        except GeodesicSolveError:
            info["n_failed"] += 1
            continue
        endpoints.append(out.endpoints)
        nfe.append(float(out.nfe))
    if not endpoints:
        raise GeodesicSolveError(f"every geodesic of cell {cell.key} hit max_num_steps; use a "
                                 "smaller scale, a larger prior precision or looser tolerances.")
    info["nfe_mean"] = float(np.mean(nfe))
    return fp.full(torch.stack(endpoints)), info


def _interval(report, **test) -> tuple[float, float]:
    return report.bootstrap_interval(**test, generator=torch.Generator().manual_seed(0))


def run_cell(config: TradeoffConfig, ctx: SeedContext, cell: Cell) -> tuple[dict, dict]:
    """Compute one cell: its result row and the arrays to store beside it."""
    start = time.perf_counter()
    thetas, info = parameter_samples(config, ctx, cell)
    dim = ctx.train.shape[1]
    # A single weight vector starts from as many x0 as a posterior's S samples share in all, so
    # every cell scores the same number of generated points (k-NN recall depends on it).
    n_x0 = config.n_x0 if len(thetas) > 1 else config.n_generated
    x0 = torch.randn(n_x0, dim, generator=_generator(cell.sample_seed, 7)).to(ctx.train)
    samples = generate(ctx.model, thetas.to(torch.float32), x0,
                       rtol=config.rtol, atol=config.rtol).reshape(-1, dim)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(f"cell {cell.key} generated non-finite samples; lower the scale.")
    objective = ctx.flow_posterior.objective
    losses = torch.stack([objective.value(t) for t in thetas]).cpu().numpy()
    true = ctx.true[: len(samples)]
    mem = memorisation_report(samples, ctx.train, true_samples=true)
    quality = quality_report(samples, ctx.test, ctx.train, true_samples=true,
                             generator=torch.Generator().manual_seed(cell.sample_seed))
    lo, hi = _interval(mem, threshold=RATIO_THRESHOLD)
    loose_lo, loose_hi = _interval(mem, c=LOOSE_C)
    row = {
        "key": cell.key, **asdict(cell), "dataset": config.dataset, "n_train": config.n_train,
        "net": config.net, "param_subset": config.param_subset or "all",
        "n_posterior_params": ctx.flow_posterior.posterior.mean.numel(),
        "geodesic_batch": ctx.geodesic_pairs,
        "n_param_samples": len(thetas), "n_generated": len(samples),
        "mem_strict": mem.fraction_strict, "mem_strict_lo": lo, "mem_strict_hi": hi,
        "mem_loose": mem.fraction_loose, "mem_loose_lo": loose_lo, "mem_loose_hi": loose_hi,
        "true_mem_strict": mem.baseline.fraction_strict,
        "true_mem_loose": mem.baseline.fraction_loose,
        **{k: v for k, v in quality.as_dict().items() if not k.startswith("gap")},
        "gap_train": quality.gap.train, "gap_test": quality.gap.test,
        "gap_ratio": quality.gap.ratio,
        "loss_mean": float(losses.mean()), "loss_median": float(np.median(losses)),
        "loss_map": float(objective.value(ctx.flow_posterior.theta_map)),
        "grad_norm_map": ctx.flow_posterior.refine_final.grad_norm_after,
        "nfe_geodesic_mean": info["nfe_mean"], "n_failed": info["n_failed"],
        "seconds": time.perf_counter() - start,
    }
    arrays = {"samples": samples.cpu().numpy(), "x0": x0.cpu().numpy(), "losses": losses}
    return row, arrays


class CellError(RuntimeError):
    """A cell failed while computing (a solver blow-up); the message names the cell, its scale
    and what to change."""


def cell_failure(cell: Cell, err: BaseException) -> str:
    """The message of a cell that failed with ``err``: which cell, and what to change."""
    text = str(err).strip() or type(err).__name__
    if "out of memory" in text:
        advice = "lower --n-x0 or --n-param-samples (memory per cell)"
    else:
        advice = ("the ODE solver blew up on these weights: lower this scale (--scales), loosen "
                  "--geodesic-rtol for geodesic methods, or check that the MAP net fits "
                  "(more --steps)")
    return (f"cell {cell.key} (method {cell.method}, scale α={cell.scale:g}, training seed "
            f"{cell.train_seed}) failed: {type(err).__name__}: {text}. Fix: {advice}. The "
            "finished cells are kept; the same command resumes.")


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


def run_study(config: TradeoffConfig, out, *, progress: bool = True, rank: int = 0,
              world_size: int = 1, force: bool = False) -> list[Cell]:
    """Run this rank's share of the unfinished cells (:func:`shard`), writing each one as it
    finishes. Returns the cells computed by this call (finished ones are skipped).

    The folder's saved options must agree with ``config`` up to added seeds, scales or
    methods, which extend the study (:func:`.resume.study_config`); ``force`` deletes its
    cells first (on rank 0: other ranks must wait for it). Each cell is claimed
    (:func:`.store.claim`) before it is computed, so processes sharing ``out`` never compute a
    cell twice, and a damaged finished cell is moved aside and computed again. A failing cell
    raises :class:`CellError` naming it.
    """
    out = store.check_writable(out)
    if rank == 0:
        config = resume.prepare(config, out, force)
    else:
        config = resume.study_config(config, out, force)
    mine = [c for c in shard(config, rank, world_size) if store.read_cell(out, c.key) is None]
    report = StudyProgress(mine, rank, progress)
    contexts: dict[int, SeedContext] = {}
    computed = []
    for cell in mine:
        if not store.claim(out, cell.key):
            report.say(f"cell {cell.key} is claimed by another process; skipped")
            report.remaining.remove(cell)
            continue
        try:
            if store.is_done(out, cell.key):  # finished by another process meanwhile
                report.remaining.remove(cell)
                continue
            if cell.train_seed not in contexts:
                contexts[cell.train_seed] = _setup(config, cell.train_seed, report, progress)
            start = time.perf_counter()
            try:
                row, arrays = run_cell(config, contexts[cell.train_seed], cell)
            except (AssertionError, RuntimeError, ValueError) as err:
                raise CellError(cell_failure(cell, err)) from err
            store.save_cell(out, cell.key, row, **arrays)
        finally:
            store.release(out, cell.key)
        computed.append(cell)
        report.cell_done(cell, time.perf_counter() - start)
        if cell.method == "map" and map_quality_warning(row):
            print(f"WARNING: {map_quality_warning(row)}", file=sys.stderr)
    return computed


def finish(config: TradeoffConfig, out) -> list[dict]:
    """Merge every finished cell into ``results.csv``/``results.json`` and draw the figures."""
    from .figures import frontier_figure, image_samples_figure, samples_figure

    rows = store.collect(out)
    for warning in annotate_map_quality(rows):
        print(f"WARNING: {warning}", file=sys.stderr)
    store.write_table(out, rows)
    if not rows:
        return rows
    frontier_figure(rows).savefig(Path(out) / "frontier.png", dpi=120, bbox_inches="tight")
    images = study_images(config)
    train = study_data(config, images).train
    shape = study_image_shape(config, images)
    write_preview(out, rows, train, min(PREVIEW_SAMPLES, config.n_x0))
    if shape is None:
        fig = samples_figure(out, rows, train.numpy(), seed=config.train_seeds[0])
    else:
        fig = image_samples_figure(np.load(Path(out) / "preview.npz"), shape)
    if fig is not None:  # no scatter for vectors of more than two dimensions
        fig.savefig(Path(out) / "samples.png", dpi=120, bbox_inches="tight")
    return rows


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
    from ..memorisation import nearest_two

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


def with_overrides(config: TradeoffConfig, **overrides) -> TradeoffConfig:
    """``config`` with the given fields replaced (``None`` values are ignored)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
