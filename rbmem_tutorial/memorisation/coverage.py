"""Coverage of held-out data by generated samples: k-NN precision and recall (Kynkäänniemi et
al. 2019, arXiv 1904.06991), the outlier rate, and the generalisation gap (distance to the
nearest training point against the nearest held-out point).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rbmem_tutorial._checks import check_positive_int, check_tensor
from rbmem_tutorial.memorisation.distances import CHUNK, check_pair, sq_dists
from rbmem_tutorial.memorisation.ratio import nearest_two

__all__ = ["GeneralisationGap", "PrecisionRecall", "generalisation_gap", "outlier_rate",
           "precision_recall"]


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    radii = []
    for start in range(0, len(x), CHUNK):
        sq = sq_dists(x[start : start + CHUNK], x)
        sq.diagonal(offset=start).fill_(math.inf)
        radii.append(sq.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(radii).sqrt()


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each query lies in at least one ball ``‖q − c_j‖ <= r_j``."""
    inside = [
        (sq_dists(q, centres) <= radii.pow(2)[None, :]).any(dim=1) for q in queries.split(CHUNK)
    ]
    return torch.cat(inside)


def outlier_rate(generated, held_out, quantile: float = 0.99) -> float:
    """Share of generated samples farther from every held-out point than the held-out points'
    own nearest-neighbour distances reach at ``quantile``.

    With :math:`r_i` the distance from held-out point :math:`x_i` to its nearest *other*
    held-out point and :math:`r_q` their ``quantile`` (linear interpolation),

    .. math::

        \\text{outlier rate} = \\frac{1}{M}\\sum_m
        \\mathbb 1\\big[\\min_i \\|\\hat x_m - x_i\\| > r_q\\big].

    A fresh sample of the data distribution scores about ``1 − quantile``. Unlike MMD² (a
    bounded kernel) and precision (a share of points, near or not), it counts how many samples
    land far from the data, however far.

    Example
    -------
    >>> import torch
    >>> held_out = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # every r_i = 1
    >>> outlier_rate(torch.tensor([[0.5], [2.9], [4.5], [-9.0]]), held_out)
    0.5
    """
    generated, held_out = check_pair("generated", generated, "held_out", held_out)
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}; try 0.99.")
    radius = torch.quantile(_knn_radii(held_out, 1), quantile)
    nearest = torch.cat([sq_dists(g, held_out).min(dim=1).values
                         for g in generated.split(CHUNK)]).sqrt()
    return (nearest > radius).double().mean().item()


class PrecisionRecall(NamedTuple):
    """k-NN precision (generated samples on the data manifold) and recall (data covered)."""

    precision: float
    recall: float


def precision_recall(generated, real, k: int = 3) -> PrecisionRecall:
    """k-NN precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991).

    Each set's manifold is the union of balls around its points, each ball reaching the
    point's k-th nearest neighbour in the same set. Then

    .. math::

        \\text{precision} = \\frac{1}{M}\\sum_m \\mathbb 1\\big[\\exists i:
        \\|\\hat x_m - x_i\\| \\le r_k(x_i)\\big],\\qquad
        \\text{recall} = \\frac{1}{N}\\sum_i \\mathbb 1\\big[\\exists m:
        \\|x_i - \\hat x_m\\| \\le r_k(\\hat x_m)\\big].

    Both sets need more than ``k`` rows; use sets of equal size, since the radii shrink as a
    set grows.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.coverage import precision_recall
    >>> x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    >>> precision_recall(x, x)
    PrecisionRecall(precision=1.0, recall=1.0)
    """
    k = check_positive_int("k", k)
    generated, real = check_pair("generated", generated, "real", real, min_rows=k + 1)
    precision = _covered(generated, real, _knn_radii(real, k)).double().mean().item()
    recall = _covered(real, generated, _knn_radii(generated, k)).double().mean().item()
    return PrecisionRecall(precision, recall)


class GeneralisationGap(NamedTuple):
    """Mean distance of generated samples to their nearest training and held-out points.

    ``ratio = train / test`` is about 1 for a model that generalises and falls towards 0 for
    one that copies its training set.
    """

    train: float
    test: float
    ratio: float


def _mean_nearest(generated, points, size: int, repeats: int, generator) -> float:
    """Mean nearest distance to ``points``, averaged over random subsets of ``size`` rows."""
    if len(points) == size:
        return nearest_two(generated, points).d1.mean().item()
    device = points.device if generator is None else generator.device
    total = 0.0
    for _ in range(repeats):
        pick = torch.randperm(len(points), generator=generator, device=device)[:size]
        total += nearest_two(generated, points[pick.to(points.device)]).d1.mean().item()
    return total / repeats


def generalisation_gap(
    generated, train, test, *, repeats: int = 10, generator: torch.Generator | None = None
) -> GeneralisationGap:
    """Mean nearest-neighbour distance to the training set against the held-out set.

    .. math::

        \\bar d_{\\text{train}} = \\frac1M\\sum_m \\min_i \\|\\hat x_m - x_i^{\\text{train}}\\|,
        \\qquad
        \\bar d_{\\text{test}} = \\frac1M\\sum_m \\min_j \\|\\hat x_m - x_j^{\\text{test}}\\|.

    Nearest-neighbour distances shrink as a set grows, so the larger of the two sets is
    compared through ``repeats`` random subsets of the smaller one's size (drawn from
    ``generator``), and the subset means are averaged. Distances are exact
    (:func:`rbmem_tutorial.memorisation.ratio.nearest_two`).

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.coverage import generalisation_gap
    >>> train, test = torch.tensor([[0.0], [10.0]]), torch.tensor([[1.0], [11.0]])
    >>> generalisation_gap(train + 0.5, train, test)
    GeneralisationGap(train=0.5, test=0.5, ratio=1.0)
    """
    repeats = check_positive_int("repeats", repeats)
    generated, train = check_pair("generated", generated, "train", train, min_rows=1)
    generated, test = check_pair("generated", generated, "test", test)
    train = check_tensor("train", train, min_rows=2)
    size = min(len(train), len(test))
    near_train = _mean_nearest(generated, train, size, repeats, generator)
    near_test = _mean_nearest(generated, test, size, repeats, generator)
    if near_test == 0:
        raise ValueError(
            "every generated sample coincides with a held-out point, so the ratio is undefined; "
            "check that test is disjoint from generated."
        )
    return GeneralisationGap(near_train, near_test, near_train / near_test)
