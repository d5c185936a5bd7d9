"""The frozen negative log posterior L(θ) of a regression model, and its curvature pieces.

Flow matching trains on fresh Monte-Carlo draws of (x_0, t) at every step. A Laplace
approximation and the geodesics of a Riemannian Laplace approximation need one fixed function of
the parameters, so we freeze K draws per training point. That turns flow matching into ordinary
regression, z_n = [x_t, t] ↦ y_n = x_1 − x_0, and gives the negative log posterior

.. math::

    L(θ) = \\frac{1}{2} \\sum_{n=1}^{N} \\sum_{j} \\frac{(f_θ(z_n)_j − y_{n,j})^2}{σ_j^2}
           + \\frac{λ}{2} \\lVert θ \\rVert^2,

a Gaussian likelihood with noise standard deviation σ (one number, or one per output dimension)
and a Gaussian prior θ ~ N(0, λ⁻¹ I) **centred at zero**. Constants are dropped from L; they
come back in the Laplace evidence (:mod:`rbmem_tutorial.laplace`).

Everything here is float64 and a pure function of the flat parameter vector θ, whose entries
follow ``model.named_parameters()`` order (as ``torch.nn.utils.parameters_to_vector``). See
Gegenfurtner, Jacobsen & Arvanitidis, "Reducing Memorisation in Generative Models via Riemannian
Bayesian Inference" (arXiv 2602.00199), and Bergamin et al. 2023 (arXiv 2306.07158) for the
Riemannian Laplace approximation that consumes ``grad_and_hvp``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

from rbmem_tutorial._checks import check_positive, check_positive_int, check_tensor

__all__ = [
    "KroneckerFactors",
    "RefineRecord",
    "RegressionObjective",
    "flow_matching_regression_set",
    "noise_std_from_residuals",
    "parameters_vector",
    "refine_map",
    "unflatten",
]


def parameters_vector(model: nn.Module) -> torch.Tensor:
    """Return the model's parameters as one detached flat vector, in ``named_parameters`` order.

    Example
    -------
    >>> parameters_vector(torch.nn.Linear(3, 2)).shape
    torch.Size([8])
    """
    _check_module("model", model)
    return torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])


def unflatten(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat vector θ into a ``{name: tensor}`` dict like ``model.named_parameters()``.

    The tensors are views of θ, so gradients flow back to θ and the function works under
    ``torch.func.vmap`` (θ batched) as well. Use the result with
    ``torch.func.functional_call(model, unflatten(model, theta), args)``.

    Example
    -------
    >>> lin = torch.nn.Linear(3, 2)
    >>> params = unflatten(lin, torch.arange(8.0))
    >>> params["bias"].tolist()
    [6.0, 7.0]
    """
    _check_module("model", model)
    count = sum(p.numel() for p in model.parameters())
    if theta.shape[-1] != count:
        raise ValueError(
            f"theta has {theta.shape[-1]} entries but the model has {count} parameters; "
            "build theta with parameters_vector(model) from the same architecture."
        )
    params, offset = {}, 0
    for name, p in model.named_parameters():
        params[name] = theta[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    return params


def flow_matching_regression_set(
    train: torch.Tensor, draws_per_point: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Freeze K draws of (x_0, t) per training point: flow matching as a fixed regression set.

    For every training point x_1 and draw k, x_0 ~ N(0, I) and t ~ U[0, 1] give the input
    z = [x_t, t] with x_t = (1 − t) x_0 + t x_1 and the target y = x_1 − x_0 (the linear-path
    velocity of Lipman et al. 2022, arXiv 2210.02747). Rows are ordered point by point
    (row n·K + k is draw k of point n).

    Parameters
    ----------
    train : Tensor [N, d]
        Training points x_1.
    draws_per_point : int
        K, the number of frozen (x_0, t) draws per point.
    seed : int
        Seed of the draws; the same seed gives the same set.

    Returns
    -------
    inputs : Tensor [N·K, d + 1]
        ``[x_t, t]`` in float64, on the device of ``train``.
    targets : Tensor [N·K, d]
        ``x_1 − x_0`` in float64.

    Example
    -------
    >>> z, y = flow_matching_regression_set(torch.zeros(4, 2), draws_per_point=3, seed=0)
    >>> z.shape, y.shape
    (torch.Size([12, 3]), torch.Size([12, 2]))
    """
    train = check_tensor("train", train, ndim=2, min_rows=1)
    k = check_positive_int("draws_per_point", draws_per_point)
    generator = torch.Generator().manual_seed(int(seed))
    n, d = train.shape
    x0 = torch.randn(n, k, d, generator=generator, dtype=torch.float64)
    t = torch.rand(n, k, 1, generator=generator, dtype=torch.float64)
    x0, t = x0.to(train.device), t.to(train.device)
    x1 = train.to(torch.float64).unsqueeze(1)
    xt = (1 - t) * x0 + t * x1
    inputs = torch.cat([xt, t], dim=-1).reshape(n * k, d + 1)
    targets = (x1 - x0).reshape(n * k, d)
    return inputs, targets


@dataclass(frozen=True)
class KroneckerFactors:
    """Kronecker factors of one ``nn.Linear`` layer (KFAC; Martens & Grosse 2015).

    The layer's weight W [out, in] and bias b are gathered into the augmented matrix
    [W | b] of shape [out, in + 1] (no bias column without a bias). In that matrix's row-major
    layout, the layer's block of the GGN is approximated by ``num_examples · G ⊗ A`` with

    - ``A = (1/N) Σ_n a_n a_nᵀ``, a_n = [layer input; 1], shape [in + 1, in + 1];
    - ``G = (1/N) Σ_n Σ_j g_{n,j} g_{n,j}ᵀ / σ_j²``, g_{n,j} = ∂f_θ(z_n)_j / ∂(layer output),
      shape [out, out]. The likelihood precision 1/σ² is folded into G.

    ``weight`` and ``bias`` are the slices of the flat θ that hold W (row-major) and b.
    """

    name: str
    A: torch.Tensor
    G: torch.Tensor
    weight: slice
    bias: slice | None


@dataclass(frozen=True)
class RefineRecord:
    """What :func:`refine_map` did: loss and gradient norm before and after, and the cost."""

    loss_before: float
    loss_after: float
    grad_norm_before: float
    grad_norm_after: float
    lbfgs_evaluations: int
    newton_steps: int
    converged: bool


class RegressionObjective:
    """Negative log posterior of a regression model with Gaussian noise and a Gaussian prior.

    .. math::

        L(θ) = \\frac{1}{2} \\sum_n \\sum_j (f_θ(z_n)_j − y_{n,j})^2 / σ_j^2
               + \\frac{λ}{2} \\lVert θ − m \\rVert^2

    The prior is N(m, λ⁻¹ I). By default it is centred at zero, m = 0, so changing λ moves the
    minimiser; :func:`~rbmem_tutorial.pipeline.fit_flow_posterior` centres it at the trained
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
        _check_module("model", model)
        inputs = check_tensor("inputs", inputs, ndim=2, min_rows=1)
        targets = check_tensor("targets", targets, ndim=2, min_rows=1)
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same number of rows, got {inputs.shape[0]} "
                f"and {targets.shape[0]}."
            )
        device = inputs.device
        self.model = _converted(model, torch.float64, device)
        self.inputs = inputs.to(torch.float64)
        self.targets = targets.to(device=device, dtype=torch.float64)
        self.noise_std = _check_noise_std(noise_std, targets.shape[1], device)
        self.prior_precision = check_positive("prior_precision", prior_precision)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.prior_mean = None
        if prior_mean is not None:
            self.prior_mean = self._check_theta(prior_mean).detach().to(torch.float64)
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
        return self._loss(self._check_theta(theta))

    __call__ = value

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """∇L(θ) [D], by reverse mode (``torch.func.grad``)."""
        return grad(self._loss)(self._check_theta(theta))

    def grad_and_hvp(self, theta: torch.Tensor, v: torch.Tensor):
        """∇L(θ) and the Hessian-vector product ∇²L(θ) v, forward-over-reverse.

        ``torch.func.jvp`` of ``torch.func.grad(L)`` in direction v; a batch of directions
        v [S, D] is vmapped. No D×D matrix is formed.

        Returns
        -------
        grad : Tensor [D]
        hvp : Tensor [D], or [S, D] when v is [S, D]
        """
        theta = self._check_theta(theta)
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
        return self._data_fit(self._check_theta(theta))

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
        :func:`~rbmem_tutorial.subsets.anchored` ``(L, θ0, 0)`` up to a constant. The tilt
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
        theta0 = self._check_theta(theta0).detach()
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
        weights = self._precision_weights().sqrt()[:, None]
        for jac in self._jacobian_chunks(theta, None, columns, chunk_size):
            scaled = (jac * weights).reshape(-1, width)
            total += scaled.T @ scaled
        return total

    def ggn_diagonal(self, theta: torch.Tensor, *, chunk_size: int = 256) -> torch.Tensor:
        """Exact diagonal of the GGN, Σ_n Σ_j J_{n,j,d}² / σ_j²  [D], without a D×D matrix."""
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.inputs.device)
        weights = self._precision_weights()[:, None]
        for jac in self._jacobian_chunks(theta, None, None, chunk_size):
            total += (jac.square() * weights).sum(dim=(0, 1))
        return total

    def kronecker_factors(
        self, theta: torch.Tensor, *, chunk_size: int = 256
    ) -> list[KroneckerFactors]:
        """KFAC factors (A, G) of every ``nn.Linear`` layer, in module order.

        See :class:`KroneckerFactors` for the definitions. Each layer must run exactly once per
        forward pass, and the ``nn.Linear`` layers must hold all of the model's parameters.
        """
        theta = self._check_theta(theta)
        layers = self._linear_layers()
        self._check_linear_cover(layers)
        a_sums = [None] * len(layers)
        g_sums = [None] * len(layers)
        weights = self._precision_weights()
        for start in range(0, self.num_examples, check_positive_int("chunk_size", chunk_size)):
            chunk = self.inputs[start : start + chunk_size]
            acts, grads = self._layer_inputs_and_output_grads(theta, chunk, layers)
            for k in range(len(layers)):
                a_part = acts[k].T @ acts[k]
                g_part = torch.einsum("jno,jnp,j->op", grads[k], grads[k], weights)
                a_sums[k] = a_part if a_sums[k] is None else a_sums[k] + a_part
                g_sums[k] = g_part if g_sums[k] is None else g_sums[k] + g_part
        n = self.num_examples
        return [
            KroneckerFactors(name, a_sums[k] / n, g_sums[k] / n, weight, bias)
            for k, (name, _, weight, bias) in enumerate(layers)
        ]

    def linear_layer_slices(self) -> list[tuple[str, slice, slice | None]]:
        """(name, weight slice, bias slice or None) of every ``nn.Linear`` layer, in order."""
        return [(name, weight, bias) for name, _, weight, bias in self._linear_layers()]

    # -- internals ---------------------------------------------------------------------------

    def _forward(self, theta, inputs):
        return functional_call(self.model, unflatten(self.model, theta), (inputs,))

    def _data_fit(self, theta):
        residual = self._forward(theta, self.inputs) - self.targets
        return 0.5 * (residual.square() * self._precision_weights()).sum()

    def _loss(self, theta):
        prior = self.prior_offset(theta).square().sum()
        return self._data_fit(theta) + 0.5 * self.prior_precision * prior

    def prior_offset(self, theta: torch.Tensor) -> torch.Tensor:
        """θ − m, the displacement from the prior mean (θ itself when m = 0)."""
        return theta if self.prior_mean is None else theta - self.prior_mean

    def _precision_weights(self):
        """1/σ_j² as a tensor [out]."""
        out = self.targets.shape[1]
        return (1.0 / self.noise_std**2) * torch.ones(
            out, dtype=torch.float64, device=self.targets.device
        )

    def _check_theta(self, theta):
        theta = check_tensor("theta", theta, ndim=1)
        if theta.shape[0] != self.num_params:
            raise ValueError(
                f"theta has {theta.shape[0]} entries but the model has {self.num_params} "
                "parameters; build it with parameters_vector(model) for this architecture."
            )
        return theta.to(device=self.inputs.device, dtype=torch.float64)

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
        theta = self._check_theta(theta).detach()
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

    def _linear_layers(self):
        offsets, offset = {}, 0
        for name, p in self.model.named_parameters():
            offsets[name] = slice(offset, offset + p.numel())
            offset += p.numel()
        layers = []
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            prefix = f"{name}." if name else ""
            weight = offsets[prefix + "weight"]
            bias = offsets[prefix + "bias"] if module.bias is not None else None
            layers.append((name, module, weight, bias))
        return layers

    def _check_linear_cover(self, layers):
        covered = sum(module.weight.numel() for _, module, _, _ in layers)
        covered += sum(module.bias.numel() for _, module, _, b in layers if b is not None)
        if covered != self.num_params:
            raise ValueError(
                f"KFAC needs every parameter to sit in an nn.Linear layer, but nn.Linear layers "
                f"hold {covered} of the model's {self.num_params} parameters. Use structure "
                "'diag' or 'full'."
            )

    def _layer_inputs_and_output_grads(self, theta, chunk, layers):
        """Augmented layer inputs [n, in(+1)] and output gradients [out_dim, n, out] per layer."""
        records = {id(module): [] for _, module, _, _ in layers}

        def hook(module, args, output):
            records[id(module)].append((args[0], output))

        handles = [module.register_forward_hook(hook) for _, module, _, _ in layers]
        try:
            outputs = self._forward(theta.detach().requires_grad_(True), chunk)
        finally:
            for handle in handles:
                handle.remove()
        acts, layer_outputs = [], []
        for name, module, _, bias in layers:
            calls = records[id(module)]
            if len(calls) != 1:
                raise ValueError(
                    f"KFAC needs layer {name!r} to run exactly once per forward pass, but it "
                    f"ran {len(calls)} times. Use structure 'diag' or 'full'."
                )
            a, s = calls[0]
            a = a.detach().reshape(-1, module.in_features)
            if bias is not None:
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            acts.append(a)
            layer_outputs.append(s)
        # Examples do not interact, so one backward pass of Σ_n f_θ(z_n)_j gives g_{n,j} for all n.
        per_output = [
            torch.autograd.grad(outputs[:, j].sum(), layer_outputs, retain_graph=True)
            for j in range(outputs.shape[1])
        ]
        grads = []
        for k, (_, module, _, _) in enumerate(layers):
            grads.append(torch.stack([g[k].reshape(-1, module.out_features) for g in per_output]))
        return acts, grads


