"""Geodesics of a metric on parameter space: the metric protocol, the exponential map.

A Riemannian Laplace sample is the end point ``c(1)`` of the geodesic

    c̈ = −Γ(c)[ċ, ċ],   c(0) = θ0,   ċ(0) = v,

solved over ``t ∈ [0, 1]`` with torchdiffeq on the state ``[θ, θ̇]`` (Bergamin et al. 2023,
arXiv 2306.07158, Sec. 3.2; Gegenfurtner et al., arXiv 2602.00199). This module builds the
metric and checks the inputs; :mod:`~rbmem_tutorial.riemannian.solve` runs the solve.

Metric protocol
---------------
The solver reads a metric only through an object with these methods, each for ``theta`` and
``velocity`` of shape ``[D]`` or ``[S, D]`` (``S`` independent rows):

- ``acceleration(theta, velocity)``: ``c̈ = −Γ(c)[ċ, ċ]``, the shape of ``velocity``;
- ``speed(theta, velocity)``: the conserved ``ċᵀG(c)ċ`` per row (``[]`` or ``[S]``);
- ``loss_value(theta)``: the untempered loss ``L`` per row, or None when the loss has no value
  (then ``GeodesicResult.loss_rise`` is None);
- ``grad_norm(theta)``: ``‖∇L‖`` of the untempered loss per row;

and optionally ``loss_rise_bound(theta0, velocity)``, a bound on ``|L(c(1)) − L(θ0)|`` per row
(``GeodesicResult.bound`` is None without it, or when it returns None).

Two metrics ship, chosen by ``metric=``: ``"monge"``, the metric ``I + ∇L∇Lᵀ/T²`` of the loss
graph (:class:`~rbmem_tutorial.riemannian.MongeMetric`, with the temperature ``T``), and
``"fisher"``, the pull-back (Fisher/GGN) metric of the network outputs of a
``RegressionObjective`` (:class:`~rbmem_tutorial.riemannian.FisherMetric`). A constant
factor of a metric leaves its geodesics unchanged, so the temperature does not act on the
Fisher metric (a number or ``"sum"``/``"mean"`` is accepted and has no effect).
"""

from __future__ import annotations

import torch

from rbmem_tutorial._checks import check_choice
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.riemannian._checks import check_float64, check_velocity
from rbmem_tutorial.riemannian.fisher import FisherMetric
from rbmem_tutorial.riemannian.monge import MongeMetric
from rbmem_tutorial.riemannian.solve import (
    ADAPTIVE_METHODS,
    GeodesicResult,
    GeodesicSolveError,
    shoot,
    solver_options,
)
from rbmem_tutorial.riemannian.temperature import check_temperature, resolve_temperature
from rbmem_tutorial.riemannian.tolerances import default_tolerance

__all__ = [
    "ADAPTIVE_METHODS", "METRICS", "GeodesicResult", "GeodesicSolveError", "build_metric",
    "exp_map", "geodesic_acceleration",
]

METRICS = ("monge", "fisher")


def _fisher_metric(loss, temperature):
    if temperature == "data-mean":
        raise ValueError(
            "temperature='data-mean' changes the loss of the Monge metric; the Fisher metric "
            "ignores the temperature, so use metric='monge' or pass a number."
        )
    if not isinstance(loss, RegressionObjective):
        raise TypeError(
            "metric='fisher' needs a RegressionObjective (it pulls back the network outputs), "
            f"got {type(loss).__name__}; use metric='monge' for other losses."
        )
    resolve_temperature(loss, temperature)  # validated only: T is a constant factor of G
    return FisherMetric(loss)


def _check_geometry(metric, temperature):
    """Check ``metric`` and ``temperature``; return the checked temperature."""
    if not isinstance(metric, str):
        raise TypeError(f"metric must be one of {METRICS}, got {type(metric).__name__}.")
    check_choice("metric", metric, METRICS)
    return check_temperature(temperature)


def build_metric(loss, theta0: torch.Tensor, metric: str = "monge", temperature=1.0):
    """The metric object for ``metric`` (``"monge"`` or ``"fisher"``) at ``temperature``.

    Checks ``metric`` and ``temperature`` (a number ``T > 0`` or a preset of
    :mod:`~rbmem_tutorial.riemannian.temperature`) before building anything. ``"monge"``
    gives :class:`~rbmem_tutorial.riemannian.MongeMetric` ``(loss, theta0, temperature)``;
    ``"fisher"`` gives :class:`~rbmem_tutorial.riemannian.FisherMetric` ``(loss)`` of a
    ``RegressionObjective``, on which a numeric temperature or ``"sum"``/``"mean"`` has no
    effect (a constant factor of a metric leaves its geodesics unchanged).

    Example
    -------
    >>> loss = lambda th: (th ** 2).sum()
    >>> metric = build_metric(loss, torch.zeros(2, dtype=torch.float64), temperature=2.0)
    >>> type(metric).__name__, metric.temperature
    ('MongeMetric', 2.0)
    >>> build_metric(loss, torch.zeros(2, dtype=torch.float64), metric="fisher")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: metric='fisher' needs a RegressionObjective (it pulls back the network ...
    """
    temperature = _check_geometry(metric, temperature)
    if metric == "fisher":
        return _fisher_metric(loss, temperature)
    return MongeMetric(loss, theta0, temperature)


