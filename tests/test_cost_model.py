"""The geodesic cost model: its fits and its prediction for a trade-off profile."""

import numpy as np
import pytest

from rbmem_tutorial.experiments import cost_model
from rbmem_tutorial.experiments.tradeoff import cells, profile_config


def test_fit_recovers_a_linear_law_and_refuses_flat_timings():
    work = [1e9, 3e9, 9e9]
    model = cost_model.fit(work, [2e-3 + w / 5e9 for w in work])
    assert model.overhead == pytest.approx(2e-3) and model.rate == pytest.approx(5e9)
    with pytest.raises(ValueError, match="do not grow"):
        cost_model.fit(work, [2.4e-3, 2.3e-3, 2.2e-3])


def test_overhead_bound_keeps_the_overhead_and_a_lower_bound_on_the_rate():
    work, seconds = [1e9, 1e10, 1e11], [2.5e-3, 2.4e-3, 2.2e-3]
    model = cost_model.overhead_bound(work, seconds)
    assert model.overhead == pytest.approx(2.4e-3)
    assert model.rate == pytest.approx(1e11 / 2.2e-3)
    # the bound: no timing is faster than the model's arithmetic alone
    assert all(w / model.rate <= s for w, s in zip(work, seconds, strict=True))
    with pytest.raises(ValueError, match="positive"):
        cost_model.overhead_bound([1e9], [0.0])


def test_profile_prediction_counts_one_solve_per_tangent_of_every_geodesic_cell():
    config = profile_config("gpu-digits", device="cpu")
    model = cost_model.CostModel(overhead=1e-3, rate=1e12)
    geodesic = [c for c in cells(config) if c.method.startswith("riemannian")]
    weights = 65 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 64 + 64  # the 65-128-128-128-64 MLP
    pairs = config.n_train * config.draws_per_point
    one = model.overhead + pairs * weights * cost_model.FLOPS_PER_WEIGHT / model.rate
    expected = len(geodesic) * config.n_param_samples * 200 * one
    assert cost_model.profile_prediction(config, model, 200) == pytest.approx(expected)
    assert np.isfinite(expected) and len(geodesic) == 60