def noise_std_from_residuals(
    source: RegressionObjective | nn.Module,
    theta: torch.Tensor,
    inputs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    per_dimension: bool = False,
) -> float | torch.Tensor:
    """σ from the residuals at θ*: σ² = (1/(N·out)) Σ_n Σ_j (f_θ*(z_n)_j − y_{n,j})².

    This is the maximum-likelihood noise variance of the Gaussian likelihood at θ*, pooled over
    the output dimensions (the residual variance per output dimension). With
    ``per_dimension=True`` each output j gets its own σ_j² = (1/N) Σ_n r_{n,j}², returned as a
    float64 tensor [out]; otherwise a float.

    ``source`` is a :class:`RegressionObjective` (its data are used unless ``inputs`` and
    ``targets`` are given) or an ``nn.Module`` (then both are required).

    Example
    -------
    >>> lin = torch.nn.Linear(1, 1)
    >>> z = torch.randn(20, 1)
    >>> round(noise_std_from_residuals(lin, parameters_vector(lin), z, lin(z).detach() + 1), 6)
    1.0
    """
    if isinstance(source, RegressionObjective):
        inputs = source.inputs if inputs is None else inputs
        targets = source.targets if targets is None else targets
        source = source.model
    if inputs is None or targets is None:
        raise ValueError("pass inputs and targets when source is a model, not an objective.")
    objective = RegressionObjective(source, inputs, targets, 1.0, 1.0)
    with torch.no_grad():
        residual = objective.predict(objective._check_theta(theta)) - objective.targets
    variance = residual.square().mean(dim=0) if per_dimension else residual.square().mean()
    if bool((variance <= 0).any()):
        raise ValueError(
            "the residuals at theta are all zero, so the noise variance would be 0; "
            "pass a positive noise_std yourself."
        )
    return variance.sqrt() if per_dimension else float(variance.sqrt())


