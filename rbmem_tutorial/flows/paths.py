"""The linear probability path of flow matching and its conditional loss.

Notation (Lipman et al. 2022): x_0 ~ N(0, I) is noise, x_1 a data point, t ~ U[0, 1],

    x_t = (1 - t) x_0 + t x_1,        u = x_1 - x_0,
    L_FM(theta) = E_{t, x_0, x_1} || u_theta(x_t, t) - (x_1 - x_0) ||^2.

:func:`linear_path` gives (x_t, u), :func:`cfm_loss` the Monte-Carlo loss; training
(:mod:`rbmem_tutorial.flows.training`), the optimal velocity, sampling and likelihoods build on
them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rbmem_tutorial._checks import check_tensor
from rbmem_tutorial.flows.nets import time_column

__all__ = ["Velocity", "cfm_loss", "check_times", "draw", "fm_loss", "linear_path"]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_times(name: str, t, x: torch.Tensor) -> torch.Tensor:
    """Times as a tensor like ``x``: a scalar or shape ``[B]``, finite, inside [0, 1]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    check_tensor(name, t, ndim=(0, 1))
    if t.ndim == 1 and t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must be a scalar or have shape [B] = ({x.shape[0]},), got {tuple(t.shape)}."
        )
    if bool((t < 0).any()) or bool((t > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1]; clip it with {name}.clamp(0, 1).")
    return t


def draw(shape, like: torch.Tensor, generator: torch.Generator | None, kind: str):
    """Standard normal (``kind="randn"``) or U[0, 1) draws with the dtype/device of ``like``.

    Draws happen on the generator's device and move to ``like.device`` afterwards.
    """
    device = like.device if generator is None else generator.device
    draw = torch.randn if kind == "randn" else torch.rand
    return draw(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def linear_path(x0: torch.Tensor, x1: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Point and target velocity of the linear (conditional OT) path.

    x_t = (1 - t) x_0 + t x_1 and u = d x_t / dt = x_1 - x_0 (Lipman et al. 2022).

    Parameters
    ----------
    x0, x1 : torch.Tensor
        Noise and data, both ``[B, d]``.
    t : float or torch.Tensor
        Scalar or ``[B]`` times in [0, 1].

    Returns
    -------
    (x_t, u) : tuple of torch.Tensor
        Both ``[B, d]``.

    Example
    -------
    >>> xt, u = linear_path(torch.zeros(1, 2), torch.ones(1, 2), 0.25)
    >>> xt.tolist(), u.tolist()
    ([[0.25, 0.25]], [[1.0, 1.0]])
    """
    x0 = check_tensor("x0", x0, ndim=2, min_rows=1)
    x1 = check_tensor("x1", x1, ndim=2, min_rows=1)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {x0.shape} and {x1.shape}.")
    t = time_column(check_times("t", t, x1), x1)
    return (1 - t) * x0 + t * x1, x1 - x0


def fm_loss(model: Velocity, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor):
    """Mean over the batch of || u_theta(x_t, t) - (x_1 - x_0) ||^2 (no input checks)."""
    tc = time_column(t, x1)
    xt = (1 - tc) * x0 + tc * x1
    residual = model(xt, t) - (x1 - x0)
    return residual.pow(2).sum(dim=1).mean()


def cfm_loss(
    model: Velocity,
    x1: torch.Tensor,
    x0: torch.Tensor | None = None,
    t=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte-Carlo conditional flow-matching loss on a batch.

        L = (1/B) sum_b || u_theta(x_t^b, t_b) - (x_1^b - x_0^b) ||^2,
        x_t = (1 - t) x_0 + t x_1   (Lipman et al. 2022, linear path).

    Parameters
    ----------
    model : callable
        Velocity field ``model(x, t)`` returning ``[B, d]``.
    x1 : torch.Tensor
        Data batch ``[B, d]``.
    x0 : torch.Tensor, optional
        Noise ``[B, d]``; drawn from N(0, I) with ``generator`` when omitted.
    t : float or torch.Tensor, optional
        Scalar or ``[B]`` times in [0, 1]; drawn from U[0, 1) with ``generator`` when omitted.
    generator : torch.Generator, optional
        Source of the draws of ``x0`` and ``t``.

    Returns
    -------
    torch.Tensor
        0-d loss, differentiable with respect to the model's parameters.

    Example
    -------
    >>> zero = lambda x, t: torch.zeros_like(x)
    >>> cfm_loss(zero, torch.ones(4, 2), x0=torch.zeros(4, 2), t=0.5)
    tensor(2.)
    """
    x1 = check_tensor("x1", x1, ndim=2, min_rows=1)
    if x0 is None:
        x0 = draw(x1.shape, x1, generator, "randn")
    x0 = check_tensor("x0", x0, ndim=2)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {x0.shape}.")
    t = draw((x1.shape[0],), x1, generator, "rand") if t is None else check_times("t", t, x1)
    return fm_loss(model, x1, x0, t)
