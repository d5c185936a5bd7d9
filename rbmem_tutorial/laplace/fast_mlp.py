"""Gradient, Hessian-vector product and curvature of an MLP regression loss, hand-written.

For ``nn.Sequential(Linear, act, Linear, ..., act, Linear)`` with ``act`` SiLU or Tanh and

    L(θ) = 1/(2σ²) Σ_n ‖f_θ(z_n) − y_n‖² + (λ/2) ‖θ‖²,

the gradient comes from backpropagation and the Hessian-vector product ``∇²L(θ) v`` from
Pearlmutter's R-operator ``R{·} = d/dε (·)(θ + εv)|₀`` (Pearlmutter 1994, "Fast exact
multiplication by the Hessian"), applied to every line of the forward and backward pass:

    a_l = h_{l−1} W_lᵀ + b_l            R a_l = R h_{l−1} W_lᵀ + h_{l−1} V_lᵀ + c_l
    h_l = φ(a_l)                        R h_l = φ'(a_l) R a_l
    δ_L = (a_L − y)/σ²                  R δ_L = R a_L / σ²
    ∂W_l = δ_lᵀ h_{l−1}                 R ∂W_l = R δ_lᵀ h_{l−1} + δ_lᵀ R h_{l−1}
    e_l = δ_l W_l                       R e_l = R δ_l W_l + δ_l V_l
    δ_{l−1} = φ'(a_{l−1}) e_l           R δ_{l−1} = φ''(a_{l−1}) R a_{l−1} e_l + φ'(a_{l−1}) R e_l

with ``(V_l, c_l)`` the blocks of ``v``. The prior N(m, λ⁻¹I) adds ``λ(θ − m)`` and ``λv``.

A geodesic needs only the scalar curvature ``vᵀ∇²L v``, not the whole product. It is the second
derivative of ``L(θ + εv)`` at ε = 0, so a second-order forward pass gives it without the
R-backward pass (two fewer matmuls per hidden layer, and less elementwise work):

    R²a_l = R²h_{l−1} W_lᵀ + 2 R h_{l−1} V_lᵀ,     R²h_l = φ''(a_l) (R a_l)² + φ'(a_l) R²a_l,
    vᵀ∇²L v = Σ_n ((R f_n)² + (f_n − y_n) R²f_n) / σ² + λ ‖v‖²,   f = a_L.

Explicit matmuls with leading batch dimensions let ``S`` parameter vectors (each with its own
direction) share one pass, which is what batched geodesic solves need
(:mod:`rbmem_tutorial.riemannian`).

A :class:`~rbmem_tutorial.flows.nets.RegressionAdapter` around a
:class:`~rbmem_tutorial.flows.nets.VelocityMLP` is supported too: its fixed input features of
``z = [x_t, t]`` are computed once and its ``net`` is the Sequential above.
"""

from __future__ import annotations

import torch
from torch import nn

from rbmem_tutorial._checks import check_positive, check_tensor
from rbmem_tutorial.flows.nets import RegressionAdapter, VelocityMLP
from rbmem_tutorial.laplace.objective import RegressionObjective


def _silu(a):
    """φ, φ', φ'' of SiLU with s = sigmoid(a): as, s + as(1 − s), s(1 − s)(2 + a(1 − 2s))."""
    s = torch.sigmoid(a)
    rest = 1 - s
    phi = a * s
    return phi, torch.addcmul(s, phi, rest), (s * rest).mul_((a * (rest - s)).add_(2))


def _tanh(a):
    """φ, φ', φ'' of tanh: t, 1 − t², −2t(1 − t²)."""
    t = torch.tanh(a)
    d1 = 1 - t * t
    return t, d1, (t * d1).mul_(-2)


ACTIVATIONS = {nn.SiLU: _silu, nn.Tanh: _tanh}


def _sequential(model):
    """The ``nn.Sequential`` that computes ``model`` (after fixed input features)."""
    if isinstance(model, RegressionAdapter) and type(model.velocity_net) is VelocityMLP:
        return model.velocity_net.net
    return model


def _network_inputs(model, inputs):
    """What the Sequential of ``model`` sees for regression inputs ``z``."""
    if model is _sequential(model):
        return inputs
    return model.velocity_net.features(inputs[:, :-1], inputs[:, -1])