def refine_map(
    objective: RegressionObjective,
    theta: torch.Tensor,
    *,
    gtol: float = 1e-6,
    max_iter: int = 1000,
    history_size: int = 50,
    newton_steps: int = 10,
) -> tuple[torch.Tensor, RefineRecord]:
    """Refine θ to a stationary point of the frozen objective: L-BFGS, then Newton-CG polish.

    SGD on fresh draws ends near, but not at, a minimiser of the frozen L, and Laplace and the
    geodesic sampler assume ∇L(θ*) = 0. Two phases, both on a float64 copy of θ:

    1. ``torch.optim.LBFGS`` with a strong-Wolfe line search, until the largest gradient entry
       is below ``gtol`` or ``max_iter`` iterations pass. Its line search compares loss
       values, so it stalls once the decrease is at rounding level (‖∇L‖ of roughly
       sqrt(ε·L·‖∇²L‖)).
    2. Up to ``newton_steps`` Newton steps θ ← θ − H⁻¹∇L, H v by :meth:`grad_and_hvp` and the
       solve by conjugate gradients (stopped at negative curvature). They use gradients only,
       so they go below that level; a step is kept only if it lowers ‖∇L‖.

    Returns
    -------
    theta : Tensor [D]
        The refined float64 parameters (the input is not modified).
    record : RefineRecord
        Loss and ‖∇L‖₂ before and after, the cost, and whether ``gtol`` was met.

    Example
    -------
    >>> lin = torch.nn.Linear(2, 1)
    >>> obj = RegressionObjective(lin, torch.randn(8, 2), torch.randn(8, 1), 1.0, 1.0)
    >>> theta, record = refine_map(obj, parameters_vector(obj.model))
    >>> record.converged
    True
    """
    if not isinstance(objective, RegressionObjective):
        raise TypeError("objective must be a RegressionObjective.")
    gtol = check_positive("gtol", gtol)
    newton_steps = check_positive_int("newton_steps", newton_steps, minimum=0)
    start = objective._check_theta(theta).detach().clone()
    param = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [param],
        lr=1.0,
        max_iter=check_positive_int("max_iter", max_iter),
        max_eval=2 * max_iter,
        tolerance_grad=gtol,
        tolerance_change=0.0,
        history_size=check_positive_int("history_size", history_size),
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = objective.value(param)
        loss.backward()
        return loss

    optimizer.step(closure)
    refined, gradient = param.detach(), objective.grad(param.detach())
    steps_taken = 0
    while steps_taken < newton_steps and gradient.abs().max() > gtol:
        candidate = refined + _conjugate_gradient(objective, refined, -gradient)
        candidate_gradient = objective.grad(candidate)
        if candidate_gradient.norm() >= gradient.norm():
            break
        refined, gradient, steps_taken = candidate, candidate_gradient, steps_taken + 1
    record = RefineRecord(
        loss_before=float(objective.value(start)),
        loss_after=float(objective.value(refined)),
        grad_norm_before=float(objective.grad(start).norm()),
        grad_norm_after=float(gradient.norm()),
        lbfgs_evaluations=int(optimizer.state[param]["func_evals"]),
        newton_steps=steps_taken,
        converged=bool(gradient.abs().max() <= gtol),
    )
    return refined, record


def _conjugate_gradient(objective, theta, rhs, max_iter=250, rtol=1e-12):
    """Approximately solve ∇²L(θ) x = rhs by CG; stop early at non-positive curvature."""
    x = torch.zeros_like(rhs)
    residual, direction = rhs.clone(), rhs.clone()
    res_sq = residual @ residual
    for _ in range(min(max_iter, rhs.numel())):
        curvature_vector = objective.grad_and_hvp(theta, direction)[1]
        curvature = direction @ curvature_vector
        if curvature <= 0:
            break
        step = res_sq / curvature
        x = x + step * direction
        residual = residual - step * curvature_vector
        new_res_sq = residual @ residual
        if new_res_sq.sqrt() <= rtol * rhs.norm():
            break
        direction = residual + (new_res_sq / res_sq) * direction
        res_sq = new_res_sq
    return x


def _check_module(name, model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}.")


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


def _converted(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A copy of ``model`` with parameters and buffers of ``dtype`` on ``device``."""
    return copy.deepcopy(model).to(device=device, dtype=dtype)
