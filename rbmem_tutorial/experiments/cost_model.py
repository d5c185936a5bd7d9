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
evaluations on a CPU; :data:`GPU_ASSUMED` is an assumption for one data-centre GPU in float64,
not a measurement (no GPU was available to the book), and :func:`profile_prediction` turns
either into the expected geodesic time of a trade-off profile. Chapter 8 shows the CPU fit
beside the study's measured solves.

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


GPU_ASSUMED = CostModel(overhead=1e-3, rate=2e12)
"""An assumption, not a measurement: one data-centre GPU in float64 sustaining 2·10¹² flops/s
on these small matrix products, and 1 ms of kernel launches per evaluation."""


def profile_prediction(config, model: CostModel, nfe: float) -> float:
    """Seconds of the geodesic solves of a trade-off profile (``config``, a
    :class:`~.tradeoff.TradeoffConfig`): one batched solve of ``n_param_samples`` tangents per
    geodesic cell, ``nfe`` evaluations each, on the profile's MLP and frozen pairs."""
    widths = (65, *config.hidden, 64)
    weights = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    geodesic = sum(m.startswith("riemannian") for m in config.methods)
    cells = (len(config.train_seeds) * len(config.sample_seeds) * len(config.scales)
             * geodesic * len(config.temperatures))
    pairs = config.n_train * config.draws_per_point
    return cells * model.solve_seconds(nfe, config.n_param_samples, pairs, weights)
