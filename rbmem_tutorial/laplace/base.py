"""The Laplace posterior N(θ*, (H + λI)⁻¹) around a stationary point of L: what every covariance
structure shares (the evidence, λ by the evidence, sampling, the scale α).

The structures themselves (full, diagonal, KFAC, last layer) and :func:`fit_laplace` are in
:mod:`rbmem_tutorial.laplace.structures`, whose overview gives the maths.
"""

from __future__ import annotations

import math

import torch

from rbmem_tutorial._checks import check_positive, check_positive_int
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.laplace.prior_tuning import optimal_prior_precision

__all__ = ["LaplacePosterior"]


class LaplacePosterior:
    """Gaussian posterior N(θ*, α² Σ) with Σ⁻¹ = U diag(e + λ) Uᵀ; base of the structures.

    Build it with :func:`fit_laplace`. Subclasses compute the spectrum e and the map
    z ↦ Σ^{1/2} z; everything else is shared.

    Attributes
    ----------
    mean : Tensor [D]
        θ*.
    objective : RegressionObjective
        The objective with the posterior's λ (tuned or given).
    prior_precision : float
        λ.
    scale : float
        α ≥ 0, multiplies the standard deviation of samples and tangents.
    gradient_norm : float
        ‖∇L(θ*)‖ under ``objective`` (0 at an exact MAP; see the module notes).
    structure : str
        ``"full"``, ``"diag"``, ``"kfac"`` or ``"last_layer"``.

    Example
    -------
    A model that is one linear layer without bias is Bayesian linear regression: ``"full"``,
    ``"kfac"`` and ``"last_layer"`` are all exact, Σ = (XᵀX/σ² + λI)⁻¹.

    >>> from rbmem_tutorial.laplace.structures import fit_laplace
    >>> x = torch.randn(20, 3, dtype=torch.float64)
    >>> obj = RegressionObjective(torch.nn.Linear(3, 1, bias=False), x, x[:, :1], 0.5, 1.0)
    >>> exact = torch.linalg.inv(x.T @ x / 0.25 + 2.0 * torch.eye(3, dtype=torch.float64))
    >>> [torch.allclose(fit_laplace(obj, torch.zeros(3, dtype=torch.float64), name, 2.0)
    ...                 .covariance(), exact) for name in ("full", "kfac", "last_layer")]
    [True, True, True]
    """

    structure = ""

    def __init__(self, objective, theta_map, prior_precision=None, *, scale=1.0, chunk_size=256):
        if not isinstance(objective, RegressionObjective):
            raise TypeError(
                f"objective must be a RegressionObjective, got {type(objective).__name__}."
            )
        self.mean = objective.check_theta(theta_map).detach().clone()
        self.num_params = objective.num_params
        self._fit(objective, check_positive_int("chunk_size", chunk_size))
        weights = objective.precision_weights()
        self._data_fit = float(objective.data_fit(self.mean))
        log_2pi_var = float(torch.log(2 * math.pi / weights).sum())
        self._log_norm = -0.5 * objective.num_examples * log_2pi_var
        offset = objective.prior_offset(self.mean)
        self._prior_sq_norm = float(offset[self._integrated].square().sum())
        if prior_precision is None:
            prior_precision = optimal_prior_precision(self._eigenvalues, self._prior_sq_norm)
        self.prior_precision = check_positive("prior_precision", prior_precision)
        self.objective = objective.with_prior_precision(self.prior_precision)
        self.scale = scale
        self.gradient_norm = float(self.objective.grad(self.mean).norm())

    @property
    def scale(self) -> float:
        """α: samples are θ* + α Σ^{1/2} z, so their covariance is α² Σ."""
        return self._scale

    @scale.setter
    def scale(self, value):
        self._scale = check_positive("scale", value, allow_zero=True)

    def log_marginal_likelihood(self, prior_precision: float | None = None) -> float:
        """Laplace evidence log p(D | λ) at θ* (module notes), at λ or the posterior's own."""
        lam = self.prior_precision if prior_precision is None else prior_precision
        lam = check_positive("prior_precision", lam)
        k = self._eigenvalues.numel()
        log_det = float(torch.log(self._eigenvalues + lam).sum())
        return (
            -self._data_fit
            + self._log_norm
            - 0.5 * lam * self._prior_sq_norm
            + 0.5 * k * math.log(lam)
            - 0.5 * log_det
        )

    def evidence_optimum(self) -> float:
        """The λ that maximises :meth:`log_marginal_likelihood` at this θ* (MacKay's fixed point
        λ = γ/‖θ* − m‖²); it differs from ``prior_precision`` when that λ was tuned elsewhere."""
        return optimal_prior_precision(self._eigenvalues, self._prior_sq_norm)

    def sample_tangent(self, n: int, generator: torch.Generator | None = None, scale=None):
        """Tangent vectors v = α Σ^{1/2} z, z ~ N(0, I): [n, D] (geodesic initial velocities)."""
        alpha = self.scale if scale is None else check_positive("scale", scale, allow_zero=True)
        n = check_positive_int("n", n)
        device = generator.device if generator is not None else self.mean.device
        z = torch.randn(
            n, self._eigenvalues.numel(), generator=generator, dtype=torch.float64, device=device
        )
        return alpha * self._tangent_from_latent(z.to(self.mean.device))

    def sample(self, n: int, generator: torch.Generator | None = None, scale=None):
        """Posterior samples θ* + α Σ^{1/2} z: [n, D] flat parameter vectors."""
        return self.mean + self.sample_tangent(n, generator, scale)

    @property
    def variance(self) -> torch.Tensor:
        """Marginal variances of the samples, diag(α² Σ)  [D]."""
        return self.scale**2 * self._unit_variance()

    def covariance(self) -> torch.Tensor:
        """The sampling covariance α² Σ as a dense D×D matrix (small nets)."""
        root = self._tangent_from_latent(
            torch.eye(self._eigenvalues.numel(), dtype=torch.float64, device=self.mean.device)
        )
        return self.scale**2 * root.T @ root

    def __repr__(self):
        return (
            f"{type(self).__name__}(D={self.num_params}, prior_precision={self.prior_precision:.4g}"
            f", scale={self.scale:.4g}, gradient_norm={self.gradient_norm:.3g})"
        )

    def _inverse_std(self):
        return (self._eigenvalues + self.prior_precision).rsqrt()

    # Subclasses set self._eigenvalues [k] and self._integrated (slice of θ with a prior in
    # the evidence) in _fit, and map latents z [n, k] to Σ^{1/2} z [n, D].
    def _fit(self, objective, chunk_size):
        raise NotImplementedError

    def _tangent_from_latent(self, z):
        raise NotImplementedError

    def _unit_variance(self):
        raise NotImplementedError
