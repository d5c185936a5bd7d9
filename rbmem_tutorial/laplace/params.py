"""The flat parameter vector θ of a network: the shared primitives of chapter 3.

Everything that treats a network as a function of one flat vector θ (the objective, its KFAC
factors, the sampled nets of :mod:`rbmem_tutorial.laplace.sampled_nets`) reads and writes θ through
these helpers. Its entries follow ``model.named_parameters()`` order (as
``torch.nn.utils.parameters_to_vector``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rbmem_tutorial._checks import check_module

__all__ = ["converted", "linear_layers", "parameters_vector", "unflatten"]


def parameters_vector(model: nn.Module) -> torch.Tensor:
    """Return the model's parameters as one detached flat vector, in ``named_parameters`` order.

    Example
    -------
    >>> parameters_vector(torch.nn.Linear(3, 2)).shape
    torch.Size([8])
    """
    check_module("model", model)
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
    check_module("model", model)
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


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear, slice, slice | None]]:
    """(name, module, weight slice, bias slice or None) of every ``nn.Linear`` layer of
    ``model``, in module order; the slices index the flat θ of ``named_parameters`` order.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1, bias=False))
    >>> [(name, weight, bias) for name, _, weight, bias in linear_layers(net)]
    [('0', slice(0, 6, None), slice(6, 8, None)), ('2', slice(8, 10, None), None)]
    """
    offsets, offset = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = slice(offset, offset + p.numel())
        offset += p.numel()
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix = f"{name}." if name else ""
        weight = offsets[prefix + "weight"]
        bias = offsets[prefix + "bias"] if module.bias is not None else None
        layers.append((name, module, weight, bias))
    return layers


def converted(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A copy of ``model`` with parameters and buffers of ``dtype`` on ``device``."""
    return copy.deepcopy(model).to(device=device, dtype=dtype)
