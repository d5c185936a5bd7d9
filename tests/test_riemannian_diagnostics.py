"""Tests for the per-sample geodesic diagnostics and common_drift (riemannian.diagnostics)."""

import math

import pytest
import torch
from riemannian_cases import F64, SmoothLoss, random_point, tight

from rbmem_tutorial.riemannian import RiemannianLaplace, common_drift, exp_map


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_diagnostics_of_a_linear_loss(temperature):
    """L = aᵀθ + 1: M_T = I + aaᵀ/T² is constant, so geodesics are the lines θ0 + t v."""
    a = torch.tensor([3.0, -2.0, 0.5], dtype=F64)
    theta0 = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    v = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 4.0], [0.0, 0.0, 0.0]], dtype=F64)
    out = exp_map(lambda th: a @ th + 1.0, theta0, v, temperature=temperature)
    torch.testing.assert_close(out.endpoints, theta0 + v, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.travel, torch.tensor([1.0, 1.0, 0.0], dtype=F64))
    torch.testing.assert_close(out.loss_rise, v @ a, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.grad_norm_start, a.norm().expand(3), rtol=1e-15, atol=0)
    bound = (temperature**2 * v.square().sum(-1) + (v @ a) ** 2).sqrt()
    torch.testing.assert_close(out.bound, bound, rtol=1e-15, atol=0)


def arc_length(theta, q, temperature):
    """∫₀^θ √(1 + (q x / T)²) dx = (T / 2q) (u √(1 + u²) + asinh u), u = qθ/T."""
    u = q * theta / temperature
    return temperature / (2 * q) * (u * math.sqrt(1 + u * u) + math.asinh(u))


def solve_arc_length(target, q, temperature):
    """The θ ≥ 0 with arc_length(θ) = target, by bisection (arc_length grows with θ)."""
    low, high = 0.0, target
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if arc_length(middle, q, temperature) < target else (low, middle)
    return 0.5 * (low + high)


@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_diagnostics_of_a_curved_closed_form(temperature):
    """L = ½ q θ₁² on R²: the metric is a product, so c₂ = v₂ t and c₁ covers the arc length
    v₁ of the 1-D metric 1 + (q c₁/T)² in unit time (a factor's geodesic keeps its speed)."""
    q = 2.0
    theta0 = torch.zeros(2, dtype=F64)
    v = torch.tensor([[1.0, 0.5], [5.0, 0.5], [-3.0, 2.0]], dtype=F64)
    out = exp_map(lambda th: 0.5 * q * th[0] ** 2, theta0, v, temperature=temperature,
                  **tight(1e-11))
    first = torch.tensor([math.copysign(solve_arc_length(abs(float(row[0])), q, temperature),
                                        float(row[0])) for row in v], dtype=F64)
    end = torch.stack([first, v[:, 1]], dim=-1)
    torch.testing.assert_close(out.endpoints, end, rtol=0, atol=1e-8)
    torch.testing.assert_close(out.travel, end.norm(dim=-1) / v.norm(dim=-1), rtol=0, atol=1e-8)
    torch.testing.assert_close(out.loss_rise, 0.5 * q * first**2, rtol=0, atol=1e-7)
    torch.testing.assert_close(out.bound, temperature * v.norm(dim=-1), rtol=1e-14, atol=0)
    assert bool((out.travel < 0.99).all()) and float(out.grad_norm_start.abs().max()) == 0.0


def test_diagnostics_of_batched_and_single_solves_agree():
    loss = SmoothLoss(3, 6)
    theta0, v = random_point(3, 11), random_point(3, 12, rows=3)
    batched = exp_map(loss, theta0, v, **tight(1e-9))
    single = exp_map(loss, theta0, v, batched=False, **tight(1e-9))
    for name in ("travel", "bound", "grad_norm_start"):
        assert getattr(batched, name).shape == (3,)
        torch.testing.assert_close(getattr(batched, name), getattr(single, name), rtol=0, atol=1e-7)
    # SmoothLoss offers grad_and_hvp but no value: the rise is unknown, not NaN
    assert batched.loss_rise is None and single.loss_rise is None
    one = exp_map(loss.plain, theta0, v[0], **tight(1e-9))
    assert one.travel.shape == () and one.loss_rise.shape == ()
    torch.testing.assert_close(one.grad_norm_start, torch.func.grad(loss.plain)(theta0).norm())


def test_sampler_passes_temperature_and_diagnostics():
    loss = SmoothLoss(4, 7)

    class Posterior:
        mean = torch.zeros(4, dtype=F64)

        def sample_tangent(self, n, generator=None, scale=None):
            return 2.0 * torch.randn(n, 4, generator=generator, dtype=F64)

    sampler = RiemannianLaplace(Posterior(), loss, temperature=5.0, **tight(1e-9))
    samples, info = sampler.sample(3, torch.Generator().manual_seed(1), return_diagnostics=True)
    tangents = Posterior().sample_tangent(3, torch.Generator().manual_seed(1))
    expected = exp_map(loss, Posterior.mean, tangents, temperature=5.0, **tight(1e-9))
    torch.testing.assert_close(samples, expected.endpoints, rtol=0, atol=0)
    torch.testing.assert_close(info.bound, expected.bound)
    cold = exp_map(loss, Posterior.mean, tangents, **tight(1e-9))
    assert (cold.endpoints - samples).norm() > 1e-2


# --- common drift -------------------------------------------------------------------------------


def test_common_drift_exact_values():
    theta0 = random_point(5, 1)
    e = random_point(5, 2, rows=4)
    pairs = theta0 + torch.cat([e, -e])  # symmetric: the mean displacement cancels
    assert common_drift(pairs, theta0) < 1e-12
    b = random_point(5, 3)
    assert common_drift(theta0 + b.expand(6, 5), theta0) == pytest.approx(1.0, abs=1e-12)
    # shift plus symmetric pairs: ‖b‖ / √(‖b‖² + mean ‖e_s‖²)
    expected = b.norm() / (b.square().sum() + e.square().sum(-1).mean()).sqrt()
    assert common_drift(pairs + b, theta0) == pytest.approx(float(expected), rel=1e-12)
    # invariant to the scale of the displacements
    scaled = theta0 + 7.0 * (pairs + b - theta0)
    assert common_drift(scaled, theta0) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("samples", [16, 400])
def test_common_drift_of_independent_spread_is_about_one_over_root_s(samples):
    """E‖d̄‖² = E‖d‖²/S for independent zero-mean d_s; with D = 200 the ratio of χ² draws is
    within ±20% of 1 by far (its standard deviation is about √(2/200) = 0.1)."""
    theta0 = random_point(200, 4)
    spread = theta0 + random_point(200, 5, rows=samples, scale=3.0)
    assert 0.8 < common_drift(spread, theta0) * math.sqrt(samples) < 1.2


@pytest.mark.parametrize(
    ("endpoints", "theta0", "error", "match"),
    [
        (torch.ones(1, 3, dtype=F64), torch.zeros(3, dtype=F64), ValueError, "S ≥ 2"),
        (torch.ones(4, 3, dtype=F64), torch.zeros(2, dtype=F64), ValueError, r"\[S, 2\]"),
        (torch.ones(4, 3, dtype=F64), torch.ones(3, dtype=F64), ValueError, "0/0"),
        (torch.ones(4, 3), torch.zeros(3, dtype=F64), TypeError, "float64"),
        (torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64), ValueError, "2-D"),
    ],
)
def test_common_drift_bad_input(endpoints, theta0, error, match):
    with pytest.raises(error, match=match):
        common_drift(endpoints, theta0)
