"""Sample quality against held-out data, to tell "memorises less" from "makes worse samples".

A model that reproduces its training set scores well on two-sample distances such as MMD,
because the training set is itself a fine sample of the data distribution. So a drop in the
memorised fraction means little on its own: it must come with samples that are still close to
*held-out* data. This module holds the two-sample distances:

- unbiased MMD² with a mixture of RBF kernels (Gretton et al. 2012, JMLR 13);
- the energy distance (Székely & Rizzo 2013);
- the sliced Wasserstein distance (Bonneel et al. 2015).

Coverage (k-NN precision and recall, the outlier rate, the generalisation gap) is in
:mod:`rbmem_tutorial.memorisation.coverage`, the report with the held-out log-likelihood of a
flow-matching model in :mod:`rbmem_tutorial.memorisation.quality`.

All functions take ``[N, d]`` tensors (flatten images first) on any device and compute pairwise
distances in float64, ``chunk_size`` rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rbmem_tutorial._checks import check_positive, check_positive_int, check_same_dim, check_tensor

DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
CHUNK = 1024
_MEDIAN_POINTS = 1000


def check_pair(name_x: str, x, name_y: str, y, min_rows: int = 2):
    x = check_tensor(name_x, x, ndim=2, min_rows=min_rows)
    y = check_tensor(name_y, y, ndim=2, min_rows=min_rows)
    check_same_dim(name_x, x, name_y, y)
    if x.device != y.device:
        raise ValueError(
            f"{name_x} is on {x.device} but {name_y} is on {y.device}; move both to one device."
        )
    return x.detach().double(), y.detach().double()


def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[len(a), len(b)]`` by the float64 product form, clamped at 0."""
    sq = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T
    return sq.clamp_min_(0)


def _pair_sum(x: torch.Tensor, y: torch.Tensor, fn, *, same: bool) -> float:
    """``Σ_{i,j} fn(‖x_i − y_j‖²)``, leaving out ``i = j`` when ``same`` (``x`` is ``y``)."""
    total = x.new_zeros(())
    for start in range(0, len(x), CHUNK):
        values = fn(sq_dists(x[start : start + CHUNK], y))
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
    >>> from rbmem_tutorial.memorisation.distances import median_heuristic
    >>> median_heuristic(torch.tensor([[0.0], [1.0], [3.0]]))
    2.0
    """
    x = check_tensor("x", x, ndim=2, min_rows=2).detach().double()
    x = x[torch.linspace(0, len(x) - 1, min(len(x), _MEDIAN_POINTS), device=x.device).long()]
    rows, cols = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    median = sq_dists(x, x)[rows, cols].sqrt().median().item()
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
    >>> from rbmem_tutorial.memorisation.distances import default_bandwidths
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
    >>> from rbmem_tutorial.memorisation.distances import mmd2
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
    >>> abs(mmd2(x, y)) < 0.01, mmd2(x + 3, y) > 0.5
    (True, True)
    """
    x, y = check_pair("x", x, "y", y)
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
    >>> from rbmem_tutorial.memorisation.distances import energy_distance
    >>> x = torch.tensor([[0.0], [1.0]])
    >>> energy_distance(x, x, unbiased=False), energy_distance(x, x)
    (0.0, -1.0)
    """
    x, y = check_pair("x", x, "y", y)
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
    >>> from rbmem_tutorial.memorisation.distances import sliced_wasserstein
    >>> x = torch.tensor([[0.0], [1.0]])
    >>> sliced_wasserstein(x, x + 2, p=1.0)
    2.0
    """
    x, y = check_pair("x", x, "y", y, min_rows=1)
    n_projections = check_positive_int("n_projections", n_projections)
    p = check_positive("p", p)
    if p < 1:
        raise ValueError(f"p must be at least 1, got {p}.")
    theta = _random_directions(x.shape[1], n_projections, x, generator)
    a, b = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
    return _wasserstein_1d(a, b, p).mean().item() ** (1 / p)
