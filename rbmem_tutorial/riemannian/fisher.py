"""The Fisher (pull-back, generalised Gauss-Newton) metric of a Gaussian regression posterior.

Yu, Hartmann, Williams, Girolami & Klami, "Riemannian Laplace Approximation with the Fisher
Metric" (AISTATS 2024, arXiv 2311.02766) show that the metric ``I + ∇L∇Lᵀ`` of Bergamin et al.
(NeurIPS 2023, arXiv 2306.07158) gives approximations that stay too narrow and biased even as
the data grow, and propose RLA-F: the same exponential-map construction with the Fisher
information of the likelihood plus the prior's precision as the metric.

**The metric.** For the objective of :class:`~rbmem_tutorial.laplace.objective.RegressionObjective`,

    L(θ) = ½ (f(θ) − y)ᵀ Σ⁻¹ (f(θ) − y) + (λ/2) ‖θ − m‖²,

with f(θ) ∈ R^M the M = N·out stacked outputs on the frozen inputs and Σ = diag(σ²), the
Fisher information of the likelihood is the generalised Gauss-Newton JᵀΣ⁻¹J (J = ∂f/∂θ,
M × D), and the metric is

    G(θ) = J(θ)ᵀ Σ⁻¹ J(θ) + λ I.

It is the pull-back of the Euclidean metric of R^{M+D} through the embedding
F(θ) = (Σ^{-1/2} f(θ), √λ θ): G = DFᵀ DF. The prior mean m does not enter.

**The geodesic equation.** With g_ij = ⟨∂_i F, ∂_j F⟩, differentiating gives
∂_k g_ij = ⟨∂_k∂_i F, ∂_j F⟩ + ⟨∂_i F, ∂_k∂_j F⟩, so the Christoffel symbols of the first
kind are

    Γ_kij = ½ (∂_i g_kj + ∂_j g_ki − ∂_k g_ij) = ⟨∂_k F, ∂_i∂_j F⟩

(the flat ambient metric contributes no terms of its own). The geodesic equation
c̈^l = −G^{lk} Γ_kij ċ^i ċ^j therefore reads G c̈ = −DFᵀ D²F[ċ, ċ]. The √λ θ block of F is
linear, so D²F[ċ, ċ] = (Σ^{-1/2} f''(c)[ċ, ċ], 0) and

    G(c) c̈ = −J(c)ᵀ Σ⁻¹ f''(c)[ċ, ċ],      f''(c)[ċ, ċ] = d²/dε² f(c + εċ) at ε = 0.

Geometrically, the ambient acceleration of F(c(t)) is normal to the embedded surface.

**Solving it.** The second directional derivative f''[ċ, ċ] comes from a second-order forward
pass. By the push-through identity (JᵀΣ⁻¹J + λI)⁻¹ JᵀΣ⁻¹ = Jᵀ (JJᵀ + λΣ)⁻¹,

    c̈ = −Jᵀ (J Jᵀ + λΣ)⁻¹ f''[ċ, ċ]          (used when M < D),
    c̈ = −(JᵀΣ⁻¹J + λI)⁻¹ JᵀΣ⁻¹ f''[ċ, ċ]      (used when M ≥ D).

The first is Woodbury's form of G⁻¹ = λ⁻¹(I − Jᵀ(λΣ + JJᵀ)⁻¹J): an M × M positive definite
system (a Cholesky factorisation, M³/3 flops) instead of a D × D one (D² memory, D³/3 flops).
Two routes form JJᵀ (or J, for the D × D system), f''[ċ, ċ] and Jᵀw (``gram``):

- ``"mlp"`` (a plain MLP, ``nn.Sequential(Linear, SiLU|Tanh, ..., Linear)``, as
  :mod:`rbmem_tutorial.laplace.fast_mlp` supports): one hand-written forward pass carries the first
  and
  second directional derivatives (R a_l, R² a_l, as in :mod:`~rbmem_tutorial.laplace.fast_mlp`), so
  f''[ċ, ċ] = R² a_L. The Jacobian row of output (n, j) in a layer's [W | b] is
  δ_{n,j} ⊗ [h_n; 1] (δ the output's gradient at the layer's pre-activation, h_n the layer's
  input), so JJᵀ = Σ_layers (δδᵀ) ⊙ (h̃h̃ᵀ) with δ from ``out`` backward passes, and
  Jᵀw = Σ_{n,j} w_{n,j} δ_{n,j} ⊗ h̃_n: no Jacobian is stored, Σ_l M² width_l flops; when
  M ≥ D, J itself from the same δ ⊗ h̃ (:mod:`.fisher_mlp`, which batches the rows of a batch
  of geodesics in one pass and builds what does not change along a solve once);
- ``"jacobian"`` (any model): J per example (``vmap`` of ``jacrev``, M × D numbers, M²D flops)
  and f''[ċ, ċ] by ``torch.func.jvp`` of ``jvp``.

The book's net (D = 4,546, M = N·K·d = 512) thus needs no D × D matrix, and ``"mlp"`` forms
its Gram matrix in about 1/30 of the flops of ``"jacobian"``.

**Temperature does not act on it.** A constant factor, G → G/T (the metric of L/T: both the
data term and the prior divided by T), cancels in Γ^l_ij = ½ G^{lk}(∂_i G_kj + ∂_j G_ki −
∂_k G_ij), so the geodesics, and with a fixed tangent Gaussian the samples, are unchanged.
(Averaging the data term while leaving the prior unscaled is not a constant factor: it changes
the metric's shape and its geodesics.) The speed ċᵀG(c)ċ is conserved along a geodesic.

**How far the loss can rise.** L(θ) = ½‖F(θ) − F_y‖² with F_y = (Σ^{-1/2} y, √λ m), and the
image F(c(t)) of a geodesic moves at the constant ambient speed ‖v‖_G = √(vᵀG(θ0)v), so
‖F(c(1)) − F(θ0)‖ ≤ ‖v‖_G and, by the triangle inequality,

    ``|L(c(1)) − L(θ0)| ≤ ‖v‖_G √(2 L(θ0)) + ½ ‖v‖_G²``

(:meth:`FisherMetric.loss_rise_bound`). With v ~ N(0, α²G(θ*)⁻¹), ‖v‖_G² ≈ α²D: the Fisher
metric lets L rise by about α²D/2, as the Euclidean Laplace does, where the Monge metric's
bound is T‖v‖.

**RLA-F and this package.** Yu et al. draw v from a Gaussian in the tangent space at the mode
θ* and map it by the metric's exponential map, θ = Exp_θ*(v) = c(1). They consider two
tangent precisions, the negative Hessian of the log posterior and the metric at the mode
G(θ*); their neural-network regression code draws v ~ N(0, (GGN + λI)⁻¹), a full Laplace
posterior with the GGN, i.e. the precision G(θ*), with σ and λ tuned by the Laplace evidence.
They show that RLA-F is exact in the limit of infinite data, where Bergamin et al.'s metric is
not. The mechanism, in short: if −log p(θ) = ½‖h(θ) − h(θ*)‖² for a diffeomorphism h, the
Fisher metric is J_hᵀJ_h, its geodesics are the preimages of straight lines in φ = h(θ), and
v ~ N(0, G(θ*)⁻¹) makes J_h(θ*) v, hence h(Exp_θ*(v)) − h(θ*), exactly N(0, I).

**When those samples are exact.** That makes h(θ) − h(θ*) standard normal, so the samples
θ = h⁻¹(h(θ*) + z) have the density N(h(θ) − h(θ*); 0, I) · abs(det J_h(θ)), while the posterior
is ∝ N(h(θ) − h(θ*); 0, I). The two agree exactly when abs(det J_h) is constant, which is the
condition the exactness needs. The banana of :mod:`rbmem_tutorial.riemannian.toys` meets it (det J_u
= 1/(σ₁σ₂)); the 1-D target −log p(θ) = ½(θ + θ³/3)² does not (h' = 1 + θ²): RLA-F gives
E θ² = 0.531 against the exact 0.387 (both by quadrature; a Monte Carlo run gave
0.527 ± 0.008; ``tests/test_riemannian_fisher.py`` checks it through :func:`exp_map`). In the
infinite-data limit the posterior concentrates where J_h is nearly constant, so the error
vanishes there. The book's use does not meet the condition: the net has fewer outputs than
weights (M < D), so −log p = ½‖F(θ) − F_y‖² is not ½‖h(θ) − h(θ*)‖² for a diffeomorphism
h of R^D, and α ≠ 1 or a diagonal tangent covariance changes the tangent Gaussian. Only a
linear model (constant J) meets it: there RLA-F is the Euclidean Laplace and exact (below). The
book therefore reads Fisher samples as an approximation, judged like the others by
memorisation and quality, not as exact posterior samples.

This package draws v ~ N(0, α² (GGN + λI)⁻¹), the tangent Gaussian of the Euclidean Laplace
posterior (:meth:`~rbmem_tutorial.laplace.base.LaplacePosterior.sample_tangent`), and solves the
geodesic with this class. For a linear model (f = Zθ) G is constant, geodesics are straight,
and RLA-F is the Euclidean Laplace, the exact posterior N(μ, (ZᵀΣ⁻¹Z + λI)⁻¹).

Deviations from the paper:

- the tangent covariance may be the diagonal, KFAC or last-layer approximation of
  (GGN + λI)⁻¹ (the structure of the Laplace posterior), while the geodesic uses the exact G;
- the scale α multiplies the tangent standard deviation (α = 1 is RLA-F);
- the likelihood is the flow-matching regression on frozen (x_0, t) draws, σ is fixed at the
  residual level of the trained net and λ is tuned by the evidence, not σ and λ jointly;
- the base point is whatever the caller passes (the book's pipeline refines it to a stationary
  point of the frozen objective); the paper's network code starts from the Adam weights;
- geodesics are solved in float64 by torchdiffeq (the authors: scipy's RK45, float32 nets).

Example
-------
>>> import torch
>>> from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
>>> objective = RegressionObjective(net, torch.randn(3, 2), torch.randn(3, 1), 0.5, 1.0)
>>> metric = FisherMetric(objective)
>>> metric
FisherMetric(D=17, M=3, prior_precision=1, solve=Woodbury M × M, gram=mlp)
>>> from rbmem_tutorial.riemannian import exp_map
>>> theta = parameters_vector(objective.model)
>>> v = torch.randn(objective.num_params, dtype=torch.float64)
>>> result = exp_map(objective, theta, v, metric="fisher", method="dopri5", rtol=1e-8, atol=1e-8)
>>> bool(result.speed_drift < 1e-6), bool(result.loss_rise.abs() <= result.bound)
(True, True)
"""