def _layer_plan(model):
    """``[(linear, activation or None), ...]`` for a supported MLP, else ``None``."""
    owner, model = model, _sequential(model)
    if not isinstance(model, nn.Sequential) or len(model) % 2 == 0:
        return None
    linears, activations = list(model)[::2], list(model)[1::2]
    if not all(type(layer) is nn.Linear for layer in linears):
        return None
    if not all(type(act) in ACTIVATIONS for act in activations):
        return None
    if sum(p.numel() for p in model.parameters()) != sum(p.numel() for p in owner.parameters()):
        return None
    return list(zip(linears, [ACTIVATIONS[type(a)] for a in activations] + [None], strict=True))


def supports_model(model) -> bool:
    """True for ``nn.Sequential(Linear, SiLU|Tanh, Linear, ..., Linear)``, bare or as the
    ``net`` of a ``VelocityMLP`` inside a ``RegressionAdapter``."""
    return _layer_plan(model) is not None


def supports(objective) -> bool:
    """True if ``objective`` is a plain ``RegressionObjective`` on a supported MLP.

    Subclasses may change the loss, so only the exact class qualifies.
    """
    return type(objective) is RegressionObjective and supports_model(objective.model)


def _noise_variance(noise_std, targets):
    if not isinstance(noise_std, torch.Tensor) or noise_std.ndim == 0:
        return check_positive("noise_std", noise_std) ** 2
    noise_std = check_tensor("noise_std", noise_std, ndim=1)
    if noise_std.shape != targets.shape[1:] or not bool((noise_std > 0).all()):
        raise ValueError(
            f"noise_std must be positive, one number or one per output [{targets.shape[1]}], "
            f"got {noise_std.tolist()}."
        )
    return noise_std.to(targets) ** 2


