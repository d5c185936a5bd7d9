"""The Monge metric ``M_T = I + ∇L∇Lᵀ/T²`` of the graph of ``L/T``, and the loss forms it reads.

The graph of a loss, ``{(θ, L(θ)/T)}`` in ``R^{D+1}``, inherits the metric ``M_T`` from the
ambient Euclidean space (Bergamin et al., NeurIPS 2023, arXiv 2306.07158, Sec. 3; the
temperature ``T`` and its presets: :mod:`rbmem_tutorial.riemannian.temperature`). Its geodesics

    c̈ = −(∇L/T) · (ċᵀ∇²L ċ / T) / (1 + ‖∇L‖²/T²)

need one gradient and the scalar curvature ``ċᵀ∇²L ċ`` (from a Hessian-vector product, or
cheaper by a second-order forward pass); no D×D matrix is formed.

``loss`` is any twice-differentiable scalar function of a flat float64 parameter vector, in one
of these forms, checked in this order:

1. a ``RegressionObjective`` on a plain MLP that :func:`rbmem_tutorial.laplace.fast_mlp.supports`
   (gradient and curvature in one hand-written pass, batched over samples);
2. a ``RegressionObjective`` on the convolutional U-Net
   :class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet` (:func:`.conv_jet.supports`): a
   Taylor-mode forward pass and one hand-written backward pass, row by row (:mod:`.conv_jet`);
3. any other ``RegressionObjective`` (another convolutional net, any ``nn.Module``):
   ``torch.func`` forward-over-reverse, vmapped over the rows of a batch (:mod:`.generic`);
4. any object with ``grad_and_curvature(theta, v)`` returning ``(∇L(θ), vᵀ∇²L(θ)v)`` for
   ``[D]`` or ``[S, D]`` input (as :class:`~rbmem_tutorial.riemannian.LinearisedObjective`);
5. any object with a ``grad_and_hvp(theta, v)`` method returning ``(∇L(θ), ∇²L(θ) v)``
   (batches are solved row by row through it);
6. a plain callable ``loss(theta) -> 0-d tensor``; gradient and HVP come from autograd
   double backward (on a CPU cheaper than ``torch.func.jvp(torch.func.grad(loss))`` for small
   networks and tiny functions, whose cost is mostly per-call overhead); a batch is summed
   row by row and differentiated in one backward pass.

The temperature scales the gradient and the curvature by ``1/T`` after they are computed, so
every form, the fast MLP kernel included, serves any ``T``.
"""

from __future__ import annotations

from functools import partial

import torch

from rbmem_tutorial.laplace import fast_mlp
from rbmem_tutorial.riemannian import conv_jet, generic
from rbmem_tutorial.riemannian.temperature import resolve_temperature


def _check_scalar_loss(loss, theta: torch.Tensor) -> None:
    value = loss(theta)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"loss must return a 0-d (scalar) tensor, got {shape}; sum or average its terms."
        )
    if not bool(torch.isfinite(value)):
        raise ValueError("loss(theta0) is not finite; start the geodesic where the loss is finite.")


def _autograd_grad_and_hvp(loss, theta, v):
    """Gradient and HVP by double backward; rows of a ``[S, D]`` batch are independent."""
    with torch.enable_grad():
        point = theta.detach().requires_grad_(True)
        value = loss(point) if point.ndim == 1 else sum(loss(row) for row in point)
        (grad,) = torch.autograd.grad(value, point, create_graph=True)
        if not grad.requires_grad:  # L is linear: its Hessian is zero
            return grad, torch.zeros_like(v)
        (hvp,) = torch.autograd.grad(grad, point, grad_outputs=v)
    return grad, hvp


def _curvature_from_hvp(grad_and_hvp):
    """Turn ``(θ, v) ↦ (∇L, ∇²L v)`` into ``(θ, v) ↦ (∇L, vᵀ∇²L v)``, checking shapes."""

    def pair(theta, v):
        grad, hvp = grad_and_hvp(theta, v)
        for name, value in (("gradient", grad), ("Hessian-vector product", hvp)):
            if value.shape != theta.shape:
                raise ValueError(
                    f"the loss's {name} has shape {tuple(value.shape)}, expected "
                    f"{tuple(theta.shape)}; grad_and_hvp(theta, v) must return flat vectors."
                )
        return grad, (v * hvp).sum(-1)

    return pair


class _Derivatives:
    """``(θ, v) ↦ (∇L(θ), vᵀ∇²L(θ)v)`` for ``θ, v`` of shape ``[D]`` or ``[S, D]``.

    The geodesic needs the Hessian only through the scalar curvature ``vᵀ∇²L v``; the MLP
    and conv-net kernels compute it by a second-order forward pass, the other forms from an HVP.
    """

    def __init__(self, loss, theta: torch.Tensor):
        if fast_mlp.supports(loss):
            kernel = fast_mlp.MLPRegressionKernel.from_objective(loss)
            self._single = self._batch = kernel.grad_and_curvature
        elif conv_jet.supports(loss):
            kernel = conv_jet.ConvJetKernel.from_objective(loss)
            self._single = self._batch = kernel.grad_and_curvature
        elif generic.supports(loss):
            self._single = self._batch = generic.RowDerivatives(loss)
        elif hasattr(loss, "grad_and_curvature"):
            self._single = self._batch = loss.grad_and_curvature
        elif hasattr(loss, "grad_and_hvp"):
            self._single = _curvature_from_hvp(loss.grad_and_hvp)
            self._batch = self._loop
        elif callable(loss):
            _check_scalar_loss(loss, theta)
            pair = _curvature_from_hvp(partial(_autograd_grad_and_hvp, loss))
            self._single = self._batch = pair
        else:
            raise TypeError(
                f"loss must be callable or have a grad_and_hvp(theta, v) method, "
                f"got {type(loss).__name__}."
            )

    def _loop(self, theta, v):
        pairs = [self._single(point, direction) for point, direction in zip(theta, v, strict=True)]
        return torch.stack([g for g, _ in pairs]), torch.stack([c for _, c in pairs])

    def __call__(self, theta, v):
        grad, curvature = (self._single if theta.ndim == 1 else self._batch)(theta, v)
        return grad.detach(), curvature.detach()


