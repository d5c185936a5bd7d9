"""Tests for rbmem_tutorial.riemannian: geodesic maths, solver contract and the sampler."""

import doctest

import pytest
import torch
from conftest import cuda
from riemannian_cases import F64, SmoothLoss, random_point, regression, small_mlp, tight
from torch import nn

from rbmem_tutorial import fast_mlp, riemannian
from rbmem_tutorial.objective import RegressionObjective, parameters_vector
from rbmem_tutorial.riemannian import (
    GeodesicSolveError,
    RiemannianLaplace,
    diagnostics,
    exp_map,
    geodesic,
    geodesic_acceleration,
    linearised,
    linearised_objective,
    monge,
    sampler,
    temperature,
)


def christoffel_acceleration(loss, theta, velocity):
    """−Γᵏᵢⱼ θ̇ⁱ θ̇ʲ from M(θ) = I + ∇L∇Lᵀ by autodiff, with the D×D×D symbols built."""

    def metric(point):
        grad = torch.func.grad(loss)(point)
        return torch.eye(len(point), dtype=F64) + torch.outer(grad, grad)

    dM = torch.func.jacfwd(metric)(theta)  # dM[l, j, i] = ∂_i M_lj
    first_kind = 0.5 * (dM.permute(0, 2, 1) + dM - dM.permute(2, 0, 1))  # Γ_lij
    gamma = torch.einsum("kl,lij->kij", torch.linalg.inv(metric(theta)), first_kind)
    return -torch.einsum("kij,i,j->k", gamma, velocity, velocity)


def speed(loss, theta, velocity):
    grad, _ = loss.grad_and_hvp(theta, velocity)
    return velocity @ velocity + (grad @ velocity) ** 2


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acceleration_equals_christoffel_formula(dim, seed):
    loss = SmoothLoss(dim, seed)
    theta, velocity = random_point(dim, 10 + seed), random_point(dim, 20 + seed)
    expected = christoffel_acceleration(loss.plain, theta, velocity)
    assert expected.abs().max() > 1e-3  # the test is not vacuous
    for form in (loss.plain, loss):  # autodiff of the bare function, and the method
        got = geodesic_acceleration(form, theta, velocity)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("form", ["plain", "method"])
def test_batched_acceleration_matches_rows(form):
    loss = SmoothLoss(3, 0)
    thetas, velocities = random_point(3, 1, rows=4), random_point(3, 2, rows=4)
    batched = geodesic_acceleration(loss.plain if form == "plain" else loss, thetas, velocities)
    pairs = zip(thetas, velocities, strict=True)
    rows = torch.stack([christoffel_acceleration(loss.plain, t, v) for t, v in pairs])
    torch.testing.assert_close(batched, rows, rtol=1e-8, atol=1e-8)