def geodesic_acceleration(
    loss, theta, velocity, *, metric: str = "monge", temperature: float | str = 1.0
) -> torch.Tensor:
    """Acceleration ``c̈`` of the geodesic through ``θ`` with velocity ``θ̇``.

    For the Monge metric of ``L/T`` the closed form (Bergamin et al. 2023, arXiv 2306.07158,
    eq. 8, with ``L/T`` for ``L``)

        c̈ = −(∇L/T) · (θ̇ᵀ ∇²L θ̇ / T) / (1 + ‖∇L‖²/T²),

    equals ``−Γᵏᵢⱼ θ̇ⁱ θ̇ʲ`` for the Christoffel symbols of ``I + ∇L∇Lᵀ/T²``. It costs one
    gradient and the curvature ``θ̇ᵀ∇²L θ̇``: an HVP in general, a cheaper second-order forward
    pass for MLP regression objectives (:mod:`rbmem_tutorial.laplace.fast_mlp`).

    Parameters
    ----------
    loss : callable or object with ``grad_and_hvp``
        Scalar loss of a flat parameter vector (:mod:`~rbmem_tutorial.riemannian.monge`).
    theta, velocity : Tensor
        Float64 ``[D]``, or ``[S, D]`` for ``S`` independent points.
    metric : str
        ``"monge"`` or ``"fisher"`` (module docstring).
    temperature : float or str
        ``T > 0`` or a preset ``"sum"``, ``"mean"``, ``"data-mean"`` of a
        ``RegressionObjective``; exactly the metric of ``lambda θ: loss(θ) / T`` for a number.

    Returns
    -------
    Tensor
        ``c̈``, same shape as ``velocity``.

    Example
    -------
    >>> import torch
    >>> loss = lambda th: (th ** 2).sum()
    >>> theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> geodesic_acceleration(loss, theta, torch.tensor([0.0, 1.0], dtype=torch.float64))
    tensor([-0.8000, -0.0000], dtype=torch.float64)
    """
    theta = check_float64("theta", theta, ndim=(1, 2))
    velocity = check_velocity(theta, velocity, "velocity")
    if velocity.shape != theta.shape:
        raise ValueError(
            f"theta and velocity must have the same shape, got {tuple(theta.shape)} and "
            f"{tuple(velocity.shape)}."
        )
    geometry = build_metric(loss, theta[0] if theta.ndim == 2 else theta, metric, temperature)
    acceleration = geometry.acceleration(theta.detach(), velocity.detach())
    if not bool(torch.isfinite(acceleration).all()):
        raise ValueError("the acceleration is not finite at theta; check the loss's derivatives.")
    return acceleration