class MongeMetric:
    """The metric ``M_T(θ) = I + ∇L(θ)∇L(θ)ᵀ / T²`` of the graph of ``L/T``.

    Implements the metric protocol of :mod:`rbmem_tutorial.riemannian.geodesic` for
    ``θ, ċ`` of shape ``[D]`` or ``[S, D]``, and the optional bound on the loss's rise.

    Parameters
    ----------
    loss : callable or object with ``grad_and_hvp``
        ``L``, in one of the forms of the module docstring.
    theta0 : Tensor
        A float64 ``[D]`` point where a plain callable is checked to return a finite scalar.
    temperature : float or str
        ``T > 0``, or a preset ``"sum"``, ``"mean"`` or ``"data-mean"`` of a regression
        objective (:mod:`rbmem_tutorial.riemannian.temperature`). A number gives exactly the
        metric of ``lambda θ: loss(θ) / T``.

    Attributes
    ----------
    loss : object
        ``L`` as given: :meth:`loss_value` and :meth:`grad_norm` report it, untempered.
    metric_loss : object
        ``f`` whose graph ``f/T`` defines the metric: ``loss`` itself, or the data-mean
        objective ``L_dm`` of the preset ``"data-mean"``.
    temperature : float
        ``T`` (1 for ``"data-mean"``: the preset changes the loss, not its scale).

    Example
    -------
    >>> import torch
    >>> metric = MongeMetric(lambda th: (th ** 2).sum(), torch.zeros(2, dtype=torch.float64), 2.0)
    >>> theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> metric.acceleration(theta, torch.tensor([0.0, 1.0], dtype=torch.float64))
    tensor([-0.5000, -0.0000], dtype=torch.float64)
    >>> float(metric.speed(theta, torch.tensor([1.0, 0.0], dtype=torch.float64)))  # 1 + (2·1/2)²
    2.0
    """

    def __init__(self, loss, theta0: torch.Tensor, temperature: float | str = 1.0):
        self.loss = loss
        self.metric_loss, self.temperature = resolve_temperature(loss, temperature)
        self._derivatives = _Derivatives(self.metric_loss, theta0)
        self._loss_derivatives = self._derivatives
        if self.metric_loss is not loss:
            self._loss_derivatives = _Derivatives(loss, theta0)

    def _tempered(self, theta, velocity):
        """``(∇L/T, ċᵀ∇²L ċ / T)`` of the metric's loss."""
        grad, curvature = self._derivatives(theta, velocity)
        return grad / self.temperature, curvature / self.temperature

    def acceleration(self, theta: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """``c̈ = −g (ċᵀ∇²(L/T) ċ) / (1 + ‖g‖²)`` with ``g = ∇L/T``; the shape of ``velocity``."""
        grad, curvature = self._tempered(theta, velocity)
        scale = curvature / (1 + (grad * grad).sum(-1))
        return -grad * scale.unsqueeze(-1)

    def speed(self, theta: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """``ċᵀM_T ċ = ‖ċ‖² + (∇L·ċ)²/T²`` per row (``[]`` or ``[S]``); conserved."""
        grad, _ = self._tempered(theta, velocity)
        return (velocity * velocity).sum(-1) + (grad * velocity).sum(-1) ** 2

    def loss_value(self, theta: torch.Tensor) -> torch.Tensor | None:
        """``L(θ)`` untempered (``[]`` or ``[S]``); None when ``loss`` is not callable (an
        object with only ``grad_and_hvp`` or ``grad_and_curvature`` has no value)."""
        if not callable(self.loss):
            return None
        with torch.no_grad():
            if theta.ndim == 1:
                return self.loss(theta).detach()
            return torch.stack([self.loss(row).detach() for row in theta])

    def grad_norm(self, theta: torch.Tensor) -> torch.Tensor:
        """``‖∇L(θ)‖`` of the untempered ``loss`` (``[]`` or ``[S]``)."""
        grad, _ = self._loss_derivatives(theta, torch.zeros_like(theta))
        return grad.norm(dim=-1)

    def loss_rise_bound(self, theta0: torch.Tensor, velocity: torch.Tensor):
        """``T √E(0) = √(T²‖v‖² + (∇L(θ0)·v)²)`` bounding ``|L(c(1)) − L(θ0)|``, per row.

        ``T‖v‖`` at a stationary θ0 (derivation: :mod:`rbmem_tutorial.riemannian.temperature`).
        None for ``"data-mean"``: its metric is that of another function, which bounds the rise
        of ``L_dm``, not of ``L``.
        """
        if self.metric_loss is not self.loss:
            return None
        return self.temperature * self.speed(theta0, velocity).sqrt()
