"""Kronecker-factored curvature (KFAC) of the frozen objective's ``nn.Linear`` layers.

The GGN block of a linear layer is approximated by a Kronecker product N · G ⊗ A of a small
input factor A and output factor G (Martens & Grosse 2015, arXiv 1503.05671; the KFAC Laplace of
Ritter, Botev & Barber 2018). :func:`kronecker_factors` computes them for every layer of a
:class:`~rbmem_tutorial.laplace.objective.RegressionObjective` (also as its method
``kronecker_factors``), and :class:`~rbmem_tutorial.laplace.structures.KronLaplace` inverts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from rbmem_tutorial._checks import check_positive_int
from rbmem_tutorial.laplace.params import linear_layers, unflatten

__all__ = ["KroneckerFactors", "kronecker_factors"]


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


def kronecker_factors(objective, theta: torch.Tensor, *, chunk_size: int = 256
                      ) -> list[KroneckerFactors]:
    """KFAC factors (A, G) of every ``nn.Linear`` layer of a
    :class:`~rbmem_tutorial.laplace.objective.RegressionObjective` ``objective``, in module order.

    See :class:`KroneckerFactors` for the definitions. Each layer must run exactly once per
    forward pass, and the ``nn.Linear`` layers must hold all of the model's parameters.
    Computed ``chunk_size`` examples at a time.

    Example
    -------
    For one layer without bias the approximation is exact: N · G ⊗ A is the GGN.

    >>> from torch import nn
    >>> from rbmem_tutorial.laplace.objective import RegressionObjective
    >>> from rbmem_tutorial.laplace.params import parameters_vector
    >>> lin = nn.Linear(3, 2, bias=False)
    >>> obj = RegressionObjective(lin, torch.randn(10, 3), torch.randn(10, 2), 0.5, 1.0)
    >>> theta = parameters_vector(obj.model)
    >>> (factors,) = kronecker_factors(obj, theta)
    >>> torch.allclose(obj.num_examples * torch.kron(factors.G, factors.A), obj.ggn(theta))
    True
    """
    theta = objective.check_theta(theta)
    layers = linear_layers(objective.model)
    _check_linear_cover(layers, objective.num_params)
    a_sums = [None] * len(layers)
    g_sums = [None] * len(layers)
    weights = objective.precision_weights()
    for start in range(0, objective.num_examples, check_positive_int("chunk_size", chunk_size)):
        chunk = objective.inputs[start : start + chunk_size]
        acts, grads = _layer_inputs_and_output_grads(objective, theta, chunk, layers)
        for k in range(len(layers)):
            a_part = acts[k].T @ acts[k]
            g_part = torch.einsum("jno,jnp,j->op", grads[k], grads[k], weights)
            a_sums[k] = a_part if a_sums[k] is None else a_sums[k] + a_part
            g_sums[k] = g_part if g_sums[k] is None else g_sums[k] + g_part
    n = objective.num_examples
    return [
        KroneckerFactors(name, a_sums[k] / n, g_sums[k] / n, weight, bias)
        for k, (name, _, weight, bias) in enumerate(layers)
    ]


def _check_linear_cover(layers, num_params):
    covered = sum(module.weight.numel() for _, module, _, _ in layers)
    covered += sum(module.bias.numel() for _, module, _, b in layers if b is not None)
    if covered != num_params:
        raise ValueError(
            f"KFAC needs every parameter to sit in an nn.Linear layer, but nn.Linear layers "
            f"hold {covered} of the model's {num_params} parameters. Use structure "
            "'diag' or 'full'."
        )

def _layer_inputs_and_output_grads(objective, theta, chunk, layers):
    """Augmented layer inputs [n, in(+1)] and output gradients [out_dim, n, out] per layer."""
    records = {id(module): [] for _, module, _, _ in layers}

    def hook(module, args, output):
        records[id(module)].append((args[0], output))

    handles = [module.register_forward_hook(hook) for _, module, _, _ in layers]
    try:
        theta = theta.detach().requires_grad_(True)
        outputs = functional_call(objective.model, unflatten(objective.model, theta), (chunk,))
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
