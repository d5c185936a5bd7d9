"""The regression loss of a network linearised at θ*: the linearised Riemannian Laplace.

Its geodesics use the curvature of a quadratic, so each step costs one JVP (and one VJP for the
gradient) instead of a second-order pass through the network (Bergamin et al. 2023,
arXiv 2306.07158, Sec. 3.3).
"""

from __future__ import annotations

import warnings

import torch

from rbmem_tutorial.riemannian._checks import check_float64, check_points


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
        self.num_examples = getattr(objective, "num_examples", None)  # for temperature presets
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

    def _check(self, theta, name="theta"):
        return check_points(name, theta, self.num_params)

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
        return self._rows(self._hvp_one, self._check(v, "v"))

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
        theta, v = torch.broadcast_tensors(self._check(theta), self._check(v, "v"))
        return self.grad(theta), self._rows(self._curvature_one, v)


def linearised_objective(objective, theta_star) -> LinearisedObjective:
    """Linearise a regression objective's network at ``theta_star``.

    Parameters
    ----------
    objective : RegressionObjective
        Needs ``predict(theta)`` (``[N, out]``), ``targets``, ``noise_std`` and
        ``prior_precision``; its ``prior_offset(theta) = θ − m`` when it has one (a
        ``RegressionObjective`` with a ``prior_mean``), else the prior is centred at 0.
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
    theta_star = check_float64("theta_star", theta_star, ndim=1)
    return LinearisedObjective(objective, theta_star)