class MLPRegressionKernel:
    """Gradient with the HVP ``∇²L(θ) v`` or the curvature ``vᵀ∇²L(θ) v``, for the MLP
    regression loss in the module docstring.

    Parameters
    ----------
    model : nn.Module
        Linear layers separated by SiLU or Tanh (see :func:`supports_model`); only its
        architecture is used, θ is flat in ``model.named_parameters()`` order.
    inputs, targets : Tensor
        ``[N, in]`` and ``[N, out]`` regression pairs.
    noise_std : float or Tensor
        σ, one number or one per output ``[out]``.
    prior_precision : float
        λ.
    prior_mean : Tensor [D], optional
        m, the prior mean (zero when omitted): the prior term of the gradient is λ(θ − m).

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 2)).double()
    >>> z, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    >>> kernel = MLPRegressionKernel(model, z, y, noise_std=0.5, prior_precision=2.0)
    >>> theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    >>> v = torch.ones_like(theta)
    >>> grad, hvp = kernel.grad_and_hvp(theta, v)
    >>> grad.shape, hvp.shape
    (torch.Size([50]), torch.Size([50]))
    >>> bool(torch.isclose(kernel.grad_and_curvature(theta, v)[1], v @ hvp))
    True
    """

    def __init__(self, model, inputs, targets, *, noise_std: float, prior_precision: float,
                 prior_mean=None):
        plan = _layer_plan(model)
        if plan is None:
            raise TypeError(
                "model must be nn.Sequential(Linear, SiLU|Tanh, Linear, ..., Linear); use the "
                "objective's own grad_and_hvp for other architectures."
            )
        inputs = check_tensor("inputs", inputs, ndim=2, min_rows=1)
        self.targets = check_tensor("targets", targets, ndim=2, min_rows=1)
        if len(inputs) != len(self.targets):
            raise ValueError(
                f"inputs and targets need the same number of rows, got {len(inputs)} "
                f"and {len(self.targets)}."
            )
        with torch.no_grad():
            self.inputs = _network_inputs(model, inputs)
        self.noise_var = _noise_variance(noise_std, self.targets)
        self.prior_precision = check_positive("prior_precision", prior_precision, allow_zero=True)
        self.prior_mean = prior_mean
        self.activations = [activation for _, activation in plan]
        self.slices = []
        offset = 0
        for linear, _ in plan:
            weight = (offset, offset + linear.weight.numel(), tuple(linear.weight.shape))
            offset = weight[1]
            bias = None
            if linear.bias is not None:
                bias = (offset, offset + linear.bias.numel())
                offset = bias[1]
            self.slices.append((weight, bias))
        self.num_params = offset

    @classmethod
    def from_objective(cls, objective) -> MLPRegressionKernel:
        """The kernel for a ``RegressionObjective`` that :func:`supports` accepts."""
        return cls(
            objective.model,
            objective.inputs,
            objective.targets,
            noise_std=objective.noise_std,
            prior_precision=objective.prior_precision,
            prior_mean=getattr(objective, "prior_mean", None),
        )

    def _blocks(self, flat):
        """``[(W, b or None), ...]`` views of ``flat [..., D]``."""
        blocks = []
        for (start, stop, shape), bias in self.slices:
            weight = flat[..., start:stop].unflatten(-1, shape)
            blocks.append((weight, None if bias is None else flat[..., bias[0] : bias[1]]))
        return blocks

    def grad_and_hvp(self, theta, v) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient at ``theta`` and Hessian-vector product with ``v`` (shapes broadcast).

        ``theta`` and ``v`` are ``[..., D]``; leading dimensions batch independent points.
        The gradient keeps the shape of ``theta`` (one point, several directions gives one
        gradient). No input checks here: the geodesic solver calls this hundreds of times.
        """
        theta_shape = theta.shape
        theta, v = torch.broadcast_tensors(theta, v)
        params, tangents = self._blocks(theta), self._blocks(v)
        h, rh = self.inputs, None
        saved = []
        for (weight, bias), (d_weight, d_bias), activation in zip(
            params, tangents, self.activations, strict=True
        ):
            a, ra = h @ weight.mT, h @ d_weight.mT
            if rh is not None:
                ra += rh @ weight.mT
            if bias is not None:
                a += bias.unsqueeze(-2)
                ra += d_bias.unsqueeze(-2)
            saved.append((h, rh))
            if activation is not None:
                h, d1, d2 = activation(a)
                rh = d1 * ra
                saved[-1] += (d1, d2, ra)
        delta, r_delta = (a - self.targets) / self.noise_var, ra / self.noise_var
        grads, hvps = [], []
        for index in range(len(params) - 1, -1, -1):
            h, rh = saved[index][:2]
            grad_w, hvp_w = delta.mT @ h, r_delta.mT @ h
            if rh is not None:
                hvp_w += delta.mT @ rh
            grads.append((grad_w.flatten(-2), delta.sum(-2)))
            hvps.append((hvp_w.flatten(-2), r_delta.sum(-2)))
            if index > 0:
                weight, d_weight = params[index][0], tangents[index][0]
                e, re = delta @ weight, r_delta @ weight
                re += delta @ d_weight
                d1, d2, ra = saved[index - 1][2:]
                delta, r_delta = d1 * e, (d2 * ra).mul_(e).addcmul_(d1, re)
        grad = self._flatten(grads[::-1]).add_(self._prior_gradient(theta))
        hvp = self._flatten(hvps[::-1]).add_(v, alpha=self.prior_precision)
        if grad.shape != theta_shape:  # theta was broadcast: every row is the same gradient
            grad = grad.reshape(-1, self.num_params)[0].view(theta_shape)
        return grad, hvp

    def grad_and_curvature(self, theta, v) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient at ``theta`` and the curvature ``vᵀ∇²L(θ)v`` (shapes ``[..., D]``).

        One forward pass carrying first and second directional derivatives along ``v``, and
        one backward pass for the gradient (module docstring). Returns the gradient
        ``[..., D]`` and the curvature ``[...]``.
        """
        theta, v = torch.broadcast_tensors(theta, v)
        params, tangents = self._blocks(theta), self._blocks(v)
        h, rh, r2h = self.inputs, None, None
        saved = []
        for (weight, bias), (d_weight, d_bias), activation in zip(
            params, tangents, self.activations, strict=True
        ):
            a, ra, r2a = h @ weight.mT, h @ d_weight.mT, None
            if rh is not None:
                ra += rh @ weight.mT
                r2a = (rh @ d_weight.mT).mul_(2)
            if r2h is not None:
                r2a += r2h @ weight.mT
            if bias is not None:
                a += bias.unsqueeze(-2)
                ra += d_bias.unsqueeze(-2)
            saved.append([h])
            if activation is not None:
                h, d1, d2 = activation(a)
                rh, r2h = d1 * ra, (d2 * ra).mul_(ra)
                if r2a is not None:
                    r2h.addcmul_(d1, r2a)
                saved[-1].append(d1)
        residual = a - self.targets
        second = ra * ra if r2a is None else torch.addcmul(ra * ra, residual, r2a)
        curvature = (second / self.noise_var).sum((-2, -1))
        curvature += self.prior_precision * (v * v).sum(-1)
        delta, grads = residual / self.noise_var, []
        for index in range(len(params) - 1, -1, -1):
            grads.append(((delta.mT @ saved[index][0]).flatten(-2), delta.sum(-2)))
            if index > 0:
                delta = saved[index - 1][1] * (delta @ params[index][0])
        grad = self._flatten(grads[::-1]).add_(self._prior_gradient(theta))
        return grad, curvature

    def ggn_diagonal(self, theta) -> torch.Tensor:
        """Exact diagonal of the GGN, Σ_n Σ_k (∂f_k(z_n)/∂θ_d)² / σ_k²  ``[D]``, layer by layer.

        The Jacobian of the outputs with respect to layer l's pre-activations, B_l ``[N, out,
        width]``, is backpropagated for all outputs at once (B_L = I, B_{l−1} = (B_l W_l) ⊙
        φ'(a_{l−1})); since ∂f_k/∂(W_l)_{ij} = (B_l)_{k,i} h_{l−1,j}, the diagonal is
        ``Σ_n s_{n,i} h²_{n,j}`` with ``s_{n,i} = Σ_k (B_l)²_{n,k,i} / σ_k²`` (and
        ``Σ_n s_{n,i}`` for the bias): no per-example Jacobian ``[N, out, D]`` is formed.

        Example
        -------
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> z, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
        >>> kernel = MLPRegressionKernel(model, z, y, noise_std=0.5, prior_precision=1.0)
        >>> theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        >>> shapes = [(n, p.shape) for n, p in model.named_parameters()]
        >>> def f(t):
        ...     pieces = torch.split(t, [s.numel() for _, s in shapes])
        ...     named = {n: x.reshape(s) for (n, s), x in zip(shapes, pieces)}
        ...     return torch.func.functional_call(model, named, (z,))
        >>> jac = torch.func.jacrev(f)(theta)  # [6, 2, D], brute force
        >>> bool(torch.allclose(kernel.ggn_diagonal(theta), (jac ** 2).sum((0, 1)) / 0.25))
        True
        """
        params = self._blocks(theta)
        h, saved = self.inputs, []
        for (weight, bias), activation in zip(params, self.activations, strict=True):
            a = h @ weight.mT
            if bias is not None:
                a += bias
            saved.append([h, None])
            if activation is not None:
                h, d1, _ = activation(a)
                saved[-1][1] = d1
        out = a.shape[-1]
        jac = torch.eye(out, dtype=a.dtype, device=a.device).expand(len(a), out, out)
        weights = 1.0 / torch.as_tensor(self.noise_var, dtype=a.dtype, device=a.device)
        weights = weights.expand(out)[None, :, None]
        blocks = []
        for index in range(len(params) - 1, -1, -1):
            h = saved[index][0]
            s = (jac.square() * weights).sum(1)  # [N, width]
            blocks.append(((s.mT @ h.square()).flatten(), s.sum(0)))
            if index > 0:
                jac = (jac @ params[index][0]) * saved[index - 1][1][:, None, :]
        return self._flatten(blocks[::-1])

    def _prior_gradient(self, theta):
        """λ(θ − m), the gradient of the prior term."""
        offset = theta if self.prior_mean is None else theta - self.prior_mean
        return self.prior_precision * offset

    def _flatten(self, blocks):
        pieces = []
        for (weight, bias), (_, bias_slice) in zip(blocks, self.slices, strict=True):
            pieces.append(weight)
            if bias_slice is not None:
                pieces.append(bias)
        return torch.cat(pieces, dim=-1)


def ggn_diagonal(objective: RegressionObjective, theta: torch.Tensor, *,
                 chunk_size: int = 256) -> torch.Tensor:
    """Exact GGN diagonal of ``objective`` at θ  ``[D]``: layer by layer for a plain MLP.

    :meth:`MLPRegressionKernel.ggn_diagonal` where :func:`supports` accepts the objective (no
    per-example Jacobian is formed), otherwise :meth:`RegressionObjective.ggn_diagonal` from
    per-example Jacobians, ``chunk_size`` examples at a time. Both are Σ_n Σ_k J²_{n,k,d} / σ_k².

    Example
    -------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> z, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    >>> objective = RegressionObjective(model, z, y, noise_std=0.5, prior_precision=1.0)
    >>> theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    >>> bool(torch.allclose(ggn_diagonal(objective, theta), objective.ggn_diagonal(theta)))
    True
    """
    if supports(objective):
        kernel = MLPRegressionKernel.from_objective(objective)
        return kernel.ggn_diagonal(objective.check_theta(theta).detach())
    return objective.ggn_diagonal(theta, chunk_size=chunk_size)
