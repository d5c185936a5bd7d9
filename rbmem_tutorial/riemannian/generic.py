"""The generic path: gradient and curvature of a regression loss on any network, rows batched.

For a :class:`~rbmem_tutorial.laplace.objective.RegressionObjective` whose model neither the
fused MLP kernel (:mod:`rbmem_tutorial.laplace.fast_mlp`) nor the conv net's jet kernel
(:mod:`.conv_jet`) covers (another convolutional net, the banana's model, an MLP with other
activations), the Monge geodesic needs, per evaluation and per row ``s``,

    ∇L(θ_s)  and  v_sᵀ∇²L(θ_s) v_s,
    L(θ) = ½ Σ_n Σ_j (f_θ(z_n)_j − y_{n,j})² / σ_j² + (λ/2) ‖θ − m‖².

Both come from one forward-over-reverse pass, ``torch.func.jvp`` of ``torch.func.grad(L)``
in the direction v, and ``torch.func.vmap`` maps it over the ``S`` rows of a batch of
geodesics, each with its own θ_s and v_s: one call per evaluation for all rows, instead of one
call per row. The model runs through the objective's ``predict``, a pure function of θ, so
any ``nn.Module`` whose examples do not interact (no batch norm) works.

A model with convolutions is the exception: its rows run one after the other. Under ``vmap``
with one weight per row, PyTorch turns each convolution into a grouped convolution with the
rows as groups, which on a CPU in float64 costs more than the rows one at a time (chapter 8's
conv net, four rows on 80 to 320 pairs, one thread: 1.05 to 1.5 times as long with
channels-first convolutions, 1.5 to 2 times with the channels-last order that
:class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet` uses in float64;
``benchmarks/geodesic_paths.py``). Its rows also sum the data term over chunks of
``PAIR_CHUNK`` pairs, each chunk's forward-over-reverse pass in turn: the sums are the same up
to rounding, and a chunk's float64 activations and their unfolded copies stay small enough for
the CPU's caches (chapter 8's net, one row on 320 pairs, one thread on a shared CPU: 1.3 to 1.5
times faster than the whole data at once, with chunks of 64 to 128 pairs; 160 gained little).
The geodesic no longer takes this path for chapter 8's
:class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet`: the jet kernel of :mod:`.conv_jet`
(one Taylor-mode forward pass and one backward pass) is 2 to 2.5 times faster on that net and
320 pairs (``benchmarks/geodesic_paths.py``); the numbers above describe this path on it.

Example
-------
>>> import torch
>>> from rbmem_tutorial.riemannian.toys import Banana
>>> objective = Banana().regression_objective()
>>> derivatives = RowDerivatives(objective)
>>> theta = torch.tensor([[0.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
>>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
>>> grad, curvature = derivatives(theta, v)
>>> closed = Banana().grad_and_curvature(theta, v)  # the banana's closed form
>>> bool(torch.allclose(grad, closed[0])), bool(torch.allclose(curvature, closed[1]))
(True, True)
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from rbmem_tutorial.laplace.objective import RegressionObjective

__all__ = ["PAIR_CHUNK", "RowDerivatives", "supports"]

PAIR_CHUNK = 96
"""Pairs per chunk of a convolutional model's data term (module docstring)."""


def supports(loss) -> bool:
    """True for a plain ``RegressionObjective`` (subclasses may change the loss)."""
    return type(loss) is RegressionObjective


class RowDerivatives:
    """``(θ, v) ↦ (∇L(θ), vᵀ∇²L(θ)v)`` of a ``RegressionObjective``, for ``[D]`` or ``[S, D]``.

    Parameters
    ----------
    objective : RegressionObjective
        Supplies ``predict`` (pure in θ), ``targets``, ``noise_std``, ``prior_precision`` and
        ``prior_offset``.

    Attributes
    ----------
    vmapped : bool
        True when the rows of a batch share one ``vmap`` call; False for a model with
        convolutions, whose rows run one at a time (module docstring).
    """

    def __init__(self, objective: RegressionObjective):
        if not supports(objective):
            raise TypeError(
                f"objective must be a RegressionObjective, got {type(objective).__name__}; "
                "pass an object with grad_and_hvp or grad_and_curvature instead."
            )
        self.objective = objective
        out = objective.targets.shape[1]
        self._weights = (1.0 / objective.noise_std**2) * torch.ones(
            out, dtype=torch.float64, device=objective.targets.device
        )
        convolutional = any(isinstance(module, nn.modules.conv._ConvNd)
                            for module in objective.model.modules())
        self.vmapped = not convolutional
        size = PAIR_CHUNK if convolutional else len(objective.targets)
        self._chunks = list(zip(objective.inputs.split(size), objective.targets.split(size),
                                strict=True))
        self._rows = vmap(self._one)

    def _data_loss(self, theta, inputs, targets):
        residual = self.objective.predict(theta, inputs) - targets
        return 0.5 * (residual.square() * self._weights).sum()

    def _one(self, theta, v):
        """The prior's terms in closed form, λ(θ − m) and λ‖v‖², plus the data term's, summed
        over the chunks of pairs."""
        gradient = self.objective.prior_precision * self.objective.prior_offset(theta)
        curvature = self.objective.prior_precision * v.square().sum()
        for inputs, targets in self._chunks:
            loss = partial(self._data_loss, inputs=inputs, targets=targets)
            chunk_grad, hvp = jvp(grad(loss), (theta,), (v,))
            gradient = gradient + chunk_grad
            curvature = curvature + (v * hvp).sum()
        return gradient, curvature

    def __call__(self, theta: torch.Tensor, v: torch.Tensor):
        """Gradient ``[D]``/``[S, D]`` and curvature ``[]``/``[S]``; rows are independent."""
        if theta.ndim == 1:
            return self._one(theta, v)
        if self.vmapped:
            return self._rows(theta, v)
        rows = [self._one(row, direction) for row, direction in zip(theta, v, strict=True)]
        return torch.stack([g for g, _ in rows]), torch.stack([c for _, c in rows])
