"""The empirical optimal velocity: the exact minimiser of the flow-matching loss over a finite
training set, whose flow reproduces the training points (the memorisation of chapter 2).
"""

from __future__ import annotations

import torch
from torch import nn

from rbmem_tutorial._checks import check_positive, check_same_dim, check_tensor
from rbmem_tutorial.flows.nets import time_column
from rbmem_tutorial.flows.paths import check_times

__all__ = ["EmpiricalOptimalVelocity"]


class EmpiricalOptimalVelocity(nn.Module):
    """The exact minimiser of the flow-matching loss over a finite training set.

    With x_1 uniform on the training points x_1..x_N, the loss is minimised by the conditional
    expectation u*(x, t) = E[x_1 - x_0 | x_t = x]. Given x_t = x and x_1 = x_i, the noise is
    x_0 = (x - t x_i) / (1 - t), so x_1 - x_0 = (x_i - x) / (1 - t), and by Bayes' rule
    (p(x_t = x | x_1 = x_i) = N(x; t x_i, (1 - t)^2 I)):

        u*(x, t) = sum_i w_i(x, t) (x_i - x) / (1 - t),
        w(x, t)  = softmax_i( -|| x - t x_i ||^2 / (2 (1 - t)^2) ).

    Its flow carries N(0, I) exactly onto the training points: a perfect memoriser (the
    reference model of Gegenfurtner et al. 2026). The softmax is a stable log-sum-exp, and
    distances are taken as explicit differences so they stay accurate near t = 1. Because
    (1 - t) -> 0 there, ``1 - t`` is clamped below at ``eps``: on [1 - eps, 1] the field pulls x
    towards the weighted mean with rate 1 / eps, so a solver may evaluate at t = 1 exactly and
    samples still land within about eps * ||x_i - x_0|| of a training point.

    Parameters
    ----------
    train : torch.Tensor
        Training set ``[N, d]``, kept as the buffer ``points`` (``.to`` moves it).
    eps : float
        Lower clamp of ``1 - t``.

    Example
    -------
    >>> train = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    >>> u_star = EmpiricalOptimalVelocity(train)
    >>> u_star(torch.tensor([[0.5, 0.0]]), torch.tensor(0.5))   # pulled towards (1, 0)
    tensor([[0.5232, 0.0000]])
    """

    def __init__(self, train: torch.Tensor, eps: float = 1e-4):
        super().__init__()
        check_tensor("train", train, ndim=2, min_rows=1)
        self.eps = check_positive("eps", eps)
        self.register_buffer("points", train.detach().clone())

    def weights(self, x: torch.Tensor, t) -> torch.Tensor:
        """Posterior weights w_i(x, t) = p(x_1 = x_i | x_t = x), shape ``[B, N]``."""
        x = check_tensor("x", x, ndim=2, min_rows=1)
        check_same_dim("x", x, "train", self.points)
        t = time_column(check_times("t", t, x), x)
        one_minus_t = (1 - t).clamp_min(self.eps)
        offsets = x[:, None, :] - t[:, :, None] * self.points.to(x.dtype)[None, :, :]
        logits = -offsets.pow(2).sum(dim=2) / (2 * one_minus_t**2)
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """u*(x, t) = (sum_i w_i x_i - x) / max(1 - t, eps), shape ``[B, d]``."""
        weights = self.weights(x, t)
        one_minus_t = (1 - time_column(t, x)).clamp_min(self.eps)
        return (weights @ self.points.to(x.dtype) - x) / one_minus_t
