"""Riemannian Laplace: geodesics of a metric on parameter space and the sampler built on them.
Chapters 5 and 6 (Riemannian Laplace, choosing the metric) teach it; chapter 7 uses it to
reduce memorisation.

Map of the subpackage:

- :mod:`.geodesic` — the metric protocol, :func:`build_metric`, :func:`exp_map` and
  :func:`geodesic_acceleration`;
- :mod:`.solve` — the torchdiffeq solve of one or a batch of geodesics, its
  :class:`GeodesicResult` and :class:`GeodesicSolveError`;
- :mod:`.monge` — :class:`MongeMetric`, the metric ``I + ∇L∇Lᵀ/T²`` of the loss graph, and the
  forms of a loss it reads (fast MLP kernel, the conv net's jet kernel :mod:`.conv_jet`, the
  generic ``torch.func`` path :mod:`.generic`, ``grad_and_curvature``, ``grad_and_hvp``,
  callable);
- :mod:`.temperature` — the temperature ``T``, its presets ``"sum"``, ``"mean"``,
  ``"data-mean"``, and the bound ``L(c(1)) − L(θ*) ≤ T‖v‖``;
- :mod:`.tolerances` — :func:`default_tolerance`, the solver tolerance per metric and
  temperature that keeps end points within 2% of the displacement;
- :mod:`.fisher` — :class:`FisherMetric`, the pull-back (Fisher/GGN) metric of a regression
  network (``metric="fisher"``);
- :mod:`.linearised` — the loss of the network linearised at θ*;
- :mod:`.sampler` — :class:`RiemannianLaplace`, Laplace tangent vectors through ``Exp_θ*``;
- :mod:`.diagnostics` — per-sample travel and loss rise, and :func:`common_drift`;
- :mod:`.toys` — posteriors known in closed form (a banana, Bayesian linear regression).
"""

from rbmem_tutorial.riemannian._checks import F64
from rbmem_tutorial.riemannian.diagnostics import common_drift
from rbmem_tutorial.riemannian.fisher import FisherMetric
from rbmem_tutorial.riemannian.geodesic import METRICS, build_metric, exp_map, geodesic_acceleration
from rbmem_tutorial.riemannian.linearised import LinearisedObjective, linearised_objective
from rbmem_tutorial.riemannian.monge import MongeMetric
from rbmem_tutorial.riemannian.sampler import RiemannianLaplace
from rbmem_tutorial.riemannian.solve import ADAPTIVE_METHODS, GeodesicResult, GeodesicSolveError
from rbmem_tutorial.riemannian.temperature import (
    TEMPERATURE_PRESETS,
    data_mean_objective,
    resolve_temperature,
)
from rbmem_tutorial.riemannian.tolerances import DEFAULT_TOLERANCES, default_tolerance

__all__ = [
    "ADAPTIVE_METHODS", "DEFAULT_TOLERANCES", "F64", "METRICS", "TEMPERATURE_PRESETS",
    "FisherMetric", "GeodesicResult", "GeodesicSolveError", "LinearisedObjective", "MongeMetric",
    "RiemannianLaplace", "build_metric", "common_drift", "data_mean_objective",
    "default_tolerance", "exp_map", "geodesic_acceleration", "linearised_objective",
    "resolve_temperature",
]