from __future__ import annotations

import torch
from torch.func import jacrev, jvp, vmap

from rbmem_tutorial._checks import check_choice
from rbmem_tutorial.laplace import fast_mlp
from rbmem_tutorial.riemannian._checks import F64, check_float64, check_points
from rbmem_tutorial.riemannian.fisher_mlp import MLPFisherPasses

__all__ = ["GRAM_METHODS", "FisherMetric"]

GRAM_METHODS = ("auto", "mlp", "jacobian")
_REQUIRED = ("predict", "inputs", "targets", "noise_std", "prior_precision", "num_params",
             "value", "grad")


class FisherMetric:
    """The metric G(θ) = J(θ)ᵀΣ⁻¹J(θ) + λI of a regression objective and its geodesics.

    Implements the metric protocol of :mod:`rbmem_tutorial.riemannian.geodesic`
    (``exp_map(..., metric="fisher")`` builds one); the module docstring has the equations.

    Parameters
    ----------
    objective : RegressionObjective
        Supplies ``predict`` (outputs [N, out]), the frozen ``inputs`` and ``targets``, σ
        (``noise_std``, a number or a tensor [out]), λ (``prior_precision``), ``num_params``,
        ``value`` and ``grad``.
    gram : {"auto", "mlp", "jacobian"}
        How JJᵀ (or J), f''[ċ, ċ] and Jᵀw are formed (module docstring); ``"auto"`` takes
        ``"mlp"`` for a plain MLP.

    Attributes
    ----------
    objective : RegressionObjective
    num_params : int
        D.
    num_outputs : int
        M = N·out, the length of the stacked outputs.
    uses_woodbury : bool
        True when M < D: the acceleration solves an M × M system, not a D × D one.
    gram : str
        ``"mlp"`` or ``"jacobian"``, the route in use.
    """

    def __init__(self, objective, *, gram: str = "auto"):
        missing = [name for name in _REQUIRED if not hasattr(objective, name)]
        if missing:
            raise TypeError(
                f"objective must be a RegressionObjective (it lacks {', '.join(missing)}), got "
                f"{type(objective).__name__}; build one with rbmem_tutorial.laplace.objective."
                "RegressionObjective(model, inputs, targets, noise_std, prior_precision)."
            )
        check_choice("gram", gram, GRAM_METHODS)
        self.objective = objective
        self.num_params = int(objective.num_params)
        num_examples, out = objective.targets.shape
        self._out = out
        self.num_outputs = num_examples * out
        device = objective.targets.device
        variance = (objective.noise_std**2) * torch.ones(out, dtype=F64, device=device)
        self._variance = variance.repeat(num_examples)
        self._lam = float(objective.prior_precision)
        self.uses_woodbury = self.num_outputs < self.num_params
        self._passes = self._mlp_passes(gram)
        self.gram = "jacobian" if self._passes is None else "mlp"

    # -- the metric protocol ---------------------------------------------------------------

    def acceleration(self, theta: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """c̈ solving G(c) c̈ = −J(c)ᵀ Σ⁻¹ f''(c)[ċ, ċ], for θ, ċ of shape [D] or [S, D].

        Example
        -------
        >>> import torch
        >>> from rbmem_tutorial.laplace.objective import RegressionObjective
        >>> lin = torch.nn.Linear(2, 1)  # f is linear in θ: straight geodesics
        >>> objective = RegressionObjective(lin, torch.randn(4, 2), torch.randn(4, 1), 1.0, 1.0)
        >>> theta, v = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        >>> FisherMetric(objective).acceleration(theta, v).abs().max().item()
        0.0
        """
        theta, velocity = self._check_pair(theta, velocity)
        if self._passes is not None:
            return self._passes.acceleration(theta, velocity)
        if theta.ndim == 1:
            return self._acceleration_one(theta, velocity)
        return vmap(self._acceleration_one)(theta, velocity)

    def speed(self, theta: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """The conserved ċᵀG(c)ċ = ‖Σ^{-1/2} J ċ‖² + λ‖ċ‖², a 0-d tensor or one per row [S]."""
        theta, velocity = self._check_pair(theta, velocity)
        if theta.ndim == 1:
            return self._speed_one(theta, velocity)
        return vmap(self._speed_one)(theta, velocity)

    def loss_value(self, theta: torch.Tensor) -> torch.Tensor:
        """The objective's L(θ): a 0-d tensor for θ [D], one value per row [S] for θ [S, D]."""
        theta = self._check_theta(theta)
        if theta.ndim == 1:
            return self.objective.value(theta).detach()
        return torch.stack([self.objective.value(row).detach() for row in theta])

    def grad_norm(self, theta: torch.Tensor) -> torch.Tensor:
        """‖∇L(θ)‖: a 0-d tensor for θ [D], one value per row [S] for θ [S, D]."""
        theta = self._check_theta(theta)
        if theta.ndim == 1:
            return self.objective.grad(theta).norm()
        return torch.stack([self.objective.grad(row).norm() for row in theta])

    def loss_rise_bound(self, theta0: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """``‖v‖_G √(2 L(θ0)) + ½‖v‖_G²``, a bound on ``|L(Exp_θ0(v)) − L(θ0)|`` per row (notes)."""
        length = self.speed(theta0, velocity).sqrt()
        return length * (2 * self.loss_value(theta0)).sqrt() + 0.5 * length.square()

    def __repr__(self):
        solve = f"Woodbury M × M, gram={self.gram}" if self.uses_woodbury else "D × D"
        return (f"FisherMetric(D={self.num_params}, M={self.num_outputs}, "
                f"prior_precision={self._lam:.4g}, solve={solve})")

    # -- internals -------------------------------------------------------------------------

    def _outputs(self, theta):
        return self.objective.predict(theta).reshape(-1)

    def _jacobian(self, theta):
        """J [M, D], one example at a time (vmap over examples of jacrev over θ)."""
        def single(point, z):
            return self.objective.predict(point, z.unsqueeze(0)).squeeze(0)

        per_example = vmap(jacrev(single), in_dims=(None, 0))(theta, self.objective.inputs)
        return per_example.reshape(self.num_outputs, self.num_params)

    def _second_derivative(self, theta, velocity):
        """f''(θ)[v, v] [M] by a second-order forward pass."""
        def first(point):
            return jvp(self._outputs, (point,), (velocity,))[1]

        return jvp(first, (theta,), (velocity,))[1]

    def _acceleration_one(self, theta, velocity):
        second = self._second_derivative(theta, velocity)
        jac = self._jacobian(theta)
        if self.uses_woodbury:
            system = jac @ jac.T + torch.diag(self._lam * self._variance)
            weights = torch.cholesky_solve(second.unsqueeze(-1), torch.linalg.cholesky(system))
            return -(jac.T @ weights.squeeze(-1))
        eye = torch.eye(self.num_params, dtype=F64, device=theta.device)
        metric = jac.T @ (jac / self._variance[:, None]) + self._lam * eye
        rhs = (jac.T @ (second / self._variance)).unsqueeze(-1)
        return -torch.cholesky_solve(rhs, torch.linalg.cholesky(metric)).squeeze(-1)

    def _speed_one(self, theta, velocity):
        tangent = jvp(self._outputs, (theta,), (velocity,))[1]
        return (tangent.square() / self._variance).sum() + self._lam * velocity.square().sum()

    def _mlp_passes(self, gram):
        """The hand-written MLP passes (:mod:`.fisher_mlp`) for ``"mlp"``, else None."""
        supported = fast_mlp.supports(self.objective)
        if gram == "mlp" and not supported:
            raise ValueError(
                "gram='mlp' needs a RegressionObjective on nn.Sequential(Linear, SiLU|Tanh, ..., "
                "Linear) (see rbmem_tutorial.laplace.fast_mlp); use gram='jacobian' for this model."
            )
        if gram == "jacobian" or not supported:
            return None
        return MLPFisherPasses(self.objective)

    def _check_theta(self, theta):
        return check_points("theta", theta, self.num_params).detach()

    def _check_pair(self, theta, velocity):
        theta = self._check_theta(theta)
        velocity = check_float64("velocity", velocity, ndim=(1, 2))
        if velocity.shape != theta.shape:
            raise ValueError(
                f"theta and velocity must have the same shape ([D] or [S, D]), got "
                f"{tuple(theta.shape)} and {tuple(velocity.shape)}."
            )
        return theta, velocity.detach()
