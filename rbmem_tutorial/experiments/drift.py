"""The drift control: one network moved by gradient flow on L until its loss matches a target.

At a base point that is not stationary (∇L(θ0) ≠ 0, e.g. the SGD weights under a zero-mean
prior) every geodesic of the Riemannian Laplace sampler bends downhill along the same direction,
so its samples share a *common drift* as well as a spread. If the drift alone explains a cell's
memorisation and quality, the cell measured fine-tuning, not posterior uncertainty. The control
separates the two: a single network θ(t) on the gradient flow of L,

    dθ/dt = −∇L(θ),    θ(0) = θ0,

stopped at the time t* where L(θ(t*)) equals the target, the mean loss of the ensemble it
controls. Along the flow dL/dt = −‖∇L‖² < 0, so L is a valid clock: with s = L(θ0) − L(θ),

    dθ/ds = −∇L(θ) / ‖∇L(θ)‖²,    dt/ds = 1 / ‖∇L(θ)‖²,

integrated from s = 0 to s = L(θ0) − target with an adaptive Runge-Kutta solver (torchdiffeq),
lands *on* the target loss (up to the solver's tolerance) without an event search, and returns
t* as a by-product. The reparametrised field is that of the same curve; it diverges only where
∇L vanishes, that is, when the flow would stall at a stationary point above the target: the
solve then hits ``max_num_steps`` and says so.

**Tolerances.** The loss clock holds only on the gradient-flow curve: a solve that leaves the
curve (steps too large for the valley it runs along) no longer lowers L by ds per unit s, and
it can end far from the target without any solver error. On the book's velocity net,
rtol = atol = 1e-4 ended 200-900 above targets 300-700 below L(θ0), while the defaults
(rtol = 1e-6, atol = 1e-8) land within 0.002 at about 2,000 gradient evaluations (a few
seconds). The end point is therefore checked: L(θ_end) must lie within 0.1% of the planned
drop L(θ0) − target of the target, or :class:`DriftSolveError` says to tighten the tolerances.

A target at or above L(θ0) cannot be reached by a descent flow: the control is then θ0 itself
(t* = 0, ``reached`` False). That is the case at a stationary base point, where geodesics can
only raise the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from rbmem_tutorial._checks import check_positive, check_positive_int, check_tensor


class DriftSolveError(RuntimeError):
    """The gradient flow stalled before the target loss (or the solver gave up)."""


@dataclass(frozen=True)
class DriftResult:
    """The end of a gradient flow stopped at a target loss.

    ``theta`` [D] the end point; ``loss`` L(theta); ``start_loss`` L(θ0); ``target``;
    ``time`` t* (gradient-flow time, 0 when not moved); ``reached`` whether the flow moved to
    the target (False when the target is not below L(θ0)); ``nfe`` gradient evaluations.
    """

    theta: torch.Tensor
    loss: float
    start_loss: float
    target: float
    time: float
    reached: bool
    nfe: int


def _value(loss, theta: torch.Tensor) -> torch.Tensor:
    if hasattr(loss, "value"):
        return loss.value(theta)
    return loss(theta)


def _grad(loss, theta: torch.Tensor) -> torch.Tensor:
    if hasattr(loss, "grad"):
        return loss.grad(theta)
    with torch.enable_grad():
        x = theta.detach().requires_grad_(True)
        return torch.autograd.grad(loss(x), x)[0]


def gradient_flow_to_loss(loss, theta0: torch.Tensor, target: float, *, rtol: float = 1e-6,
                          atol: float = 1e-8, method: str = "dopri5",
                          max_num_steps: int = 20_000) -> DriftResult:
    """Follow dθ/dt = −∇L(θ) from ``theta0`` until L(θ) = ``target`` (see the module notes).

    Parameters
    ----------
    loss : callable or object with ``value`` and ``grad``
        L; a callable θ ↦ scalar is differentiated by autograd.
    theta0 : Tensor [D], float64
        The base point.
    target : float
        The loss to stop at.
    rtol, atol : float
        Tolerances of the adaptive solve in the loss clock s.
    method : str
        A torchdiffeq adaptive method.
    max_num_steps : int
        Solver steps before :class:`DriftSolveError`.

    Example
    -------
    On L(θ) = ½‖θ‖² the flow is θ0 e^{−t}, so L = ½‖θ0‖² e^{−2t} and the target ½‖θ0‖²/e²
    is reached at t* = 1:

    >>> import math
    >>> theta0 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> out = gradient_flow_to_loss(lambda th: 0.5 * th @ th, theta0, 12.5 / math.e**2,
    ...                             rtol=1e-10, atol=1e-10)
    >>> round(out.time, 6), [round(x, 6) for x in (out.theta * math.e).tolist()]
    (1.0, [3.0, 4.0])
    """
    theta0 = check_tensor("theta0", theta0, ndim=1)
    if theta0.dtype != torch.float64:
        raise TypeError(f"theta0 must be float64 (got {theta0.dtype}); pass theta0.double().")
    target = float(target)
    if target != target or abs(target) == float("inf"):
        raise ValueError(f"target must be a finite loss value, got {target}.")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    check_positive_int("max_num_steps", max_num_steps)
    start = float(_value(loss, theta0))
    if target >= start:
        return DriftResult(theta0.clone(), start, start, target, 0.0, False, 0)
    nfe = 0

    def field(_s, state):
        nonlocal nfe
        nfe += 1
        g = _grad(loss, state[:-1])
        g2 = g @ g
        return torch.cat([-g / g2, (1.0 / g2).reshape(1)])

    state0 = torch.cat([theta0, theta0.new_zeros(1)])
    span = torch.tensor([0.0, start - target], dtype=torch.float64)
    try:
        path = odeint(field, state0, span, rtol=rtol, atol=atol, method=method,
                      options={"max_num_steps": max_num_steps})
    except (AssertionError, RuntimeError) as err:
        raise DriftSolveError(
            f"the gradient flow from L = {start:.6g} did not reach the target {target:.6g} "
            f"({err}); it probably stalls at a stationary point above the target: raise "
            "max_num_steps, or use a reachable target.") from None
    end = path[-1]
    theta = end[:-1]
    reached = float(_value(loss, theta))
    if abs(reached - target) > 1e-3 * (start - target):
        raise DriftSolveError(
            f"the gradient-flow solve left the flow: it ended at L = {reached:.6g} for the "
            f"target {target:.6g} (start {start:.6g}); tighten rtol and atol (e.g. 1e-8).")
    return DriftResult(theta, reached, start, target, float(end[-1]), True, nfe)
