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
from rbmem_tutorial.data import TOY_DATASETS, load_dataset, sample_dataset
from rbmem_tutorial.flows import train_flow_matching
from rbmem_tutorial.laplace import FlowPosterior, fit_flow_posterior, parameters_vector
from rbmem_tutorial.memorisation import LOOSE_C, memorised_fraction
from rbmem_tutorial.reference import (
    REFERENCE,
    FlowConfig,
    build_model,
    cache_path,
    cache_trained,
    load_or_train,
)


def step_grid(steps: int, fine_until: int = 3000) -> tuple[int, ...]:
    """Adam steps at which checkpoints are kept (early stopping's knob): every 50 up to
    ``fine_until``, then every 250 up to the MAP's ``steps``.

    Example
    -------
    >>> grid = step_grid(4000, fine_until=200)
    >>> grid[:5], grid[-2:]
    ((50, 100, 150, 200, 450), (3950, 4000))
    """
    fine = tuple(range(50, min(fine_until, steps) + 1, 50))
    coarse = tuple(range(fine[-1] + 250, steps + 1, 250)) if fine else ()
    grid = fine + coarse
    return grid if grid and grid[-1] == steps else (*grid, steps)


STEP_GRID = step_grid(REFERENCE.steps)
"""The running example's checkpoint steps: every 50 to 3,000, every 250 to 10,000."""


def member_seed(replicate: int, member: int) -> int:
    """Initialisation and batch seed of ensemble ``member`` (member 0 is the replicate's MAP
    run, seed ``replicate``)."""
    return replicate + 1000 * member


def flow_config(replicate: int, member: int = 0, base: FlowConfig = REFERENCE) -> FlowConfig:
    """``base`` (the running example by default) with the replicate's data seed and the
    member's training seed."""
    return dataclasses.replace(base, seed=member_seed(replicate, member), data_seed=replicate)


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

    ``true`` are fresh samples of the data distribution (for a finite data set such as the
    digits, held-out examples that the metrics do not use), and ``floor`` and ``floor_loose``
    their memorised fractions at d₁/d₂ < 1/3 and < 0.577 (the levels a perfect generaliser
    would show). :attr:`ensemble` trains the checkpoints only when a cell first needs them.
    """

    index: int
    model: torch.nn.Module
    train: torch.Tensor
    test: torch.Tensor
    flow_posterior: FlowPosterior
    true: torch.Tensor
    floor: float
    members: int
    base: FlowConfig = REFERENCE
    steps: tuple[int, ...] = STEP_GRID
    floor_loose: float | None = None

    @cached_property
    def ensemble(self) -> torch.Tensor:
        """Each member's checkpoints ``[members, len(steps), D]``; member 0 is the MAP run,
        so ``ensemble[0]`` is early stopping's curve."""
        return torch.stack([checkpoints(flow_config(self.index, m, self.base), self.steps)
                            for m in range(self.members)])


def replicate(index: int, *, members: int, points: int, base: FlowConfig = REFERENCE,
              steps: tuple[int, ...] = STEP_GRID, posterior_options: dict | None = None
              ) -> Replicate:
    """Train (or load) replicate ``index``'s MAP net and fit its posterior.

    ``base`` is the flow every replicate varies (data seed and training seed), ``steps`` its
    checkpoint grid, ``posterior_options`` go to :func:`fit_flow_posterior`. For the toy sets
    the true samples are ``points`` fresh draws; for the digits (a finite set) the held-out
    examples are split in two: the first half scores quality (``test``), the second half is
    the true-sample baseline (``true``).
    """
    config = flow_config(index, 0, base)
    if not cache_path(config).exists():
        checkpoints(config, steps)  # the MAP run with its checkpoints: one training for both
    trained = load_or_train(config, progress=False)
    fp = fit_flow_posterior(trained.model, trained.train, **(posterior_options or {}))
    test = trained.test
    if base.dataset in TOY_DATASETS:
        generator = torch.Generator().manual_seed(10_000 + index)
        true = sample_dataset(base.dataset, points, generator=generator)
    else:
        half = len(test) // 2
        test, true = test[:half], test[half:]
    floor = memorised_fraction(true, trained.train)
    loose = memorised_fraction(true, trained.train, c=LOOSE_C)
    return Replicate(index, trained.model, trained.train, test, fp, true, floor, members,
                     base, tuple(steps), loose)
