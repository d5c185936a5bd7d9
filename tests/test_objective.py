"""Tests for rbmem_tutorial.laplace.objective: the frozen regression objective and its curvature."""

import pytest
import torch
from conftest import cuda
from torch import nn

from rbmem_tutorial.laplace import (
    RegressionObjective,
    flow_matching_regression_set,
    noise_std_from_residuals,
    parameters_vector,
    refine_map,
    unflatten,
)

NOISE_FLAVOURS = {
    "scalar": 0.7,
    "per_dimension": torch.tensor([0.5, 1.3], dtype=torch.float64),
}


def mlp(seed=0, width=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).double()


def data(n=24, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return z, y


def objective(noise="scalar", model=None, lam=1.3):
    z, y = data()
    return RegressionObjective(model or mlp(), z, y, NOISE_FLAVOURS[noise], lam)


def brute_jacobian(obj, theta):
    return torch.autograd.functional.jacobian(lambda t: obj.predict(t), theta)


def inverse_variances(noise):
    sigma = torch.as_tensor(NOISE_FLAVOURS[noise], dtype=torch.float64)
    return (1 / sigma**2) * torch.ones(2, dtype=torch.float64)


def kfac_dense(factors, num_params, num_examples):
    """Assemble N · G ⊗ A of every layer into a dense D×D matrix in flat-θ order."""
    dense = torch.zeros(num_params, num_params, dtype=torch.float64)
    for f in factors:
        n_out = f.G.shape[0]
        n_in = f.A.shape[0] - (f.bias is not None)
        index = []
        for r in range(n_out):
            index += [f.weight.start + r * n_in + c for c in range(n_in)]
            if f.bias is not None:
                index.append(f.bias.start + r)
        index = torch.tensor(index)
        dense[index[:, None], index[None, :]] = num_examples * torch.kron(f.G, f.A)
    return dense


def test_parameters_vector_and_unflatten_round_trip():
    model = mlp()
    theta = parameters_vector(model)
    assert torch.equal(theta, nn.utils.parameters_to_vector(model.parameters()).detach())
    params = unflatten(model, theta)
    assert list(params) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert torch.equal(params[name], p.detach())


def test_unflatten_rejects_wrong_length():
    with pytest.raises(ValueError, match="theta has 3 entries"):
        unflatten(mlp(), torch.zeros(3))


def test_flow_matching_regression_set_is_the_linear_path():
    train = torch.tensor([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0]])
    z, y = flow_matching_regression_set(train, draws_per_point=4, seed=3)
    assert z.shape == (12, 3) and y.shape == (12, 2) and z.dtype == torch.float64
    x1 = train.double().repeat_interleave(4, dim=0)
    x0, t = x1 - y, z[:, -1:]
    torch.testing.assert_close(z[:, :2], (1 - t) * x0 + t * x1, rtol=0, atol=1e-12)
    assert bool(((t >= 0) & (t <= 1)).all())
    z_again, y_again = flow_matching_regression_set(train, draws_per_point=4, seed=3)
    assert torch.equal(z, z_again) and torch.equal(y, y_again)
    assert not torch.equal(flow_matching_regression_set(train, 4, seed=4)[1], y)


def test_predict_matches_the_model():
    obj = objective()
    z, _ = data()
    torch.testing.assert_close(obj.predict(parameters_vector(obj.model)), obj.model(z).detach())


