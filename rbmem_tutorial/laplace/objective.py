"""The frozen negative log posterior L(θ) of a regression model, and its curvature pieces.

Flow matching trains on fresh Monte-Carlo draws of (x_0, t) at every step. A Laplace
approximation and the geodesics of a Riemannian Laplace approximation need one fixed function of
the parameters, so we freeze K draws per training point. That turns flow matching into ordinary
regression, z_n = [x_t, t] ↦ y_n = x_1 − x_0, and gives the negative log posterior

.. math::

    L(θ) = \\frac{1}{2} \\sum_{n=1}^{N} \\sum_{j} \\frac{(f_θ(z_n)_j − y_{n,j})^2}{σ_j^2}
           + \\frac{λ}{2} \\lVert θ \\rVert^2,

a Gaussian likelihood with noise standard deviation σ (one number, or one per output dimension)
and a Gaussian prior θ ~ N(0, λ⁻¹ I), centred at zero unless a ``prior_mean`` m is given
(then λ/2 ‖θ − m‖²; :func:`~rbmem_tutorial.laplace.pipeline.fit_flow_posterior` centres it at
θ_SGD). Constants are dropped from L; they come back in the Laplace evidence
(:mod:`rbmem_tutorial.laplace.base`).

The frozen draws and σ come from :mod:`rbmem_tutorial.laplace.regression_set`, the refinement to a
stationary point from :mod:`rbmem_tutorial.laplace.refinement`, the KFAC factors from
:mod:`rbmem_tutorial.laplace.kronecker`; the package :mod:`rbmem_tutorial.laplace` gathers
their public names.

Everything here is float64 and a pure function of the flat parameter vector θ, whose entries
follow ``model.named_parameters()`` order (as ``torch.nn.utils.parameters_to_vector``). See
Gegenfurtner, Jacobsen & Arvanitidis, "Reducing Memorisation in Generative Models via Riemannian
Bayesian Inference" (arXiv 2602.00199), and Bergamin et al. 2023 (arXiv 2306.07158) for the
Riemannian Laplace approximation that consumes ``grad_and_hvp``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap

from rbmem_tutorial._checks import check_module, check_positive, check_positive_int, check_tensor
from rbmem_tutorial.laplace.kronecker import KroneckerFactors, kronecker_factors
from rbmem_tutorial.laplace.params import converted, linear_layers, parameters_vector, unflatten

__all__ = ["RegressionObjective"]


class RegressionObjective:
    """Negative log posterior of a regression model with Gaussian noise and a Gaussian prior.

    .. math::

        L(θ) = \\frac{1}{2} \\sum_n \\sum_j (f_θ(z_n)_j − y_{n,j})^2 / σ_j^2
               + \\frac{λ}{2} \\lVert θ − m \\rVert^2

    The prior is N(m, λ⁻¹ I). By default it is centred at zero, m = 0, so changing λ moves the
    minimiser; :func:`~rbmem_tutorial.laplace.pipeline.fit_flow_posterior` centres it at the trained
    parameters instead (``prior_mean``), which keeps the refined mode close to them.
    The model is copied to float64 on the device of ``inputs``; the caller's model is untouched.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of inputs [N, in] to outputs [N, out]. Examples must not interact (no batch
        norm); per-example Jacobians are taken with ``torch.func.vmap``.
    inputs : Tensor [N, in]
    targets : Tensor [N, out]
    noise_std : float or Tensor [out]
        σ, one for all outputs or one per output dimension; positive.
    prior_precision : float
        λ > 0.
    prior_mean : Tensor [D], optional
        m, the prior mean; zero when omitted.

    Attributes
    ----------
    model, inputs, targets, noise_std, prior_precision
        As given (model, inputs, targets in float64).
    num_params : int
        D, the length of θ.
    num_examples : int
        N.

    Example
    -------
    >>> lin = torch.nn.Linear(2, 1)
    >>> obj = RegressionObjective(lin, torch.randn(5, 2), torch.randn(5, 1), 0.5, 1.0)
    >>> theta = parameters_vector(obj.model)
    >>> g, hv = obj.grad_and_hvp(theta, torch.ones(3))
    >>> g.shape, hv.shape
    (torch.Size([3]), torch.Size([3]))
    """

    def __init__(self, model, inputs, targets, noise_std, prior_precision, prior_mean=None):
        check_module("model", model)
        inputs = check_tensor("inputs", inputs, ndim=2, min_rows=1)
        targets = check_tensor("targets", targets, ndim=2, min_rows=1)
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same number of rows, got {inputs.shape[0]} "
                f"and {targets.shape[0]}."
            )
        device = inputs.device
        self.model = converted(model, torch.float64, device)
        self.inputs = inputs.to(torch.float64)
        self.targets = targets.to(device=device, dtype=torch.float64)
        self.noise_std = _check_noise_std(noise_std, targets.shape[1], device)
        self.prior_precision = check_positive("prior_precision", prior_precision)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.prior_mean = None
        if prior_mean is not None:
            self.prior_mean = self.check_theta(prior_mean).detach().to(torch.float64)
        self.num_examples = inputs.shape[0]
        self._check_output_shape()

    # -- the function and its derivatives ----------------------------------------------------

    def predict(self, theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Model outputs f_θ(z) [N, out] as a pure function of θ (``functional_call``).

        Only shapes are checked here (no data-dependent checks), so ``predict`` also runs
        inside ``torch.func`` transforms such as ``vmap`` over θ.
        """
        if inputs is None:
            inputs = self.inputs
        elif inputs.ndim != 2 or inputs.shape[1] != self.inputs.shape[1]:
            raise ValueError(
                f"inputs must have shape [N, {self.inputs.shape[1]}] like the training inputs, "
                f"got shape {tuple(inputs.shape)}."
            )
        return self._forward(theta, inputs.to(device=self.inputs.device, dtype=torch.float64))

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """L(θ) as a 0-d float64 tensor (differentiable when θ requires grad)."""
        return self._loss(self.check_theta(theta))

    __call__ = value

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """∇L(θ) [D], by reverse mode (``torch.func.grad``)."""
        return grad(self._loss)(self.check_theta(theta))

    def grad_and_hvp(self, theta: torch.Tensor, v: torch.Tensor):
        """∇L(θ) and the Hessian-vector product ∇²L(θ) v, forward-over-reverse.

        ``torch.func.jvp`` of ``torch.func.grad(L)`` in direction v; a batch of directions
        v [S, D] is vmapped. No D×D matrix is formed.

        Returns
        -------
        grad : Tensor [D]
        hvp : Tensor [D], or [S, D] when v is [S, D]
        """
        theta = self.check_theta(theta)
        v = check_tensor("v", v, ndim=(1, 2)).to(theta)
        if v.shape[-1] != self.num_params:
            raise ValueError(
                f"v must have {self.num_params} entries in its last dimension (one per "
                f"parameter), got shape {tuple(v.shape)}."
            )

        def grad_and_tangent(direction):
            return jvp(grad(self._loss), (theta,), (direction,))

        if v.ndim == 1:
            return grad_and_tangent(v)
        grads, hvps = vmap(grad_and_tangent)(v)
        return grads[0], hvps

    def data_fit(self, theta: torch.Tensor) -> torch.Tensor:
        """The likelihood term ½ Σ_n Σ_j (f_θ(z_n)_j − y_{n,j})² / σ_j² (L without the prior)."""
        return self._data_fit(self.check_theta(theta))

    def with_prior_precision(self, prior_precision: float) -> RegressionObjective:
        """A copy with another λ (sharing model and data), e.g. after evidence tuning."""
        other = copy.copy(self)
        other.prior_precision = check_positive("prior_precision", prior_precision)
        return other

    def tilted(self, theta0: torch.Tensor) -> RegressionObjective:
        """A copy made stationary at θ0 by a linear term, the same Hessian everywhere.

        .. math::

            \\tilde L(θ) = L(θ) − ∇L(θ_0)^\\top (θ − θ_0)
                       = L_{m'}(θ) + \\text{const}, \\qquad m' = m + ∇L(θ_0)/λ,

        that is, the prior re-centred at m' (expand (λ/2)‖θ − m'‖²). The result is an
        ordinary ``RegressionObjective`` (the fused MLP kernel, weight subsets and mini-batches
        all apply), with the likelihood term, GGN and Hessian of L. It equals
        :func:`~rbmem_tutorial.laplace.subsets.anchored` ``(L, θ0, 0)`` up to a constant. The tilt
        belongs to this λ: :meth:`with_prior_precision` keeps m', so another λ leaves θ0 no
        longer stationary. The Laplace evidence of a tilted objective is that of the re-centred
        prior, not of the model; tune λ on L itself.

        Example
        -------
        >>> lin = torch.nn.Linear(2, 1)
        >>> obj = RegressionObjective(lin, torch.randn(6, 2), torch.randn(6, 1), 1.0, 2.0)
        >>> theta0 = torch.ones(3, dtype=torch.float64)
        >>> float(obj.tilted(theta0).grad(theta0).abs().max()) < 1e-12
        True
        """
        theta0 = self.check_theta(theta0).detach()
        mean = torch.zeros_like(theta0) if self.prior_mean is None else self.prior_mean
        other = copy.copy(self)
        other.prior_mean = mean + self.grad(theta0) / self.prior_precision
        return other

    # -- curvature pieces for Laplace -------------------------------------------------------

    def jacobian(
        self,
        theta: torch.Tensor,
        inputs: torch.Tensor | None = None,
        *,
        columns: slice | None = None,
        chunk_size: int = 256,
    ) -> torch.Tensor:
        """Per-example Jacobians J_n = ∂f_θ(z_n)/∂θ, stacked to [N, out, D].

        ``columns`` restricts to a contiguous block of θ (e.g. the last layer), giving
        [N, out, k]. Computed ``chunk_size`` examples at a time (vmap of jacrev).
        """
        return torch.cat(list(self._jacobian_chunks(theta, inputs, columns, chunk_size)))

    def ggn(
        self, theta: torch.Tensor, *, columns: slice | None = None, chunk_size: int = 256
    ) -> torch.Tensor:
        """Generalised Gauss-Newton of the likelihood term, Σ_n J_nᵀ diag(1/σ²) J_n  [D, D].

        The Hessian of L is this plus λI plus a term weighted by the residuals, which the GGN
        drops; it is positive semi-definite. ``columns`` restricts to a block of θ.
        """
        width = self._columns(columns).stop - self._columns(columns).start
        total = torch.zeros(width, width, dtype=torch.float64, device=self.inputs.device)
        weights = self.precision_weights().sqrt()[:, None]
        for jac in self._jacobian_chunks(theta, None, columns, chunk_size):
            scaled = (jac * weights).reshape(-1, width)
            total += scaled.T @ scaled
        return total

    def ggn_diagonal(self, theta: torch.Tensor, *, chunk_size: int = 256) -> torch.Tensor:
        """Exact diagonal of the GGN, Σ_n Σ_j J_{n,j,d}² / σ_j²  [D], without a D×D matrix.

        From per-example Jacobians, ``chunk_size`` examples at a time; for a plain MLP,
        :func:`rbmem_tutorial.laplace.fast_mlp.ggn_diagonal` gives the same diagonal layer by layer.
        """
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.inputs.device)
        weights = self.precision_weights()[:, None]
        for jac in self._jacobian_chunks(theta, None, None, chunk_size):
            total += (jac.square() * weights).sum(dim=(0, 1))
        return total

    def kronecker_factors(
        self, theta: torch.Tensor, *, chunk_size: int = 256
    ) -> list[KroneckerFactors]:
        """KFAC factors (A, G) of every ``nn.Linear`` layer, in module order
        (:func:`~rbmem_tutorial.laplace.kronecker.kronecker_factors`)."""
        return kronecker_factors(self, theta, chunk_size=chunk_size)

    def linear_layer_slices(self) -> list[tuple[str, slice, slice | None]]:
        """(name, weight slice, bias slice or None) of every ``nn.Linear`` layer, in order."""
        return [(name, weight, bias) for name, _, weight, bias in linear_layers(self.model)]

    def prior_offset(self, theta: torch.Tensor) -> torch.Tensor:
        """θ − m, the displacement from the prior mean (θ itself when m = 0)."""
        return theta if self.prior_mean is None else theta - self.prior_mean

    def precision_weights(self) -> torch.Tensor:
        """1/σ_j² as a tensor [out]."""
        out = self.targets.shape[1]
        return (1.0 / self.noise_std**2) * torch.ones(
            out, dtype=torch.float64, device=self.targets.device
        )

    def check_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """θ checked against the model (a finite vector of length D), as float64 on the
        objective's device; a clear error otherwise."""
        theta = check_tensor("theta", theta, ndim=1)
        if theta.shape[0] != self.num_params:
            raise ValueError(
                f"theta has {theta.shape[0]} entries but the model has {self.num_params} "
                "parameters; build it with parameters_vector(model) for this architecture."
            )
        return theta.to(device=self.inputs.device, dtype=torch.float64)

    # -- internals ---------------------------------------------------------------------------

    def _forward(self, theta, inputs):
        return functional_call(self.model, unflatten(self.model, theta), (inputs,))

    def _data_fit(self, theta):
        residual = self._forward(theta, self.inputs) - self.targets
        return 0.5 * (residual.square() * self.precision_weights()).sum()

    def _loss(self, theta):
        prior = self.prior_offset(theta).square().sum()
        return self._data_fit(theta) + 0.5 * self.prior_precision * prior

    def _check_inputs(self, inputs):
        inputs = check_tensor("inputs", inputs, ndim=2, min_rows=1)
        if inputs.shape[1] != self.inputs.shape[1]:
            raise ValueError(
                f"inputs must have {self.inputs.shape[1]} columns like the training inputs, "
                f"got shape {tuple(inputs.shape)}."
            )
        return inputs.to(device=self.inputs.device, dtype=torch.float64)

    def _check_output_shape(self):
        with torch.no_grad():
            out = self.predict(parameters_vector(self.model), self.inputs[:1])
        if out.ndim != 2 or out.shape[1] != self.targets.shape[1]:
            raise ValueError(
                f"the model maps inputs [N, {self.inputs.shape[1]}] to shape "
                f"{tuple(out.shape)} but targets have {self.targets.shape[1]} columns; "
                "make the model's output match the targets."
            )

    def _columns(self, columns):
        if columns is None:
            return slice(0, self.num_params)
        inside = columns.start is not None and 0 <= columns.start < columns.stop <= self.num_params
        if columns.step not in (None, 1) or not inside:
            raise ValueError(
                f"columns must be a contiguous slice inside [0, {self.num_params}), got {columns}."
            )
        return columns

    def _jacobian_chunks(self, theta, inputs, columns, chunk_size) -> Iterator[torch.Tensor]:
        theta = self.check_theta(theta).detach()
        inputs = self.inputs if inputs is None else self._check_inputs(inputs)
        cols = self._columns(columns)
        head, tail = theta[: cols.start], theta[cols.stop :]

        def single(block, z):
            full = torch.cat([head, block, tail])
            return self._forward(full, z.unsqueeze(0)).squeeze(0)

        per_example = vmap(jacrev(single), in_dims=(None, 0))
        step = check_positive_int("chunk_size", chunk_size)
        for start in range(0, inputs.shape[0], step):
            yield per_example(theta[cols], inputs[start : start + step])

def _check_noise_std(noise_std, out_dim, device):
    if not isinstance(noise_std, torch.Tensor) or noise_std.ndim == 0:
        return check_positive("noise_std", noise_std)
    noise_std = check_tensor("noise_std", noise_std, ndim=1)
    if noise_std.shape[0] != out_dim or not bool((noise_std > 0).all()):
        raise ValueError(
            f"noise_std must be a positive number or a positive tensor [{out_dim}] (one per "
            f"output), got {noise_std.tolist()}."
        )
    return noise_std.to(device=device, dtype=torch.float64)
