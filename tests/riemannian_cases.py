"""Losses and settings shared by the tests of rbmem_tutorial.riemannian."""

import torch
from torch import nn

from rbmem_tutorial.laplace import RegressionObjective, parameters_vector

F64 = torch.float64


class SmoothLoss:
    """A random smooth non-convex loss with a hand-derived gradient and HVP.

    L(θ) = Σ sin(Aθ + b) + ½ θᵀQθ + 0.1 ‖θ‖⁴,
    ∇L = Aᵀcos(Aθ + b) + Qθ + 0.4 ‖θ‖² θ,
    ∇²L v = −Aᵀ(sin(Aθ + b) ⊙ Av) + Qv + 0.4 ‖θ‖² v + 0.8 (θᵀv) θ.
    The closed forms make tight-tolerance solves cheap; ``plain`` is the bare function.
    """

    def __init__(self, dim, seed):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(4, dim, generator=g, dtype=F64)
        self.b = torch.randn(4, generator=g, dtype=F64)
        B = torch.randn(dim, dim, generator=g, dtype=F64)
        self.Q = B @ B.T / dim + 0.1 * torch.eye(dim, dtype=F64)

    def _on(self, theta):
        return (x.to(theta.device) for x in (self.A, self.b, self.Q))

    def plain(self, theta):
        A, b, Q = self._on(theta)
        return torch.sin(A @ theta + b).sum() + 0.5 * theta @ Q @ theta + 0.1 * (theta @ theta) ** 2

    def grad_and_hvp(self, theta, v):
        A, b, Q = self._on(theta)
        inner = theta @ A.T + b
        sq = (theta * theta).sum(-1, keepdim=True)
        grad = torch.cos(inner) @ A + theta @ Q + 0.4 * sq * theta
        along = (theta * v).sum(-1, keepdim=True)
        hvp = -(torch.sin(inner) * (v @ A.T)) @ A + v @ Q + 0.4 * sq * v + 0.8 * along * theta
        return grad, hvp


def tight(tol):
    """Solver options for accurate reference solves (dopri5: high order pays off here)."""
    return {"method": "dopri5", "rtol": tol, "atol": tol, "max_num_steps": 10_000}


def random_point(dim, seed, rows=None, scale=1.0):
    shape = (dim,) if rows is None else (rows, dim)
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def regression(model, seed=0, n=12, noise_std=0.5):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, model[0].in_features, generator=g, dtype=F64)
    targets = torch.randn(n, model[-1].out_features, generator=g, dtype=F64)
    objective = RegressionObjective(model, inputs, targets, noise_std, 2.0)
    return objective, parameters_vector(objective.model)


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
