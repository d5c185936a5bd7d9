"""Input checks shared by the geodesic modules: float64 tensors, points and matching velocities."""

from __future__ import annotations

import torch

from rbmem_tutorial._checks import check_tensor

F64 = torch.float64


def check_float64(name: str, value, *, ndim) -> torch.Tensor:
    """A finite float64 tensor of rank ``ndim`` (an int or a tuple of allowed ranks)."""
    value = check_tensor(name, value, ndim=ndim)
    if value.dtype != F64:
        raise TypeError(
            f"{name} must be float64 for geodesics, got {value.dtype}; use {name}.double()."
        )
    return value


def check_points(name: str, value, num_params: int) -> torch.Tensor:
    """A float64 ``[D]`` or ``[S, D]`` tensor with ``D = num_params`` entries per row."""
    value = check_float64(name, value, ndim=(1, 2))
    if value.shape[-1] != num_params:
        raise ValueError(
            f"{name} must have {num_params} entries per row (the objective's parameters), "
            f"got shape {tuple(value.shape)}."
        )
    return value


def check_velocity(theta: torch.Tensor, velocity, name: str = "v") -> torch.Tensor:
    """A float64 ``[D]`` or ``[S, D]`` velocity on the device of ``theta`` with its ``D``."""
    velocity = check_float64(name, velocity, ndim=(1, 2))
    if velocity.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(velocity.shape)}); pass at least one row.")
    if velocity.shape[-1] != theta.shape[-1]:
        raise ValueError(
            f"{name} must have {theta.shape[-1]} entries per row (the length of theta), "
            f"got shape {tuple(velocity.shape)}."
        )
    if velocity.device != theta.device:
        raise ValueError(f"{name} is on {velocity.device} but theta is on {theta.device}; move it.")
    return velocity
