"""The generic path (rows vmapped through torch.func) against closed forms and the row loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rbmem_tutorial.flows import RegressionAdapter, VelocityConvNet
from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
from rbmem_tutorial.riemannian import MongeMetric, exp_map
from rbmem_tutorial.riemannian.generic import PAIR_CHUNK, RowDerivatives, supports
from rbmem_tutorial.riemannian.toys import Banana

F64 = torch.float64


def test_banana_rows_match_the_closed_form():
    toy = Banana(sigma_1=0.7, sigma_2=0.3, b=1.5)
    objective = toy.regression_objective(prior_precision=0.5)
    g = torch.Generator().manual_seed(0)
    theta, v = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    grad, curvature = RowDerivatives(objective)(theta, v)
    closed_grad, closed_curvature = toy.grad_and_curvature(theta, v)
    torch.testing.assert_close(grad, closed_grad + 0.5 * theta)  # the prior adds λθ and λ‖v‖²
    torch.testing.assert_close(curvature, closed_curvature + 0.5 * v.square().sum(-1))


def conv_objective(pairs=6, prior_mean=None):
    g = torch.Generator().manual_seed(1)
    z = torch.cat([torch.randn(pairs, 16, generator=g), torch.rand(pairs, 1, generator=g)], 1)
    torch.manual_seed(0)
    net = RegressionAdapter(VelocityConvNet((1, 4, 4), (4, 8)))
    return RegressionObjective(net, z, torch.randn(pairs, 16, generator=g), 0.5, 2.0,
                               prior_mean=prior_mean)


def test_conv_rows_match_the_objectives_own_hvp_row_by_row():
    objective = conv_objective()
    theta0 = parameters_vector(objective.model)
    g = torch.Generator().manual_seed(2)
    theta = theta0 + 0.1 * torch.randn(3, len(theta0), generator=g, dtype=F64)
    v = torch.randn(3, len(theta0), generator=g, dtype=F64)
    grad, curvature = RowDerivatives(objective)(theta, v)
    for row in range(3):
        own_grad, own_hvp = objective.grad_and_hvp(theta[row], v[row])
        torch.testing.assert_close(grad[row], own_grad)
        torch.testing.assert_close(curvature[row], v[row] @ own_hvp)
    single = RowDerivatives(objective)(theta[1], v[1])
    torch.testing.assert_close(single[1], curvature[1])


def assert_equals_double_backward(objective, theta, v, grad, curvature, atol):
    """Each row's gradient and vᵀ∇²Lv against a double-backward autograd reference."""
    for row in range(len(theta)):
        point = theta[row].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective.value(point), point, create_graph=True)
        (hvp,) = torch.autograd.grad(gradient, point, grad_outputs=v[row])
        torch.testing.assert_close(grad[row], gradient.detach(), rtol=1e-12, atol=atol)
        torch.testing.assert_close(curvature[row], v[row] @ hvp, rtol=1e-12, atol=0)


def test_conv_rows_run_one_at_a_time_and_equal_autograd():
    """A model with convolutions takes its rows one at a time (not vmapped); the gradient and
    vᵀ∇²Lv equal the vmapped rows and a double-backward autograd reference in float64."""
    objective = conv_objective()
    derivatives = RowDerivatives(objective)
    assert not derivatives.vmapped
    assert RowDerivatives(Banana().regression_objective()).vmapped
    theta0 = parameters_vector(objective.model)
    g = torch.Generator().manual_seed(3)
    theta = theta0 + 0.1 * torch.randn(4, len(theta0), generator=g, dtype=F64)
    v = torch.randn(4, len(theta0), generator=g, dtype=F64)
    grad, curvature = derivatives(theta, v)
    vmapped = torch.func.vmap(derivatives._one)(theta, v)
    torch.testing.assert_close(grad, vmapped[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(curvature, vmapped[1], rtol=1e-12, atol=0)
    assert_equals_double_backward(objective, theta, v, grad, curvature, atol=1e-12)


def test_conv_chunks_of_pairs_sum_to_the_whole_data_term():
    """More pairs than one chunk (a last chunk shorter than the rest) and a prior mean m ≠ 0:
    the chunked sums equal one double-backward pass over all pairs, to rounding."""
    pairs = 2 * PAIR_CHUNK + 7
    start = parameters_vector(conv_objective().model)
    objective = conv_objective(pairs, prior_mean=0.1 * torch.ones_like(start))
    derivatives = RowDerivatives(objective)
    assert [len(inputs) for inputs, _ in derivatives._chunks] == [PAIR_CHUNK, PAIR_CHUNK, 7]
    g = torch.Generator().manual_seed(4)
    theta = start + 0.1 * torch.randn(2, len(start), generator=g, dtype=F64)
    v = torch.randn(2, len(start), generator=g, dtype=F64)
    grad, curvature = derivatives(theta, v)
    assert_equals_double_backward(objective, theta, v, grad, curvature, atol=1e-10)


def test_batched_solve_equals_one_by_one_and_uses_the_generic_path():
    objective = Banana().regression_objective()
    assert supports(objective) and not supports(Banana())
    v = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.3, -2.0]], dtype=F64)
    start = torch.zeros(2, dtype=F64)
    batch = exp_map(objective, start, v, method="dopri5", rtol=1e-10, atol=1e-10)
    rows = exp_map(objective, start, v, method="dopri5", rtol=1e-10, atol=1e-10, batched=False)
    closed = exp_map(Banana(), start, v, method="dopri5", rtol=1e-10, atol=1e-10, batched=False)
    torch.testing.assert_close(batch.endpoints, rows.endpoints, rtol=0, atol=1e-8)
    torch.testing.assert_close(rows.endpoints, closed.endpoints, rtol=0, atol=1e-8)
    assert type(MongeMetric(objective, start)._derivatives._batch) is RowDerivatives


def test_only_a_plain_regression_objective_is_taken():
    with pytest.raises(TypeError, match="objective must be a RegressionObjective"):
        RowDerivatives(nn.Linear(2, 1))
