"""Geodesics on the loss surface and the Riemannian Laplace approximation.

The graph of a loss, ``{(θ, L(θ))}`` in ``R^{D+1}``, inherits the metric

    M(θ) = I + ∇L(θ) ∇L(θ)ᵀ

from the ambient Euclidean space (Bergamin et al., NeurIPS 2023, arXiv 2306.07158, Sec. 3).
A Riemannian Laplace sample is the end point ``c(1)`` of the geodesic that leaves the mode θ*
with a tangent vector drawn from the ordinary Laplace posterior,

    c̈ = −∇L(c) · (ċᵀ ∇²L(c) ċ) / (1 + ‖∇L(c)‖²),   c(0) = θ*,  ċ(0) = v,

and the chapter uses it to spread a flow-matching network over low-loss weights
(Gegenfurtner, Jacobsen and Arvanitidis, arXiv 2602.00199). Each right-hand side costs one
gradient and the scalar curvature ``ċᵀ∇²L ċ`` (from a Hessian-vector product, or cheaper by
a second-order forward pass); no D×D matrix is formed.

``loss`` is any twice-differentiable scalar function of a flat float64 parameter vector, in one
of these forms, checked in this order:

1. a ``RegressionObjective`` on a plain MLP that :func:`rbmem_tutorial.fast_mlp.supports`
   (gradient and curvature in one hand-written pass, batched over samples);
2. any object with ``grad_and_curvature(theta, v)`` returning ``(∇L(θ), vᵀ∇²L(θ)v)`` for
   ``[D]`` or ``[S, D]`` input (as :class:`LinearisedObjective`);
3. any object with a ``grad_and_hvp(theta, v)`` method returning ``(∇L(θ), ∇²L(θ) v)``
   (batches are solved row by row through it);
4. a plain callable ``loss(theta) -> 0-d tensor``; gradient and HVP come from autograd
   double backward (on a CPU about 2× faster than ``torch.func.jvp(torch.func.grad(loss))``
   for small networks, and much faster for tiny functions); a batch is summed row by row and
   differentiated in one backward pass.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from torchdiffeq import odeint

from rbmem_tutorial import fast_mlp
from rbmem_tutorial._checks import (
    check_choice,
    check_positive,
    check_positive_int,
    check_tensor,
)

F64 = torch.float64
ADAPTIVE_METHODS = ("dopri5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun")


class GeodesicSolveError(RuntimeError):
    """An adaptive geodesic solve ran out of steps or its step size collapsed."""


@dataclass
class GeodesicResult:
    """End points of solved geodesics and per-sample diagnostics.

    Attributes
    ----------
    endpoints : Tensor
        ``c(1)``, shape ``[D]`` for one velocity or ``[S, D]`` for a batch.
    end_velocities : Tensor
        ``ċ(1)``, same shape; shooting back with ``−ċ(1)`` from ``c(1)`` returns to ``c(0)``.
    nfe : Tensor
        Vector-field evaluations per sample (int64, ``[]`` or ``[S]``); a batched solve
        reports the shared count for every member.
    speed_drift : Tensor
        ``|E(1) − E(0)| / E(0)`` with the conserved speed ``E = ċᵀM(c)ċ = ‖ċ‖² + (∇L·ċ)²``
        (0 when ``v = 0``). A small drift is necessary, not sufficient, for an accurate solve.
    seconds : Tensor
        Wall time of the solve per sample; a batched solve reports its time divided by ``S``.
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
    path: torch.Tensor | None = None
    path_times: torch.Tensor | None = None


def _check_float64(name: str, value, *, ndim) -> torch.Tensor:
    value = check_tensor(name, value, ndim=ndim)
    if value.dtype != F64:
        raise TypeError(
            f"{name} must be float64 for geodesics, got {value.dtype}; use {name}.double()."
        )
    return value