def test_linear_loss_gives_straight_lines():
    a = torch.tensor([3.0, -2.0, 0.5], dtype=F64)
    theta0 = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    v = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 4.0]], dtype=F64)
    result = exp_map(lambda th: a @ th + 1.0, theta0, v, return_path=True, num_path_points=5)
    torch.testing.assert_close(result.endpoints, theta0 + v, rtol=0, atol=1e-12)
    line = theta0 + result.path_times[:, None, None] * v  # [T, S, D]
    torch.testing.assert_close(result.path, line.movedim(0, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", ["plain", "method"])
def test_zero_velocity_stays_put(form):
    loss = SmoothLoss(4, 0)
    theta0 = random_point(4, 3)
    result = exp_map(loss.plain if form == "plain" else loss, theta0, torch.zeros(4, dtype=F64))
    assert torch.equal(result.endpoints, theta0)
    assert float(result.speed_drift) == 0.0


@pytest.mark.parametrize("dim", [2, 5])
def test_shooting_back_returns_to_start(dim):
    loss = SmoothLoss(dim, 1)
    theta0, v = random_point(dim, 4), random_point(dim, 5)
    out = exp_map(loss, theta0, v, **tight(1e-10))
    assert (out.endpoints - theta0).norm() > 0.5  # it went somewhere, and not in a straight line
    assert (out.endpoints - theta0 - v).norm() > 1e-2
    back = exp_map(loss, out.endpoints, -out.end_velocities, **tight(1e-10))
    torch.testing.assert_close(back.endpoints, theta0, rtol=0, atol=1e-7)
    torch.testing.assert_close(back.end_velocities, -v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [2, 5])
def test_speed_is_conserved(dim):
    loss = SmoothLoss(dim, 2)
    theta0, v = random_point(dim, 6), random_point(dim, 7, rows=3)
    out = exp_map(loss, theta0, v, batched=False, **tight(1e-10))
    assert float(out.speed_drift.max()) < 1e-5
    # the diagnostic is the quantity it claims to be
    pairs = zip(out.endpoints, out.end_velocities, strict=True)
    end = torch.stack([speed(loss, p, u) for p, u in pairs])
    start = torch.stack([speed(loss, theta0, u) for u in v])
    torch.testing.assert_close(out.speed_drift, (end - start).abs() / start)
    assert out.nfe.shape == (3,) and bool((out.nfe > 10).all())
    assert out.seconds.shape == (3,) and bool((out.seconds > 0).all())


def test_speed_drift_detects_loose_solves():
    loss = SmoothLoss(5, 2)
    theta0, v = random_point(5, 6), random_point(5, 7, scale=3.0)
    assert float(exp_map(loss, theta0, v, rtol=1e-1, atol=1e-1).speed_drift) > 1e-5


@pytest.mark.parametrize("form", ["plain", "method"])
def test_batched_equals_per_sample(form):
    loss = SmoothLoss(5, 3)
    wrapped = loss.plain if form == "plain" else loss
    theta0, v = random_point(5, 8), random_point(5, 9, rows=4)
    options = {**tight(1e-9), "return_path": True}
    batched = exp_map(wrapped, theta0, v, batched=True, **options)
    single = exp_map(wrapped, theta0, v, batched=False, **options)
    torch.testing.assert_close(batched.endpoints, single.endpoints, rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.path, single.path, rtol=0, atol=1e-6)
    assert batched.path.shape == (4, 21, 5)
    assert len(set(batched.nfe.tolist())) == 1  # one shared solve
    assert len(set(single.nfe.tolist())) > 1


def test_plain_and_method_forms_agree():
    loss = SmoothLoss(3, 4)
    theta0, v = torch.zeros(3, dtype=F64), random_point(3, 10, rows=2)
    options = tight(1e-8)
    plain = exp_map(loss.plain, theta0, v, **options)
    method = exp_map(loss, theta0, v, **options)
    torch.testing.assert_close(plain.endpoints, method.endpoints, rtol=0, atol=1e-9)
    row = exp_map(loss, theta0, v[0], **options)
    assert row.endpoints.shape == (3,) and row.nfe.ndim == 0
    # a batch shares its step sizes, so a lone row differs at the level of the tolerance
    torch.testing.assert_close(row.endpoints, method.endpoints[0], rtol=0, atol=1e-7)


def stiff_loss(theta):
    return 1e4 * torch.sin(10 * theta).sum() + 1e4 * (theta**4).sum()


def test_max_num_steps_raises_clear_error():
    theta0, v = torch.full((3,), 0.3, dtype=F64), torch.full((3,), 2.0, dtype=F64)
    with pytest.raises(GeodesicSolveError, match="max_num_steps=5") as info:
        exp_map(stiff_loss, theta0, v, max_num_steps=5)
    for advice in ("prior precision", "α", "rtol", "linearised"):
        assert advice in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_nan_gradient_fails_loudly():
    def loss(theta):
        return theta.sum() + 0 * torch.sqrt(theta[0])  # straight lines; NaN gradient once θ₀ < 0

    theta0 = torch.tensor([0.05, 0.0], dtype=F64)
    with pytest.raises(GeodesicSolveError, match="rtol"):
        exp_map(loss, theta0, torch.tensor([-2.0, 1.0], dtype=F64), max_num_steps=200)


NAN = float("nan")


@pytest.mark.parametrize(
    ("theta0", "v", "error", "match"),
    [
        (torch.zeros(3, dtype=F64), torch.zeros(4, dtype=F64), ValueError, "3 entries"),
        (torch.zeros(1, 3, dtype=F64), torch.zeros(3, dtype=F64), ValueError, "theta0 must be 1-D"),
        (torch.zeros(3, dtype=F64), torch.zeros(2, 2, 3, dtype=F64), ValueError, "v must be"),
        (torch.zeros(3, dtype=F64), torch.zeros(0, 3, dtype=F64), ValueError, "v is empty"),
        (torch.zeros(3, dtype=F64), torch.tensor([0, NAN, 0], dtype=F64), ValueError, "NaN"),
        (torch.tensor([0, NAN, 0], dtype=F64), torch.zeros(3, dtype=F64), ValueError, "NaN"),
        (torch.zeros(3), torch.zeros(3, dtype=F64), TypeError, "float64"),
        (torch.zeros(3, dtype=F64), torch.zeros(3), TypeError, "float64"),
        ([0.0, 0.0, 0.0], torch.zeros(3, dtype=F64), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(theta0, v, error, match):
    with pytest.raises(error, match=match):
        exp_map(lambda th: (th**2).sum(), theta0, v)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "rk4"}, "method"),
        ({"rtol": -1.0}, "rtol"),
        ({"atol": 0.0}, "atol"),
        ({"max_num_steps": 0}, "max_num_steps"),
        ({"return_path": True, "num_path_points": 1}, "num_path_points"),
    ],
)
def test_bad_options(options, match):
    theta0, v = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match=match):
        exp_map(lambda th: (th**2).sum(), theta0, v, **options)