def exp_map(
    loss,
    theta0,
    v,
    *,
    metric: str = "monge",
    temperature: float | str = 1.0,
    method: str = "bosh3",
    rtol: float | None = None,
    atol: float | None = None,
    max_num_steps: int = 1000,
    return_path: bool = False,
    num_path_points: int = 21,
    batched: bool = True,
) -> GeodesicResult:
    """Riemannian exponential map ``Exp_θ0(v) = c(1)`` of the chosen metric.

    Solves ``c̈ = −Γ(c)[ċ, ċ]`` with ``c(0) = θ0, ċ(0) = v`` over ``t ∈ [0, 1]``; for the
    Monge metric of ``L/T``, ``c̈ = −(∇L/T)(ċᵀ∇²L ċ/T) / (1 + ‖∇L‖²/T²)`` (module docstring).

    Parameters
    ----------
    loss : callable or object with ``grad_and_hvp``
        Scalar loss of a flat parameter vector (:mod:`~rbmem_tutorial.riemannian.monge`); a
        ``RegressionObjective`` for ``metric="fisher"`` and for the temperature presets.
    theta0 : Tensor
        Float64 start point ``[D]``; the solve runs on its device.
    v : Tensor
        Float64 initial velocity ``[D]`` or a batch ``[S, D]``.
    metric : str
        ``"monge"`` (the loss graph's metric) or ``"fisher"`` (the pull-back metric).
    temperature : float or str
        ``T > 0``: the Monge metric of ``L/T``, exactly as passing ``lambda θ: loss(θ) / T``;
        or ``"sum"`` (T = 1), ``"mean"`` (T = the number of regression pairs) or
        ``"data-mean"`` (the poster authors' data term averaged over all residual entries,
        prior unscaled), which need a ``RegressionObjective``
        (:mod:`~rbmem_tutorial.riemannian.temperature`: what α means under each, and the bound
        ``L(c(1)) − L(θ*) ≤ T‖v‖``). No effect on the Fisher metric.
    method : str
        An adaptive torchdiffeq solver, one of ``ADAPTIVE_METHODS``.
    rtol, atol : float, optional
        Solver tolerances; None (the default) takes the metric's and temperature's
        :func:`~rbmem_tutorial.riemannian.default_tolerance` (1e-4, 3e-6 for ``"data-mean"``),
        chosen to end within 2% of the displacement on the book's net for α up to 8. Judge
        accuracy by the end point against a tight-tolerance solve: the conserved speed can
        drift at loose tolerances while the end point is fine.
    max_num_steps : int
        Step budget per solve; exceeding it raises :class:`GeodesicSolveError`.
    return_path : bool
        Also return ``c(t)`` at ``num_path_points`` evenly spaced times. Each is a step of the
        solver, so a path costs a few evaluations more than the end point alone.
    batched : bool
        For ``[S, D]`` input: solve all samples as one ODE if True, or one after the other if
        False. A batch shares one step size; the error norm is each sample's RMS, worst sample
        taken, so each sample keeps its tolerance and the batch follows its stiffest member.

    Notes
    -----
    The defaults (bosh3, rtol = atol = 1e-4 but for ``"data-mean"``) were chosen on the
    chapter's net (a diagonal Laplace at a stationary θ*, T = 1), where the step size is capped
    by stability rather than accuracy: early on ``ċᵀ∇²L ċ / (1 + ‖∇L‖²)`` is large (of order α²
    D), so stiff directions oscillate fast with tiny amplitude and an explicit solver must
    follow them. Loosening the tolerance then saves few steps but costs accuracy, and the
    third-order bosh3 reaches a given end-point error with fewer evaluations than dopri5
    (``benchmarks/bench_geodesic.py`` measures them side by side). For tight reference solves of
    smooth problems, dopri5 or dopri8 is the better choice. Every output time (``t = 1``, and
    the times of a path) is a step of the solver, not a point of its interpolant, which can miss
    ``c(1)`` after a long step past ``t = 1``.

    How far a Monge sample can climb: the speed ``‖ċ‖² + (∇L·ċ)²/T²`` is conserved, so at a
    stationary θ0 it stays ``‖v‖²``, ``|dL/dt| = |∇L·ċ| ≤ T‖v‖`` and ``ΔL ≤ T‖v‖``
    (``GeodesicResult.bound``). With the summed loss (T = 1) the samples of a large net travel
    a small fraction of ``‖v‖``; a larger T, such as the mean loss's T = N, lets them travel
    further (``GeodesicResult.travel``; chapter 5).

    Returns
    -------
    GeodesicResult
        End points and per-sample diagnostics (travel, loss rise against its bound, ...).

    Raises
    ------
    GeodesicSolveError
        The step budget ran out or the step size collapsed; the message says what to change.

    Example
    -------
    >>> import torch
    >>> loss = lambda th: 0.5 * (th ** 2).sum()
    >>> theta0 = torch.zeros(2, dtype=torch.float64)
    >>> result = exp_map(loss, theta0, torch.tensor([0.0, 3.0], dtype=torch.float64))
    >>> bool(result.speed_drift < 1e-2), bool(result.loss_rise <= result.bound)  # bound: T‖v‖
    (True, True)
    >>> hotter = exp_map(loss, theta0, torch.tensor([0.0, 3.0], dtype=torch.float64),
    ...                  temperature=10.0)
    >>> bool(hotter.travel > result.travel)  # a higher T lets the geodesic climb further
    True
    """
    theta0 = check_float64("theta0", theta0, ndim=1).detach()
    v = check_velocity(theta0, v).detach()
    tolerance = default_tolerance(metric, _check_geometry(metric, temperature))
    options = solver_options(
        method, tolerance if rtol is None else rtol, tolerance if atol is None else atol,
        max_num_steps, return_path, num_path_points, device=theta0.device,
    )
    geometry = build_metric(loss, theta0, metric, temperature)
    return shoot(geometry, theta0, v, batched=batched, **options)
