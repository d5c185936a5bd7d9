"""What a batch of geodesics costs: NFE × (one batched gradient-and-curvature evaluation).

A geodesic solve of ``S`` tangents evaluates the metric's right-hand side NFE times; for the
Monge metric on an MLP each evaluation is one fused pass
(:mod:`rbmem_tutorial.laplace.fast_mlp`) over the N·K frozen pairs for every tangent, about
``FLOPS_PER_WEIGHT`` floating-point operations per weight, pair and tangent (nine matrix
products per layer: the forward pass, its first- and second-order directional derivatives, and
the backward pass). So

    seconds ≈ NFE × (overhead + S · N·K · D · FLOPS_PER_WEIGHT / rate),

with ``overhead`` the fixed cost of one call and ``rate`` the flops per second the hardware
sustains on these matrix shapes. :func:`fit` finds ``overhead`` and ``rate`` from timed
evaluations on a CPU; on a GPU the evaluations of this net cost the same for 1 and for 256
tangents (the kernel launches are the cost), so :func:`overhead_bound` keeps the overhead and a
lower bound on the rate. :data:`GPU_MEASURED` is that measurement on one H200, and
:func:`profile_prediction` turns either model into the expected geodesic time of a trade-off
profile, whose cells solve their geodesics one tangent at a time. Chapter 8 shows the CPU fit
beside the study's measured solves and the GPU model beside a GPU run.

Example
-------
>>> model = CostModel(overhead=1e-3, rate=1e9)
>>> round(model.evaluation_seconds(tangents=32, pairs=80, weights=49_728), 3)
2.292
>>> round(model.solve_seconds(nfe=200, tangents=32, pairs=80, weights=49_728), 1)
458.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rbmem_tutorial.data import dataset_dim
from rbmem_tutorial.experiments.flows import study_net

FLOPS_PER_WEIGHT = 18
"""Flops per weight, pair and tangent of one fused gradient-and-curvature evaluation: nine
matrix products per layer, two flops per multiply-add."""

TYPICAL_NFE = 200
"""Evaluations of one study geodesic solve on the digits net (bosh3 at 1e-4, T = mean: 191 at
α = 8 in ``book/data/digits/tolerance.json``), for predictions before a run."""


@dataclass(frozen=True)
class CostModel:
    """``overhead`` seconds per evaluation plus the work at ``rate`` flops per second."""

    overhead: float
    rate: float

    def evaluation_seconds(self, tangents: int, pairs: int, weights: int) -> float:
        """Seconds of one batched evaluation of the geodesic right-hand side."""
        return self.overhead + tangents * pairs * weights * FLOPS_PER_WEIGHT / self.rate

    def solve_seconds(self, nfe: float, tangents: int, pairs: int, weights: int) -> float:
        """Seconds of one batched solve of ``nfe`` evaluations."""
        return nfe * self.evaluation_seconds(tangents, pairs, weights)


def fit(work: list[float], seconds: list[float]) -> CostModel:
    """Least-squares ``seconds = overhead + work / rate`` over timed evaluations, ``work`` in
    flops (``tangents · pairs · weights · FLOPS_PER_WEIGHT``); a ``ValueError`` when the data
    cannot fix a positive rate.

    Example
    -------
    >>> model = fit([1e9, 2e9, 4e9], [1.01, 2.01, 4.01])
    >>> round(model.overhead, 3), round(model.rate / 1e9, 3)
    (0.01, 1.0)
    """
    work, seconds = np.asarray(work, float), np.asarray(seconds, float)
    if len(work) < 2 or np.ptp(work) == 0:
        raise ValueError("fit needs timings at two or more different amounts of work.")
    slope, intercept = np.polyfit(work, seconds, 1)
    if slope <= 0:
        raise ValueError(f"the timings do not grow with the work (slope {slope:.3g}); time "
                         "larger evaluations or repeat them on a quieter machine.")
    return CostModel(overhead=max(float(intercept), 0.0), rate=float(1 / slope))


def overhead_bound(work: list[float], seconds: list[float]) -> CostModel:
    """The model of timings that do not grow with the work: ``overhead`` is their median and
    ``rate`` the largest work over its time, a lower bound (the arithmetic hides under the
    fixed cost, as on a GPU for small nets).

    Example
    -------
    >>> model = overhead_bound([1e9, 1e10, 1e11], [2.0e-3, 2.1e-3, 1.9e-3])
    >>> round(model.overhead * 1e3, 2), round(model.rate / 1e12, 1)
    (2.0, 52.6)
    """
    work, seconds = np.asarray(work, float), np.asarray(seconds, float)
    if len(work) == 0 or np.any(seconds <= 0):
        raise ValueError("overhead_bound needs one or more positive timings.")
    return CostModel(overhead=float(np.median(seconds)), rate=float(np.max(work / seconds)))


GPU_MEASURED = CostModel(overhead=2.4e-3, rate=8.1e12)
"""One NVIDIA H200 (PyTorch 2.11, float64, the fused MLP kernel of the digits net on 80 frozen
pairs), measured by ``book/data/digits/gpu/gpu_cost.py``: 2.3-2.6 ms per evaluation for 1 to
256 tangents, so the overhead is the cost and 8.1·10¹² flops/s (256 tangents in 2.26 ms) is a
lower bound on the rate."""


def profile_size(config) -> tuple[int, int]:
    """``(pairs, weights)`` of a trade-off profile: its N·K frozen pairs and the D weights of
    its velocity net, counted on the net the study builds.

    Example
    -------
    >>> from rbmem_tutorial.experiments.tradeoff import profile_config
    >>> profile_size(profile_config("gpu-digits", device="cpu"))
    (80, 49728)
    """
    net = study_net(config, dataset_dim(config.dataset))
    return config.n_train * config.draws_per_point, sum(p.numel() for p in net.parameters())


def profile_prediction(config, model: CostModel, nfe: float) -> float:
    """Seconds of the geodesic solves of a trade-off profile (``config``, a
    :class:`~.tradeoff.TradeoffConfig`): each geodesic cell solves its ``n_param_samples``
    tangents one at a time, or as one batch with ``geodesic_solve="batched"``
    (:func:`.geodesic_cells.geodesic_samples`), ``nfe`` evaluations each, on the profile's net
    and frozen pairs (:func:`profile_size`).

    Example
    -------
    >>> from rbmem_tutorial.experiments.tradeoff import profile_config
    >>> config = profile_config("gpu-digits", device="cpu")
    >>> round(profile_prediction(config, GPU_MEASURED, nfe=200) / 60)
    15
    """
    pairs, weights = profile_size(config)
    geodesic = sum(m.startswith("riemannian") for m in config.methods)
    cells = (len(config.train_seeds) * len(config.sample_seeds) * len(config.scales)
             * geodesic * len(config.temperatures))
    if config.geodesic_solve == "batched":
        return cells * model.solve_seconds(nfe, config.n_param_samples, pairs, weights)
    return cells * config.n_param_samples * model.solve_seconds(nfe, 1, pairs, weights)
