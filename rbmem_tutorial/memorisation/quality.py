"""The quality report of chapter 2: the two-sample distances, coverage and the held-out
log-likelihood of a flow-matching model, in one record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch

from rbmem_tutorial._checks import check_tensor
from rbmem_tutorial.flows.sampling import log_prob
from rbmem_tutorial.memorisation.coverage import (
    GeneralisationGap,
    generalisation_gap,
    precision_recall,
)
from rbmem_tutorial.memorisation.distances import (
    default_bandwidths,
    energy_distance,
    mmd2,
    sliced_wasserstein,
)

__all__ = ["QualityReport", "held_out_log_likelihood", "quality_report"]


def held_out_log_likelihood(velocity, test, **kwargs) -> float:
    """Mean log-density :math:`\\frac1N\\sum_i \\log p_1(x_i)` of held-out points under a flow.

    Calls :func:`rbmem_tutorial.flows.sampling.log_prob` (change of variables along the
    ODE), forwarding ``kwargs`` (``method``, ``rtol``, ``atol``, ``divergence``, ...; not
    ``return_nfe``). A memoriser concentrates its density on the training points and scores
    low on held-out data.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.quality import held_out_log_likelihood
    >>> still = lambda x, t: torch.zeros_like(x)  # p_1 = N(0, I)
    >>> round(held_out_log_likelihood(still, torch.zeros(3, 2)), 4)
    -1.8379
    """
    test = check_tensor("test", test, ndim=2, min_rows=1)
    return log_prob(velocity, test, **kwargs).double().mean().item()


@dataclass(frozen=True)
class QualityReport:
    """The cheap quality measures of one sample against a held-out set.

    ``gap`` needs the training set; ``baseline`` holds the same report for true samples.
    """

    mmd2: float
    energy: float
    sliced_wasserstein: float
    precision: float
    recall: float
    gap: GeneralisationGap | None = None
    baseline: QualityReport | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}`` of this report (the baseline's entries prefixed
        ``baseline_``), for tables and plots."""
        row = {k: v for k, v in asdict(self).items() if k not in ("gap", "baseline")}
        if self.gap is not None:
            row |= {f"gap_{k}": v for k, v in self.gap._asdict().items()}
        if self.baseline is not None:
            row |= {f"baseline_{k}": v for k, v in self.baseline.as_dict().items()}
        return row


def quality_report(
    generated,
    test,
    train=None,
    *,
    true_samples=None,
    k: int = 3,
    bandwidths: Sequence[float] | None = None,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> QualityReport:
    """MMD², energy distance, sliced W2 and k-NN precision/recall against ``test``.

    With ``train``, also the :func:`generalisation_gap`. With ``true_samples`` (fresh draws
    from the data distribution, ideally as many as ``generated``), also the same report for
    them, as the floor that a perfect sampler reaches at this sample size. The MMD bandwidths
    come from ``test`` (or ``bandwidths``), so both reports share one kernel.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.quality import quality_report
    >>> g = torch.Generator().manual_seed(0)
    >>> test, fake = torch.randn(100, 2, generator=g), 2 + torch.randn(100, 2, generator=g)
    >>> rep = quality_report(fake, test, true_samples=torch.randn(100, 2, generator=g))
    >>> rep.mmd2 > rep.baseline.mmd2, rep.recall < rep.baseline.recall
    (True, True)
    """
    bandwidths = default_bandwidths(test) if bandwidths is None else list(bandwidths)
    pr = precision_recall(generated, test, k)
    report = QualityReport(
        mmd2=mmd2(generated, test, bandwidths),
        energy=energy_distance(generated, test),
        sliced_wasserstein=sliced_wasserstein(
            generated, test, n_projections=n_projections, generator=generator
        ),
        precision=pr.precision,
        recall=pr.recall,
        gap=None if train is None else generalisation_gap(
            generated, train, test, generator=generator
        ),
    )
    if true_samples is None:
        return report
    baseline = quality_report(
        true_samples, test, train, k=k, bandwidths=bandwidths,
        n_projections=n_projections, generator=generator,
    )
    return replace(report, baseline=baseline)
