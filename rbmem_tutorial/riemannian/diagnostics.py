"""Diagnostics of Riemannian samples: how far each geodesic went, and whether they drift together.

Per sample (filled into :class:`~rbmem_tutorial.riemannian.GeodesicResult` by
:func:`~rbmem_tutorial.riemannian.exp_map`):

- ``grad_norm_start = ‖∇L(θ0)‖``: zero at a stationary base point;
- ``travel = ‖c(1) − θ0‖ / ‖v‖``: 1 for a straight line, small when the metric pins the
  sample near θ0 (0 when ``v = 0``);
- ``loss_rise = L(c(1)) − L(θ0)`` of the untempered loss, against
- ``bound``: the metric's bound on ``|loss_rise|``, ``√(T²‖v‖² + (∇L(θ0)·v)²)`` for the Monge
  metric at temperature ``T`` (``T‖v‖`` at a stationary point), the Fisher metric's own bound,
  or None where the metric has none.

Per set of samples, :func:`common_drift` tells spread from a shared shift.
"""

from __future__ import annotations

import torch

from rbmem_tutorial.riemannian._checks import check_float64


def endpoint_diagnostics(metric, theta0, v, endpoints) -> dict:
    """``grad_norm_start``, ``travel``, ``loss_rise`` and ``bound`` per row of ``v``.

    ``theta0`` is ``[D]``, ``v`` and ``endpoints`` are ``[D]`` or ``[S, D]``. ``loss_rise`` is
    None when the metric's ``loss_value`` is None; ``bound`` when the metric has no
    ``loss_rise_bound`` or it returns None.

    Example
    -------
    >>> from rbmem_tutorial.riemannian import MongeMetric
    >>> theta0 = torch.zeros(2, dtype=torch.float64)
    >>> metric = MongeMetric(lambda th: 0.5 * (th ** 2).sum(), theta0)
    >>> v = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> found = endpoint_diagnostics(metric, theta0, v, theta0 + 0.5 * v)  # half way along v
    >>> [float(found[k]) for k in ("grad_norm_start", "travel", "loss_rise", "bound")]
    [0.0, 0.5, 3.125, 5.0]
    """
    batch = v.shape[:-1]
    length = v.norm(dim=-1)
    moved = (endpoints - theta0).norm(dim=-1)
    travel = torch.where(length > 0, moved / length.clamp_min(torch.finfo(v.dtype).tiny), moved)
    start = metric.loss_value(theta0)
    rise = None if start is None else metric.loss_value(endpoints) - start
    bound = getattr(metric, "loss_rise_bound", None)
    return {
        "grad_norm_start": metric.grad_norm(theta0).expand(batch).clone(),
        "travel": travel,
        "loss_rise": rise,
        "bound": None if bound is None else bound(theta0.expand_as(v), v),
    }


def common_drift(endpoints, theta0) -> float:
    """Norm of the mean displacement over the RMS displacement of ``S`` samples.

    With displacements ``d_s = θ_s − θ0`` and their mean ``d̄``,

        drift = ‖d̄‖ / √(mean_s ‖d_s‖²) = ‖d̄‖ / √(‖d̄‖² + mean_s ‖d_s − d̄‖²),

    so ``0 ≤ drift ≤ 1``: 1 exactly when all samples moved by the same vector (a shared shift,
    e.g. every geodesic sliding down the slope of a non-stationary base point), 0 when the
    displacements cancel (symmetric pairs ``±d``). For independent zero-mean displacements
    ``E‖d̄‖² = E‖d‖²/S``, so pure spread gives about ``1/√S``.

    Parameters
    ----------
    endpoints : Tensor
        ``[S, D]`` samples, ``S ≥ 2``.
    theta0 : Tensor
        ``[D]`` the point they left from.

    Returns
    -------
    float

    Example
    -------
    >>> import torch
    >>> theta0 = torch.zeros(2, dtype=torch.float64)
    >>> shift = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    >>> spread = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    >>> common_drift(shift, theta0), common_drift(spread, theta0)  # a shared shift; ± pairs
    (1.0, 0.0)
    >>> round(common_drift(shift + spread, theta0), 6)  # 1 / √(1 + 1)
    0.707107
    """
    endpoints = check_float64("endpoints", endpoints, ndim=2)
    theta0 = check_float64("theta0", theta0, ndim=1)
    if endpoints.shape[0] < 2 or endpoints.shape[1] != theta0.shape[0]:
        raise ValueError(
            f"endpoints must be [S, {theta0.shape[0]}] with S ≥ 2 (theta0 has {theta0.shape[0]} "
            f"entries), got shape {tuple(endpoints.shape)}."
        )
    displacements = endpoints - theta0
    rms = displacements.square().sum(-1).mean().sqrt()
    if rms == 0:
        raise ValueError("every endpoint equals theta0, so the common drift is 0/0; check v.")
    return float(displacements.mean(0).norm() / rms)