def _check_velocity(theta: torch.Tensor, velocity, name: str = "v") -> torch.Tensor:
    velocity = _check_float64(name, velocity, ndim=(1, 2))
    if velocity.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(velocity.shape)}); pass at least one row.")
    if velocity.shape[-1] != theta.shape[-1]:
        raise ValueError(
            f"{name} must have {theta.shape[-1]} entries per row (the length of theta), "
            f"got shape {tuple(velocity.shape)}."
        )
    if velocity.device != theta.device:
        raise ValueError(f"{name} is on {velocity.device} but theta is on {theta.device}; move it.")
    return velocity


def _check_scalar_loss(loss, theta: torch.Tensor) -> None:
    value = loss(theta)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"loss must return a 0-d (scalar) tensor, got {shape}; sum or average its terms."
        )
    if not bool(torch.isfinite(value)):
        raise ValueError("loss(theta0) is not finite; start the geodesic where the loss is finite.")


def _autograd_grad_and_hvp(loss, theta, v):
    """Gradient and HVP by double backward; rows of a ``[S, D]`` batch are independent."""
    with torch.enable_grad():
        point = theta.detach().requires_grad_(True)
        value = loss(point) if point.ndim == 1 else sum(loss(row) for row in point)
        (grad,) = torch.autograd.grad(value, point, create_graph=True)
        if not grad.requires_grad:  # L is linear: its Hessian is zero
            return grad, torch.zeros_like(v)
        (hvp,) = torch.autograd.grad(grad, point, grad_outputs=v)
    return grad, hvp


def _curvature_from_hvp(grad_and_hvp):
    """Turn ``(θ, v) ↦ (∇L, ∇²L v)`` into ``(θ, v) ↦ (∇L, vᵀ∇²L v)``, checking shapes."""

    def pair(theta, v):
        grad, hvp = grad_and_hvp(theta, v)
        for name, value in (("gradient", grad), ("Hessian-vector product", hvp)):
            if value.shape != theta.shape:
                raise ValueError(
                    f"the loss's {name} has shape {tuple(value.shape)}, expected "
                    f"{tuple(theta.shape)}; grad_and_hvp(theta, v) must return flat vectors."
                )
        return grad, (v * hvp).sum(-1)

    return pair


class _Derivatives:
    """``(θ, v) ↦ (∇L(θ), vᵀ∇²L(θ)v)`` for ``θ, v`` of shape ``[D]`` or ``[S, D]``.

    The geodesic needs the Hessian only through the scalar curvature ``vᵀ∇²L v``; the MLP
    kernel computes it by a second-order forward pass, the other forms from an HVP.
    """

    def __init__(self, loss, theta: torch.Tensor):
        if fast_mlp.supports(loss):
            kernel = fast_mlp.MLPRegressionKernel.from_objective(loss)
            self._single = self._batch = kernel.grad_and_curvature
        elif hasattr(loss, "grad_and_curvature"):
            self._single = self._batch = loss.grad_and_curvature
        elif hasattr(loss, "grad_and_hvp"):
            self._single = _curvature_from_hvp(loss.grad_and_hvp)
            self._batch = self._loop
        elif callable(loss):
            _check_scalar_loss(loss, theta)
            pair = _curvature_from_hvp(partial(_autograd_grad_and_hvp, loss))
            self._single = self._batch = pair
        else:
            raise TypeError(
                f"loss must be callable or have a grad_and_hvp(theta, v) method, "
                f"got {type(loss).__name__}."
            )

    def _loop(self, theta, v):
        pairs = [self._single(point, direction) for point, direction in zip(theta, v, strict=True)]
        return torch.stack([g for g, _ in pairs]), torch.stack([c for _, c in pairs])

    def __call__(self, theta, v):
        grad, curvature = (self._single if theta.ndim == 1 else self._batch)(theta, v)
        return grad.detach(), curvature.detach()

    def checked(self, theta, v):
        """Like calling, but check that what the loss returns is finite."""
        grad, curvature = self(theta, v)
        for name, value in (("gradient", grad), ("curvature vᵀ∇²L v", curvature)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"the loss's {name} at theta0 is not finite; check the loss.")
        return grad, curvature


def _acceleration(derivatives, theta, velocity):
    grad, curvature = derivatives(theta, velocity)
    scale = curvature / (1 + (grad * grad).sum(-1))
    return -grad * scale.unsqueeze(-1)