@pytest.mark.parametrize("noise", NOISE_FLAVOURS)
def test_value_is_the_negative_log_posterior(noise):
    obj = objective(noise)
    theta = parameters_vector(obj.model)
    z, y = data()
    residual = obj.model(z).detach() - y
    expected = 0.5 * (residual**2 * inverse_variances(noise)).sum() + 0.65 * theta.square().sum()
    torch.testing.assert_close(obj.value(theta), expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(obj(theta), expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(obj.data_fit(theta), expected - 0.65 * theta.square().sum())


@pytest.mark.parametrize("noise", NOISE_FLAVOURS)
def test_grad_and_hvp_match_hessian_and_finite_differences(noise):
    obj = objective(noise)
    theta = parameters_vector(obj.model)
    v = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grad, hvp = obj.grad_and_hvp(theta, v)
    brute_grad = torch.autograd.functional.jacobian(obj.value, theta)
    hessian = torch.autograd.functional.hessian(obj.value, theta)
    torch.testing.assert_close(grad, brute_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(obj.grad(theta), brute_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hvp, hessian @ v, rtol=1e-11, atol=1e-11)
    h = 1e-5
    finite = (obj.grad(theta + h * v) - obj.grad(theta - h * v)) / (2 * h)
    torch.testing.assert_close(hvp, finite, rtol=1e-6, atol=1e-6)


def test_batched_hvp_equals_one_by_one():
    obj = objective()
    theta = parameters_vector(obj.model)
    vs = torch.randn(4, obj.num_params, generator=torch.Generator().manual_seed(5)).double()
    grad, hvps = obj.grad_and_hvp(theta, vs)
    assert grad.shape == (obj.num_params,) and hvps.shape == (4, obj.num_params)
    for v, hvp in zip(vs, hvps, strict=True):
        single_grad, single = obj.grad_and_hvp(theta, v)
        torch.testing.assert_close(hvp, single, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(grad, single_grad, rtol=0, atol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_jacobian_matches_brute_force(chunk_size):
    obj = objective()
    theta = parameters_vector(obj.model)
    brute = brute_jacobian(obj, theta)
    jac = obj.jacobian(theta, chunk_size=chunk_size)
    torch.testing.assert_close(jac, brute, rtol=0, atol=1e-14)
    block = slice(20, 32)
    torch.testing.assert_close(obj.jacobian(theta, columns=block), brute[:, :, block])


@pytest.mark.parametrize("noise", NOISE_FLAVOURS)
def test_ggn_equals_brute_force(noise):
    obj = objective(noise)
    theta = parameters_vector(obj.model)
    jac = brute_jacobian(obj, theta)
    expected = torch.einsum("noa,o,nob->ab", jac, inverse_variances(noise), jac)
    torch.testing.assert_close(obj.ggn(theta, chunk_size=5), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(obj.ggn_diagonal(theta, chunk_size=5), expected.diagonal())
    block = slice(20, 32)
    torch.testing.assert_close(obj.ggn(theta, columns=block), expected[block, block])


def test_ggn_plus_prior_is_the_hessian_of_a_linear_model():
    z, y = data()
    obj = RegressionObjective(nn.Linear(3, 2).double(), z, y, 0.8, 2.0)
    theta = parameters_vector(obj.model)
    hessian = torch.autograd.functional.hessian(obj.value, theta)
    eye = torch.eye(obj.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.ggn(theta) + 2.0 * eye, hessian, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", NOISE_FLAVOURS)
def test_kfac_is_exact_for_a_single_linear_layer(noise):
    z, y = data()
    obj = RegressionObjective(nn.Linear(3, 2).double(), z, y, NOISE_FLAVOURS[noise], 1.0)
    theta = parameters_vector(obj.model)
    factors = obj.kronecker_factors(theta, chunk_size=5)
    dense = kfac_dense(factors, obj.num_params, obj.num_examples)
    torch.testing.assert_close(dense, obj.ggn(theta), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(factors[0].G, torch.diag(inverse_variances(noise)))


def test_kfac_factors_of_an_mlp():
    obj = objective("per_dimension")
    theta = parameters_vector(obj.model)
    first, last = obj.kronecker_factors(theta)
    z, _ = data()
    augmented = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(first.A, augmented.T @ augmented / len(z))
    assert (first.weight, first.bias, last.weight, last.bias) == (
        slice(0, 15),
        slice(15, 20),
        slice(20, 30),
        slice(30, 32),
    )
    # The output layer's block is exact: its output gradients are the unit vectors.
    dense = kfac_dense([last], obj.num_params, obj.num_examples)
    block = slice(20, 32)
    torch.testing.assert_close(dense[block, block], obj.ggn(theta)[block, block])
    # Hidden layers are approximated: KFAC differs from the exact block there.
    first_block = slice(0, 20)
    assert not torch.allclose(
        kfac_dense([first], obj.num_params, obj.num_examples)[first_block, first_block],
        obj.ggn(theta)[first_block, first_block],
    )


def test_kfac_rejects_models_it_cannot_factor():
    z, y = data()
    normed = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    obj = RegressionObjective(normed, z, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="nn.Linear layer"):
        obj.kronecker_factors(parameters_vector(obj.model))
    shared = nn.Linear(3, 3).double()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.head = shared, nn.Linear(3, 2).double()

        def forward(self, x):
            return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x)))))

    obj = RegressionObjective(Twice(), z, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="exactly once"):
        obj.kronecker_factors(parameters_vector(obj.model))


def test_with_prior_precision_changes_only_the_prior():
    obj = objective()
    other = obj.with_prior_precision(4.0)
    theta = parameters_vector(obj.model)
    assert obj.prior_precision == 1.3 and other.prior_precision == 4.0
    torch.testing.assert_close(other.value(theta) - obj.value(theta), 1.35 * theta.square().sum())


@pytest.mark.parametrize("per_dimension", [False, True])
def test_noise_std_from_residuals(per_dimension):
    obj = objective()
    theta = parameters_vector(obj.model)
    z, y = data()
    residual = obj.model(z).detach() - y
    expected = residual.square().mean(dim=0 if per_dimension else None).sqrt()
    from_objective = noise_std_from_residuals(obj, theta, per_dimension=per_dimension)
    from_model = noise_std_from_residuals(mlp(), theta, z, y, per_dimension=per_dimension)
    torch.testing.assert_close(torch.as_tensor(from_objective, dtype=torch.float64), expected)
    torch.testing.assert_close(torch.as_tensor(from_model, dtype=torch.float64), expected)
    with pytest.raises(ValueError, match="pass inputs and targets"):
        noise_std_from_residuals(mlp(), theta)


def test_refine_map_reaches_a_stationary_point():
    obj = objective()
    theta, record = refine_map(obj, parameters_vector(obj.model), gtol=1e-10)
    assert record.converged and record.grad_norm_after < 1e-9 < record.grad_norm_before
    assert record.newton_steps >= 1  # L-BFGS alone stalls at rounding level of the loss
    assert record.loss_after < record.loss_before
    assert float(obj.grad(theta).abs().max()) <= 1e-10
    hessian = torch.autograd.functional.hessian(obj.value, theta)
    assert float(torch.linalg.eigvalsh(hessian).min()) > 0  # a minimum, not a saddle


def test_bad_input_gets_a_clear_error():
    z, y = data()
    model = mlp()
    with pytest.raises(ValueError, match="noise_std"):
        RegressionObjective(model, z, y, 0.0, 1.0)
    with pytest.raises(ValueError, match="noise_std"):
        RegressionObjective(model, z, y, torch.tensor([1.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match="prior_precision"):
        RegressionObjective(model, z, y, 1.0, -2.0)
    with pytest.raises(ValueError, match="same number of rows"):
        RegressionObjective(model, z, y[:-1], 1.0, 1.0)
    with pytest.raises(ValueError, match="targets have 3 columns"):
        RegressionObjective(model, z, torch.zeros(len(z), 3), 1.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        RegressionObjective(model, torch.full_like(z, float("nan")), y, 1.0, 1.0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        RegressionObjective(lambda x: x, z, y, 1.0, 1.0)
    obj = RegressionObjective(model, z, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="theta has 5 entries"):
        obj.grad(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        obj.value(torch.full((obj.num_params,), float("nan")))
    with pytest.raises(ValueError, match="v must have"):
        obj.grad_and_hvp(torch.zeros(obj.num_params), torch.zeros(3))
    with pytest.raises(ValueError, match="inputs must have shape"):
        obj.predict(torch.zeros(obj.num_params), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="columns must be a contiguous slice"):
        obj.jacobian(torch.zeros(obj.num_params), columns=slice(0, 100))
    with pytest.raises(ValueError, match="draws_per_point"):
        flow_matching_regression_set(torch.zeros(3, 2), 0, seed=0)


def test_the_callers_model_is_left_alone():
    model = nn.Linear(3, 2)
    before = parameters_vector(model).clone()
    z, y = data()
    obj = RegressionObjective(model, z, y, 1.0, 1.0)
    refine_map(obj, parameters_vector(obj.model))
    assert model.weight.dtype == torch.float32 and torch.equal(parameters_vector(model), before)


@cuda
def test_cuda_follows_the_inputs():
    cpu = objective()
    z, y = data()
    gpu = RegressionObjective(mlp(), z.cuda(), y.cuda(), NOISE_FLAVOURS["scalar"], 1.3)
    theta = parameters_vector(cpu.model)
    for method in ("grad", "ggn_diagonal"):
        result = getattr(gpu, method)(theta.cuda())
        assert result.device.type == "cuda"
        torch.testing.assert_close(result.cpu(), getattr(cpu, method)(theta))
    factors = gpu.kronecker_factors(theta)
    assert factors[0].A.device.type == "cuda"


def test_tilted_objective_is_stationary_at_its_point_with_the_same_hessian():
    """L̃(θ) = L(θ) − ∇L(θ0)ᵀ(θ − θ0) + const: zero gradient at θ0, L's Hessian everywhere,
    and the anchored loss of rbmem_tutorial.laplace.subsets with a zero target up to a constant."""
    from rbmem_tutorial.laplace import anchored

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    for mean in (None, torch.randn(38, generator=gen, dtype=torch.float64)):
        obj = RegressionObjective(net, z, y, 0.7, 2.5, prior_mean=mean)
        theta0 = torch.randn(38, generator=gen, dtype=torch.float64)
        tilted = obj.tilted(theta0)
        assert float(tilted.grad(theta0).abs().max()) < 1e-12
        slope = obj.grad(theta0)
        theta = theta0 + 0.3 * torch.randn(38, generator=gen, dtype=torch.float64)
        v = torch.randn(3, 38, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(tilted.grad_and_hvp(theta, v)[1], obj.grad_and_hvp(theta, v)[1],
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tilted.grad(theta), obj.grad(theta) - slope, rtol=0, atol=1e-11)
        by_hand = obj.value(theta) - obj.value(theta0) - slope @ (theta - theta0)
        torch.testing.assert_close(tilted.value(theta) - tilted.value(theta0), by_hand,
                                   rtol=1e-12, atol=1e-11)
        anchor = anchored(obj, theta0, torch.zeros(38, dtype=torch.float64))
        torch.testing.assert_close(anchor.grad(theta), tilted.grad(theta), rtol=0, atol=1e-11)
        assert torch.equal(tilted.data_fit(theta), obj.data_fit(theta))
