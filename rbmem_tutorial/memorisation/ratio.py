"""Detecting memorised samples with the nearest / second-nearest distance ratio test.

A generated sample :math:`\\hat x` is *memorised* when it is much closer to one training point
than to any other (Yoon et al. 2023; Gu et al. 2023, arXiv 2310.02664; Buchanan et al. 2025,
arXiv 2508.17689). With :math:`d_1` and :math:`d_2` the distances from :math:`\\hat x` to its
nearest and second-nearest training points, the test reads

.. math::

    \\frac{d_1}{d_2} < k, \\qquad k = 1/3 \\text{ in the literature (strict inequality).}

The poster of Gegenfurtner, Jacobsen and Arvanitidis (arXiv 2602.00199) writes the squared form

.. math::

    d_1^2 \\le c\\, d_2^2 \\qquad \\text{(non-strict inequality)},

so :math:`k = 1/3` corresponds to :math:`c = 1/9`, and :math:`c = 1/3` is the looser ratio
:math:`1/\\sqrt 3 \\approx 0.577`. Every function here takes either ``threshold=k`` (strict
``ratio < k``) or ``c=`` (non-strict ``ratio**2 <= c``), never both; the two differ only for
ratios that sit exactly on the boundary.

Distances are exact even for near-copies. The product form
:math:`\\|a\\|^2 + \\|b\\|^2 - 2 a^\\top b` loses all relative precision when :math:`a \\approx b`,
so it is used only to *screen* a few candidates per generated point, chunk by chunk, in the
inputs' dtype. The candidates' distances are then recomputed as :math:`\\|a - b\\|` in float64,
and a rounding-error bound certifies that the true two nearest points are among them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rbmem_tutorial._checks import check_positive, check_positive_int, check_same_dim, check_tensor

RATIO_THRESHOLD = 1 / 3
"""The literature's ratio threshold k: memorised when d1/d2 < 1/3 (equivalently c = 1/9)."""

LOOSE_C = 1 / 3
"""The poster's squared form with c = 1/3: memorised when d1² <= d2²/3 (ratio below 0.577)."""

DEFAULT_CHUNK_SIZE = 2048
_EXACT_BUDGET = 1 << 22  # float64 entries per exact-recompute piece (32 MiB, reused)


class NearestTwo(NamedTuple):
    """Distances (float64) and indices of the nearest (``d1``, ``i1``) and second-nearest
    (``d2``, ``i2``) training points of each generated point; every field has shape ``[M]``."""

    d1: torch.Tensor
    d2: torch.Tensor
    i1: torch.Tensor
    i2: torch.Tensor


def _validate_pair(generated, train) -> tuple[torch.Tensor, torch.Tensor]:
    generated = check_tensor("generated", generated, ndim=2, min_rows=1)
    train = check_tensor("train", train, ndim=2, min_rows=2)
    check_same_dim("generated", generated, "train", train)
    if generated.device != train.device:
        raise ValueError(
            f"generated is on {generated.device} but train is on {train.device}; "
            "move both to the same device."
        )
    return generated.detach(), train.detach()


def _screen_dtype(generated: torch.Tensor, train: torch.Tensor) -> torch.dtype:
    """float64 when either input is float64, else float32 (half precision is too coarse)."""
    wide = torch.float64 in (generated.dtype, train.dtype)
    return torch.float64 if wide else torch.float32


_REDUCED_ROUNDOFF = {"high": 2.0**-11, "medium": 2.0**-8}  # TF32 and bfloat16 mantissas


