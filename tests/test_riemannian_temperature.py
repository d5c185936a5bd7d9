"""Tests for the temperature of the Monge metric (rbmem_tutorial.riemannian.temperature)."""

import math
import types

import pytest
import torch
from riemannian_cases import F64, SmoothLoss, random_point, regression, small_mlp, tight

from rbmem_tutorial.laplace import RegressionObjective, fast_mlp, parameters_vector
from rbmem_tutorial.riemannian import (
    MongeMetric,
    RiemannianLaplace,
    data_mean_objective,
    exp_map,
    geodesic,
    geodesic_acceleration,
)

TEMPERATURES = [0.3, 2.0, 40.0]


def divided(loss, temperature):
    return lambda theta: loss(theta) / temperature


class Divided:
    """``SmoothLoss / T`` with its closed-form derivatives (cheap tight reference solves)."""

    def __init__(self, loss, temperature):
        self.loss, self.temperature = loss, temperature

    def grad_and_hvp(self, theta, v):
        grad, hvp = self.loss.grad_and_hvp(theta, v)
        return grad / self.temperature, hvp / self.temperature


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_temperature_acceleration_equals_the_divided_loss(temperature):
    loss = SmoothLoss(4, 0)
    thetas, velocities = random_point(4, 1, rows=3), random_point(4, 2, rows=3)
    expected = geodesic_acceleration(divided(loss.plain, temperature), thetas, velocities)
    for form in (loss.plain, loss):
        got = geodesic_acceleration(form, thetas, velocities, temperature=temperature)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    untempered = geodesic_acceleration(loss, thetas, velocities)
    assert (untempered - expected).abs().max() > 1e-2  # T acts: the test can fail


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_temperature_exp_map_equals_the_divided_loss(temperature):
    loss = SmoothLoss(3, 1)
    theta0, v = random_point(3, 3), random_point(3, 4, rows=2)
    expected = exp_map(Divided(loss, temperature), theta0, v, **tight(1e-10))
    got = exp_map(loss, theta0, v, temperature=temperature, **tight(1e-10))
    torch.testing.assert_close(got.endpoints, expected.endpoints, rtol=0, atol=1e-8)
    torch.testing.assert_close(got.speed_drift, expected.speed_drift, rtol=0, atol=1e-8)
    plain = exp_map(loss, theta0, v, **tight(1e-10)).endpoints
    assert (plain - expected.endpoints).norm() > 1e-2


@pytest.mark.parametrize("temperature", [3.0, "mean"])
def test_temperature_through_the_fast_kernel(temperature):
    objective, theta_star = regression(small_mlp(), noise_std=0.7)
    metric = MongeMetric(objective, theta_star, temperature)
    assert isinstance(metric._derivatives._single.__self__, fast_mlp.MLPRegressionKernel)
    value = objective.num_examples if temperature == "mean" else temperature
    assert metric.temperature == value
    v = random_point(len(theta_star), 5, rows=2)
    options = tight(1e-7)
    fast = exp_map(objective, theta_star, v, temperature=temperature, **options)
    slow = exp_map(divided(objective.value, value), theta_star, v, **options)  # double backward
    torch.testing.assert_close(fast.endpoints, slow.endpoints, rtol=0, atol=1e-7)
    torch.testing.assert_close(fast.loss_rise, slow.loss_rise * value, rtol=1e-9, atol=1e-9)
    summed = exp_map(objective, theta_star, v, temperature="sum", **options)
    torch.testing.assert_close(summed.endpoints, exp_map(objective, theta_star, v, **options)
                               .endpoints, rtol=0, atol=0)
    assert (summed.endpoints - fast.endpoints).norm() > 1e-3


def data_mean_by_hand(objective):
    """L_dm(θ) = ½ Σ r²/σ² / (N d) + (λ/2)‖θ − m‖², written out (not via the σ trick)."""
    entries = objective.targets.numel()

    def loss(theta):
        residual = objective.predict(theta) - objective.targets
        data = 0.5 * (residual.square() / objective.noise_std**2).sum() / entries
        offset = theta - objective.prior_mean
        return data + 0.5 * objective.prior_precision * offset.square().sum()

    return loss


