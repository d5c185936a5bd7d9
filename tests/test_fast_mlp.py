"""Tests for rbmem_tutorial.laplace.fast_mlp: the fused gradient + HVP against autograd in
float64."""

import doctest

import pytest
import torch
from torch import nn

from rbmem_tutorial.flows import RegressionAdapter, VelocityMLP
from rbmem_tutorial.laplace import RegressionObjective, fast_mlp, parameters_vector
from rbmem_tutorial.laplace.fast_mlp import MLPRegressionKernel, supports_model

F64 = torch.float64


def mlp(activation, widths, bias=True):
    torch.manual_seed(0)
    layers = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out, bias=bias), activation()]
    return nn.Sequential(*layers[:-1]).double()


def reference_loss(model, inputs, targets, noise_std, prior_precision):
    """L(θ) = 1/(2σ²) Σ‖f_θ(z) − y‖² + λ/2 ‖θ‖² through torch.func.functional_call."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(theta):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        residual = torch.func.functional_call(model, params, (inputs,)) - targets
        return 0.5 * (residual**2).sum() / noise_std**2 + 0.5 * prior_precision * theta @ theta

    return loss


def setup(model, n=17, noise_std=0.3, prior_precision=2.0):
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, model[0].in_features, generator=g, dtype=F64)
    targets = torch.randn(n, model[-1].out_features, generator=g, dtype=F64)
    kernel = MLPRegressionKernel(
        model, inputs, targets, noise_std=noise_std, prior_precision=prior_precision
    )
    loss = reference_loss(model, inputs, targets, noise_std, prior_precision)
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    return kernel, loss, theta


def autograd_grad_and_hvp(loss, theta, v):
    point = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(point), point, create_graph=True)
    (hvp,) = torch.autograd.grad(grad, point, grad_outputs=v)
    return grad.detach(), hvp


def assert_relative(got, expected, tol=1e-10):
    error = (got - expected).abs().max() / expected.abs().max()
    assert error < tol, f"relative error {float(error):.2e}"


@pytest.mark.parametrize("activation", [nn.SiLU, nn.Tanh])
@pytest.mark.parametrize("widths", [(3, 8, 2), (3, 16, 16, 2), (4, 7, 5, 6, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_autograd(activation, widths, bias):
    kernel, loss, theta = setup(mlp(activation, widths, bias))
    g = torch.Generator().manual_seed(2)
    theta = theta + 0.5 * torch.randn(theta.shape, generator=g, dtype=F64)  # away from init
    v = torch.randn(theta.shape, generator=g, dtype=F64)
    grad, hvp = kernel.grad_and_hvp(theta, v)
    expected_grad, expected_hvp = autograd_grad_and_hvp(loss, theta, v)
    assert_relative(grad, expected_grad)
    assert_relative(hvp, expected_hvp)
    grad, curvature = kernel.grad_and_curvature(theta, v)  # second-order forward pass
    assert_relative(grad, expected_grad)
    assert_relative(curvature, v @ expected_hvp)


@pytest.mark.parametrize("activation", [nn.SiLU, nn.Tanh])
def test_batched_points_and_directions(activation):
    kernel, loss, theta = setup(mlp(activation, (3, 16, 16, 2)))
    g = torch.Generator().manual_seed(3)
    thetas = theta + 0.3 * torch.randn(4, len(theta), generator=g, dtype=F64)
    vs = torch.randn(4, len(theta), generator=g, dtype=F64)
    grads, hvps = kernel.grad_and_hvp(thetas, vs)
    curvature_grads, curvatures = kernel.grad_and_curvature(thetas, vs)
    assert curvatures.shape == (4,)
    for row in range(4):
        expected_grad, expected_hvp = autograd_grad_and_hvp(loss, thetas[row], vs[row])
        assert_relative(grads[row], expected_grad)
        assert_relative(hvps[row], expected_hvp)
        assert_relative(curvature_grads[row], expected_grad)
        assert_relative(curvatures[row], vs[row] @ expected_hvp)
    # one point, several directions: one gradient, one HVP per direction
    grad, hvps = kernel.grad_and_hvp(thetas[0], vs)
    assert grad.shape == theta.shape and hvps.shape == vs.shape
    assert_relative(grad, autograd_grad_and_hvp(loss, thetas[0], vs[0])[0])
    assert_relative(hvps[2], autograd_grad_and_hvp(loss, thetas[0], vs[2])[1])


def test_prior_only_when_network_is_flat():
    """With zero targets and zero weights the data term vanishes: grad = λθ, HVP = λv + GN."""
    model = mlp(nn.Tanh, (2, 3, 1))
    kernel = MLPRegressionKernel(
        model, torch.zeros(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64),
        noise_std=1.0, prior_precision=3.0,
    )
    theta = torch.zeros(kernel.num_params, dtype=F64)
    v = torch.ones(kernel.num_params, dtype=F64)
    grad, hvp = kernel.grad_and_hvp(theta, v)
    assert torch.equal(grad, torch.zeros_like(grad))
    # f = W2 tanh(W1 z + b1) + b2 with z = 0, θ = 0: only the output bias moves f, by 1 per row
    expected = 3.0 * v
    expected[-1] += 5.0  # Σ_n (∂f/∂b2)² v_b2 / σ² = 5
    torch.testing.assert_close(hvp, expected)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.SiLU(), nn.Linear(3, 2)),
        nn.Sequential(nn.Linear(3, 4), nn.SiLU()),
        nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 2)),
        nn.Sequential(nn.Sequential(nn.Linear(3, 2))),
        nn.Linear(3, 2),
    ],
)
def test_unsupported_models(model):
    assert not supports_model(model)
    with pytest.raises(TypeError, match="nn.Sequential"):
        MLPRegressionKernel(model, torch.zeros(2, 3), torch.zeros(2, 2), noise_std=1.0,
                            prior_precision=1.0)


def test_supported_models():
    assert supports_model(nn.Sequential(nn.Linear(3, 2)))
    assert supports_model(mlp(nn.Tanh, (3, 4, 4, 2)))
    assert not fast_mlp.supports(lambda theta: theta.sum())


def test_bad_inputs():
    model = mlp(nn.SiLU, (3, 4, 2))
    with pytest.raises(ValueError, match="same number of rows"):
        MLPRegressionKernel(model, torch.zeros(4, 3, dtype=F64), torch.zeros(5, 2, dtype=F64),
                            noise_std=1.0, prior_precision=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        MLPRegressionKernel(model, torch.zeros(4, 3, dtype=F64), torch.zeros(4, 2, dtype=F64),
                            noise_std=0.0, prior_precision=1.0)
    with pytest.raises(ValueError, match="NaN"):
        MLPRegressionKernel(model, torch.full((4, 3), float("nan")), torch.zeros(4, 2),
                            noise_std=1.0, prior_precision=1.0)


def test_docstring_examples_run():
    assert doctest.testmod(fast_mlp, raise_on_error=True).attempted > 0


# --- the kernel behind a RegressionObjective --------------------------------------------------


def assert_kernel_matches(kernel, objective, theta, vs):
    """The kernel's gradient, HVPs and curvatures vᵀ∇²L v against autograd on ``objective``.

    Returns autograd's gradient and the kernel's ``grad_and_curvature`` gradients.
    """
    expected_grad, expected_hvps = objective.grad_and_hvp(theta, vs)
    grad, hvps = kernel.grad_and_hvp(theta, vs)
    assert_relative(grad, expected_grad)
    assert_relative(hvps, expected_hvps)
    grads, curvatures = kernel.grad_and_curvature(theta, vs)
    assert_relative(curvatures, (vs * expected_hvps).sum(-1))
    return expected_grad, grads


def objective_for(model, noise_std=0.4, n=13):
    g = torch.Generator().manual_seed(5)
    inputs = torch.randn(n, 3, generator=g, dtype=F64)
    inputs[:, -1] = torch.rand(n, generator=g, dtype=F64)  # the time column of z = [x_t, t]
    targets = torch.randn(n, 2, generator=g, dtype=F64)
    return RegressionObjective(model, inputs, targets, noise_std, 1.5)


@pytest.mark.parametrize(
    "model",
    [
        lambda: mlp(nn.SiLU, (3, 16, 16, 2)),
        lambda: RegressionAdapter(VelocityMLP(2, hidden=(16, 16))),
        lambda: RegressionAdapter(VelocityMLP(2, hidden=(8,), activation="tanh", time_features=2)),
    ],
)
@pytest.mark.parametrize("noise_std", [0.4, torch.tensor([0.3, 0.7])])
def test_matches_regression_objective(model, noise_std):
    torch.manual_seed(0)
    objective = objective_for(model(), noise_std)
    assert fast_mlp.supports(objective)
    kernel = MLPRegressionKernel.from_objective(objective)
    g = torch.Generator().manual_seed(6)
    theta = parameters_vector(objective.model) + 0.3 * torch.randn(
        objective.num_params, generator=g, dtype=F64
    )
    vs = torch.randn(3, objective.num_params, generator=g, dtype=F64)
    assert_kernel_matches(kernel, objective, theta, vs)


def test_supports_only_plain_objectives_on_mlps():
    torch.manual_seed(0)

    class Tempered(RegressionObjective):
        """A subclass may change the loss, so the kernel must not claim it."""

    inputs, targets = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    relu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    silu = mlp(nn.SiLU, (3, 4, 2))
    assert not fast_mlp.supports(RegressionObjective(relu, inputs, targets, 1.0, 1.0))
    assert not fast_mlp.supports(Tempered(silu, inputs, targets, 1.0, 1.0))
    assert fast_mlp.supports(RegressionObjective(silu, inputs, targets, 1.0, 1.0))


def test_prior_mean_matches_regression_objective():
    torch.manual_seed(0)
    base = objective_for(mlp(nn.SiLU, (3, 8, 2)), 0.5)
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(base.num_params, generator=g, dtype=F64)
    objective = RegressionObjective(
        base.model, base.inputs, base.targets, 0.5, 1.5, prior_mean=mean
    )
    kernel = MLPRegressionKernel.from_objective(objective)
    theta = parameters_vector(objective.model)
    vs = torch.randn(2, objective.num_params, generator=g, dtype=F64)
    expected_grad, grads = assert_kernel_matches(kernel, objective, theta, vs)
    assert_relative(grads[1], expected_grad)
    # the prior term moved by exactly -λ m
    zero_mean_grad = base.grad(theta)
    torch.testing.assert_close(expected_grad, zero_mean_grad - 1.5 * mean)


@pytest.mark.parametrize("activation", ["silu", "tanh"])
@pytest.mark.parametrize("per_output_noise", [False, True])
def test_ggn_diagonal_equals_the_per_example_jacobians(activation, per_output_noise):
    """The layer-by-layer GGN diagonal against Σ_n Σ_k J²_{n,k,d}/σ_k² from brute-force
    per-example Jacobians (the generic path of RegressionObjective)."""
    torch.manual_seed(0)
    net = VelocityMLP(3, hidden=(6, 5), activation=activation).double()
    z, y = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    noise = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64) if per_output_noise else 0.7
    objective = RegressionObjective(RegressionAdapter(net), z, y, noise, 2.0)
    theta = parameters_vector(objective.model).detach() + 0.1
    brute = torch.zeros_like(theta)
    weights = objective.precision_weights()[:, None]
    for jac in objective._jacobian_chunks(theta, None, None, 4):
        brute += (jac.square() * weights).sum(dim=(0, 1))
    assert fast_mlp.supports(objective)
    layered = fast_mlp.ggn_diagonal(objective, theta)  # the path the diagonal posterior takes
    torch.testing.assert_close(layered, brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(objective.ggn_diagonal(theta), brute, rtol=1e-12, atol=1e-12)