def _unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of the screening matmul, counting the reduced precision that
    ``torch.set_float32_matmul_precision("high" or "medium")`` allows for float32."""
    reduced = _REDUCED_ROUNDOFF.get(torch.get_float32_matmul_precision())
    if dtype == torch.float32 and reduced is not None:
        return reduced
    return torch.finfo(dtype).eps / 2


def _screen(g: torch.Tensor, t: torch.Tensor, k: int, chunk: int):
    """Running top-k of ``‖t_j‖² − 2 g·t_j`` (the squared distance minus the row constant ‖g‖²).

    Loops over chunks of both ``g`` and ``t`` and reuses one ``chunk × chunk`` block buffer,
    so memory stays at that block. Returns the k smallest values and their training indices,
    each ``[M, k]``.
    """
    t_sq = t.pow(2).sum(1)
    buffer = g.new_empty(min(chunk, len(g)) * min(chunk, len(t)))
    values, indices = [], []
    for g_chunk in g.split(chunk):
        best_v = g_chunk.new_full((len(g_chunk), k), math.inf)
        best_i = torch.zeros((len(g_chunk), k), dtype=torch.long, device=g.device)
        for start in range(0, len(t), chunk):
            t_chunk = t[start : start + chunk]
            block = buffer[: len(g_chunk) * len(t_chunk)].view(len(g_chunk), len(t_chunk))
            torch.addmm(t_sq[start : start + chunk], g_chunk, t_chunk.T, alpha=-2, out=block)
            v, j = block.topk(min(k, len(t_chunk)), dim=1, largest=False, sorted=False)
            v, j = torch.cat([best_v, v], 1), torch.cat([best_i, j + start], 1)
            best_v, pos = v.topk(k, dim=1, largest=False, sorted=False)
            best_i = j.gather(1, pos)
        values.append(best_v)
        indices.append(best_i)
    return torch.cat(values), torch.cat(indices)


def _exact_sq(generated: torch.Tensor, train: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``‖generated_m − train_idx[m, j]‖²`` from float64 differences, in pieces.

    The candidates are gathered into reused buffers, so no large tensor is allocated per piece.
    """
    k, d = idx.shape[1], train.shape[1]
    rows = max(1, _EXACT_BUDGET // (k * d))
    gathered = train.new_empty(min(rows, len(idx)) * k, d)
    diff = torch.empty(gathered.shape, dtype=torch.float64, device=train.device)
    out = torch.empty(idx.shape, dtype=torch.float64, device=train.device)
    for start in range(0, len(idx), rows):
        flat = idx[start : start + rows].reshape(-1)
        n = len(flat)
        torch.index_select(train, 0, flat, out=gathered[:n])
        piece = diff[:n].copy_(gathered[:n]).view(-1, k, d)
        piece.sub_(generated[start : start + rows, None, :].double())
        out[start : start + rows] = torch.linalg.vector_norm(piece, dim=-1).pow_(2)
    return out


def _centred(x: torch.Tensor, center: torch.Tensor, dtype: torch.dtype, chunk: int):
    """``x − center`` in ``dtype``, converted chunk by chunk (no full float64 copy)."""
    return torch.cat([(piece.double() - center).to(dtype) for piece in x.split(chunk)])


def _search(generated, train, k: int, chunk: int, dtype: torch.dtype):
    """Screen in ``dtype``, recompute candidates exactly, and flag rows the bound cannot certify.

    Any training point outside the candidates has screened value ``>= v_k`` (the k-th smallest),
    so its true squared distance is at least ``‖g‖² + v_k − err``, with ``err`` the rounding
    bound ``(2d + 16) u (‖g‖² + max_j ‖t_j‖²)`` of the product form on centred data. A row whose
    exact second-smallest candidate lies below that level is certified.
    """
    center = sum(piece.double().sum(0) for piece in train.split(chunk)) / len(train)
    g = _centred(generated, center, dtype, chunk)
    t = _centred(train, center, dtype, chunk)
    values, idx = _screen(g, t, k, chunk)
    exact_sq, order = _exact_sq(generated, train, idx).sort(dim=1)
    idx = idx.gather(1, order)
    g_sq = g.pow(2).sum(1).double()
    t_sq_max = t.pow(2).sum(1).max().double()
    u = _unit_roundoff(dtype)
    err = (2 * g.shape[1] + 16) * u * (g_sq + t_sq_max)
    level = g_sq + values.double().max(1).values - err
    certified = (k == len(train)) | (exact_sq[:, 1] <= level)
    return exact_sq[:, :2], idx[:, :2], certified


def nearest_two(
    generated, train, chunk_size: int | None = None, *, candidates: int = 8
) -> NearestTwo:
    """Exact distances and indices of the nearest and second-nearest training points.

    For every row :math:`\\hat x_m` of ``generated`` this returns
    :math:`d_1 = \\min_j \\|\\hat x_m - x_j\\|` and :math:`d_2`, the second smallest distance,
    with the indices :math:`i_1, i_2` of those training points. The search screens
    ``candidates`` points per row with the product form :math:`\\|x_j\\|^2 - 2\\hat x^\\top x_j`
    (after centring both sets on the training mean) in chunks of ``chunk_size`` rows of both
    sets, so memory stays at one ``chunk_size × chunk_size`` block plus centred copies of the
    inputs. Candidate distances are then recomputed as :math:`\\|\\hat x - x_j\\|` in float64.
    A rounding-error bound certifies each row; uncertified rows (many training points within
    rounding error of :math:`d_2`) are screened again in float64, after which any remaining
    error in :math:`d_2^2` is below about
    :math:`4 d\\, 2^{-53} (\\|\\hat x\\|^2 + \\max_j\\|x_j\\|^2)` on centred data.
    Runs on whatever device the inputs live on.

    Parameters
    ----------
    generated : torch.Tensor
        ``[M, d]`` floating-point samples (flatten images with ``x.flatten(1)``).
    train : torch.Tensor
        ``[N, d]`` training points, ``N >= 2``, on the same device.
    chunk_size : int, optional
        Rows per chunk of each set (default 2048).
    candidates : int
        Candidates screened per row (at least 2; default 8).

    Returns
    -------
    NearestTwo
        ``d1``, ``d2`` (float64) and ``i1``, ``i2`` (int64), each ``[M]``, on the inputs' device.
        Exact ties between training points are broken arbitrarily.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.ratio import nearest_two
    >>> train = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    >>> nt = nearest_two(torch.tensor([[1.0, 0.0]]), train)
    >>> nt.d1.item(), nt.d2.item(), nt.i1.item(), nt.i2.item()
    (1.0, 2.0, 0, 1)
    """
    generated, train = _validate_pair(generated, train)
    chunk = check_positive_int(
        "chunk_size", DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    )
    k = min(check_positive_int("candidates", candidates, minimum=2), len(train))
    dtype = _screen_dtype(generated, train)
    sq, idx, certified = _search(generated, train, k, chunk, dtype)
    redo = (~certified).nonzero().squeeze(1)
    if dtype != torch.float64 and len(redo) > 0:
        sq[redo], idx[redo], _ = _search(generated[redo], train, k, chunk, torch.float64)
    dist = sq.sqrt()
    return NearestTwo(dist[:, 0], dist[:, 1], idx[:, 0], idx[:, 1])


def ratio_from(nt: NearestTwo) -> torch.Tensor:
    """d_1/d_2 per sample (1 where d_2 = 0, a tie of duplicates)."""
    return torch.where(nt.d2 > 0, nt.d1 / nt.d2, 1.0)


def memorisation_ratio(generated, train, chunk_size: int | None = None) -> torch.Tensor:
    """The ratio :math:`d_1 / d_2 \\in [0, 1]` of each generated point (float64, ``[M]``).

    When :math:`d_2 = 0` (the point sits on a training point that appears twice) the ratio is
    defined as 1, its limit along :math:`d_1 = d_2`: the test cannot single out one copy, so
    duplicated training points hide memorisation. Deduplicate the training set first.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.ratio import memorisation_ratio
    >>> train = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    >>> memorisation_ratio(torch.tensor([[1.0, 0.0]]), train)
    tensor([0.3333], dtype=torch.float64)
    """
    return ratio_from(nearest_two(generated, train, chunk_size))


def flag_ratios(ratios: torch.Tensor, threshold: float | None, c: float | None) -> torch.Tensor:
    """Apply ``ratio < threshold`` (strict) or ``ratio**2 <= c`` (non-strict); default k = 1/3."""
    if threshold is not None and c is not None:
        raise ValueError(
            "pass either threshold (ratio d1/d2 < threshold) or c (d1² <= c·d2²), not both."
        )
    if c is not None:
        c = check_positive("c", c)
        if c > 1:
            raise ValueError(f"c must lie in (0, 1]; c = {c} would flag every point.")
        return ratios.pow(2) <= c
    threshold = check_positive("threshold", RATIO_THRESHOLD if threshold is None else threshold)
    if threshold > 1:
        raise ValueError(f"threshold must lie in (0, 1]; {threshold} would flag every point.")
    return ratios < threshold


def is_memorised(
    generated,
    train,
    threshold: float | None = None,
    *,
    c: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Boolean ``[M]`` flags of the ratio test.

    ``threshold=k`` flags :math:`d_1/d_2 < k` (strict; default :math:`k = 1/3`, the literature's
    test). ``c=`` flags the poster's squared form :math:`d_1^2 \\le c\\, d_2^2` (non-strict;
    ``c = 1/9`` matches ``k = 1/3`` except on the boundary, ``c = 1/3`` is the looser 0.577).
    Pass at most one of them.

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.ratio import is_memorised
    >>> train = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    >>> x = torch.tensor([[1.0, 0.0], [0.5, 0.0]])   # ratios 1/3 and 1/7
    >>> is_memorised(x, train).tolist(), is_memorised(x, train, c=1 / 9).tolist()
    ([False, True], [True, True])
    """
    return flag_ratios(memorisation_ratio(generated, train, chunk_size), threshold, c)


def memorised_fraction(
    generated,
    train,
    threshold: float | None = None,
    *,
    c: float | None = None,
    chunk_size: int | None = None,
) -> float:
    """Fraction of generated points flagged by :func:`is_memorised` (same ``threshold``/``c``).

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.memorisation.ratio import memorised_fraction
    >>> train = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    >>> memorised_fraction(torch.tensor([[0.1, 0.0], [2.0, 0.0]]), train)
    0.5
    """
    flags = is_memorised(generated, train, threshold, c=c, chunk_size=chunk_size)
    return flags.double().mean().item()
