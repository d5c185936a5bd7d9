"""Matching methods by calibration: the knob at which a method memorises a target fraction.

Every way of copying less has a knob: the posterior scale α of a Laplace or Riemannian
posterior, the number of Adam steps of an early-stopped net. Two methods are compared fairly
only at the *same* memorised fraction (chapter 7). Reading that point off a coarse curve by
interpolation is biased wherever the quality curve bends between the points, so the knob is
*searched* instead: bisection over candidate knob values until the memorised fraction, measured
on calibration draws, lies within ``tolerance`` of the target. Quality is then scored at that
knob on fresh draws from an independent seed, so the search cannot tune the score.

:func:`calibrate` is the search for any method (a callable from knob to memorised fraction);
:func:`calibrate_scale` answers "at which scale does this posterior memorise 0.30?" for a
trained velocity net and any sampler of weights at a scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rbmem_tutorial._checks import check_positive, check_positive_int, check_tensor
from rbmem_tutorial.laplace.sampled_nets import generate
from rbmem_tutorial.memorisation.ratio import RATIO_THRESHOLD, memorised_fraction


@dataclass(frozen=True)
class Calibration:
    """The result of a search for a target memorised fraction.

    Attributes
    ----------
    target, tolerance : float
        The level searched for and the accepted distance from it.
    knob : float
        The knob value whose fraction came closest to the target.
    achieved : float
        The memorised fraction at ``knob`` on the calibration draws.
    reached : bool
        ``|achieved − target| <= tolerance``.
    reason : str
        ``"reached"``; ``"out of range"`` when the whole range of knobs stays on one side of
        the target (the method cannot memorise that much, or that little); ``"resolution"``
        when two neighbouring knobs straddle the target by more than the tolerance.
    evaluations : tuple of (knob, fraction)
        Every knob evaluated, in the order of the search.
    """

    target: float
    tolerance: float
    knob: float
    achieved: float
    reached: bool
    reason: str
    evaluations: tuple[tuple[float, float], ...]


def calibrate(fraction_at: Callable[[float], float], target: float, knobs: Sequence[float], *,
              tolerance: float = 0.02, increasing: bool = False,
              refine: Callable[[float, float], float] | None = None, max_refine: int = 3
              ) -> Calibration:
    """Search ``knobs`` for the value whose memorised fraction is within ``tolerance`` of
    ``target``.

    The fraction is taken to fall as the knob grows (a posterior scale), or to rise with it
    when ``increasing`` (Adam steps). The search evaluates both ends, then bisects the sorted
    knobs: about log₂(len(knobs)) + 2 evaluations. When two neighbouring knobs straddle the
    target by more than ``tolerance`` and ``refine`` is given, ``refine(a, b)`` names a knob
    between them (e.g. their midpoint, for a continuous scale) and the bisection goes on there,
    at most ``max_refine`` times. Each knob is evaluated once (memoised), so a caller that
    calibrates several targets can share one ``fraction_at`` that caches its own work.

    Parameters
    ----------
    fraction_at : callable
        Knob → memorised fraction, on calibration draws that do not change with the knob
        (common random numbers make the search stable).
    target : float
        The memorised fraction to reach, in (0, 1).
    knobs : sequence of float
        Candidate knob values (sorted here).
    tolerance : float
        Accepted ``|fraction − target|``.
    increasing : bool
        Whether the fraction grows with the knob.
    refine : callable, optional
        ``(a, b) ↦`` a knob strictly between neighbouring knobs ``a < b``.
    max_refine : int
        How many times ``refine`` may be called.

    Returns
    -------
    Calibration

    Example
    -------
    A method whose memorised fraction is 0.6 e^(−α):

    >>> import math
    >>> scales = [0.05 * k for k in range(1, 61)]
    >>> found = calibrate(lambda a: 0.6 * math.exp(-a), 0.3, scales)
    >>> found.reached, round(found.knob, 2), abs(found.achieved - 0.3) <= 0.02
    (True, 0.75, True)
    >>> calibrate(lambda a: 0.6 * math.exp(-a), 0.001, scales).reason
    'out of range'
    """
    if not 0 < target < 1:
        raise ValueError(f"target must be a memorised fraction in (0, 1), got {target}.")
    check_positive("tolerance", tolerance)
    check_positive_int("max_refine", max_refine, minimum=0)
    grid = sorted(float(k) for k in knobs)
    if len(grid) < 2 or len(set(grid)) < len(grid):
        raise ValueError(f"knobs must hold at least two distinct values, got {list(knobs)}.")
    if increasing:  # walk from the most memorising knob to the least, as for a scale
        grid.reverse()
    seen: dict[float, float] = {}

    def value(knob: float) -> float:
        if knob not in seen:
            seen[knob] = float(fraction_at(knob))
        return seen[knob]

    def result(knob: float, reason: str | None = None) -> Calibration:
        achieved = value(knob)
        reached = abs(achieved - target) <= tolerance
        return Calibration(target, tolerance, knob, achieved, reached,
                           "reached" if reached else reason, tuple(seen.items()))

    lo, hi = grid[0], grid[-1]  # fraction(lo) >= fraction(hi) in expectation
    for end in (lo, hi):
        if abs(value(end) - target) <= tolerance:
            return result(end)
    if value(lo) < target or value(hi) > target:
        return result(min((lo, hi), key=lambda k: abs(value(k) - target)), "out of range")
    refinements = 0
    while True:
        i, j = grid.index(lo), grid.index(hi)
        if j - i <= 1:
            if refine is None or refinements >= max_refine:
                return result(min((lo, hi), key=lambda k: abs(value(k) - target)), "resolution")
            mid = float(refine(min(lo, hi), max(lo, hi)))
            if not min(lo, hi) < mid < max(lo, hi):
                raise ValueError(f"refine({min(lo, hi)}, {max(lo, hi)}) returned {mid}, which "
                                 "is not strictly between them.")
            grid.insert(j, mid)
            refinements += 1
        else:
            mid = grid[(i + j) // 2]
        if abs(value(mid) - target) <= tolerance:
            return result(mid)
        lo, hi = (mid, hi) if value(mid) > target else (lo, mid)


def calibrate_scale(model: torch.nn.Module, train: torch.Tensor,
                    weights_at: Callable[[float], torch.Tensor], target: float,
                    scales: Sequence[float], *, points: int = 2048, seed: int = 0,
                    tolerance: float = 0.02, threshold: float = RATIO_THRESHOLD,
                    rtol: float = 1e-5) -> Calibration:
    """The posterior scale at which generated samples memorise ``target`` (d₁/d₂ < threshold).

    For each scale tried, ``weights_at(scale)`` gives S weight samples ``[S, D]``; each pushes
    its own ``points // S`` noise draws x₀ (seeded by ``seed``, the same at every scale)
    through the velocity net, so no x₀ is shared between weight samples, and the memorised
    fraction of the pooled samples is measured against ``train``. ``weights_at`` should reuse
    its random draws across scales (e.g. ``θ* + scale · v`` with fixed ``v``), so that the
    fraction changes with the scale only. Score quality afterwards on fresh draws at the
    returned scale.

    Parameters
    ----------
    model : nn.Module
        The velocity net (its architecture; weights come from ``weights_at``).
    train : Tensor [N, d]
        The training set.
    weights_at : callable
        Scale → flat weight samples ``[S, D]``.
    target : float
        Memorised fraction to reach.
    scales : sequence of float
        Candidate scales; midpoints are tried between neighbours when needed.
    points : int
        Generated points per evaluation.
    seed : int
        Seed of the noise draws.
    tolerance, threshold : float
        Accepted distance from ``target``; the memorisation threshold on d₁/d₂.
    rtol : float
        Tolerance of the sampling ODE solve (atol the same).

    Example
    -------
    A velocity net that is exactly zero keeps x₀ where it is, so the scale below is only a
    stand-in for a posterior's: its weight samples are ``scale`` times fixed directions, which
    leaves a zero-output linear net at zero. Only the mechanics are shown.

    >>> net = torch.nn.Linear(2, 2)
    >>> torch.nn.init.zeros_(net.weight); torch.nn.init.zeros_(net.bias)  # doctest: +ELLIPSIS
    Parameter...
    >>> class Field(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = net
    ...     def forward(self, x, t):
    ...         return self.lin(x)
    >>> train = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    >>> found = calibrate_scale(Field(), train, lambda s: torch.zeros(8, 6), 0.3,
    ...                         [0.5, 1.0], points=64)
    >>> found.reason  # pure noise never memorises 0.3 of its samples
    'out of range'
    """
    train = check_tensor("train", train, ndim=2, min_rows=2)
    points = check_positive_int("points", points, minimum=2)
    generator = torch.Generator().manual_seed(seed)
    noise: dict[int, torch.Tensor] = {}

    def fraction_at(scale: float) -> float:
        thetas = weights_at(scale)
        count = len(thetas)
        if count not in noise:
            per = max(points // count, 1)
            noise[count] = torch.randn(count, per, train.shape[1], generator=generator)
        samples = generate(model, thetas.float(), noise[count], rtol=rtol, atol=rtol)
        return memorised_fraction(samples.reshape(-1, train.shape[1]), train, threshold)

    return calibrate(fraction_at, target, scales, tolerance=tolerance,
                     refine=lambda a, b: 0.5 * (a + b))
