"""Laplace approximations of the posterior over network parameters, with evidence-tuned prior.

Around a minimiser θ* of the negative log posterior L (:class:`~rbmem_tutorial.laplace.objective.
RegressionObjective`), the Laplace approximation is

.. math::

    p(θ \\mid \\mathcal{D}) ≈ \\mathcal{N}\\big(θ^*, Σ\\big), \\qquad
    Σ^{-1} = P = \\mathrm{GGN}(θ^*) + λ I,

with the generalised Gauss-Newton GGN = Σ_n J_nᵀ diag(1/σ²) J_n in place of the Hessian of the
likelihood term. Four structures of P are offered (by name, see :func:`fit_laplace`):

``"full"``
    the exact GGN, a D×D matrix (small nets only);
``"diag"``
    its exact diagonal, from per-example Jacobians, never forming D×D;
``"kfac"``
    one Kronecker-factored block per ``nn.Linear`` layer (Martens & Grosse 2015; Ritter et al.
    2018): P_layer ≈ N · G ⊗ A + λ I;
``"last_layer"``
    the exact GGN over the last ``nn.Linear`` layer, every other parameter fixed at θ*.

Each structure is a sum "spectrum + λ" in some orthonormal basis, P = U diag(e + λ) Uᵀ with
e ≥ 0 (U = I for ``diag``; U = U_G ⊗ U_A for ``kfac``). Sampling, variances and the evidence
are then cheap for every λ.

**Evidence and prior precision.** For a Gaussian likelihood y_n ~ N(f_θ(z_n), diag(σ²)) and
prior N(m, λ⁻¹ I) over the k integrated parameters (m = 0 or the objective's ``prior_mean``),
the Laplace approximation of the marginal likelihood is (MacKay 1992; Immer et al. 2021,
arXiv 2104.04975)

.. math::

    \\log p(\\mathcal{D} \\mid λ) ≈ −\\tfrac12 \\sum_{n,j} r_{n,j}^2/σ_j^2
        − \\tfrac{N}{2} \\sum_j \\log(2π σ_j^2)
        − \\tfrac{λ}{2} \\lVert θ^* − m \\rVert^2 + \\tfrac{k}{2} \\log λ
        − \\tfrac12 \\sum_i \\log(e_i + λ),

with residuals r at θ* (the 2π factors of prior and Gaussian integral cancel). It is exact for
Bayesian linear regression. With θ* held fixed, as is usual, its derivative in log λ is
½(γ − λ‖θ* − m‖²) with γ = Σ_i e_i / (e_i + λ), which decreases in λ: the maximiser is unique
and is MacKay's fixed point λ = γ / ‖θ* − m‖², which
:func:`~rbmem_tutorial.laplace.prior_tuning.optimal_prior_precision` finds by bracketing. Only the
offset from the prior mean enters: a prior centred at θ* itself has no finite maximiser.

**One λ.** The tuned λ becomes the λ of the objective that the posterior carries
(``posterior.objective``); chapter 5's geodesics use that objective. Because the prior is
not centred at θ*, changing λ by Δλ adds Δλ (θ* − m) to ∇L(θ*), so θ* is no longer exactly
stationary; ``posterior.gradient_norm`` reports ‖∇L(θ*)‖ under the tuned λ. Where stationarity
matters (geodesics), refine and refit once with the tuned λ held fixed::

    post = fit_laplace(objective, theta, "diag")                     # tunes λ
    theta, record = refine_map(post.objective, theta)                # stationary for that λ
    post = fit_laplace(post.objective, theta, "diag", post.prior_precision)

**Scale.** ``posterior.scale`` α multiplies the standard deviation of the samples (covariance
α² Σ), the trade-off knob of Gegenfurtner, Jacobsen & Arvanitidis (arXiv 2602.00199). It leaves
L, P and the evidence unchanged.
"""

from __future__ import annotations

import math

import torch

from rbmem_tutorial._checks import check_choice
from rbmem_tutorial.laplace.base import LaplacePosterior
from rbmem_tutorial.laplace.fast_mlp import ggn_diagonal
from rbmem_tutorial.laplace.objective import RegressionObjective

__all__ = [
    "DiagLaplace",
    "FullLaplace",
    "KronLaplace",
    "LaplacePosterior",
    "LastLayerLaplace",
    "STRUCTURES",
    "fit_laplace",
]