def test_data_mean_preset_equals_the_hand_written_loss():
    g = torch.Generator().manual_seed(3)
    model = small_mlp()
    inputs, targets = torch.randn(10, 3, generator=g), torch.randn(10, 2, generator=g)
    mean = 0.1 * torch.randn(32, generator=g, dtype=F64)
    noise = torch.tensor([0.3, 0.9], dtype=F64)
    objective = RegressionObjective(model, inputs, targets, noise, 0.5, prior_mean=mean)
    theta0 = parameters_vector(objective.model)
    hand = data_mean_by_hand(objective)
    theta = theta0 + random_point(32, 4, scale=0.3)
    torch.testing.assert_close(data_mean_objective(objective).value(theta), hand(theta),
                               rtol=1e-12, atol=1e-12)
    v = random_point(32, 5, rows=2, scale=1.5)
    got = exp_map(objective, theta0, v, temperature="data-mean", **tight(1e-7))
    expected = exp_map(hand, theta0, v, **tight(1e-7))
    torch.testing.assert_close(got.endpoints, expected.endpoints, rtol=0, atol=1e-7)
    mean_loss = exp_map(objective, theta0, v, temperature="mean", **tight(1e-7))
    assert (mean_loss.endpoints - got.endpoints).norm() > 1e-3  # not L/T
    # diagnostics report the untempered objective; the preset bounds L_dm, not L
    rise = torch.stack([objective(end) for end in got.endpoints]) - objective(theta0)
    torch.testing.assert_close(got.loss_rise, rise, rtol=1e-12, atol=1e-10)
    assert got.bound is None
    torch.testing.assert_close(got.grad_norm_start, objective.grad(theta0).norm().expand(2))


def test_data_mean_preset_of_the_linearised_loss():
    objective, theta_star = regression(small_mlp())
    posterior = types.SimpleNamespace(mean=theta_star, objective=objective,
                                      sample_tangent=lambda n, generator=None, scale=None:
                                      random_point(len(theta_star), 6, rows=n, scale=2.0))
    sampler = RiemannianLaplace(posterior, temperature="data-mean", linearised=True,
                                **tight(1e-8))
    linear = sampler.metric.metric_loss
    hand = data_mean_by_hand(types.SimpleNamespace(
        predict=linear.predict, targets=objective.targets, noise_std=objective.noise_std,
        prior_mean=torch.zeros_like(theta_star), prior_precision=objective.prior_precision))
    theta = theta_star + random_point(len(theta_star), 7, scale=0.5)
    torch.testing.assert_close(linear.value(theta), hand(theta), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear.predict(theta), sampler.loss.predict(theta))


def stationary(loss, theta0):
    """``loss`` tilted by a linear term so that θ0 is a stationary point."""
    slope = torch.func.grad(loss)(theta0)
    return lambda theta: loss(theta) - slope @ theta


def random_quadratic(dim, seed):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(dim, dim, generator=g, dtype=F64)
    Q = B @ B.T / dim + 0.1 * torch.eye(dim, dtype=F64)
    centre = torch.randn(dim, generator=g, dtype=F64)
    return lambda theta: 0.5 * (theta - centre) @ Q @ (theta - centre), centre


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_loss_rise_is_bounded_by_temperature_times_speed(temperature):
    """At a stationary θ0, |L(c(1)) − L(θ0)| ≤ T‖v‖, and the bound is nearly reached."""
    cases = [random_quadratic(4, seed) for seed in range(2)]
    smooth = SmoothLoss(3, 4)
    cases.append((stationary(smooth.plain, random_point(3, 8)), random_point(3, 8)))
    ratios = []
    for index, (loss, theta0) in enumerate(cases):
        dim = len(theta0)
        v = random_point(dim, 20 + index, rows=4)
        lengths = temperature * torch.tensor([[0.5], [3.0], [30.0], [30.0]], dtype=F64)
        v = lengths * v / v.norm(dim=-1, keepdim=True)
        out = exp_map(loss, theta0, v, temperature=temperature, **tight(1e-8))
        rise = torch.stack([loss(end) for end in out.endpoints]) - loss(theta0)
        torch.testing.assert_close(out.loss_rise, rise, rtol=1e-12, atol=1e-12)
        limit = temperature * v.norm(dim=-1)
        torch.testing.assert_close(out.bound, limit, rtol=1e-9, atol=0)
        assert bool((rise.abs() <= limit * (1 + 1e-7)).all())
        ratios.append(rise.abs() / limit)
    assert float(torch.cat(ratios).max()) > 0.85  # the bound is tight: the test can fail


