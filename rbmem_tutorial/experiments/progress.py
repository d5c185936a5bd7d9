"""Progress of a study on stderr: every stage of a training seed and every cell, with an
estimate of the time left built from the times measured so far.

A study spends its time in two kinds of work: per training seed, training two nets and
fitting the posterior (the *setup*); per cell, sampling and scoring. The estimate is

    time left = (seeds still to set up) x (mean setup time so far)
              + sum over remaining cells of (mean time of finished cells of the same method),

falling back to the mean over all finished cells for a method not seen yet. It is ``?``
until one setup and one cell have finished, rather than a number that means nothing.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StudyProgress:
    """Lines like ``[rank 0] 3/10 cells, laplace α=0.5 seed 0 in 2 s; about 1 min left``.

    Parameters
    ----------
    cells : list
        The cells this process will compute (objects with ``method`` and ``train_seed``).
    rank : int
        The process's rank, shown on every line.
    enabled : bool
        Print nothing when ``False``.

    Example
    -------
    >>> from types import SimpleNamespace as Cell
    >>> todo = [Cell(method="map", train_seed=0), Cell(method="map", train_seed=1)]
    >>> progress = StudyProgress(todo, rank=0, enabled=False)
    >>> progress.seed_ready(0, 30.0); progress.cell_done(todo[0], 10.0)
    >>> progress.seconds_left()
    40.0
    """

    def __init__(self, cells: list, rank: int = 0, enabled: bool = True, stream=None):
        self.remaining = list(cells)
        self.total = len(self.remaining)
        self.rank, self.enabled = rank, enabled
        self.stream = sys.stderr if stream is None else stream
        self.setups: list[float] = []
        self.cell_times: dict[str, list[float]] = defaultdict(list)
        self.seeds_ready: set[int] = set()
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        """Print one line of progress."""
        if self.enabled:
            print(f"[rank {self.rank}] {text}", file=self.stream, flush=True)

    def seed_ready(self, seed: int, seconds: float) -> None:
        """Training seed ``seed`` is set up (nets trained, posterior fitted) in ``seconds``."""
        self.setups.append(seconds)
        self.seeds_ready.add(seed)
        self.say(f"seed {seed} set up in {_duration(seconds)}; {self._left()}")

    def cell_done(self, cell, seconds: float) -> None:
        """Cell ``cell`` finished in ``seconds``."""
        self.cell_times[cell.method].append(seconds)
        self.remaining.remove(cell)
        done = self.total - len(self.remaining)
        scale = f" α={cell.scale:g}" if getattr(cell, "scale", 0) else ""
        self.say(f"{done}/{self.total} cells, {cell.method}{scale} seed {cell.train_seed} in "
                 f"{_duration(seconds)}; {self._left()}")

    def cell_failed(self, cell, seconds: float) -> None:
        """Cell ``cell`` failed after ``seconds`` (its time does not enter the estimate)."""
        self.remaining.remove(cell)
        done = self.total - len(self.remaining)
        scale = f" α={cell.scale:g}" if getattr(cell, "scale", 0) else ""
        self.say(f"{done}/{self.total} cells, {cell.method}{scale} seed {cell.train_seed} "
                 f"FAILED after {_duration(seconds)}; {self._left()}")

    def seconds_left(self) -> float | None:
        """The estimate of the module notes, or ``None`` before one setup and one cell."""
        every = [t for times in self.cell_times.values() for t in times]
        if not every or not self.setups:
            return None
        overall = sum(every) / len(every)
        seeds = {cell.train_seed for cell in self.remaining} - self.seeds_ready
        setup = len(seeds) * sum(self.setups) / len(self.setups)
        cells = sum(_mean(self.cell_times.get(cell.method), overall) for cell in self.remaining)
        return setup + cells

    def _left(self) -> str:
        left = self.seconds_left()
        if not self.remaining:
            return f"done after {_duration(time.perf_counter() - self.started)}"
        return "time left unknown yet" if left is None else f"about {_duration(left)} left"


def _mean(values, fallback: float) -> float:
    return sum(values) / len(values) if values else fallback
