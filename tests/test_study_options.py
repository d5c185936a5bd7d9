"""The study's options (prior mean, base point, temperatures, the Fisher metric, the drift
control): each reaches its cells and cache keys, bad values fail before any work, and the drift
control's gradient flow lands on its target loss."""

import math

import pytest
import torch
from scipy.optimize import brentq

from rbmem_tutorial.experiments.drift import DriftSolveError, gradient_flow_to_loss

A = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)  # L = ½ Σ a_i θ_i², anisotropic


def quadratic(theta):
    return 0.5 * (A * theta**2).sum()


def test_drift_control_stops_on_the_closed_form_gradient_flow():
    """θ_i(t) = θ0_i e^{−a_i t}, so L(t) = ½ Σ a_i θ0_i² e^{−2 a_i t}: solve L(t*) = target."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss_at(t):
        return 0.5 * float((A * theta0**2 * torch.exp(-2 * A * t)).sum())

    target = 0.3 * loss_at(0.0)
    t_star = brentq(lambda t: loss_at(t) - target, 0.0, 50.0, xtol=1e-14)
    out = gradient_flow_to_loss(quadratic, theta0, target, rtol=1e-10, atol=1e-12)
    assert out.reached
    assert out.time == pytest.approx(t_star, rel=1e-6)
    assert torch.allclose(out.theta, theta0 * torch.exp(-A * t_star), rtol=1e-6, atol=1e-9)
    assert out.loss == pytest.approx(target, rel=1e-7)
    assert out.start_loss == pytest.approx(loss_at(0.0))


def test_objects_with_value_and_grad_give_the_same_flow():
    class Quadratic:
        def value(self, theta):
            return quadratic(theta)

        def grad(self, theta):
            return A * theta

    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    by_autograd = gradient_flow_to_loss(quadratic, theta0, 1.0, rtol=1e-9, atol=1e-9)
    by_object = gradient_flow_to_loss(Quadratic(), theta0, 1.0, rtol=1e-9, atol=1e-9)
    assert torch.allclose(by_autograd.theta, by_object.theta, atol=1e-12)


def test_a_target_above_the_start_leaves_the_base_point():
    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    out = gradient_flow_to_loss(quadratic, theta0, 100.0)
    assert not out.reached and out.time == 0.0 and torch.equal(out.theta, theta0)


def test_a_target_below_the_minimum_is_a_clear_error():
    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(DriftSolveError, match="did not reach the target"):
        gradient_flow_to_loss(quadratic, theta0, -1.0, max_num_steps=200)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"theta0": torch.ones(3)}, TypeError, "float64"),
    ({"target": math.nan}, ValueError, "finite"),
    ({"rtol": 0.0}, ValueError, "rtol"),
    ({"max_num_steps": 0}, ValueError, "max_num_steps"),
])
def test_drift_control_rejects_bad_input(kwargs, error, message):
    args = {"theta0": torch.ones(3, dtype=torch.float64), "target": 0.5, **kwargs}
    with pytest.raises(error, match=message):
        gradient_flow_to_loss(quadratic, args.pop("theta0"), args.pop("target"), **args)
