"""The geodesic ODE solve: torchdiffeq on the state ``[θ, θ̇]``, one or a batch of velocities.

Given a metric object (the protocol of :mod:`rbmem_tutorial.riemannian.geodesic`), the
geodesic ``c̈ = −Γ(c)[ċ, ċ]``, ``c(0) = θ0``, ``ċ(0) = v`` is integrated over ``t ∈ [0, 1]``
by an adaptive explicit Runge-Kutta method (Bergamin et al. 2023, arXiv 2306.07158, Sec. 3.2).
Every output time is a step of the solver, so end points and paths are solved, not
interpolated; a batch of ``S`` velocities is one ODE whose error norm is the worst sample's,
so each sample keeps the tolerance it would have on its own. :func:`shoot` returns a
:class:`GeodesicResult` with the end points and per-sample diagnostics, or raises
:class:`GeodesicSolveError` with what to change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int
from rbmem_tutorial.riemannian._checks import F64
from rbmem_tutorial.riemannian.diagnostics import endpoint_diagnostics

__all__ = ["ADAPTIVE_METHODS", "GeodesicResult", "GeodesicSolveError", "shoot", "solver_options"]

ADAPTIVE_METHODS = ("dopri5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun")


class GeodesicSolveError(RuntimeError):
    """An adaptive geodesic solve ran out of steps, its step size collapsed, or it ended at a
    non-finite point; the message names the solver settings and what to change.

    Example
    -------
    >>> from rbmem_tutorial.riemannian import exp_map
    >>> loss = lambda th: (th ** 4).sum()  # stiff far from 0
    >>> theta0 = torch.ones(1, dtype=F64)
    >>> try:
    ...     exp_map(loss, theta0, 50 * torch.ones(1, dtype=F64), max_num_steps=5)
    ... except GeodesicSolveError as err:
    ...     print(str(err)[:70])
    The geodesic solve (bosh3, rtol=0.0001, atol=0.0001) stopped after max
    """


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

    Example
    -------
    >>> from rbmem_tutorial.riemannian import exp_map
    >>> loss = lambda th: 0.5 * (th ** 2).sum()
    >>> result = exp_map(loss, torch.zeros(2, dtype=F64), torch.ones(3, 2, dtype=F64),
    ...                  return_path=True, num_path_points=5)
    >>> tuple(result.endpoints.shape), tuple(result.path.shape), tuple(result.travel.shape)
    ((3, 2), (3, 5, 2), (3,))
    >>> torch.equal(result.path[:, -1], result.endpoints)  # the path ends at c(1)
    True
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
    """Geodesics ``c(1) = Exp_θ0(v)`` of a built metric, from ``theta0 [D]`` with velocities
    ``v`` of shape ``[D]`` or ``[S, D]``.

    ``geometry`` follows the metric protocol (e.g.
    :func:`~rbmem_tutorial.riemannian.geodesic.build_metric`), ``options`` are those of
    :func:`solver_options`, and ``batched=False`` solves the rows of ``v`` one after the
    other. The inputs are taken as checked: :func:`~rbmem_tutorial.riemannian.exp_map` and
    :class:`~rbmem_tutorial.riemannian.RiemannianLaplace` check them and call this.

    Example
    -------
    A loss with zero Hessian has ``Γ = 0``: its geodesics are the straight lines ``θ0 + t v``.

    >>> from rbmem_tutorial.riemannian import MongeMetric
    >>> theta0 = torch.zeros(2, dtype=F64)
    >>> metric = MongeMetric(lambda th: th.sum(), theta0)
    >>> v = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    >>> torch.allclose(shoot(metric, theta0, v, **solver_options()).endpoints, theta0 + v)
    True
    """
    if v.ndim == 1 or batched:
        return _solve(geometry, theta0, v, **options)
    return _stack_results([_solve(geometry, theta0, row, **options) for row in v])


def solver_options(
    method="bosh3", rtol=1e-4, atol=1e-4, max_num_steps=1000, return_path=False,
    num_path_points=21, *, device=None,
) -> dict:
    """The checked solver options of :func:`shoot`: an adaptive torchdiffeq ``method`` of
    ``ADAPTIVE_METHODS``, tolerances, a step budget, and with ``return_path`` the
    ``num_path_points`` evenly spaced times of ``[0, 1]`` (on ``device``) to report ``c(t)`` at.

    Example
    -------
    >>> options = solver_options("dopri5", rtol=1e-6, return_path=True, num_path_points=3)
    >>> options["method"], options["rtol"], options["path_times"].tolist()
    ('dopri5', 1e-06, [0.0, 0.5, 1.0])
    >>> solver_options("euler")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'euler'; choose one of 'dopri5', 'bosh3', 'dopri8', ...
    """
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
