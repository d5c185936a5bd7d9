"""Sampling from a flow and its exact likelihood.

Generating means integrating dx/dt = u_theta(x, t) from t = 0 to t = 1 (``sample``); the
density of the generated distribution follows from the instantaneous change of variables
(``log_prob``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchdiffeq import odeint

from rbmem_tutorial._checks import (
    check_choice,
    check_positive,
    check_positive_int,
    check_tensor,
)
from rbmem_tutorial.flows.paths import Velocity, draw

ADAPTIVE_METHODS = ("dopri5",)
FIXED_STEP_METHODS = ("rk4", "midpoint", "euler")
METHODS = ADAPTIVE_METHODS + FIXED_STEP_METHODS
DEFAULT_STEP_SIZE = 0.02


class _CountedField(nn.Module):
    """Adapts ``velocity(x, t)`` to torchdiffeq's ``f(t, y)`` and counts evaluations.

    Times are clamped to [0, 1], where the path is defined: an adaptive solver may probe a
    time just past the end of the interval when it picks its first step.
    """

    def __init__(self, field: Callable):
        super().__init__()
        self.field = field
        self.nfe = 0

    def forward(self, t, state):
        self.nfe += 1
        return self.field(state, t.clamp(0, 1))


def _solver_options(method, step_size, max_num_steps, times):
    """torchdiffeq options: a uniform grid for fixed-step methods; for dopri5 a step cap and a
    forced step boundary at the final time, so that no step runs past it."""
    check_choice("method", method, METHODS)
    check_positive_int("max_num_steps", max_num_steps)
    if method in ADAPTIVE_METHODS:
        if step_size is not None:
            raise ValueError(
                f"step_size applies to the fixed-step methods {FIXED_STEP_METHODS}; "
                f"method={method!r} chooses its own steps from rtol and atol."
            )
        return {"max_num_steps": max_num_steps, "step_t": times[-1:].clone()}
    step_size = DEFAULT_STEP_SIZE if step_size is None else step_size
    check_positive("step_size", step_size)

    def uniform_grid(func, y0, t):
        start, end = t[0].item(), t[-1].item()
        n_steps = max(1, math.ceil(abs(end - start) / step_size - 1e-9))
        return torch.linspace(start, end, n_steps + 1).to(t)

    return {"grid_constructor": uniform_grid}


def _integrate(field, state, times, *, method, rtol, atol, step_size, max_num_steps):
    """Run torchdiffeq and turn its step-limit assertion into a clear error."""
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    options = _solver_options(method, step_size, max_num_steps, times)
    try:
        return odeint(field, state, times, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as error:
        if "max_num_steps" not in str(error) and "underflow" not in str(error):
            raise
        raise RuntimeError(
            f"the adaptive solver {method!r} needed more than max_num_steps={max_num_steps} "
            f"steps (rtol={rtol}, atol={atol}); the velocity field is stiff or blows up. Raise "
            "max_num_steps, loosen rtol/atol, or use a fixed-step method such as "
            "method='midpoint' with step_size=0.02."
        ) from error


def _check_output_times(times, x0: torch.Tensor) -> torch.Tensor:
    """Output times: increasing, inside [0, 1]; 0 is prepended when missing."""
    times = check_tensor("times", torch.as_tensor(times, dtype=x0.dtype, device=x0.device), ndim=1)
    if times.shape[0] == 0 or bool((times < 0).any()) or bool((times > 1).any()):
        raise ValueError("times must be a non-empty 1-D sequence of times in [0, 1].")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times must be strictly increasing; sort them with torch.sort.")
    return times


def sample(
    velocity: Velocity,
    x0: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    times=None,
    max_num_steps: int = 10_000,
    return_nfe: bool = False,
):
    """Generate by integrating dx/dt = u(x, t) from t = 0 to t = 1 (Lipman et al. 2022).

    Parameters
    ----------
    velocity : callable
        Velocity field ``velocity(x, t)`` with x ``[B, d]`` and t a 0-d tensor; it is only
        evaluated at times in [0, 1] (dopri5 ends a step exactly at t = 1, and a time a solver
        probes past the interval is clamped to it).
    x0 : torch.Tensor
        Initial points ``[B, d]`` at t = 0 (usually N(0, I) noise).
    method : {"dopri5", "rk4", "midpoint", "euler"}
        torchdiffeq solver; dopri5 is adaptive, the others step on a uniform grid.
    rtol, atol : float
        Tolerances of the adaptive solver (ignored by the fixed-step ones).
    step_size : float, optional
        Step of the fixed-step methods: ``ceil(T / step_size)`` equal steps from 0 to the last
        output time T (default 0.02, that is 50 steps on [0, 1]). Not allowed with dopri5.
    times : sequence of float, optional
        Strictly increasing output times in [0, 1]. When given, the trajectory at these times
        is returned; fixed-step solvers interpolate linearly between grid points.
    max_num_steps : int
        Cap on the adaptive steps; exceeding it raises ``RuntimeError``.
    return_nfe : bool
        Also return the number of velocity evaluations.

    Returns
    -------
    torch.Tensor or (torch.Tensor, int)
        x(1) of shape ``[B, d]``, or the trajectory ``[len(times), B, d]``; with
        ``return_nfe`` also the number of function evaluations. No gradients are recorded.

    Example
    -------
    >>> drift = lambda x, t: torch.ones_like(x)
    >>> sample(drift, torch.zeros(2, 2), method="euler", step_size=0.5)
    tensor([[1., 1.],
            [1., 1.]])
    """
    x0 = check_tensor("x0", x0, ndim=2, min_rows=1)
    span = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    grid = span if times is None else _check_output_times(times, x0)
    starts_at_zero = bool(grid[0] == 0)
    if not starts_at_zero:
        grid = torch.cat([span[:1], grid])
    field = _CountedField(velocity)
    with torch.no_grad():
        path = _integrate(
            field, x0, grid, method=method, rtol=rtol, atol=atol, step_size=step_size,
            max_num_steps=max_num_steps,
        )
    result = path[-1] if times is None else path[0 if starts_at_zero else 1 :]
    return (result, field.nfe) if return_nfe else result


def _divergence(u: torch.Tensor, x: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """div u(x), shape ``[B]``: exact, or Hutchinson's eps^T (du/dx) eps with ``probe`` eps.

    The exact version takes one backward pass per coordinate (sum_j d u_j / d x_j). A field
    that does not depend on x (``u`` outside the graph of ``x``) has divergence 0.
    """
    if not u.requires_grad:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if probe is not None:
        vjp = torch.autograd.grad(u, x, grad_outputs=probe, materialize_grads=True)[0]
        return (vjp * probe).sum(dim=1)
    columns = [
        torch.autograd.grad(u[:, j].sum(), x, retain_graph=True, materialize_grads=True)[0][:, j]
        for j in range(x.shape[1])
    ]
    return torch.stack(columns, dim=1).sum(dim=1)


class _AugmentedField(nn.Module):
    """Dynamics of (x, a) with dx/dt = u(x, t) and da/dt = -div u(x, t)."""

    def __init__(self, velocity: Velocity, probe: torch.Tensor | None):
        super().__init__()
        self.velocity = velocity
        self.probe = probe

    def forward(self, state, t):
        x = state[0].detach().requires_grad_(True)
        with torch.enable_grad():
            u = self.velocity(x, t)
            divergence = _divergence(u, x, self.probe)
        return u.detach(), -divergence.detach()


def log_prob(
    velocity: Velocity,
    x: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    max_num_steps: int = 10_000,
    divergence: str = "exact",
    generator: torch.Generator | None = None,
    return_nfe: bool = False,
):
    """Log-density of the generated distribution at ``x`` by the change of variables.

    Along the flow d/dt log p_t(x(t)) = -div u(x(t), t), hence

        log p_1(x) = log N(x(0); 0, I) - int_0^1 div u(x(t), t) dt,

    where x(t) solves the ODE backwards from x(1) = x. We integrate (x, a) from t = 1 to
    t = 0 with da/dt = -div u and a(1) = 0, so a(0) = int_0^1 div u dt.

    The divergence is exact (one backward pass per coordinate; fine in low dimension) or,
    with ``divergence="hutchinson"``, the unbiased estimate eps^T (du/dx) eps with one
    Rademacher probe eps per point, fixed along the path (one backward pass per evaluation;
    for high dimension).

    Parameters
    ----------
    velocity : callable
        Velocity field ``velocity(x, t)``; must be differentiable in x.
    x : torch.Tensor
        Points ``[B, d]``.
    method, rtol, atol, step_size, max_num_steps
        As in :func:`sample`.
    divergence : {"exact", "hutchinson"}
        How to compute div u.
    generator : torch.Generator, optional
        Source of the Hutchinson probes.
    return_nfe : bool
        Also return the number of velocity evaluations.

    Returns
    -------
    torch.Tensor or (torch.Tensor, int)
        ``[B]`` log-densities (detached), optionally with the NFE.

    Example
    -------
    >>> still = lambda x, t: torch.zeros_like(x)  # identity flow: p_1 = N(0, I)
    >>> log_prob(still, torch.zeros(1, 2))
    tensor([-1.8379])
    """
    x = check_tensor("x", x, ndim=2, min_rows=1)
    check_choice("divergence", divergence, ("exact", "hutchinson"))
    probe = None
    if divergence == "hutchinson":
        probe = 2 * (draw(x.shape, x, generator, "rand") < 0.5).to(x.dtype) - 1
    field = _CountedField(_AugmentedField(velocity, probe))
    backwards = torch.tensor([1.0, 0.0], dtype=x.dtype, device=x.device)
    state = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    with torch.no_grad():
        xs, integrals = _integrate(
            field, state, backwards, method=method, rtol=rtol, atol=atol,
            step_size=step_size, max_num_steps=max_num_steps,
        )
    z, integral = xs[-1], integrals[-1]
    log_normal = -0.5 * z.pow(2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
    result = log_normal - integral
    return (result, field.nfe) if return_nfe else result
