"""Generating with posterior parameter samples, and the spatio-temporal spread of the velocity.

Given S parameter samples θ_1..θ_S of a velocity network (from :mod:`rbmem_tutorial.laplace` or
the Riemannian sampler), every sample defines its own flow dx/dt = u_θs(x, t). Starting all of
them from the same noise x_0 shows how parameter uncertainty turns into uncertainty of the
generated points (Gegenfurtner, Jacobsen & Arvanitidis, arXiv 2602.00199, "spatio-temporal
uncertainty"). The S flows are integrated in one ``torchdiffeq`` solve: the state is [S, B, d]
and the vector field evaluates the network once per step for all samples, vmapped over θ with
``torch.func.functional_call``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap
from torchdiffeq import odeint

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int, check_tensor
from rbmem_tutorial.laplace.params import converted, unflatten

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "VelocityUncertainty",
    "generate",
    "velocity_uncertainty",
]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun3", "rk4")


@dataclass(frozen=True)
class VelocityUncertainty:
    """Spread of u_θ(x, t) over parameter samples θ_s, per time and point.

    Attributes
    ----------
    mean : Tensor [T, P, d]
        (1/S) Σ_s u_θs(x_p, t_k).
    std : Tensor [T, P, d]
        Per-coordinate standard deviation across samples (unbiased, S − 1).
    total_std : Tensor [T, P]
        sqrt of the trace of the covariance across samples, sqrt(Σ_j std_j²): one number per
        point and time, for heat maps.
    """

    mean: torch.Tensor
    std: torch.Tensor
    total_std: torch.Tensor


def generate(
    model: nn.Module,
    theta_samples: torch.Tensor,
    x0: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    times: torch.Tensor | None = None,
    max_num_steps: int = 10_000,
) -> torch.Tensor:
    """Integrate dx/dt = u_θs(x, t) from x_0 for every parameter sample, in one solve.

    The state is x [S, B, d]; the vector field is
    ``vmap(θ, x ↦ functional_call(model, θ, (x, t)))`` over the S samples, so each sample's
    flow sees only its own θ. Adaptive methods share one step size across samples, so the
    result matches S separate solves to within the solver tolerance; fixed-step methods
    match them to rounding.

    Parameters
    ----------
    model : nn.Module
        Velocity network called ``model(x, t)`` with x [B, d] and t a 0-d tensor. Only its
        architecture (and buffers) is used; the parameters come from ``theta_samples``.
    theta_samples : Tensor [S, D]
        Flat parameter vectors in ``model.named_parameters()`` order. The solve runs in their
        dtype and on their device.
    x0 : Tensor [B, d] or [S, B, d]
        Initial noise: shared by every parameter sample ``[B, d]`` (paired draws, for
        diagnostics that compare samples on the same noise), or one set per sample
        ``[S, B, d]`` (every generated point from its own (θ, x_0) pair, as a posterior
        predictive is scored).
    method : str
        A torchdiffeq method: adaptive (``ADAPTIVE_METHODS``, uses rtol/atol and
        ``max_num_steps``) or fixed-step (``FIXED_METHODS``, needs ``step_size``).
    rtol, atol : float
        Tolerances of adaptive methods (passed explicitly; torchdiffeq's defaults are tight).
    step_size : float, optional
        Step of fixed-step methods.
    times : Tensor [T], optional
        Increasing times to report, starting at the time of x_0; default [0, 1].
    max_num_steps : int
        Cap on adaptive steps; exceeding it raises ``RuntimeError``.

    Returns
    -------
    Tensor [S, B, d] (the state at t = 1) when ``times`` is None, otherwise the trajectories
    [T, S, B, d].

    Example
    -------
    >>> class Field(torch.nn.Module):  # u(x, t) = W x + b
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(2, 2)
    ...     def forward(self, x, t):
    ...         return self.lin(x)
    >>> thetas = torch.zeros(3, 6, dtype=torch.float64)
    >>> generate(Field(), thetas, torch.ones(4, 2), method="rk4", step_size=0.1).shape
    torch.Size([3, 4, 2])
    >>> generate(Field(), thetas, torch.ones(3, 5, 2), method="rk4", step_size=0.1).shape
    torch.Size([3, 5, 2])
    """
    per_sample = isinstance(x0, torch.Tensor) and x0.ndim == 3
    if per_sample and x0.shape[0] != len(theta_samples):
        raise ValueError(f"x0 of shape [S, B, d] needs one noise set per parameter sample: "
                         f"got {x0.shape[0]} sets for {len(theta_samples)} samples.")
    net, theta_samples, x0 = _prepare(model, theta_samples, x0.flatten(0, 1) if per_sample
                                      else x0, "x0")
    if per_sample:
        x0 = x0.reshape(len(theta_samples), -1, x0.shape[-1])
    check_choice("method", method, ADAPTIVE_METHODS + FIXED_METHODS)
    if theta_samples.dtype in (torch.float16, torch.bfloat16) and method in ADAPTIVE_METHODS:
        raise ValueError(
            f"theta_samples are {theta_samples.dtype}: an adaptive solver's step size underflows "
            "in half precision; pass theta_samples.float() (float32 or float64)."
        )
    keep_trajectory = times is not None
    times = _check_times(times, theta_samples)
    if method in FIXED_METHODS:
        if step_size is None:
            raise ValueError(f"method {method!r} is fixed-step; pass step_size (e.g. 0.02).")
        options = {"step_size": check_positive("step_size", step_size)}
    else:
        if step_size is not None:
            raise ValueError(
                f"step_size is for fixed-step methods {FIXED_METHODS}; {method!r} adapts its "
                "step to rtol and atol."
            )
        options = {"max_num_steps": check_positive_int("max_num_steps", max_num_steps)}

    def one_sample(theta, x, t):
        return functional_call(net, unflatten(net, theta), (x, t))

    def field(t, x):
        return vmap(one_sample, in_dims=(0, 0, None))(theta_samples, x, t)

    start = x0 if per_sample else x0.expand(theta_samples.shape[0], *x0.shape)
    try:
        path = odeint(
            field,
            start,
            times,
            method=method,
            rtol=check_positive("rtol", rtol),
            atol=check_positive("atol", atol),
            options=options,
        )
    except AssertionError as error:
        if "underflow in dt" in str(error):
            raise RuntimeError(
                "the adaptive solve's step size underflowed to 0: the velocity field is too "
                "stiff (or not finite) at these weights; use smaller posterior scales, float64 "
                "weights or a fixed-step method."
            ) from error
        if "max_num_steps" not in str(error):
            raise
        raise RuntimeError(
            f"the adaptive solve needed more than max_num_steps={max_num_steps} steps; "
            "loosen rtol/atol, raise max_num_steps, or use a fixed-step method."
        ) from error
    return path if keep_trajectory else path[-1]


def velocity_uncertainty(
    model: nn.Module, theta_samples: torch.Tensor, points: torch.Tensor, times: torch.Tensor
) -> VelocityUncertainty:
    """Mean and spread of u_θs(x_p, t_k) across S ≥ 2 parameter samples.

    Evaluates every sample's velocity at every point and time (a [S, T, P, d] array, vmapped
    over θ) and reduces over samples; see :class:`VelocityUncertainty` for the shapes.

    Parameters
    ----------
    model : nn.Module
        Velocity network ``model(x, t)``, x [P, d], t a 0-d tensor.
    theta_samples : Tensor [S, D]
    points : Tensor [P, d]
        Where to evaluate (e.g. a grid over the plane).
    times : Tensor [T]
        When to evaluate.

    Example
    -------
    >>> class Field(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(2, 2)
    ...     def forward(self, x, t):
    ...         return self.lin(x) * t
    >>> thetas = torch.randn(5, 6, dtype=torch.float64)
    >>> out = velocity_uncertainty(Field(), thetas, torch.ones(7, 2), torch.tensor([0.0, 1.0]))
    >>> out.mean.shape, out.total_std.shape, float(out.total_std[0].max())
    (torch.Size([2, 7, 2]), torch.Size([2, 7]), 0.0)
    """
    net, theta_samples, points = _prepare(model, theta_samples, points, "points")
    if theta_samples.shape[0] < 2:
        raise ValueError("velocity_uncertainty needs at least 2 parameter samples (rows).")
    times = check_tensor("times", times, ndim=1, min_rows=1).to(points)

    def one_sample(theta, t):
        return functional_call(net, unflatten(net, theta), (points, t))

    per_time = [vmap(one_sample, in_dims=(0, None))(theta_samples, t) for t in times]
    velocities = torch.stack(per_time, dim=1)
    std = velocities.std(dim=0)
    return VelocityUncertainty(
        mean=velocities.mean(dim=0), std=std, total_std=std.square().sum(dim=-1).sqrt()
    )


def _prepare(model, theta_samples, x, name):
    """Validate, and return a copy of the model and x in the dtype/device of theta_samples."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    theta_samples = check_tensor("theta_samples", theta_samples, ndim=2, min_rows=1)
    x = check_tensor(name, x, ndim=2, min_rows=1)
    count = sum(p.numel() for p in model.parameters())
    if theta_samples.shape[1] != count:
        raise ValueError(
            f"theta_samples has {theta_samples.shape[1]} columns but the model has {count} "
            "parameters; each row must be a flat vector in model.named_parameters() order."
        )
    net = converted(model, theta_samples.dtype, theta_samples.device)
    return net, theta_samples, x.to(theta_samples)


def _check_times(times, like):
    if times is None:
        return torch.tensor([0.0, 1.0], dtype=like.dtype, device=like.device)
    times = check_tensor("times", times, ndim=1, min_rows=2).to(like)
    if not bool((times.diff() > 0).all()):
        raise ValueError(f"times must be strictly increasing, got {times.tolist()}.")
    return times