class FullLaplace(LaplacePosterior):
    """P = GGN + λI with the exact D×D GGN, eigendecomposed once: GGN = U diag(e) Uᵀ."""

    structure = "full"

    def _fit(self, objective, chunk_size):
        ggn = objective.ggn(self.mean, chunk_size=chunk_size)
        eigenvalues, self._eigenvectors = torch.linalg.eigh(ggn)
        self._eigenvalues = eigenvalues.clamp_min(0)
        self._ggn_diagonal = ggn.diagonal().clone()
        self._integrated = slice(0, objective.num_params)

    def _tangent_from_latent(self, z):
        return (z * self._inverse_std()) @ self._eigenvectors.T

    def _unit_variance(self):
        return self._eigenvectors.square() @ self._inverse_std().square()

    @property
    def precision_diag(self) -> torch.Tensor:
        """diag(P) = diag(GGN) + λ  [D]."""
        return self._ggn_diagonal + self.prior_precision


class DiagLaplace(LaplacePosterior):
    """P = diag(GGN) + λI with the exact GGN diagonal (layer by layer for a plain MLP, else from
    per-example Jacobians, chunked)."""

    structure = "diag"

    def _fit(self, objective, chunk_size):
        self._eigenvalues = ggn_diagonal(objective, self.mean, chunk_size=chunk_size)
        self._integrated = slice(0, objective.num_params)

    def _tangent_from_latent(self, z):
        return z * self._inverse_std()

    def _unit_variance(self):
        return self._inverse_std().square()

    @property
    def precision_diag(self) -> torch.Tensor:
        """diag(P) = diag(GGN) + λ  [D]."""
        return self._eigenvalues + self.prior_precision


class KronLaplace(LaplacePosterior):
    """Per ``nn.Linear`` layer, P ≈ N · G ⊗ A + λI (KFAC), other layers independent.

    With A = U_A diag(a) U_Aᵀ and G = U_G diag(g) U_Gᵀ, P = (U_G ⊗ U_A) diag(N g ⊗ a + λ)
    (U_G ⊗ U_A)ᵀ, so Σ^{1/2} z = U_G (Z / sqrt(N g aᵀ + λ)) U_Aᵀ for Z the latent reshaped to
    the augmented layer matrix [W | b] (see
    :class:`~rbmem_tutorial.laplace.kronecker.KroneckerFactors`).
    Exact, layer by layer, wherever G_n = Σ_j g_{n,j} g_{n,j}ᵀ/σ_j² is the same for every
    example: for a model that is one ``nn.Linear`` layer (any output dimension) and for the
    block of the output layer of any network.
    """

    structure = "kfac"

    def _fit(self, objective, chunk_size):
        n = objective.num_examples
        self._layers = []
        spectra = []
        for factors in objective.kronecker_factors(self.mean, chunk_size=chunk_size):
            a, u_a = torch.linalg.eigh(factors.A)
            g, u_g = torch.linalg.eigh(factors.G)
            spectrum = (n * torch.outer(g, a)).clamp_min(0)
            kron_diag = n * torch.outer(factors.G.diagonal(), factors.A.diagonal())
            self._layers.append((factors, u_a, u_g, spectrum.shape, kron_diag))
            spectra.append(spectrum.reshape(-1))
        self._eigenvalues = torch.cat(spectra)
        self._integrated = slice(0, objective.num_params)

    def _tangent_from_latent(self, z):
        out = torch.zeros(z.shape[0], self.num_params, dtype=z.dtype, device=z.device)
        inverse_std, offset = self._inverse_std(), 0
        for factors, u_a, u_g, shape, _ in self._layers:
            size = shape[0] * shape[1]
            block = z[:, offset : offset + size] * inverse_std[offset : offset + size]
            matrix = u_g @ block.reshape(-1, *shape) @ u_a.T
            _scatter_layer(out, factors, matrix)
            offset += size
        return out

    def _unit_variance(self):
        out = torch.zeros(1, self.num_params, dtype=torch.float64, device=self.mean.device)
        variance, offset = self._inverse_std().square(), 0
        for factors, u_a, u_g, shape, _ in self._layers:
            size = shape[0] * shape[1]
            matrix = u_g.square() @ variance[offset : offset + size].reshape(shape) @ u_a.square().T
            _scatter_layer(out, factors, matrix.unsqueeze(0))
            offset += size
        return out[0]

    @property
    def precision_diag(self) -> torch.Tensor:
        """diag(P) = N diag(G) ⊗ diag(A) + λ per layer  [D]."""
        out = torch.zeros(1, self.num_params, dtype=torch.float64, device=self.mean.device)
        for factors, _, _, _, kron_diag in self._layers:
            _scatter_layer(out, factors, kron_diag.unsqueeze(0))
        return out[0] + self.prior_precision


