"""The configuration of a trade-off study (:mod:`rbmem_tutorial.experiments.tradeoff`): its
methods and every field that determines it, checked when it is made; saved beside the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int
from rbmem_tutorial.data import DATASETS, DIGITS_COUNT, TOY_DATASETS
from rbmem_tutorial.experiments.geodesic_cells import check_temperatures
from rbmem_tutorial.flows.image_nets import NETS
from rbmem_tutorial.laplace.options import BASE_POINTS, PRIOR_MEANS
from rbmem_tutorial.laplace.structures import STRUCTURES
from rbmem_tutorial.reference import REFERENCE, FlowConfig

__all__ = ["METHODS", "SCALED", "TradeoffConfig", "scale_key"]

METHODS = ("map", "early-stop", "isotropic", "laplace", "riemannian", "riemannian-linearised",
           "riemannian-fisher", "drift-control", "drift-control-centre", "ensemble-centre")
SCALED = METHODS[2:]


@dataclass(frozen=True)
class TradeoffConfig:
    """Everything that determines a trade-off study (saved beside its results).

    ``dataset`` is ``"file"`` exactly when ``data_file`` names a user's image array. ``hidden``
    holds the MLP's widths, ``channels`` the conv net's channels per level. ``n_test`` ``None``
    picks the held-out size: for the toy sets max(2000, generated samples); for images all the
    images not used for training (half of them score quality, the other half are the
    true-sample baseline). ``param_subset`` ``None`` puts the posterior on every weight;
    ``geodesic_batch`` ``None`` runs geodesics on all frozen pairs. ``prior_mean`` and
    ``base_point`` go to :func:`~rbmem_tutorial.laplace.pipeline.fit_flow_posterior`;
    ``temperatures`` are the Monge metric's temperatures (numbers, ``"sum"``, ``"mean"``,
    ``"data-mean"``), over which the tempered methods' cells are expanded
    (:mod:`.geodesic_cells`). ``geodesic_rtol`` (= atol) ``None`` solves each cell's geodesics
    at its metric's and temperature's :func:`~rbmem_tutorial.riemannian.default_tolerance`.
    ``geodesic_solve`` ``"each"`` solves a cell's geodesics one at a time, each with its own
    steps; ``"batched"`` solves them as one batch, which shares the steps of the stiffest and
    pays one evaluation per step for all (on a GPU, where an evaluation of a small net costs its
    kernel launches, about ``n_param_samples`` times faster).
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
    geodesic_rtol: float | None = None
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
    prior_mean: str = "sgd"
    base_point: str = "refined"
    temperatures: tuple = ("sum",)
    geodesic_solve: str = "each"

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
        tolerances = ("rtol",) if self.geodesic_rtol is None else ("rtol", "geodesic_rtol")
        for name in tolerances:
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
            for seed in getattr(self, name):
                check_positive_int(name, seed, minimum=0)
        check_choice("prior_mean", self.prior_mean, PRIOR_MEANS)
        check_choice("base_point", self.base_point, BASE_POINTS)
        check_temperatures(self.temperatures, methods=self.methods,
                           geodesic_batch=self.geodesic_batch)
        if self.n_test is not None:
            check_positive_int("n_test", self.n_test, minimum=2)
        if self.geodesic_batch is not None:
            check_positive_int("geodesic_batch", self.geodesic_batch)
        check_choice("geodesic_solve", self.geodesic_solve, ("each", "batched"))
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


def scale_key(scale: float) -> str:
    """The text of a posterior scale in cell keys (``%g``: 6 significant digits)."""
    return f"{scale:g}"