def geodesic_acceleration(loss, theta, velocity) -> torch.Tensor:
    """Acceleration of a geodesic of ``M(θ) = I + ∇L∇Lᵀ`` through ``θ`` with velocity ``θ̇``.

    Implements the closed form (Bergamin et al. 2023, arXiv 2306.07158, eq. 8)

        c̈ = −∇L · (θ̇ᵀ ∇²L θ̇) / (1 + ‖∇L‖²),

    which equals ``−Γᵏᵢⱼ θ̇ⁱ θ̇ʲ`` for the Christoffel symbols of ``M``. It costs one gradient
    and the curvature ``θ̇ᵀ∇²L θ̇``: an HVP in general, a cheaper second-order forward pass for
    MLP regression objectives (:mod:`rbmem_tutorial.fast_mlp`).

    Parameters
    ----------
    loss : callable or object with ``grad_and_hvp``
        Scalar loss of a flat parameter vector (see the module docstring).
    theta, velocity : Tensor
        Float64 ``[D]``, or ``[S, D]`` for ``S`` independent points.

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
    theta = _check_float64("theta", theta, ndim=(1, 2))
    velocity = _check_velocity(theta, velocity, "velocity")
    if velocity.shape != theta.shape:
        raise ValueError(
            f"theta and velocity must have the same shape, got {tuple(theta.shape)} and "
            f"{tuple(velocity.shape)}."
        )
    derivatives = _Derivatives(loss, theta[0] if theta.ndim == 2 else theta)
    derivatives.checked(theta, velocity)
    return _acceleration(derivatives, theta, velocity)


def _speed(grad, velocity):
    """``θ̇ᵀ M θ̇ = ‖θ̇‖² + (∇L·θ̇)²`` along the last dimension."""
    return (velocity * velocity).sum(-1) + (grad * velocity).sum(-1) ** 2


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


def _solve(derivatives, theta0, v, *, method, rtol, atol, max_num_steps, path_times):
    """Integrate the geodesic ODE for ``theta0, v`` of shape ``[D]`` or ``[S, D]``."""
    dim = theta0.shape[-1]
    count = [0]

    def field(_t, state):
        count[0] += 1
        theta, velocity = state[..., :dim], state[..., dim:]
        return torch.cat([velocity, _acceleration(derivatives, theta, velocity)], dim=-1)

    grad0, _ = derivatives.checked(theta0, v)
    times = path_times if path_times is not None else theta0.new_tensor([0.0, 1.0])
    start = time.perf_counter()
    try:
        states = odeint(
            field,
            torch.cat([theta0, v], dim=-1),
            times,
            method=method,
            rtol=rtol,
            atol=atol,
            options={"max_num_steps": max_num_steps, "norm": _worst_sample_rms},
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
    grad1, _ = derivatives(end, end_velocity)
    speed0, speed1 = _speed(grad0, v), _speed(grad1, end_velocity)
    change = (speed1 - speed0).abs()
    drift = torch.where(speed0 > 0, change / speed0.clamp_min(torch.finfo(F64).tiny), change)
    batch = theta0.shape[:-1]
    path = None
    if path_times is not None:
        path = states[..., :dim].movedim(0, -2)
    return GeodesicResult(
        endpoints=end,
        end_velocities=end_velocity,
        nfe=torch.full(batch, count[0], dtype=torch.int64),
        speed_drift=drift,
        seconds=torch.full(batch, seconds / batch.numel(), dtype=F64),
        path=path,
        path_times=path_times,
    )


def _stack_results(results: list[GeodesicResult]) -> GeodesicResult:
    def stack(name):
        values = [getattr(result, name) for result in results]
        return None if values[0] is None else torch.stack(values)

    return GeodesicResult(
        endpoints=stack("endpoints"),
        end_velocities=stack("end_velocities"),
        nfe=stack("nfe"),
        speed_drift=stack("speed_drift"),
        seconds=stack("seconds"),
        path=stack("path"),
        path_times=results[0].path_times,
    )


def exp_map(
    loss,
    theta0,
    v,
    *,
    method: str = "bosh3",
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_num_steps: int = 1000,
    return_path: bool = False,
    num_path_points: int = 21,
    batched: bool = True,
) -> GeodesicResult:
    """Riemannian exponential map ``Exp_θ0(v) = c(1)`` on the graph of ``loss``.

    Solves ``c̈ = −∇L (ċᵀ∇²L ċ) / (1 + ‖∇L‖²)`` with ``c(0) = θ0, ċ(0) = v`` over
    ``t ∈ [0, 1]`` with torchdiffeq on the state ``[θ, θ̇]`` (Bergamin et al. 2023,
    arXiv 2306.07158, Sec. 3.2).

    Parameters
    ----------
    loss : callable or object with ``grad_and_hvp``
        Scalar loss of a flat parameter vector (see the module docstring).
    theta0 : Tensor
        Float64 start point ``[D]``; the solve runs on its device.
    v : Tensor
        Float64 initial velocity ``[D]`` or a batch ``[S, D]``.
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
    diagonal Laplace at a stationary θ*): there the step size is capped by stability, not by
    accuracy. Early on, ``ċᵀ∇²L ċ / (1 + ‖∇L‖²)`` is large (about α² D), so stiff directions
    oscillate fast with tiny amplitude and an explicit solver must follow them. Loosening the
    tolerance then saves almost no steps but costs accuracy: dopri5 needed about 1,000
    evaluations at 1e-4 with up to 10% end-point error and 1e-3 was worse, whereas bosh3 at
    1e-4 needed about 450-550 with 0.2-0.4% error (``benchmarks/bench_geodesic.py``). For
    tight reference solves of smooth problems, dopri5 is the better choice.

    Returns
    -------
    GeodesicResult
        End points and per-sample diagnostics.

    Raises
    ------
    GeodesicSolveError
        The step budget ran out or the step size collapsed; the message says what to change.

    Example
    -------
    >>> import torch
    >>> loss = lambda th: 0.5 * (th ** 2).sum()
    >>> theta0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> result = exp_map(loss, theta0, torch.tensor([0.0, 0.5], dtype=torch.float64))
    >>> result.endpoints.shape, bool(result.speed_drift < 1e-2)
    (torch.Size([2]), True)
    """
    theta0 = _check_float64("theta0", theta0, ndim=1).detach()
    v = _check_velocity(theta0, v).detach()
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
        options["path_times"] = torch.linspace(0, 1, points, dtype=F64, device=theta0.device)
    derivatives = _Derivatives(loss, theta0)
    if v.ndim == 1 or batched:
        return _solve(derivatives, theta0.expand_as(v), v, **options)
    return _stack_results([_solve(derivatives, theta0, row, **options) for row in v])


class LinearisedObjective:
    """The regression loss of the network linearised at θ*.

    With ``f_lin(θ) = f(θ*) + J(θ*)(θ − θ*)`` (``J`` the Jacobian of the stacked outputs) and
    the objective's prior N(m, λ⁻¹I) (m = 0 unless the objective has a ``prior_mean``):

        L_lin(θ) = ½ Σ_n Σ_j (f_lin(θ)_nj − y_nj)² / σ_j² + (λ/2) ‖θ − m‖².

    ``L_lin`` is quadratic, so its gradient is affine and its Hessian constant:

        ∇L_lin(θ) = ∇L_lin(θ*) + H (θ − θ*),   ∇L_lin(θ*) = Jᵀ Σ⁻¹(f(θ*) − y) + λ(θ* − m),
        H v = Jᵀ Σ⁻¹ J v + λ v      (Σ = diag(σ²): the generalised Gauss-Newton plus the prior),

    each product by one ``torch.func`` JVP and one VJP, and the geodesic's curvature
    ``vᵀHv = ‖Σ^{-1/2} J v‖² + λ‖v‖²`` by a JVP alone. This is the linearised Riemannian
    Laplace of Bergamin et al. (2023, arXiv 2306.07158, Sec. 3.3). Build it with
    :func:`linearised_objective`.
    """

    def __init__(self, objective, theta_star: torch.Tensor):
        self.objective = objective
        self.theta_star = theta_star.detach()
        self.targets = objective.targets
        self.noise_var = objective.noise_std**2  # a number, or a tensor [out]
        self.prior_precision = float(objective.prior_precision)
        self.prior_offset = getattr(objective, "prior_offset", lambda theta: theta)  # θ − m
        self.num_params = theta_star.numel()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch.func.linearize's tracing notes
            self.prediction_star, jvp = torch.func.linearize(objective.predict, self.theta_star)
        _, vjp = torch.func.vjp(objective.predict, self.theta_star)
        self._jvp, self._vjp = jvp, vjp
        residual = self.prediction_star - self.targets
        self.grad_star = (
            vjp(residual / self.noise_var)[0]
            + self.prior_precision * self.prior_offset(self.theta_star)
        ).detach()

    def _check(self, theta):
        theta = _check_float64("theta", theta, ndim=(1, 2))
        if theta.shape[-1] != self.num_params:
            raise ValueError(
                f"theta must have {self.num_params} entries per row, "
                f"got shape {tuple(theta.shape)}."
            )
        return theta

    def predict(self, theta) -> torch.Tensor:
        """``f(θ*) + J(θ − θ*)``, shape ``[N, out]``."""
        theta = self._check(theta)
        return self.prediction_star + self._jvp(theta - self.theta_star)

    def value(self, theta) -> torch.Tensor:
        """``L_lin(θ)`` as a 0-d tensor."""
        residual = self.predict(theta) - self.targets
        data = 0.5 * (residual**2 / self.noise_var).sum()
        return data + 0.5 * self.prior_precision * (self.prior_offset(theta) ** 2).sum()

    __call__ = value

    def _hvp_one(self, v):
        return self._vjp(self._jvp(v) / self.noise_var)[0] + self.prior_precision * v

    def _rows(self, fn, rows):
        """``fn`` on each row of ``rows [..., D]`` (vmapped), same leading shape back."""
        out = torch.func.vmap(fn)(rows.reshape(-1, self.num_params))
        return out.reshape(rows.shape[:-1] + out.shape[1:])

    def hvp(self, v) -> torch.Tensor:
        """``(JᵀΣ⁻¹J + λI) v`` for ``v`` of shape ``[D]`` or ``[S, D]``."""
        return self._rows(self._hvp_one, self._check(v))

    def grad(self, theta) -> torch.Tensor:
        """``∇L_lin(θ) = ∇L_lin(θ*) + H (θ − θ*)``."""
        return self.grad_star + self.hvp(self._check(theta) - self.theta_star)

    def grad_and_hvp(self, theta, v) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇L_lin(θ), H v)``; ``v`` may hold several rows."""
        return self.grad(theta), self.hvp(v)

    def _curvature_one(self, v):
        return (self._jvp(v).square() / self.noise_var).sum() + self.prior_precision * (v @ v)

    def grad_and_curvature(self, theta, v) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇L_lin(θ), vᵀHv)`` for ``θ, v`` of shape ``[D]`` or ``[S, D]``; no VJP for vᵀHv."""
        theta, v = torch.broadcast_tensors(self._check(theta), self._check(v))
        return self.grad(theta), self._rows(self._curvature_one, v)


def linearised_objective(objective, theta_star) -> LinearisedObjective:
    """Linearise a regression objective's network at ``theta_star``.

    Parameters
    ----------
    objective : RegressionObjective
        Needs ``predict(theta)`` (``[N, out]``), ``targets``, ``noise_std`` and
        ``prior_precision`` (prior centred at 0).
    theta_star : Tensor
        Float64 ``[D]`` linearisation point, usually the MAP.

    Returns
    -------
    LinearisedObjective
        A loss with ``value``, ``grad`` and ``grad_and_hvp``; see its docstring for the maths.

    Example
    -------
    >>> import torch
    >>> class Linear:  # f(θ) = Zθ, a stand-in for a RegressionObjective
    ...     inputs = torch.eye(3, dtype=torch.float64)
    ...     targets = torch.ones(3, 1, dtype=torch.float64)
    ...     noise_std, prior_precision = 1.0, 2.0
    ...     def predict(self, theta):
    ...         return (self.inputs @ theta)[:, None]
    >>> lin = linearised_objective(Linear(), torch.zeros(3, dtype=torch.float64))
    >>> lin.grad(torch.ones(3, dtype=torch.float64))
    tensor([2., 2., 2.], dtype=torch.float64)
    """
    for attribute in ("predict", "targets", "noise_std", "prior_precision"):
        if not hasattr(objective, attribute):
            raise TypeError(
                f"linearisation needs a RegressionObjective (missing .{attribute}); a plain loss "
                "function has no network to linearise, so use the full variant."
            )
    theta_star = _check_float64("theta_star", theta_star, ndim=1)
    return LinearisedObjective(objective, theta_star)


class RiemannianLaplace:
    """Riemannian Laplace approximation: Laplace tangent vectors pushed through ``Exp_θ*``.

    A sample is ``θ = Exp_θ*(v)`` with ``v ~ N(0, α² Σ_Laplace)`` drawn by the Laplace
    posterior in the tangent space at its mean θ* (Bergamin et al. 2023, arXiv 2306.07158,
    Sec. 3; Gegenfurtner et al., arXiv 2602.00199).

    Parameters
    ----------
    posterior : LaplacePosterior
        Needs ``mean`` (θ*, float64 ``[D]``) and ``sample_tangent(n, generator)`` returning
        ``[n, D]`` (scale α included).
    loss : callable or object with ``grad_and_hvp``, optional
        The loss whose graph defines the metric; defaults to ``posterior.objective``.
    linearised : bool
        Solve on the loss of the network linearised at θ* (:func:`linearised_objective`);
        needs a ``RegressionObjective``.
    method, rtol, atol, max_num_steps, batched
        Passed to :func:`exp_map`. Batched solves are the default: on the chapter's net the
        samples of one α need nearly the same number of steps (the stiffness scales with
        α² D), and a batch of 4 cost about 30% less CPU time per sample than solving them one
        by one. Use ``batched=False`` when samples differ a lot in stiffness.

    Example
    -------
    >>> import torch
    >>> class Posterior:  # a stand-in for LaplacePosterior
    ...     mean = torch.zeros(2, dtype=torch.float64)
    ...     def sample_tangent(self, n, generator=None):
    ...         return 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    >>> sampler = RiemannianLaplace(Posterior(), lambda th: (th ** 2).sum())
    >>> sampler.sample(3, torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        posterior,
        loss=None,
        *,
        linearised: bool = False,
        method: str = "bosh3",
        rtol: float = 1e-4,
        atol: float = 1e-4,
        max_num_steps: int = 1000,
        batched: bool = True,
    ):
        for attribute in ("mean", "sample_tangent"):
            if not hasattr(posterior, attribute):
                raise TypeError(f"posterior needs .{attribute}; pass a LaplacePosterior.")
        self.posterior = posterior
        self.mean = _check_float64("posterior.mean", posterior.mean, ndim=1)
        loss = posterior.objective if loss is None else loss
        self.loss = linearised_objective(loss, self.mean) if linearised else loss
        self.linearised = linearised
        self.solver_options = {
            "method": method,
            "rtol": rtol,
            "atol": atol,
            "max_num_steps": max_num_steps,
            "batched": batched,
        }

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        scale: float | None = None,
        return_diagnostics: bool = False,
    ):
        """Draw ``n`` samples ``Exp_θ*(v_s)``, shape ``[n, D]``.

        ``scale`` overrides the posterior's α for this call. With ``return_diagnostics=True``
        return ``(samples, GeodesicResult)``.
        """
        check_positive_int("n", n)
        if scale is None:
            tangents = self.posterior.sample_tangent(n, generator)
        else:
            tangents = self.posterior.sample_tangent(n, generator, scale=scale)
        result = exp_map(self.loss, self.mean, tangents, **self.solver_options)
        return (result.endpoints, result) if return_diagnostics else result.endpoints