class LastLayerLaplace(LaplacePosterior):
    """P = GGN_L + λI over the last ``nn.Linear`` layer (in module order); the rest fixed at θ*.

    The evidence integrates only the last layer: its prior term is λ/2 ‖θ*_L − m_L‖² with
    k = D_L, and the fixed parameters act as hyperparameters. Outside the last layer, samples
    equal θ*, the variance is 0 and ``precision_diag`` is +inf.
    """

    structure = "last_layer"

    def _fit(self, objective, chunk_size):
        layers = objective.linear_layer_slices()
        if not layers:
            raise ValueError("structure 'last_layer' needs an nn.Linear layer in the model.")
        _, weight, bias = layers[-1]
        self._integrated = slice(weight.start, (bias or weight).stop)
        ggn = objective.ggn(self.mean, columns=self._integrated, chunk_size=chunk_size)
        eigenvalues, self._eigenvectors = torch.linalg.eigh(ggn)
        self._eigenvalues = eigenvalues.clamp_min(0)
        self._ggn_diagonal = ggn.diagonal().clone()

    def _tangent_from_latent(self, z):
        out = torch.zeros(z.shape[0], self.num_params, dtype=z.dtype, device=z.device)
        out[:, self._integrated] = (z * self._inverse_std()) @ self._eigenvectors.T
        return out

    def _unit_variance(self):
        out = torch.zeros(self.num_params, dtype=torch.float64, device=self.mean.device)
        out[self._integrated] = self._eigenvectors.square() @ self._inverse_std().square()
        return out

    @property
    def precision_diag(self) -> torch.Tensor:
        """diag(P): diag(GGN_L) + λ on the last layer, +inf (fixed) elsewhere  [D]."""
        out = torch.full_like(self.mean, math.inf)
        out[self._integrated] = self._ggn_diagonal + self.prior_precision
        return out


_STRUCTURES = {
    cls.structure: cls for cls in (FullLaplace, DiagLaplace, KronLaplace, LastLayerLaplace)
}
STRUCTURES = tuple(_STRUCTURES)
"""Names of the posterior structures :func:`fit_laplace` accepts."""


def fit_laplace(
    objective: RegressionObjective,
    theta_map: torch.Tensor,
    structure: str,
    prior_precision: float | None = None,
    *,
    scale: float = 1.0,
    chunk_size: int = 256,
) -> LaplacePosterior:
    """Fit a Laplace posterior N(θ*, α² (GGN + λI)⁻¹) of the given structure at θ*.

    Parameters
    ----------
    objective : RegressionObjective
        The frozen negative log posterior; its own λ is ignored here.
    theta_map : Tensor [D]
        θ*, ideally refined with :func:`~rbmem_tutorial.laplace.refinement.refine_map`.
    structure : {"full", "diag", "kfac", "last_layer"}
    prior_precision : float, optional
        λ; by default the maximiser of the Laplace evidence (:func:`optimal_prior_precision`).
    scale : float
        α, the sample standard-deviation multiplier.
    chunk_size : int
        Examples per per-example-Jacobian chunk (memory knob).

    Example
    -------
    >>> from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
    >>> lin = torch.nn.Linear(2, 1)
    >>> obj = RegressionObjective(lin, torch.randn(30, 2), torch.randn(30, 1), 1.0, 1.0)
    >>> post = fit_laplace(obj, parameters_vector(obj.model), "diag", prior_precision=2.0)
    >>> post.sample(5, torch.Generator().manual_seed(0)).shape
    torch.Size([5, 3])
    """
    cls = _STRUCTURES[check_choice("structure", structure, _STRUCTURES)]
    return cls(objective, theta_map, prior_precision, scale=scale, chunk_size=chunk_size)


def _scatter_layer(out, factors, matrix):
    """Write augmented layer matrices [n, out, in(+1)] into flat vectors out [n, D]."""
    n_in = factors.A.shape[0] - (factors.bias is not None)
    out[:, factors.weight] = matrix[:, :, :n_in].reshape(matrix.shape[0], -1)
    if factors.bias is not None:
        out[:, factors.bias] = matrix[:, :, n_in]
