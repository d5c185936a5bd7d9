"""Geodesics of a metric on parameter space: the ODE solve, the exponential map, diagnostics.

A Riemannian Laplace sample is the end point ``c(1)`` of the geodesic

    c̈ = −Γ(c)[ċ, ċ],   c(0) = θ0,   ċ(0) = v,

solved over ``t ∈ [0, 1]`` with torchdiffeq on the state ``[θ, θ̇]`` (Bergamin et al. 2023,
arXiv 2306.07158, Sec. 3.2; Gegenfurtner et al., arXiv 2602.00199).

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

import time
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int
from rbmem_tutorial.objective import RegressionObjective

from ._checks import F64, check_float64, check_velocity
from .diagnostics import endpoint_diagnostics
from .fisher import FisherMetric
from .monge import MongeMetric
from .temperature import check_temperature, resolve_temperature

ADAPTIVE_METHODS = ("dopri5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun")
METRICS = ("monge", "fisher")


class GeodesicSolveError(RuntimeError):
    """An adaptive geodesic solve ran out of steps or its step size collapsed."""


@dataclass
class GeodesicResult:
    """End points of solved geodesics and per-sample diagnostics.

    Per-sample fields have shape ``[]`` for one velocity or ``[S]`` for a batch.

    Attributes
    ----------
    endpoints : Tensor
        ``c(1)``, shape ``[D]`` for one velocity or ``[S, D]`` for a batch.
    end_velocities : Tensor
        ``ċ(1)``, same shape; shooting back with ``−ċ(1)`` from ``c(1)`` returns to ``c(0)``.
    nfe : Tensor
        Vector-field evaluations per sample (int64); a batched solve reports the shared count
        for every member.
    speed_drift : Tensor
        ``|E(1) − E(0)| / E(0)`` of the conserved speed ``E = ċᵀG(c)ċ`` (0 when ``v = 0``).
        A small drift is necessary, not sufficient, for an accurate solve.
    seconds : Tensor
        Wall time of the solve per sample; a batched solve reports its time divided by ``S``.
    grad_norm_start : Tensor
        ``‖∇L(θ0)‖`` of the untempered loss (the same for every sample).
    travel : Tensor
        ``‖c(1) − θ0‖ / ‖v‖``: 1 for a straight line (0 when ``v = 0``).
    loss_rise : Tensor or None
        ``L(c(1)) − L(θ0)`` of the untempered loss; None when the loss has no value (an
        object with only ``grad_and_hvp``).
    bound : Tensor or None
        The metric's bound on ``|loss_rise|``: ``√(T²‖v‖² + (∇L(θ0)·v)²)`` for the Monge metric
        at temperature ``T``, ``T‖v‖`` at a stationary θ0; the Fisher metric's own bound
        (:meth:`~rbmem_tutorial.riemannian.FisherMetric.loss_rise_bound`); None for a metric
        without one (the ``"data-mean"`` preset, whose metric bounds ``L_dm``, not ``L``).
    path : Tensor or None
        ``c(t)`` on ``path_times``, shape ``[T, D]`` or ``[S, T, D]``, if requested.
    path_times : Tensor or None
        The ``T`` evenly spaced times in ``[0, 1]`` of ``path``.
    """

    endpoints: torch.Tensor
    end_velocities: torch.Tensor
    nfe: torch.Tensor
    speed_drift: torch.Tensor
    seconds: torch.Tensor
    grad_norm_start: torch.Tensor
    travel: torch.Tensor
    loss_rise: torch.Tensor | None = None
    bound: torch.Tensor | None = None
    path: torch.Tensor | None = None
    path_times: torch.Tensor | None = None


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


def build_metric(loss, theta0: torch.Tensor, metric: str = "monge", temperature=1.0):
    """The metric object for ``metric`` (``"monge"`` or ``"fisher"``) at ``temperature``.

    Checks ``metric`` and ``temperature`` (a number ``T > 0`` or a preset of
    :mod:`~rbmem_tutorial.riemannian.temperature`) before building anything.
    """
    if not isinstance(metric, str):
        raise TypeError(f"metric must be one of {METRICS}, got {type(metric).__name__}.")
    check_choice("metric", metric, METRICS)
    temperature = check_temperature(temperature)
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
    pass for MLP regression objectives (:mod:`rbmem_tutorial.fast_mlp`).

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


def _solve_error(what: str, method, rtol, atol) -> GeodesicSolveError:
    return GeodesicSolveError(
        f"The geodesic solve ({method}, rtol={rtol:g}, atol={atol:g}) {what}. To make it "
        "tractable: raise the prior precision (flatter, better-conditioned posterior), shrink "
        "the tangent scale α, loosen rtol/atol, use the linearised variant "
        "(RiemannianLaplace(..., linearised=True)), or raise max_num_steps."
    )


def _solver_failure(err: Exception, max_num_steps) -> str | None:
    """What went wrong, if ``err`` is torchdiffeq giving up (it signals this by assert)."""
    text = str(err)
    if "max_num_steps" in text:
        return f"stopped after max_num_steps={max_num_steps} steps"
    if "underflow" in text or "non-finite" in text:
        return "collapsed its step size (the geodesic is too stiff or left the finite region)"
    return None


def _worst_sample_rms(scaled_error: torch.Tensor) -> torch.Tensor:
    """Step-size norm: the RMS over each sample's state, then the worst sample.

    torchdiffeq's default RMS over the whole batch would average a stiff sample's error with
    the others; taking the worst keeps every sample within rtol/atol, as a solve on its own.
    """
    return scaled_error.square().mean(-1).sqrt().max()


def _solve(geometry, theta0, v, *, method, rtol, atol, max_num_steps, path_times):
    """Integrate the geodesic ODE from ``theta0 [D]`` with ``v`` of shape ``[D]`` or ``[S, D]``."""
    dim = theta0.shape[-1]
    start_points = theta0.expand_as(v)
    count = [0]

    def field(_t, state):
        count[0] += 1
        theta, velocity = state[..., :dim], state[..., dim:]
        return torch.cat([velocity, geometry.acceleration(theta, velocity)], dim=-1)

    speed0 = geometry.speed(start_points, v)
    if not bool(torch.isfinite(speed0).all()):
        raise ValueError("the metric is not finite at theta0; check the loss's derivatives there.")
    times = path_times if path_times is not None else theta0.new_tensor([0.0, 1.0])
    start = time.perf_counter()
    try:
        states = odeint(
            field,
            torch.cat([start_points, v], dim=-1),
            times,
            method=method,
            rtol=rtol,
            atol=atol,
            # Land a step on every output time instead of interpolating to it: torchdiffeq's
            # bosh3 interpolant can miss c(1) badly after a long step past t = 1 (on c̈ =
            # (0, 2ċ₁²) it returned 2.25 for c₂(1) = 1.5 at rtol = 1e-8).
            options={"max_num_steps": max_num_steps, "norm": _worst_sample_rms,
                     "step_t": times},
        )
    except (AssertionError, RuntimeError) as err:
        what = _solver_failure(err, max_num_steps)
        if what is None:
            raise
        raise _solve_error(what, method, rtol, atol) from err
    if theta0.is_cuda:
        torch.cuda.synchronize(theta0.device)
    seconds = time.perf_counter() - start
    end, end_velocity = states[-1][..., :dim], states[-1][..., dim:]
    if not bool(torch.isfinite(states[-1]).all()):
        raise _solve_error("ended at a non-finite point", method, rtol, atol)
    change = (geometry.speed(end, end_velocity) - speed0).abs()
    drift = torch.where(speed0 > 0, change / speed0.clamp_min(torch.finfo(F64).tiny), change)
    batch = v.shape[:-1]
    return GeodesicResult(
        endpoints=end,
        end_velocities=end_velocity,
        nfe=torch.full(batch, count[0], dtype=torch.int64),
        speed_drift=drift,
        seconds=torch.full(batch, seconds / batch.numel(), dtype=F64),
        **endpoint_diagnostics(geometry, theta0, v, end),
        path=None if path_times is None else states[..., :dim].movedim(0, -2),
        path_times=path_times,
    )


def _stack_results(results: list[GeodesicResult]) -> GeodesicResult:
    def stack(name):
        values = [getattr(result, name) for result in results]
        return None if values[0] is None else torch.stack(values)

    fields = GeodesicResult.__dataclass_fields__
    return GeodesicResult(
        **{name: stack(name) for name in fields if name != "path_times"},
        path_times=results[0].path_times,
    )


def shoot(geometry, theta0, v, *, batched: bool = True, **options) -> GeodesicResult:
    """Solve from checked ``theta0 [D]`` and ``v`` with a built metric (see :func:`exp_map`)."""
    if v.ndim == 1 or batched:
        return _solve(geometry, theta0, v, **options)
    return _stack_results([_solve(geometry, theta0, row, **options) for row in v])


def solver_options(
    method="bosh3", rtol=1e-4, atol=1e-4, max_num_steps=1000, return_path=False,
    num_path_points=21, *, device=None,
) -> dict:
    """Checked keyword arguments of :func:`_solve`."""
    check_choice("method", method, ADAPTIVE_METHODS)
    options = {
        "method": method,
        "rtol": check_positive("rtol", rtol),
        "atol": check_positive("atol", atol),
        "max_num_steps": check_positive_int("max_num_steps", max_num_steps),
        "path_times": None,
    }
    if return_path:
        points = check_positive_int("num_path_points", num_path_points, minimum=2)
        options["path_times"] = torch.linspace(0, 1, points, dtype=F64, device=device)
    return options


def exp_map(
    loss,
    theta0,
    v,
    *,
    metric: str = "monge",
    temperature: float | str = 1.0,
    method: str = "bosh3",
    rtol: float = 1e-4,
    atol: float = 1e-4,
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
    rtol, atol : float
        Solver tolerances. Judge accuracy by the end point against a tight-tolerance solve:
        the conserved speed can drift at loose tolerances while the end point is fine.
    max_num_steps : int
        Step budget per solve; exceeding it raises :class:`GeodesicSolveError`.
    return_path : bool
        Also return ``c(t)`` at ``num_path_points`` evenly spaced times (interpolated by the
        solver, no extra evaluations).
    batched : bool
        For ``[S, D]`` input: solve all samples as one ODE if True, or one after the other if
        False. A batch shares one step size; the error norm is each sample's RMS, worst sample
        taken, so each sample keeps its tolerance and the batch follows its stiffest member.

    Notes
    -----
    The defaults (bosh3, rtol = atol = 1e-4) come from the chapter's net (4,546 parameters,
    diagonal Laplace at a stationary θ*, T = 1): there the step size is capped by stability,
    not by accuracy. Early on, ``ċᵀ∇²L ċ / (1 + ‖∇L‖²)`` is large (about α² D), so stiff
    directions oscillate fast with tiny amplitude and an explicit solver must follow them.
    Loosening the tolerance then saves almost no steps but costs accuracy: dopri5 needed about
    1,000 evaluations at 1e-4 with up to 10% end-point error and 1e-3 was worse, whereas bosh3
    at 1e-4 needed about 450-550 with 0.2-0.4% error (``benchmarks/bench_geodesic.py``). For
    tight reference solves of smooth problems, dopri5 is the better choice.

    How far a Monge sample can climb: the speed ``‖ċ‖² + (∇L·ċ)²/T²`` is conserved, so at a
    stationary θ0 it stays ``‖v‖²``, ``|dL/dt| = |∇L·ċ| ≤ T‖v‖`` and ``ΔL ≤ T‖v‖``
    (``GeodesicResult.bound``). With the summed loss (T = 1) on the chapter's net the samples
    travel under 10% of ``‖v‖``; the mean loss (T = N) lets them travel 50-90%.

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
    options = solver_options(
        method, rtol, atol, max_num_steps, return_path, num_path_points, device=theta0.device
    )
    geometry = build_metric(loss, theta0, metric, temperature)
    return shoot(geometry, theta0, v, batched=batched, **options)
