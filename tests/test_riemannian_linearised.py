"""Tests for rbmem_tutorial.riemannian.linearised: the loss of the network linearised at θ*."""

import pytest
import torch
from riemannian_cases import F64, random_point, regression, small_mlp, tight
from torch import nn

from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
from rbmem_tutorial.riemannian import (
    exp_map,
    linearised_objective,
)


def test_linearised_derivatives_match_autodiff_of_its_value():
    objective, theta_star = regression(small_mlp())
    lin = linearised_objective(objective, theta_star)
    g = torch.Generator().manual_seed(1)
    theta = theta_star + 0.3 * torch.randn(len(theta_star), generator=g, dtype=F64)
    v = torch.randn(2, len(theta_star), generator=g, dtype=F64)
    grad, hvp = lin.grad_and_hvp(theta, v)
    torch.testing.assert_close(grad, torch.func.grad(lin.value)(theta), rtol=1e-10, atol=1e-10)
    hessian = torch.func.hessian(lin.value)(theta)
    torch.testing.assert_close(hvp, v @ hessian, rtol=1e-10, atol=1e-10)
    # GGN plus prior, by brute force from the Jacobian at θ*
    J = torch.func.jacrev(objective.predict)(theta_star).reshape(-1, len(theta_star))
    ggn = J.T @ J / objective.noise_std**2 + objective.prior_precision * torch.eye(len(theta_star))
    torch.testing.assert_close(hessian, ggn, rtol=1e-10, atol=1e-10)
    grads, curvatures = lin.grad_and_curvature(theta, v)
    torch.testing.assert_close(curvatures, ((v @ hessian) * v).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads, grad.expand_as(grads), rtol=1e-10, atol=1e-10)
    # at θ* the linearised loss and its gradient agree with the full ones
    torch.testing.assert_close(lin.value(theta_star), objective(theta_star))
    torch.testing.assert_close(lin.grad(theta_star), objective.grad(theta_star))


def test_linearised_with_per_output_noise_and_prior_mean():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    model = small_mlp()
    inputs, targets = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(9, 2, generator=g,
                                                                              dtype=F64)
    mean = torch.randn(32, generator=g, dtype=F64)
    noise = torch.tensor([0.4, 1.3], dtype=F64)
    objective = RegressionObjective(model, inputs, targets, noise, 2.0, prior_mean=mean)
    theta_star = parameters_vector(objective.model)
    lin = linearised_objective(objective, theta_star)
    torch.testing.assert_close(lin.value(theta_star), objective.value(theta_star))
    torch.testing.assert_close(lin.grad(theta_star), objective.grad(theta_star))
    theta = theta_star + random_point(32, 6, scale=0.3)
    hessian = torch.func.hessian(lin.value)(theta)
    J = torch.func.jacrev(objective.predict)(theta_star)  # [N, out, D]
    ggn = torch.einsum("noi,o,noj->ij", J, 1 / noise**2, J) + 2.0 * torch.eye(32, dtype=F64)
    torch.testing.assert_close(hessian, ggn, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lin.grad(theta), torch.func.grad(lin.value)(theta))


def test_linearised_batched_grad_and_hvp():
    objective, theta_star = regression(small_mlp())
    lin = linearised_objective(objective, theta_star)
    g = torch.Generator().manual_seed(2)
    thetas = theta_star + torch.randn(3, len(theta_star), generator=g, dtype=F64)
    vs = torch.randn(3, len(theta_star), generator=g, dtype=F64)
    grads, hvps = lin.grad_and_hvp(thetas, vs)
    for row in range(3):
        grad, hvp = lin.grad_and_hvp(thetas[row], vs[row])
        torch.testing.assert_close(grads[row], grad)
        torch.testing.assert_close(hvps[row], hvp)


def test_linearised_equals_full_for_a_linear_model():
    torch.manual_seed(0)
    objective, theta_star = regression(nn.Sequential(nn.Linear(3, 2)), noise_std=2.0)
    lin = linearised_objective(objective, theta_star + 0.2)  # any point: the model is linear
    v = random_point(len(theta_star), 3, rows=2, scale=0.5)
    options = tight(1e-8)
    full = exp_map(objective, theta_star, v, **options)
    linear = exp_map(lin, theta_star, v, **options)
    torch.testing.assert_close(linear.endpoints, full.endpoints, rtol=0, atol=1e-8)
    assert (full.endpoints - theta_star - v).norm() > 1e-2  # curved: the test can fail


def test_linearised_differs_for_a_nonlinear_model():
    objective, theta_star = regression(small_mlp(), noise_std=2.0)
    lin = linearised_objective(objective, theta_star)
    v = random_point(len(theta_star), 4)
    full = exp_map(objective, theta_star, v, **tight(1e-6)).endpoints
    linear = exp_map(lin, theta_star, v, **tight(1e-6)).endpoints
    assert (full - linear).norm() > 1e-2


def test_linearised_needs_a_regression_objective():
    with pytest.raises(TypeError, match="plain loss function"):
        linearised_objective(lambda th: (th**2).sum(), torch.zeros(2, dtype=F64))
