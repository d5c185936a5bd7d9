"""One replicate of the matched study: its own data, its nets along training, its posterior.

Replicate ``r`` draws its own 16 training points (data seed ``r``) and trains the running
example's velocity net from its own initialisation (seed ``r``): replicate 0 is the book's
``REFERENCE``. The net is trained once with checkpoints on a grid of Adam steps; with the
constant learning rate the checkpoint after n steps *is* the net an n-step run would give,
so early stopping is a curve at no extra training. A deep ensemble adds members trained the
same way from other seeds on the same data. The Laplace posterior (diagonal GGN, refined θ*,
prior centred at θ_SGD, λ by the evidence) is the chapters' :func:`fit_flow_posterior`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property

import torch

from rbmem_tutorial.cache import entry_path, load_cached, save_entry
from rbmem_tutorial.data import load_dataset, sample_dataset
from rbmem_tutorial.flows.training import train_flow_matching
from rbmem_tutorial.laplace.params import parameters_vector
from rbmem_tutorial.laplace.pipeline import FlowPosterior, fit_flow_posterior
from rbmem_tutorial.memorisation.ratio import memorised_fraction
from rbmem_tutorial.reference import (
    REFERENCE,
    FlowConfig,
    build_model,
    cache_path,
    cache_trained,
    load_or_train,
)

STEP_GRID = tuple(range(50, 3001, 50)) + tuple(range(3250, REFERENCE.steps + 1, 250))
"""Adam steps at which checkpoints are kept (early stopping's knob), up to the MAP's 10,000."""


def member_seed(replicate: int, member: int) -> int:
    """Initialisation and batch seed of ensemble ``member`` (member 0 is the replicate's MAP
    run, seed ``replicate``)."""
    return replicate + 1000 * member


def flow_config(replicate: int, member: int = 0) -> FlowConfig:
    """The running example with the replicate's data seed and the member's training seed."""
    return dataclasses.replace(REFERENCE, seed=member_seed(replicate, member),
                               data_seed=replicate)


def checkpoints(config: FlowConfig, steps=STEP_GRID) -> torch.Tensor:
    """Flat weights ``[len(steps), D]`` (float32) after each of ``steps`` Adam steps of one
    training run of ``config`` (cached). The run's final net is also stored as the cache entry
    of :func:`~rbmem_tutorial.reference.load_or_train`, which is the same training run.

    Example
    -------
    >>> from rbmem_tutorial.reference import FlowConfig
    >>> tiny = FlowConfig(n_train=8, n_test=10, hidden=(8,), steps=6)
    >>> grid = checkpoints(tiny, steps=(3, 6))
    >>> final = parameters_vector(load_or_train(tiny, progress=False).model)
    >>> tuple(grid.shape), bool(torch.equal(grid[-1], final))
    ((2, 50), True)
    """
    steps = tuple(int(s) for s in steps)
    if steps[-1] != config.steps or list(steps) != sorted(set(steps)):
        raise ValueError(f"steps must be increasing and end at config.steps ({config.steps}), "
                         f"got {steps[:3]}...{steps[-1:]}.")
    path = entry_path("checkpoints", {"config": dataclasses.asdict(config),
                                      "steps": list(steps)})
    record = load_cached(path, ("weights", "steps"))
    if record is not None and record["weights"].shape[0] == len(steps):
        return record["weights"]
    train, _ = load_dataset(config.dataset, config.n_train, config.n_test, config.data_seed)
    model = build_model(config)
    kept, wanted = [], set(steps)

    def keep(step: int, net: torch.nn.Module) -> None:
        if step in wanted:
            kept.append(parameters_vector(net).detach().float().clone())

    start = time.perf_counter()
    history = train_flow_matching(model, train, config.steps, config.batch_size, config.lr,
                                  config.seed, schedule=config.schedule, progress=False,
                                  on_step=keep)
    seconds = time.perf_counter() - start
    weights = torch.stack(kept)
    save_entry({"weights": weights, "steps": torch.tensor(steps)}, path)
    if not cache_path(config).exists():  # the same run as load_or_train's: share its entry
        cache_trained(config, model, history, seconds)
    return weights


@dataclass
class Replicate:
    """What every cell of one replicate shares.

    ``true`` are fresh samples of the data distribution, as many as a scored set, and ``floor``
    their memorised fraction (the level a perfect generaliser would show). :attr:`ensemble`
    trains the checkpoints only when a cell first needs them.
    """

    index: int
    model: torch.nn.Module
    train: torch.Tensor
    test: torch.Tensor
    flow_posterior: FlowPosterior
    true: torch.Tensor
    floor: float
    members: int

    @cached_property
    def ensemble(self) -> torch.Tensor:
        """Each member's checkpoints ``[members, len(STEP_GRID), D]``; member 0 is the MAP
        run, so ``ensemble[0]`` is early stopping's curve."""
        return torch.stack([checkpoints(flow_config(self.index, m))
                            for m in range(self.members)])


def replicate(index: int, *, members: int, points: int) -> Replicate:
    """Train (or load) replicate ``index``'s MAP net and fit its posterior."""
    config = flow_config(index)
    if not cache_path(config).exists():
        checkpoints(config)  # the MAP run with its checkpoints: one training for both
    trained = load_or_train(config, progress=False)
    fp = fit_flow_posterior(trained.model, trained.train)
    generator = torch.Generator().manual_seed(10_000 + index)
    true = sample_dataset(REFERENCE.dataset, points, generator=generator)
    floor = memorised_fraction(true, trained.train)
    return Replicate(index, trained.model, trained.train, trained.test, fp, true, floor,
                     members)
