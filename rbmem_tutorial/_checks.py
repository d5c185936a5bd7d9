"""Input validation shared by the public functions.

Every check raises ``ValueError`` or ``TypeError`` with a message that names the argument
and says how to fix it, so bad input never turns into a silent NaN further down.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch


def check_tensor(
    name: str,
    value,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_rows: int = 0,
    floating: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a tensor of the expected rank, with enough rows and finite entries.

    Returns the tensor unchanged, so calls read ``x = check_tensor("x", x, ndim=2)``.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__name__}; "
            f"convert it with torch.as_tensor({name})."
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            shapes = " or ".join(f"{k}-D" for k in allowed)
            raise ValueError(f"{name} must be {shapes}, got shape {tuple(value.shape)}.")
    if value.ndim > 0 and value.shape[0] < min_rows:
        raise ValueError(
            f"{name} needs at least {min_rows} row(s) along its first dimension, "
            f"got shape {tuple(value.shape)}."
        )
    if floating and not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {value.dtype}; use {name}.float() "
            f"or {name}.double()."
        )
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean the input first.")
    return value


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """Check that a scalar is a finite positive number (or non-negative with ``allow_zero``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}.") from None
    ok = number >= 0 if allow_zero else number > 0
    if not ok or number != number or number in (float("inf"), float("-inf")):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {bound} number, got {value!r}.")
    return number


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    """Check that ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise ValueError(f"unknown {name} {value!r}; choose one of {options}.")
    return value


def check_same_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Check that two ``[N, d]`` tensors share their last dimension."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of columns, "
            f"got {a.shape[-1]} and {b.shape[-1]}."
        )


def check_writable_folder(folder, what: str, fix: str) -> Path:
    """Create ``folder`` and check that it takes files, before any work starts.

    A failure is one ``ValueError`` naming ``what`` (e.g. ``"--out runs/a"``), the reason and
    ``fix``. Returns the folder as a ``Path``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe"):
            pass
    except OSError as err:
        raise ValueError(f"{what} is not a writable folder ({err.strerror}); {fix}") from None
    return folder


def check_module(name: str, value):
    """Check that ``value`` is a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}.")
