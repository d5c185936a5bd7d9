"""Training a velocity network by flow matching: Adam on the conditional loss of
:mod:`rbmem_tutorial.flows.paths`, with fresh draws of (x_0, t) at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int, check_tensor
from rbmem_tutorial.flows.paths import fm_loss

__all__ = ["train_flow_matching"]


def train_flow_matching(
    model: nn.Module,
    data: torch.Tensor,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    *,
    schedule: str = "constant",
    progress: bool = True,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> torch.Tensor:
    """Fit a velocity net by minimising the flow-matching loss with Adam.

    Each step draws ``batch_size`` training points *with replacement*, fresh noise x_0 and
    times t ~ U[0, 1), and takes one Adam step on :func:`cfm_loss`. All draws come from one
    generator seeded with ``seed``, so a run is deterministic given the model's initial
    parameters. Drawing large batches with replacement from a tiny training set makes the net
    memorise much faster than batches equal to the set.

    Parameters
    ----------
    model : nn.Module
        Velocity net ``model(x, t)``; trained in place on the device of its parameters.
    data : torch.Tensor
        Training set ``[n, d]``.
    steps, batch_size : int
        Number of optimiser steps and batch size.
    lr : float
        Adam learning rate (the peak rate with ``schedule="cosine"``).
    seed : int
        Seed of the batch, noise and time draws.
    schedule : {"constant", "cosine"}
        Learning-rate schedule; cosine decays to 0 over ``steps``.
    progress : bool
        Show a tqdm progress bar.
    on_step : callable, optional
        Called as ``on_step(n, model)`` after the n-th step (n = 1..steps), e.g. to keep
        checkpoints for early stopping. With the constant schedule, the net after n steps of a
        longer run is exactly the net of an n-step run.

    Returns
    -------
    torch.Tensor
        Loss of every step, shape ``[steps]`` (float32, CPU).

    Example
    -------
    >>> from rbmem_tutorial.flows.nets import VelocityMLP
    >>> history = train_flow_matching(VelocityMLP(2), torch.randn(8, 2), steps=20, progress=False)
    >>> history.shape
    torch.Size([20])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    parameters = list(model.parameters())
    if not parameters:
        raise ValueError("model has no parameters to train.")
    data = check_tensor("data", data, ndim=2, min_rows=1)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    check_positive_int("seed", seed, minimum=0)
    check_choice("schedule", schedule, ("constant", "cosine"))

    data = data.to(device=parameters[0].device, dtype=parameters[0].dtype)
    generator = torch.Generator(device=data.device).manual_seed(seed)
    optimiser = torch.optim.Adam(parameters, lr=lr, fused=True)
    cosine = schedule == "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)) if cosine else 1.0
    )
    history = torch.empty(steps, dtype=data.dtype, device=data.device)
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc="flow matching", mininterval=0.5):
        index = torch.randint(data.shape[0], (batch_size,), generator=generator, device=data.device)
        x1 = data[index]
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        t = torch.rand(batch_size, generator=generator, dtype=x1.dtype, device=x1.device)
        loss = fm_loss(model, x1, x0, t)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        history[step] = loss.detach()
        if on_step is not None:
            on_step(step + 1, model)
    history = history.float().cpu()
    if not bool(torch.isfinite(history).all()):
        first = int((~torch.isfinite(history)).nonzero()[0])
        raise FloatingPointError(
            f"training diverged: the loss became non-finite at step {first}; lower lr."
        )
    return history
