"""Two small posteriors whose geometry is known in closed form, for chapters 5 and 6.

**The banana** is a Gaussian regression with two parameters, two outputs and one observation
``y = (0, 0)``:

    f(θ) = (θ₁, θ₂ − b θ₁²),   y ~ N(f(θ), diag(σ₁², σ₂²)),

so its negative log posterior (flat prior) is

    L(θ) = θ₁² / (2σ₁²) + (θ₂ − b θ₁²)² / (2σ₂²),

with the mode θ* = 0 and a valley along the parabola θ₂ = b θ₁². The scaled outputs
``u(θ) = (θ₁/σ₁, (θ₂ − bθ₁²)/σ₂)`` are a diffeomorphism of the plane with constant Jacobian
determinant ``1/(σ₁σ₂)``, and ``L = ½‖u‖²``. Hence:

- the posterior is exactly the standard Gaussian of ``u`` pulled back: ``θ = u⁻¹(z)``,
  ``z ~ N(0, I)``, is an exact sample (:meth:`Banana.exact_samples`);
- the Fisher metric ``G = J_uᵀ J_u`` (Yu et al., AISTATS 2024, arXiv 2311.02766) is the
  pull-back of the Euclidean metric through ``u``, so its geodesics are the pre-images of
  straight lines, ``c(τ) = u⁻¹(u(θ0) + τ J_u(θ0) v)`` (:meth:`Banana.fisher_exp_map`), and
  Fisher Riemannian-Laplace samples at α = 1 are exact samples.

The Monge metric ``I + ∇L∇Lᵀ`` of the loss graph (Bergamin et al., NeurIPS 2023,
arXiv 2306.07158) has no such closed form; :meth:`Banana.grad_and_curvature` gives the
derivatives its geodesic solver needs, batched over rows.

**Bayesian linear regression** ``y = Xw + ε``, ``ε ~ N(0, σ²)``, prior ``w ~ N(0, λ⁻¹I)``,
has the Gaussian posterior ``N(μ, A⁻¹)`` with ``A = XᵀX/σ² + λI`` and ``μ = A⁻¹Xᵀy/σ²``
(Bishop, *Pattern Recognition and Machine Learning*, eq. 3.53-3.54). Its negative log
posterior ``L(w) = ½(w − μ)ᵀA(w − μ) + const`` is quadratic, so the Laplace approximation is
exact, and the Fisher metric ``A`` is constant: Fisher geodesics are straight lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rbmem_tutorial._checks import check_positive, check_positive_int, check_tensor
from rbmem_tutorial.laplace.objective import RegressionObjective

F64 = torch.float64


def _rows(name: str, theta, width: int) -> torch.Tensor:
    theta = check_tensor(name, theta)
    if theta.ndim == 0:
        raise ValueError(f"{name} must have a last dimension of {width}, got a 0-d tensor.")
    if theta.dtype != F64:
        raise TypeError(f"{name} must be float64, got {theta.dtype}; use {name}.double().")
    if theta.shape[-1] != width:
        raise ValueError(
            f"{name} must have {width} entries per row, got shape {tuple(theta.shape)}."
        )
    return theta


@dataclass(frozen=True)
class Banana:
    """The banana-shaped posterior of a two-output regression (see the module docstring).

    Parameters
    ----------
    sigma_1 : float
        σ₁, the noise of the first output: the width of the valley along θ₁.
    sigma_2 : float
        σ₂, the noise of the second output: the width across the valley.
    b : float
        Bend of the valley floor θ₂ = b θ₁².

    Example
    -------
    >>> import torch
    >>> toy = Banana(sigma_1=1.0, sigma_2=0.25, b=1.0)
    >>> theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    >>> float(toy(theta))  # on the valley floor only the θ₁ term is left
    0.5
    >>> toy.fisher_exp_map(torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 0.0],
    ...                    dtype=torch.float64)).tolist()  # lands on the floor
    [1.0, 1.0]
    """

    sigma_1: float = 1.0
    sigma_2: float = 0.25
    b: float = 1.0

    def __post_init__(self):
        check_positive("sigma_1", self.sigma_1)
        check_positive("sigma_2", self.sigma_2)
        if not isinstance(self.b, int | float):
            raise TypeError(
                f"b must be a number (the bend of the valley), got {type(self.b).__name__}."
            )

    def outputs(self, theta) -> torch.Tensor:
        """Scaled outputs ``u(θ) = (θ₁/σ₁, (θ₂ − bθ₁²)/σ₂)``, shape of ``theta``."""
        theta = _rows("theta", theta, 2)
        first, second = theta[..., 0], theta[..., 1]
        return torch.stack(
            [first / self.sigma_1, (second - self.b * first**2) / self.sigma_2], dim=-1
        )

    def inverse_outputs(self, u) -> torch.Tensor:
        """``u⁻¹``: ``θ₁ = σ₁ u₁``, ``θ₂ = σ₂ u₂ + b (σ₁ u₁)²``."""
        u = _rows("u", u, 2)
        first = self.sigma_1 * u[..., 0]
        return torch.stack([first, self.sigma_2 * u[..., 1] + self.b * first**2], dim=-1)

    def __call__(self, theta) -> torch.Tensor:
        """``L(θ) = ½‖u(θ)‖²``, one value per row."""
        return 0.5 * self.outputs(theta).square().sum(-1)

    def grad_and_curvature(self, theta, v) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇L(θ), vᵀ∇²L(θ)v)`` in closed form, rows of ``[..., 2]`` (for ``exp_map``)."""
        theta, v = _rows("theta", theta, 2), _rows("v", v, 2)
        first, residual = theta[..., 0], theta[..., 1] - self.b * theta[..., 0] ** 2
        s2, t2, b = self.sigma_1**2, self.sigma_2**2, self.b
        grad = torch.stack([first / s2 - 2 * b * first * residual / t2, residual / t2], dim=-1)
        h11 = 1 / s2 + (4 * b**2 * first**2 - 2 * b * residual) / t2
        h12, h22 = -2 * b * first / t2, 1 / t2
        v1, v2 = v[..., 0], v[..., 1]
        return grad, h11 * v1**2 + 2 * h12 * v1 * v2 + h22 * v2**2

    def hessian_at_mode(self) -> torch.Tensor:
        """``∇²L(0) = diag(1/σ₁², 1/σ₂²)``: the Laplace precision at θ* = 0."""
        return torch.diag(torch.tensor([1 / self.sigma_1**2, 1 / self.sigma_2**2], dtype=F64))

    def fisher_exp_map(self, theta0, v, times=None) -> torch.Tensor:
        """Geodesic of the Fisher metric ``J_uᵀJ_u``: ``u⁻¹(u(θ0) + τ J_u(θ0) v)``.

        Returns ``c(1)`` (shape of ``v``), or ``c(τ)`` for each of ``times`` (``[T]``), shape
        ``[..., T, 2]``.
        """
        theta0, v = _rows("theta0", theta0, 2), _rows("v", v, 2)
        u0 = self.outputs(theta0)
        du = torch.stack(
            [
                v[..., 0] / self.sigma_1,
                (v[..., 1] - 2 * self.b * theta0[..., 0] * v[..., 0]) / self.sigma_2,
            ],
            dim=-1,
        )
        if times is None:
            return self.inverse_outputs(u0 + du)
        times = check_tensor("times", times, ndim=1).to(F64)
        return self.inverse_outputs(u0.unsqueeze(-2) + times[:, None] * du.unsqueeze(-2))

    def regression_objective(self, prior_precision: float = 1e-10) -> RegressionObjective:
        """The banana as a :class:`~rbmem_tutorial.laplace.objective.RegressionObjective`.

        One input, targets ``(0, 0)``, per-output noise ``(σ₁, σ₂)`` and a prior
        ``N(0, λ⁻¹I)`` (the objective needs ``λ > 0``; the default is negligible), so that
        metrics built for regression networks, such as ``exp_map(..., metric="fisher")``, apply.
        Its value is ``L(θ) + (λ/2)‖θ‖²``.
        """
        model = _BananaOutputs(self.b)
        zeros = torch.zeros(1, 1, dtype=F64)
        noise = torch.tensor([self.sigma_1, self.sigma_2], dtype=F64)
        return RegressionObjective(
            model, zeros, torch.zeros(1, 2, dtype=F64), noise, prior_precision
        )

    def exact_samples(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact posterior samples ``u⁻¹(z)``, ``z ~ N(0, I)``, shape ``[n, 2]``."""
        n = check_positive_int("n", n)
        return self.inverse_outputs(torch.randn(n, 2, generator=generator, dtype=F64))


@dataclass(frozen=True)
class BayesianLinearRegression:
    """``y = Xw + ε``, ``ε ~ N(0, σ²)``, ``w ~ N(0, λ⁻¹I)``: exact posterior ``N(μ, A⁻¹)``.

    Parameters
    ----------
    inputs : Tensor [N, d]
        The design matrix X (float64).
    targets : Tensor [N]
        y.
    noise_std : float
        σ.
    prior_precision : float
        λ.

    Example
    -------
    >>> import torch
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> blr = BayesianLinearRegression(X, torch.tensor([2.0, 4.0], dtype=torch.float64), 1.0, 1.0)
    >>> blr.posterior_mean.tolist(), blr.precision.diagonal().tolist()
    ([1.0, 2.0], [2.0, 2.0])
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    noise_std: float
    prior_precision: float

    def __post_init__(self):
        inputs = check_tensor("inputs", self.inputs, ndim=2, min_rows=1)
        if inputs.dtype != F64:
            raise TypeError(f"inputs must be float64, got {inputs.dtype}; use inputs.double().")
        targets = check_tensor("targets", self.targets, ndim=1)
        if targets.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"targets must have one entry per row of inputs ({inputs.shape[0]}), "
                f"got {targets.shape[0]}."
            )
        check_positive("noise_std", self.noise_std)
        check_positive("prior_precision", self.prior_precision)

    @property
    def precision(self) -> torch.Tensor:
        """``A = XᵀX/σ² + λI``: the posterior precision, the Hessian of L and the Fisher metric."""
        X = self.inputs
        return X.T @ X / self.noise_std**2 + self.prior_precision * torch.eye(X.shape[1], dtype=F64)

    @property
    def posterior_mean(self) -> torch.Tensor:
        """``μ = A⁻¹Xᵀy/σ²``, the MAP."""
        return torch.linalg.solve(
            self.precision, self.inputs.T @ self.targets.to(F64) / self.noise_std**2
        )

    @property
    def posterior_covariance(self) -> torch.Tensor:
        """``A⁻¹``."""
        return torch.linalg.inv(self.precision)

    def __call__(self, w) -> torch.Tensor:
        """``L(w) = ½‖Xw − y‖²/σ² + ½λ‖w‖²``, one value per row."""
        w = _rows("w", w, self.inputs.shape[1])
        residual = w @ self.inputs.T - self.targets
        return 0.5 * residual.square().sum(
            -1
        ) / self.noise_std**2 + 0.5 * self.prior_precision * w.square().sum(-1)

    def grad_and_curvature(self, w, v) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A(w − μ), vᵀAv)``, rows of ``[..., d]`` (for ``exp_map``)."""
        d = self.inputs.shape[1]
        w, v = _rows("w", w, d), _rows("v", v, d)
        A = self.precision
        return (w - self.posterior_mean) @ A, ((v @ A) * v).sum(-1)

    def regression_objective(self) -> RegressionObjective:
        """The same posterior as a :class:`~rbmem_tutorial.laplace.objective.RegressionObjective` of
        a bias-free ``nn.Linear(d, 1)`` (its weight is ``w``), e.g. for ``metric="fisher"``."""
        model = nn.Linear(self.inputs.shape[1], 1, bias=False).to(F64)
        return RegressionObjective(
            model, self.inputs, self.targets[:, None], self.noise_std, self.prior_precision
        )

    @classmethod
    def line(
        cls,
        n: int,
        generator: torch.Generator | None = None,
        *,
        noise_std: float = 1.0,
        prior_precision: float = 1.0,
        slope: float = 1.0,
        intercept: float = 0.5,
    ):
        """``n`` points ``y = w₀ + w₁x + ε``, ``x ~ U(−1, 1)``, ``w = (intercept, slope)``.

        The design matrix is ``[1, x]``, so ``d = 2``.
        """
        n = check_positive_int("n", n)
        x = 2 * torch.rand(n, generator=generator, dtype=F64) - 1
        y = intercept + slope * x + noise_std * torch.randn(n, generator=generator, dtype=F64)
        return cls(torch.stack([torch.ones_like(x), x], dim=1), y, noise_std, prior_precision)


class _BananaOutputs(nn.Module):
    """``f(θ) = (θ₁, θ₂ − bθ₁²)`` for every input row: the banana's regression model."""

    def __init__(self, b: float):
        super().__init__()
        self.b = b
        self.theta = nn.Parameter(torch.zeros(2, dtype=F64))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        first, second = self.theta[0], self.theta[1]
        outputs = torch.stack([first, second - self.b * first**2])
        return outputs.to(inputs.dtype).expand(inputs.shape[0], 2)


def gaussian_w2(mean_a, cov_a, mean_b, cov_b) -> float:
    """2-Wasserstein distance between two Gaussians.

    ``W₂² = ‖m_a − m_b‖² + tr(C_a + C_b − 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})`` (Givens and
    Shortt 1984), square roots by symmetric eigendecomposition.

    Example
    -------
    >>> import torch
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> zero, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> round(gaussian_w2(zero, eye, one, 4 * eye), 6)
    2.0
    """

    def sqrtm(c):
        values, vectors = torch.linalg.eigh(c)
        return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T

    root = sqrtm(cov_a)
    cross = sqrtm(root @ cov_b @ root)
    squared = (mean_a - mean_b).square().sum() + torch.trace(cov_a + cov_b - 2 * cross)
    return float(squared.clamp_min(0).sqrt())
