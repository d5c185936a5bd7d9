"""Sample quality against held-out data, to tell "memorises less" from "makes worse samples".

A model that reproduces its training set scores well on two-sample distances such as MMD,
because the training set is itself a fine sample of the data distribution. So a drop in the
memorised fraction means little on its own: it must come with samples that are still close to
*held-out* data. This module gathers the usual measures:

- unbiased MMD² with a mixture of RBF kernels (Gretton et al. 2012, JMLR 13);
- the energy distance (Székely & Rizzo 2013);
- the sliced Wasserstein distance (Bonneel et al. 2015);
- k-NN precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991);
- the outlier rate: samples farther from every held-out point than held-out points
  themselves ever are (what MMD and precision do not see);
- the generalisation gap: distance to the nearest training point against the nearest held-out
  point;
- the held-out log-likelihood of a flow-matching model.

All functions take ``[N, d]`` tensors (flatten images first) on any device and compute pairwise
distances in float64, ``chunk_size`` rows at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch

from ._checks import check_positive, check_positive_int, check_same_dim, check_tensor
from .memorisation import nearest_two

DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
_CHUNK = 1024
_MEDIAN_POINTS = 1000


def _check_pair(name_x: str, x, name_y: str, y, min_rows: int = 2):
    x = check_tensor(name_x, x, ndim=2, min_rows=min_rows)
    y = check_tensor(name_y, y, ndim=2, min_rows=min_rows)
    check_same_dim(name_x, x, name_y, y)
    if x.device != y.device:
        raise ValueError(
            f"{name_x} is on {x.device} but {name_y} is on {y.device}; move both to one device."
        )
    return x.detach().double(), y.detach().double()


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[len(a), len(b)]`` by the float64 product form, clamped at 0."""
    sq = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T
    return sq.clamp_min_(0)


def _pair_sum(x: torch.Tensor, y: torch.Tensor, fn, *, same: bool) -> float:
    """``Σ_{i,j} fn(‖x_i − y_j‖²)``, leaving out ``i = j`` when ``same`` (``x`` is ``y``)."""
    total = x.new_zeros(())
    for start in range(0, len(x), _CHUNK):
        values = fn(_sq_dists(x[start : start + _CHUNK], y))
        if same:
            values.diagonal(offset=start).zero_()
        total += values.sum()
    return total.item()


def median_heuristic(x) -> float:
    """Median pairwise distance :math:`\\operatorname{med}_{i<j} \\|x_i - x_j\\|`.

    Uses at most 1000 evenly spaced rows of ``x``, so it is deterministic and cheap.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import median_heuristic
    >>> median_heuristic(torch.tensor([[0.0], [1.0], [3.0]]))
    2.0
    """
    x = check_tensor("x", x, ndim=2, min_rows=2).detach().double()
    x = x[torch.linspace(0, len(x) - 1, min(len(x), _MEDIAN_POINTS), device=x.device).long()]
    rows, cols = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    median = _sq_dists(x, x)[rows, cols].sqrt().median().item()
    if median == 0:
        raise ValueError("x has a median pairwise distance of 0; pass bandwidths explicitly.")
    return median


def default_bandwidths(reference, factors: Sequence[float] = DEFAULT_FACTORS) -> list[float]:
    """RBF bandwidths :math:`h_l = f_l \\cdot \\operatorname{med}` from the reference set.

    Taking the median from the reference (the held-out test set) alone, not from the pooled
    samples, gives every model compared against that test set the same kernel.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import default_bandwidths
    >>> default_bandwidths(torch.tensor([[0.0], [1.0], [3.0]]), factors=(0.5, 1.0))
    [1.0, 2.0]
    """
    median = median_heuristic(reference)
    return [median * check_positive("factors", f) for f in factors]


