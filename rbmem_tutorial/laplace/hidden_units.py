"""Which hidden units of a multilayer perceptron a parameter vector actually uses.

A hidden unit j of layer l is switched off when every weight that touches it is zero: its
incoming weights W_l[j, :], its bias b_l[j] and its outgoing weights W_{l+1}[:, j]. Its *size*

.. math::

    s_{l,j} = \\max\\big(\\max_i |W_l[j, i]|,\\ |b_l[j]|,\\ \\max_k |W_{l+1}[k, j]|\\big)

is then zero, and the network computes the same function without the unit. A zero-centred
Gaussian prior (weight decay) drives units there: a unit pays
(λ/2)(‖a‖² + ‖b‖²) ≥ λ‖a‖‖b‖ for incoming weights a and outgoing weights b, an ℓ1-like
charge on what it contributes, and ℓ1 penalties set things exactly to zero. Chapter 3 counts
the units such a prior leaves in use.

Example
-------
>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
>>> theta = torch.ones(13)
>>> theta[2:4] = 0.0; theta[7] = 0.0; theta[10] = 0.0  # unit 1: row 1 of W_1, b_1[1], W_2[0, 1]
>>> [s.tolist() for s in hidden_unit_sizes(net, theta)]
[[1.0, 0.0, 1.0]]
>>> units_in_use(net, theta)
[2]
"""

from __future__ import annotations

import torch
from torch import nn

from rbmem_tutorial._checks import check_tensor
from rbmem_tutorial.laplace.params import unflatten


def _chain(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(layers) < 2:
        raise ValueError(
            f"model has {len(layers)} nn.Linear layer(s); hidden units need at least two, "
            "in a chain."
        )
    for (name, a), (next_name, b) in zip(layers, layers[1:], strict=False):
        if a.out_features != b.in_features:
            raise ValueError(
                f"layers {name} ({a.out_features} outputs) and {next_name} ({b.in_features} "
                "inputs) do not form a chain; pass a plain MLP (nn.Linear layers in sequence)."
            )
    return layers


def hidden_unit_sizes(model: nn.Module, theta: torch.Tensor) -> list[torch.Tensor]:
    """Size of every hidden unit: the largest absolute weight or bias that touches it.

    Parameters
    ----------
    model : nn.Module
        A multilayer perceptron: its ``nn.Linear`` layers, in registration order, form a chain.
    theta : Tensor [D]
        A flat parameter vector for ``model`` (the layout of ``parameters_vector``).

    Returns
    -------
    list of Tensor
        One tensor per hidden layer (every layer's output but the last), one size per unit.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1, bias=False))
    >>> theta = torch.tensor([0.5, 0.0, 0.1, 0.0, -3.0, 0.0])  # W_1, b_1, W_2
    >>> [s.tolist() for s in hidden_unit_sizes(net, theta)]  # unit 0: max(0.5, 0.1, 3)
    [[3.0, 0.0]]
    """
    layers = _chain(model)
    theta = check_tensor("theta", theta, ndim=1)
    params = unflatten(model, theta)
    sizes = []
    for (name, layer), (next_name, _) in zip(layers, layers[1:], strict=False):
        touching = [params[f"{name}.weight"].abs().amax(dim=1),
                    params[f"{next_name}.weight"].abs().amax(dim=0)]
        if layer.bias is not None:
            touching.append(params[f"{name}.bias"].abs())
        sizes.append(torch.stack(touching).amax(dim=0))
    return sizes


def units_in_use(model: nn.Module, theta: torch.Tensor, tol: float = 1e-4) -> list[int]:
    """Number of hidden units per hidden layer whose size exceeds ``tol``.

    Parameters
    ----------
    model, theta
        As in :func:`hidden_unit_sizes`.
    tol : float
        Units whose every weight is at most ``tol`` in size count as switched off.

    Returns
    -------
    list of int
        One count per hidden layer; compare with the layer's width.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1, bias=False))
    >>> theta = torch.tensor([0.5, 1e-6, 0.1, 0.0, -3.0, 1e-5])
    >>> units_in_use(net, theta), units_in_use(net, theta, tol=0.0)
    ([1], [2])
    """
    if not tol >= 0:
        raise ValueError(f"tol must be a size >= 0, got {tol}.")
    return [int((size > tol).sum()) for size in hidden_unit_sizes(model, theta)]
