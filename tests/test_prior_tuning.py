"""Refining θ* and tuning λ in turn: MacKay's fixed point is the exact type-II maximiser for a
linear model, the one-shot rule stops after one tuning, and a data-fitted prior mean diverges."""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from rbmem_tutorial.laplace import RegressionObjective, fit_laplace
from rbmem_tutorial.laplace.prior_tuning import TUNE_RTOL, refine_and_tune

F64 = torch.float64
SIGMA = 0.4


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 3, generator=g, dtype=F64)
    y = z @ torch.tensor([[0.8], [-1.5], [0.3]], dtype=F64) + 0.2 + SIGMA * torch.randn(
        50, 1, generator=g, dtype=F64)
    return z, y


def exact_log_evidence(z, y, lam):
    """log N(y; 0, σ²I + Φ Φᵀ/λ) with Φ = [z, 1], the evidence of the linear model."""
    features = torch.cat([z, torch.ones(len(z), 1, dtype=F64)], dim=1)
    cov = SIGMA**2 * torch.eye(len(z), dtype=F64) + features @ features.T / lam
    return float(torch.distributions.MultivariateNormal(torch.zeros(len(z), dtype=F64),
                                                        cov).log_prob(y[:, 0]))


def optimum(objective, theta):
    return fit_laplace(objective, theta, "full").prior_precision


def test_fixed_point_is_the_exact_evidence_maximiser_of_a_linear_model(data):
    z, y = data
    best = math.exp(minimize_scalar(lambda s: -exact_log_evidence(z, y, math.exp(s)),
                                    bounds=(-8, 8), method="bounded",
                                    options={"xatol": 1e-10}).x)
    obj = RegressionObjective(nn.Linear(3, 1), z, y, SIGMA, 1.0)
    out = refine_and_tune(obj, torch.zeros(4, dtype=F64), optimum, tune="fixed-point",
                          max_rounds=30)
    last = out["tune_history"][-1]
    assert abs(last["evidence_optimum"] / last["refined_at"] - 1) < TUNE_RTOL
    assert out["prior_precision"] == last["refined_at"]
    assert out["prior_precision"] == pytest.approx(best, rel=0.05)
    once = refine_and_tune(obj, torch.zeros(4, dtype=F64), optimum)
    assert len(once["tune_history"]) == 2
    assert once["prior_precision"] == once["tune_history"][0]["evidence_optimum"]


def test_a_prior_centred_on_the_data_fit_never_settles(data):
    z, y = data
    obj = RegressionObjective(nn.Linear(3, 1), z, y, SIGMA, 1.0)
    fit = refine_and_tune(obj, torch.zeros(4, dtype=F64), optimum)["theta_map"]
    start = fit + 0.1  # the prior's centre near the data's best fit, as θ_SGD is
    centred = RegressionObjective(nn.Linear(3, 1), z, y, SIGMA, 1.0, prior_mean=start)
    with pytest.warns(UserWarning, match="did not settle in 4 rounds"):
        out = refine_and_tune(centred, start, optimum, tune="fixed-point", max_rounds=4)
    lams = [row["refined_at"] for row in out["tune_history"]]
    offsets = [row["offset_norm"] for row in out["tune_history"]]
    assert all(b > a for a, b in zip(lams, lams[1:], strict=False))
    assert all(b < a for a, b in zip(offsets, offsets[1:], strict=False))


def test_bad_rules_are_refused(data):
    z, y = data
    obj = RegressionObjective(nn.Linear(3, 1), z, y, SIGMA, 1.0)
    with pytest.raises(ValueError, match="tune"):
        refine_and_tune(obj, torch.zeros(4, dtype=F64), optimum, tune="twice")
    with pytest.raises(ValueError, match="max_rounds"):
        refine_and_tune(obj, torch.zeros(4, dtype=F64), optimum, tune="fixed-point",
                        max_rounds=1)
