"""Tests for rbmem_tutorial.riemannian.geodesic and .monge: the geodesic maths of the Monge
metric, the solver contract and the forms of a loss it reads."""

import pytest
import torch
from conftest import cuda
from riemannian_cases import F64, SmoothLoss, random_point, regression, small_mlp, tight

from rbmem_tutorial.laplace import fast_mlp
from rbmem_tutorial.riemannian import (
    GeodesicSolveError,
    exp_map,
    geodesic_acceleration,
    monge,
)
from rbmem_tutorial.riemannian.toys import Banana


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


@cuda
def test_cuda_follows_theta():
    loss = SmoothLoss(3, 0)
    theta0, v = torch.zeros(3, dtype=F64), torch.ones(2, 3, dtype=F64)
    out = exp_map(loss, theta0.cuda(), v.cuda(), **tight(1e-8))
    assert out.endpoints.is_cuda
    expected = exp_map(loss, theta0, v, **tight(1e-8)).endpoints
    torch.testing.assert_close(out.endpoints.cpu(), expected)


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "dopri8"])  # 2nd order: thousands of steps
def test_every_solver_lands_on_the_closed_form_end_point_and_path(method):
    # Fisher geodesics of the banana are straight in output space, so θ₂(τ) is quadratic in
    # τ: a smooth solve that explicit solvers take in a few long steps. The end point and the
    # path must come from steps that land on the output times, not from interpolating past
    # them (torchdiffeq's bosh3 interpolant missed c(1) by half its size here).
    banana = Banana(sigma_1=1.0, sigma_2=0.5, b=1.0)
    objective = banana.regression_objective()
    theta0 = torch.tensor([0.3, -0.2], dtype=F64)
    v = torch.tensor([1.0, 0.5], dtype=F64)
    out = exp_map(objective, theta0, v, metric="fisher", method=method, rtol=1e-9, atol=1e-9,
                  return_path=True, num_path_points=5)
    exact_path = banana.fisher_exp_map(theta0, v, times=out.path_times)
    assert torch.allclose(out.endpoints, banana.fisher_exp_map(theta0, v), atol=1e-6)
    assert torch.allclose(out.path, exact_path, atol=1e-6)