def test_loss_must_return_a_scalar():
    theta0, v = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="0-d"):
        exp_map(lambda th: th**2, theta0, v)
    with pytest.raises(ValueError, match="0-d"):
        geodesic_acceleration(lambda th: float(th.sum()), theta0, v)
    with pytest.raises(ValueError, match="not finite"):
        exp_map(lambda th: th.sum() / 0, theta0, v)
    with pytest.raises(TypeError, match="callable"):
        exp_map(42, theta0, v)


def test_grad_and_hvp_output_is_checked():
    class Broken:
        def grad_and_hvp(self, theta, v):
            return theta[:2], v

    class Infinite:
        def grad_and_hvp(self, theta, v):
            return theta / 0, v

    theta0, v = torch.ones(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="gradient has shape"):
        exp_map(Broken(), theta0, v)
    with pytest.raises(ValueError, match="not finite at theta0"):
        exp_map(Infinite(), theta0, v)


# --- the linearised variant -------------------------------------------------------------------


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


class MethodOnly:
    """The objective's own ``grad_and_hvp`` (torch.func), hiding it from the fast kernel."""

    def __init__(self, objective):
        self.grad_and_hvp = objective.grad_and_hvp


def test_regression_objective_uses_the_fast_kernel_and_agrees():
    objective, theta_star = regression(small_mlp(), noise_std=2.0)
    derivatives = monge._Derivatives(objective, theta_star)
    assert isinstance(derivatives._single.__self__, fast_mlp.MLPRegressionKernel)
    v = random_point(len(theta_star), 11, rows=2, scale=0.3)
    options = tight(1e-5)
    fast = exp_map(objective, theta_star, v, **options).endpoints
    for other in (objective.value, MethodOnly(objective)):  # double backward, forward-over-reverse
        torch.testing.assert_close(exp_map(other, theta_star, v, **options).endpoints, fast,
                                   rtol=0, atol=1e-9)