def test_bound_away_from_a_stationary_point():
    """|ΔL| ≤ √(T²‖v‖² + (∇L(θ0)·v)²), from the conserved speed, when ∇L(θ0) ≠ 0."""
    loss = SmoothLoss(3, 5)
    theta0, v = random_point(3, 9), random_point(3, 10, rows=3, scale=2.0)
    slope = torch.func.grad(loss.plain)(theta0)
    for temperature in (0.5, 5.0):
        out = exp_map(loss, theta0, v, temperature=temperature, **tight(1e-8))
        expected = (temperature**2 * v.square().sum(-1) + (v @ slope) ** 2).sqrt()
        torch.testing.assert_close(out.bound, expected, rtol=1e-12, atol=0)
        rise = torch.stack([loss.plain(end) for end in out.endpoints]) - loss.plain(theta0)
        assert bool((rise.abs() <= expected * (1 + 1e-7)).all())
        assert (expected - temperature * v.norm(dim=-1)).min() > 1e-3


def counting(loss):
    calls = []

    def wrapped(theta):
        calls.append(1)
        return loss(theta)

    return wrapped, calls


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be a finite positive"),
        ({"temperature": -2.0}, ValueError, "temperature must be a finite positive"),
        ({"temperature": math.nan}, ValueError, "temperature must be a finite positive"),
        ({"temperature": math.inf}, ValueError, "temperature must be a finite positive"),
        ({"temperature": "hot"}, ValueError, "unknown temperature 'hot'"),
        ({"temperature": True}, TypeError, "temperature must be a positive number"),
        ({"temperature": None}, TypeError, "temperature must be a number"),
        ({"temperature": "mean"}, TypeError, "preset of a regression loss"),
        ({"temperature": "sum"}, TypeError, "preset of a regression loss"),
        ({"temperature": "data-mean"}, ValueError, "averages the data term of a regression"),
        ({"metric": "euclid"}, ValueError, "unknown metric 'euclid'"),
        ({"metric": "fisher"}, TypeError, "metric='fisher' needs a RegressionObjective"),
    ],
)
def test_bad_metric_options_fail_before_any_work(options, error, match):
    loss, calls = counting(lambda th: (th**2).sum())
    theta0, v = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    with pytest.raises(error, match=match):
        exp_map(loss, theta0, v, **options)
    with pytest.raises(error, match=match):
        geodesic_acceleration(loss, theta0, v, **options)
    posterior = types.SimpleNamespace(mean=theta0, sample_tangent=None)
    with pytest.raises(error, match=match):
        RiemannianLaplace(posterior, loss, **options)
    assert not calls


def test_fisher_rejects_the_data_mean_preset():
    objective, theta_star = regression(small_mlp())
    v = random_point(len(theta_star), 1)
    with pytest.raises(ValueError, match="use metric='monge'"):
        exp_map(objective, theta_star, v, metric="fisher", temperature="data-mean")


class FlatMetric:
    """A stand-in for a second metric: G = I, so geodesics are straight lines."""

    def __init__(self, objective):
        self.objective = objective

    def acceleration(self, theta, velocity):
        return torch.zeros_like(velocity)

    def speed(self, theta, velocity):
        return velocity.square().sum(-1)

    def loss_value(self, theta):
        rows = theta if theta.ndim == 2 else theta[None]
        values = torch.stack([self.objective(row) for row in rows])
        return values if theta.ndim == 2 else values[0]

    def grad_norm(self, theta):
        rows = theta if theta.ndim == 2 else theta[None]
        norms = torch.stack([self.objective.grad(row).norm() for row in rows])
        return norms if theta.ndim == 2 else norms[0]


def test_a_second_metric_plugs_in_through_the_protocol(monkeypatch):
    monkeypatch.setattr(geodesic, "FisherMetric", FlatMetric)
    objective, theta_star = regression(small_mlp())
    v = random_point(len(theta_star), 2, rows=3)
    out = exp_map(objective, theta_star, v, metric="fisher", temperature=7.0)
    torch.testing.assert_close(out.endpoints, theta_star + v, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.travel, torch.ones(3, dtype=F64))
    assert out.bound is None and float(out.speed_drift.max()) < 1e-12
    rise = torch.stack([objective(theta_star + row) for row in v]) - objective(theta_star)
    torch.testing.assert_close(out.loss_rise, rise)
