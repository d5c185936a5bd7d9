"""Velocity networks u_theta(x, t) for flow matching on vectors.

The network is a plain MLP on the concatenation [x, t] (optionally with fixed Fourier features
of t), as in Lipman et al. (2022). Its layers are exposed as ``net``, an ``nn.Sequential`` of
alternating ``nn.Linear`` and activation modules, so that hand-written gradient and
Hessian-vector-product code can walk it layer by layer. Activations are smooth (SiLU or tanh)
because the Laplace and geodesic chapters differentiate the network twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rbmem_tutorial._checks import check_choice, check_positive_int, check_tensor

ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh}


def time_column(t, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a time ``t`` (number, 0-d tensor or shape ``[B]``) to a ``[B, 1]`` column.

    The column has the dtype and device of ``x`` (shape ``[B, d]``).

    Example
    -------
    >>> time_column(0.5, torch.zeros(3, 2)).shape
    torch.Size([3, 1])
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0], 1)
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a scalar or have shape [B] = ({x.shape[0]},) to match x, got shape "
            f"{tuple(t.shape)}; flatten it with t.reshape(-1)."
        )
    return t[:, None]


class VelocityMLP(nn.Module):
    """A multilayer perceptron velocity field u_theta(x, t) : R^d x [0, 1] -> R^d.

    The input is ``features(x, t) = [x, t, sin(pi k t), cos(pi k t)]`` for ``k = 1..K`` with
    ``K = time_features`` (no Fourier features when ``K = 0``); the integers k are a fixed
    buffer ``frequencies``, not parameters. ``net`` maps the features to R^d through
    ``Linear -> act -> ... -> Linear``.

    Parameters
    ----------
    dim : int
        Data dimension d.
    hidden : sequence of int
        Widths of the hidden layers, e.g. ``(64, 64)``.
    activation : {"silu", "tanh"}
        Smooth activation between linear layers.
    time_features : int
        Number K of Fourier frequencies of t (adds 2K inputs).

    Example
    -------
    >>> model = VelocityMLP(2)
    >>> sum(p.numel() for p in model.parameters())   # 3 -> 64 -> 64 -> 2
    4546
    >>> model(torch.zeros(5, 2), torch.tensor(0.3)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "silu",
        time_features: int = 0,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        hidden = tuple(hidden)
        for width in hidden:
            check_positive_int("hidden width", width)
        check_choice("activation", activation, ACTIVATIONS)
        check_positive_int("time_features", time_features, minimum=0)
        self.dim = dim
        self.register_buffer("frequencies", torch.arange(1.0, time_features + 1))
        widths = (dim + 1 + 2 * time_features, *hidden, dim)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
        self.net = nn.Sequential(*layers[:-1])

    def features(self, x: torch.Tensor, t) -> torch.Tensor:
        """Network input ``[x, t, sin(pi k t), cos(pi k t)]``, shape ``[B, d + 1 + 2K]``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape [B, {self.dim}], got {tuple(x.shape)}; "
                f"use x.reshape(-1, {self.dim})."
            )
        t = time_column(t, x)
        angles = math.pi * t * self.frequencies.to(x.dtype)
        return torch.cat([x, t, torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Velocity u_theta(x, t), shape ``[B, d]``; ``t`` is a scalar or has shape ``[B]``."""
        return self.net(self.features(x, t))


class RegressionAdapter(nn.Module):
    """View a velocity net as a regression model z = [x_t, t] -> u_theta(x_t, t).

    The Laplace and geodesic chapters treat flow matching as regression on frozen pairs
    (z_n, y_n). The adapter holds the velocity net as its only submodule, so its parameters
    are the same tensors in the same order (names gain the prefix ``velocity_net.``) and
    ``parameters_to_vector`` gives the same flat vector theta.

    Example
    -------
    >>> net = VelocityMLP(2)
    >>> z = torch.tensor([[0.1, 0.2, 0.5]])
    >>> torch.equal(RegressionAdapter(net)(z), net(z[:, :2], z[:, 2]))
    True
    """

    def __init__(self, velocity_net: nn.Module):
        super().__init__()
        if not isinstance(velocity_net, nn.Module):
            raise TypeError(
                f"velocity_net must be an nn.Module, got {type(velocity_net).__name__}."
            )
        self.velocity_net = velocity_net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``velocity_net(z[:, :-1], z[:, -1])`` for z of shape ``[B, d + 1]``."""
        check_tensor("z", z, ndim=2, finite=False)
        if z.shape[1] < 2:
            raise ValueError(f"z must have shape [B, d + 1] with d >= 1, got {tuple(z.shape)}.")
        return self.velocity_net(z[:, :-1], z[:, -1])