# --- the sampler ------------------------------------------------------------------------------


class DiagonalPosterior:
    """Stand-in for a Laplace posterior: N(mean, scale² I) in the tangent space."""

    def __init__(self, mean, scale, objective=None):
        self.mean, self.scale, self.objective = mean, scale, objective

    def sample_tangent(self, n, generator=None, scale=None):
        noise = torch.randn(n, len(self.mean), generator=generator, dtype=F64)
        return (self.scale if scale is None else scale) * noise

    def sample(self, n, generator=None):
        return self.mean + self.sample_tangent(n, generator)


def test_sampler_pushes_tangents_through_exp_map():
    loss = SmoothLoss(4, 5)
    posterior = DiagonalPosterior(torch.zeros(4, dtype=F64), 0.5)
    sampler = RiemannianLaplace(posterior, loss, **tight(1e-8))
    samples, info = sampler.sample(3, torch.Generator().manual_seed(7), return_diagnostics=True)
    tangents = posterior.sample_tangent(3, torch.Generator().manual_seed(7))
    expected = exp_map(loss, posterior.mean, tangents, **tight(1e-8)).endpoints
    torch.testing.assert_close(samples, expected)
    assert info.endpoints is samples and info.nfe.shape == (3,)
    again = sampler.sample(3, torch.Generator().manual_seed(7))
    assert torch.equal(samples, again)
    zero = sampler.sample(2, torch.Generator().manual_seed(7), scale=0.0)
    assert torch.equal(zero, posterior.mean.expand(2, 4))


def test_sampler_keeps_loss_lower_than_euclidean():
    objective, theta_star = regression(small_mlp(), n=30)
    fitted = theta_star.clone()
    for _ in range(200):  # move towards the mode so the tangent space sits at a low point
        fitted -= 2e-3 * torch.func.grad(objective)(fitted)
    posterior = DiagonalPosterior(fitted, 0.6, objective)
    generator = torch.Generator().manual_seed(8)
    riemann = RiemannianLaplace(posterior).sample(6, generator)
    euclid = posterior.sample(6, torch.Generator().manual_seed(8))
    riemann_loss = torch.stack([objective(t) for t in riemann]).mean()
    euclid_loss = torch.stack([objective(t) for t in euclid]).mean()
    assert riemann_loss < euclid_loss


def test_sampler_linearised_and_its_errors():
    objective, theta_star = regression(small_mlp())
    posterior = DiagonalPosterior(theta_star, 0.1, objective)
    sampler = RiemannianLaplace(posterior, linearised=True)
    assert isinstance(sampler.loss, riemannian.LinearisedObjective)
    assert sampler.sample(2, torch.Generator().manual_seed(9)).shape == (2, len(theta_star))
    with pytest.raises(TypeError, match="plain loss function"):
        RiemannianLaplace(posterior, lambda th: (th**2).sum(), linearised=True)
    with pytest.raises(TypeError, match="posterior needs"):
        RiemannianLaplace(object(), lambda th: (th**2).sum())
    with pytest.raises(ValueError, match="n must be"):
        sampler.sample(0)


@pytest.mark.parametrize(
    "module", [diagnostics, geodesic, linearised, monge, sampler, temperature]
)
def test_docstring_examples_run(module):
    assert doctest.testmod(module, raise_on_error=True).attempted > 0


@cuda
def test_cuda_follows_theta():
    loss = SmoothLoss(3, 0)
    theta0, v = torch.zeros(3, dtype=F64), torch.ones(2, 3, dtype=F64)
    out = exp_map(loss, theta0.cuda(), v.cuda(), **tight(1e-8))
    assert out.endpoints.is_cuda
    expected = exp_map(loss, theta0, v, **tight(1e-8)).endpoints
    torch.testing.assert_close(out.endpoints.cpu(), expected)