def mmd2(x, y, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased MMD² with the mean of RBF kernels over several bandwidths.

    .. math::

        k(a, b) = \\frac{1}{L}\\sum_{l=1}^{L} \\exp\\!\\Big(-\\frac{\\|a-b\\|^2}{2h_l^2}\\Big),
        \\widehat{\\mathrm{MMD}}^2_u = \\frac{\\sum_{i\\ne j} k(x_i,x_j)}{m(m-1)}
        + \\frac{\\sum_{i\\ne j} k(y_i,y_j)}{n(n-1)} - \\frac{2\\sum_{i,j} k(x_i,y_j)}{mn}

    (Gretton et al. 2012, eq. 3). The estimate is unbiased, so it can be slightly negative when
    both samples come from one distribution. The kernel is a mean, so :math:`k(a, a) = 1`.

    Parameters
    ----------
    x, y : torch.Tensor
        ``[m, d]`` and ``[n, d]`` samples, ``m, n >= 2``; ``y`` is the reference (test) set.
    bandwidths : sequence of float, optional
        The :math:`h_l`; default :func:`default_bandwidths` of ``y``
        (median heuristic × 0.25, 0.5, 1, 2, 4).

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import mmd2
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
    >>> abs(mmd2(x, y)) < 0.01, mmd2(x + 3, y) > 0.5
    (True, True)
    """
    x, y = _check_pair("x", x, "y", y)
    h = default_bandwidths(y) if bandwidths is None else list(bandwidths)
    if not h:
        raise ValueError("bandwidths is empty; pass at least one positive bandwidth.")
    scales = [-0.5 / check_positive("bandwidths", b) ** 2 for b in h]

    def kernel(sq):
        return sum((sq * s).exp_() for s in scales) / len(scales)

    m, n = len(x), len(y)
    xx = _pair_sum(x, x, kernel, same=True) / (m * (m - 1))
    yy = _pair_sum(y, y, kernel, same=True) / (n * (n - 1))
    xy = _pair_sum(x, y, kernel, same=False) / (m * n)
    return xx + yy - 2 * xy


def energy_distance(x, y, *, unbiased: bool = True) -> float:
    """Energy distance :math:`2\\,E\\|X-Y\\| - E\\|X-X'\\| - E\\|Y-Y'\\|` (Székely & Rizzo 2013).

    The within-sample means leave out :math:`i = j` (U-statistics, divisor :math:`m(m-1)`)
    when ``unbiased``, and keep the zero diagonal (V-statistics, divisor :math:`m^2`)
    otherwise; the unbiased estimate can be slightly negative. Its population value is zero
    only for equal distributions. ``scipy.stats.energy_distance`` (1-D)
    returns the square root of the V-statistic.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import energy_distance
    >>> x = torch.tensor([[0.0], [1.0]])
    >>> energy_distance(x, x, unbiased=False), energy_distance(x, x)
    (0.0, -1.0)
    """
    x, y = _check_pair("x", x, "y", y)
    m, n = len(x), len(y)
    xx = _pair_sum(x, x, torch.sqrt, same=True) / (m * (m - 1) if unbiased else m * m)
    yy = _pair_sum(y, y, torch.sqrt, same=True) / (n * (n - 1) if unbiased else n * n)
    xy = _pair_sum(x, y, torch.sqrt, same=False) / (m * n)
    return 2 * xy - xx - yy


def _random_directions(d: int, n: int, like: torch.Tensor, generator) -> torch.Tensor:
    """``[d, n]`` unit vectors, uniform on the sphere, drawn on the generator's device."""
    device = like.device if generator is None else generator.device
    z = torch.randn(d, n, generator=generator, dtype=torch.float64, device=device)
    return (z / z.norm(dim=0, keepdim=True)).to(like.device)


def _wasserstein_1d(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """``W_p^p`` between the columns of sorted samples ``a [m, L]`` and ``b [n, L]``.

    Integrates :math:`|F_a^{-1}(u) - F_b^{-1}(u)|^p` over the pieces between the merged
    levels :math:`i/m` and :math:`j/n`, where both quantile functions are constant.
    """
    m, n = len(a), len(b)
    steps = [torch.arange(1, size + 1, dtype=a.dtype, device=a.device) / size for size in (m, n)]
    levels = torch.cat(steps).sort().values
    width = torch.diff(levels, prepend=levels.new_zeros(1))
    middle = levels - width / 2
    ia = (middle * m).floor().long().clamp_(max=m - 1)
    ib = (middle * n).floor().long().clamp_(max=n - 1)
    return ((a[ia] - b[ib]).abs().pow(p) * width[:, None]).sum(0)


def sliced_wasserstein(
    x, y, *, n_projections: int = 256, p: float = 2.0, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein distance :math:`\\big(E_\\theta\\, W_p^p(\\theta^\\top X,
    \\theta^\\top Y)\\big)^{1/p}`, θ uniform on the unit sphere (Bonneel et al. 2015).

    The expectation is a Monte-Carlo mean over ``n_projections`` directions drawn from
    ``generator``; each one-dimensional :math:`W_p` is exact (sorted samples, any sizes).

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import sliced_wasserstein
    >>> x = torch.tensor([[0.0], [1.0]])
    >>> sliced_wasserstein(x, x + 2, p=1.0)
    2.0
    """
    x, y = _check_pair("x", x, "y", y, min_rows=1)
    n_projections = check_positive_int("n_projections", n_projections)
    p = check_positive("p", p)
    if p < 1:
        raise ValueError(f"p must be at least 1, got {p}.")
    theta = _random_directions(x.shape[1], n_projections, x, generator)
    a, b = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
    return _wasserstein_1d(a, b, p).mean().item() ** (1 / p)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    radii = []
    for start in range(0, len(x), _CHUNK):
        sq = _sq_dists(x[start : start + _CHUNK], x)
        sq.diagonal(offset=start).fill_(math.inf)
        radii.append(sq.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(radii).sqrt()


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each query lies in at least one ball ``‖q − c_j‖ <= r_j``."""
    inside = [
        (_sq_dists(q, centres) <= radii.pow(2)[None, :]).any(dim=1) for q in queries.split(_CHUNK)
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
    generated, held_out = _check_pair("generated", generated, "held_out", held_out)
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}; try 0.99.")
    radius = torch.quantile(_knn_radii(held_out, 1), quantile)
    nearest = torch.cat([_sq_dists(g, held_out).min(dim=1).values
                         for g in generated.split(_CHUNK)]).sqrt()
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
    >>> from rbmem_tutorial.metrics import precision_recall
    >>> x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    >>> precision_recall(x, x)
    PrecisionRecall(precision=1.0, recall=1.0)
    """
    k = check_positive_int("k", k)
    generated, real = _check_pair("generated", generated, "real", real, min_rows=k + 1)
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
    (:func:`rbmem_tutorial.memorisation.nearest_two`).

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import generalisation_gap
    >>> train, test = torch.tensor([[0.0], [10.0]]), torch.tensor([[1.0], [11.0]])
    >>> generalisation_gap(train + 0.5, train, test)
    GeneralisationGap(train=0.5, test=0.5, ratio=1.0)
    """
    repeats = check_positive_int("repeats", repeats)
    generated, train = _check_pair("generated", generated, "train", train, min_rows=1)
    generated, test = _check_pair("generated", generated, "test", test)
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


def held_out_log_likelihood(velocity, test, **kwargs) -> float:
    """Mean log-density :math:`\\frac1N\\sum_i \\log p_1(x_i)` of held-out points under a flow.

    Calls :func:`rbmem_tutorial.flow_matching.log_prob` (change of variables along the
    ODE), forwarding ``kwargs`` (``method``, ``rtol``, ``atol``, ``divergence``, ...; not
    ``return_nfe``). A memoriser concentrates its density on the training points and scores
    low on held-out data.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.metrics import held_out_log_likelihood
    >>> still = lambda x, t: torch.zeros_like(x)  # p_1 = N(0, I)
    >>> round(held_out_log_likelihood(still, torch.zeros(3, 2)), 4)
    -1.8379
    """
    from .flow_matching import log_prob

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
    >>> from rbmem_tutorial.metrics import quality_report
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
