"""The memorisation report: ratios, fractions under both forms of the test, which training
points are copied and how often, and a bootstrap interval for the fraction (chapter 2's figures).

The test itself is :mod:`rbmem_tutorial.memorisation.ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rbmem_tutorial._checks import check_positive, check_positive_int
from rbmem_tutorial.memorisation.ratio import (
    LOOSE_C,
    RATIO_THRESHOLD,
    NearestTwo,
    flag_ratios,
    nearest_two,
    ratio_from,
)

__all__ = ["MemorisationReport", "memorisation_report"]


@dataclass(frozen=True)
class MemorisationReport:
    """Everything the memorisation figures need, on the CPU.

    Attributes
    ----------
    ratios : torch.Tensor
        ``[M]`` float64 ratios :math:`d_1/d_2`.
    nearest : NearestTwo
        Distances and indices behind the ratios.
    fraction_strict : float
        Fraction with :math:`d_1/d_2 < 1/3` (the literature's test).
    fraction_loose : float
        Fraction with :math:`d_1^2 \\le d_2^2/3` (the poster's form with c = 1/3; ratio 0.577).
    flags : torch.Tensor
        ``[M]`` booleans of the report's own test (``threshold``/``c`` of the call).
    counts : torch.Tensor
        ``[N]`` number of flagged samples whose nearest training point is each training point.
    copied_indices : torch.Tensor
        Training indices with at least one flagged copy, most copied first.
    baseline : MemorisationReport or None
        The same report for true samples from the data distribution, when given.
    """

    ratios: torch.Tensor
    nearest: NearestTwo
    fraction_strict: float
    fraction_loose: float
    flags: torch.Tensor
    counts: torch.Tensor
    copied_indices: torch.Tensor
    baseline: MemorisationReport | None = None

    @property
    def fraction(self) -> float:
        """Fraction flagged by the report's own test."""
        return self.flags.double().mean().item()

    def fraction_at(self, threshold: float | None = None, *, c: float | None = None) -> float:
        """Fraction flagged at another threshold, from the stored ratios (no new search)."""
        return flag_ratios(self.ratios, threshold, c).double().mean().item()

    def bootstrap_interval(
        self,
        threshold: float | None = None,
        *,
        c: float | None = None,
        level: float = 0.95,
        n_boot: int = 2000,
        generator: torch.Generator | None = None,
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of the memorised fraction.

        Resampling the M flags with replacement makes the flagged count
        :math:`\\mathrm{Binomial}(M, \\hat p)`, so the bootstrap draws that count directly.
        It assumes independent samples (not true when many samples share one parameter draw)
        and collapses to a point when :math:`\\hat p` is 0 or 1.

        Example
        -------
        >>> import torch
        >>> from rbmem_tutorial.memorisation.report import memorisation_report
        >>> train = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
        >>> rep = memorisation_report(torch.tensor([[0.1, 0.0], [2.0, 0.0]]), train)
        >>> lo, hi = rep.bootstrap_interval(generator=torch.Generator().manual_seed(0))
        >>> 0.0 <= lo <= 0.5 <= hi <= 1.0
        True
        """
        level = check_positive("level", level)
        if level >= 1:
            raise ValueError(f"level must lie in (0, 1), got {level}.")
        n_boot = check_positive_int("n_boot", n_boot)
        flags = flag_ratios(self.ratios, threshold, c)
        m = float(len(flags))
        p = torch.full((n_boot,), flags.double().mean().item(), dtype=torch.float64)
        draws = torch.binomial(torch.full_like(p, m), p, generator=generator) / m
        tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        lo, hi = torch.quantile(draws, tails).tolist()
        return lo, hi


def memorisation_report(
    generated,
    train,
    threshold: float | None = None,
    *,
    c: float | None = None,
    true_samples=None,
    chunk_size: int | None = None,
) -> MemorisationReport:
    """Ratio test report: fractions at both thresholds, copies, counts, optional baseline.

    ``threshold``/``c`` choose the report's own test for ``flags``, ``counts`` and
    ``copied_indices`` (default: ratio < 1/3). ``fraction_strict`` (ratio < 1/3) and
    ``fraction_loose`` (:math:`d_1^2 \\le d_2^2/3`) are always both given. Pass
    ``true_samples`` (held-out draws from the data distribution, ideally as many as
    ``generated``) to get the floor that chance alone reaches: on small 2-D training sets some
    true samples pass the test too.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.report import memorisation_report
    >>> train = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    >>> gen = torch.tensor([[0.1, 0.0], [3.9, 0.1], [2.0, 2.0]])
    >>> rep = memorisation_report(gen, train)
    >>> rep.fraction_strict, rep.counts.tolist(), rep.copied_indices.tolist()
    (0.6666666666666666, [1, 1, 0], [0, 1])
    """
    nt = nearest_two(generated, train, chunk_size)
    nt = NearestTwo(*(field.cpu() for field in nt))
    ratios = ratio_from(nt)
    flags = flag_ratios(ratios, threshold, c)
    counts = torch.bincount(nt.i1[flags], minlength=len(train))
    order = counts.argsort(descending=True, stable=True)
    baseline = None
    if true_samples is not None:
        baseline = memorisation_report(true_samples, train, threshold, c=c, chunk_size=chunk_size)
    return MemorisationReport(
        ratios=ratios,
        nearest=nt,
        fraction_strict=flag_ratios(ratios, RATIO_THRESHOLD, None).double().mean().item(),
        fraction_loose=flag_ratios(ratios, None, LOOSE_C).double().mean().item(),
        flags=flags,
        counts=counts,
        copied_indices=order[: int((counts > 0).sum())],
        baseline=baseline,
    )
