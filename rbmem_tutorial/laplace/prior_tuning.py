"""Tuning the prior precision λ by the Laplace evidence, and refining θ* in turn.

:func:`optimal_prior_precision` maximises the evidence of :mod:`rbmem_tutorial.laplace` in λ
for a fixed θ* (MacKay's fixed point λ = γ/‖θ* − m‖², found by bracketing);
:func:`refine_and_tune` alternates it with the refinement of θ*.

The evidence is maximised with θ* held fixed, but θ* is a minimiser of L at some λ, and moves
when λ does. Two rules join the two steps:

``"evidence-once"``
    refine θ*₀ at the initial λ₀, tune λ₁ at θ*₀, refine θ*₁ at λ₁ and stop. λ₁ need not
    maximise the evidence at θ*₁; the history records the λ that would.
``"fixed-point"``
    continue, tuning λ_{k+1} at θ*_k and refining θ*_{k+1} at λ_{k+1}, until the evidence
    maximiser at θ*_k is within ``TUNE_RTOL`` of the λ_k it was refined at: then
    λ = γ(λ)/‖θ*(λ) − m‖², MacKay's fixed point (MacKay 1992), which for a linear model is
    the maximiser of the exact evidence. If the prior's mean m was itself fitted to the data
    (m = θ_SGD), θ* → m and λ → ∞ is the only fixed point, and the rounds end without one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict

import torch
from scipy.optimize import brentq

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int, check_tensor
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.laplace.refinement import refine_map

__all__ = ["TUNE_RTOL", "TUNINGS", "optimal_prior_precision", "refine_and_tune"]

TUNINGS = ("evidence-once", "fixed-point")
TUNE_RTOL = 0.01
"""``"fixed-point"`` stops when the evidence maximiser is within 1% of the current λ."""


_LOG_LAMBDA_RANGE = (-30.0, 30.0)


def optimal_prior_precision(eigenvalues: torch.Tensor, theta_sq_norm: float) -> float:
    """The λ that maximises the Laplace evidence for a fixed θ*.

    Maximises F(λ) = −λ s/2 + (k/2) log λ − ½ Σ_i log(e_i + λ), s = ‖θ* − m‖², by finding the root
    of its log-λ derivative γ(λ) − λ s (γ = Σ e_i/(e_i + λ), decreasing) with Brent's method
    in log λ ∈ [−30, 30].

    Parameters
    ----------
    eigenvalues : Tensor [k]
        Spectrum e ≥ 0 of the GGN (or its structured approximation).
    theta_sq_norm : float
        s = ‖θ* − m‖² over the same k parameters (m the prior mean); positive.

    Example
    -------
    >>> round(optimal_prior_precision(torch.tensor([1.0, 1.0]), 1.0), 6)  # γ = λ s
    1.0
    """
    e = check_tensor("eigenvalues", eigenvalues, ndim=1, min_rows=1).double().clamp_min(0)
    s = check_positive("theta_sq_norm", theta_sq_norm)
    if not bool((e > 0).any()):
        raise ValueError("the GGN is zero, so the evidence grows without bound as λ → 0.")

    def slope(log_lam):
        lam = math.exp(log_lam)
        return float((e / (e + lam)).sum()) - lam * s

    low, high = _LOG_LAMBDA_RANGE
    if slope(low) <= 0 or slope(high) >= 0:
        raise ValueError(
            f"the evidence maximiser lies outside λ ∈ [e^{low:.0f}, e^{high:.0f}]; rescale the "
            "data or pass prior_precision yourself."
        )
    return math.exp(brentq(slope, low, high, xtol=1e-13, rtol=4 * 2.0**-52))



def refine_and_tune(objective: RegressionObjective, theta, evidence_optimum, *,
                    tune: str = "evidence-once", max_rounds: int = 10, **refine) -> dict:
    """Refine θ from ``theta`` and tune λ by the rule ``tune`` (module notes).

    Parameters
    ----------
    objective : RegressionObjective
        L at the initial λ₀ (its ``prior_precision``).
    theta : Tensor [D]
        Where refining starts (θ_SGD).
    evidence_optimum : callable
        ``evidence_optimum(objective, θ*) -> float``, the λ maximising the Laplace evidence at
        θ* (for example a posterior fitted with λ left to tune).
    tune : {"evidence-once", "fixed-point"}
    max_rounds : int
        Refinements at most for ``"fixed-point"``; a warning if λ has not settled by then.
    **refine
        Passed to :func:`~rbmem_tutorial.laplace.refinement.refine_map`.

    Returns
    -------
    dict
        ``theta_map`` (θ*, on the CPU), ``prior_precision`` (the λ at which θ* is stationary),
        ``refine_first`` and ``refine_final``
        (:class:`~rbmem_tutorial.laplace.refinement.RefineRecord`
        as dicts) and ``tune_history``: one row per refinement with ``refined_at`` (its λ),
        ``offset_norm`` (‖θ* − m‖) and ``evidence_optimum`` (the maximiser at that θ*).

    Example
    -------
    >>> import torch
    >>> from rbmem_tutorial.laplace.structures import fit_laplace
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(40, 2, generator=g)
    >>> y = z @ torch.tensor([[1.0], [-2.0]]) + 0.5 * torch.randn(40, 1, generator=g)
    >>> obj = RegressionObjective(torch.nn.Linear(2, 1), z, y, 0.5, 1.0)
    >>> optimum = lambda o, t: fit_laplace(o, t, "full").prior_precision
    >>> out = refine_and_tune(obj, torch.zeros(3), optimum, tune="fixed-point")
    >>> row = out["tune_history"][-1]
    >>> abs(row["evidence_optimum"] / row["refined_at"] - 1) < TUNE_RTOL
    True
    """
    check_choice("tune", tune, TUNINGS)
    rounds = 2 if tune == "evidence-once" else check_positive_int("max_rounds", max_rounds,
                                                                   minimum=2)
    theta, first = refine_map(objective, theta, **refine)
    history, refined_at = [], objective.prior_precision
    for k in range(rounds):
        optimum = evidence_optimum(objective, theta)
        history.append({"refined_at": refined_at, "evidence_optimum": optimum,
                        "offset_norm": float(objective.prior_offset(theta).norm())})
        settled = abs(optimum / refined_at - 1) < TUNE_RTOL
        if k == rounds - 1 or (k > 0 and settled):
            break
        theta, final = refine_map(objective.with_prior_precision(optimum), theta, **refine)
        refined_at = optimum
    if tune == "fixed-point" and not settled:
        warnings.warn(f"λ did not settle in {rounds} rounds ({history[0]['evidence_optimum']:.4g}"
                      f" → {optimum:.4g}); the posterior uses λ = {refined_at:.4g}, where θ* is "
                      "stationary. See tune_history.", stacklevel=2)
    return {"theta_map": theta.detach().cpu(), "prior_precision": float(refined_at),
            "refine_first": asdict(first), "refine_final": asdict(final),
            "tune_history": history}
