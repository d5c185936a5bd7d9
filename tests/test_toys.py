import pytest
import torch

from rbmem_tutorial.riemannian.toys import Banana, BayesianLinearRegression, gaussian_w2

F64 = torch.float64


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_banana_derivatives_match_autograd():
    toy = Banana(sigma_1=0.8, sigma_2=0.3, b=1.4)
    points = torch.randn(5, 2, generator=_generator(), dtype=F64)
    directions = torch.randn(5, 2, generator=_generator(1), dtype=F64)
    grad, curvature = toy.grad_and_curvature(points, directions)
    for point, v, g, c in zip(points, directions, grad, curvature, strict=True):
        hessian = torch.autograd.functional.hessian(toy, point)
        assert torch.allclose(g, torch.autograd.functional.jacobian(toy, point), atol=1e-12)
        assert torch.allclose(c, v @ hessian @ v, atol=1e-10)
    assert torch.allclose(
        toy.hessian_at_mode(), torch.autograd.functional.hessian(toy, torch.zeros(2, dtype=F64))
    )


def test_banana_outputs_round_trip():
    toy = Banana(sigma_1=0.7, sigma_2=0.2, b=-0.6)
    points = torch.randn(7, 2, generator=_generator(2), dtype=F64)
    assert torch.allclose(toy.inverse_outputs(toy.outputs(points)), points, atol=1e-12)


def test_banana_fisher_path_solves_the_fisher_geodesic_equation():
    """G(c) c̈ = −J_uᵀ u''[ċ, ċ] for G = J_uᵀJ_u, derivatives of the closed-form path by autograd."""
    toy = Banana(sigma_1=0.9, sigma_2=0.35, b=1.2)
    theta0 = torch.tensor([0.3, -0.2], dtype=F64)
    v = torch.tensor([0.8, 0.5], dtype=F64)
    for tau in (0.0, 0.4, 1.0):
        tau = torch.tensor(tau, dtype=F64)

        def path(time):
            return toy.fisher_exp_map(theta0, time * v)  # c(τ) = Exp(τ v)

        point = path(tau)
        velocity = torch.autograd.functional.jacobian(path, tau)
        acceleration = (
            torch.autograd.functional.hessian(lambda time: path(time)[0], tau),
            torch.autograd.functional.hessian(lambda time: path(time)[1], tau),
        )
        acceleration = torch.stack(acceleration)
        jac = torch.autograd.functional.jacobian(toy.outputs, point)
        second = torch.stack(
            [
                velocity
                @ torch.autograd.functional.hessian(lambda th, k=k: toy.outputs(th)[k], point)
                @ velocity
                for k in range(2)
            ]
        )
        assert torch.allclose(jac.T @ jac @ acceleration, -jac.T @ second, atol=1e-10)
    assert torch.allclose(toy.fisher_exp_map(theta0, 0 * v), theta0)


def test_banana_fisher_path_at_times_matches_end_points():
    toy = Banana()
    theta0, v = torch.zeros(2, dtype=F64), torch.tensor([[1.0, 0.3], [-0.5, 0.2]], dtype=F64)
    times = torch.linspace(0, 1, 5, dtype=F64)
    path = toy.fisher_exp_map(theta0, v, times)
    assert path.shape == (2, 5, 2)
    assert torch.allclose(path[:, -1], toy.fisher_exp_map(theta0, v))
    assert torch.allclose(path[:, 0], theta0.expand(2, 2))


def test_banana_exact_samples_follow_the_pulled_back_gaussian():
    toy = Banana(sigma_1=1.0, sigma_2=0.25, b=1.0)
    samples = toy.exact_samples(20000, _generator(3))
    u = toy.outputs(samples)
    assert abs(float(u.mean(0).abs().max())) < 0.03
    assert torch.allclose(torch.cov(u.T), torch.eye(2, dtype=F64), atol=0.04)
    # E[θ₂] = b E[θ₁²] = b σ₁² on the exact posterior
    assert abs(float(samples[:, 1].mean()) - 1.0) < 0.03


def test_banana_bad_input():
    with pytest.raises(ValueError, match="sigma_2"):
        Banana(sigma_2=0.0)
    with pytest.raises(TypeError, match="float64"):
        Banana()(torch.zeros(2))
    with pytest.raises(ValueError, match="2 entries"):
        Banana()(torch.zeros(3, dtype=F64))


def test_blr_posterior_matches_brute_force():
    blr = BayesianLinearRegression.line(30, _generator(4), noise_std=0.5, prior_precision=2.0)
    start = torch.zeros(2, dtype=F64)
    hessian = torch.autograd.functional.hessian(blr, start)
    assert torch.allclose(hessian, blr.precision, atol=1e-10)
    grad_at_mean = torch.autograd.functional.jacobian(blr, blr.posterior_mean)
    assert float(grad_at_mean.abs().max()) < 1e-10
    w = torch.randn(3, 2, generator=_generator(5), dtype=F64)
    v = torch.randn(3, 2, generator=_generator(6), dtype=F64)
    grad, curvature = blr.grad_and_curvature(w, v)
    for row, g in zip(w, grad, strict=True):
        assert torch.allclose(g, torch.autograd.functional.jacobian(blr, row), atol=1e-10)
    assert torch.allclose(curvature, ((v @ hessian) * v).sum(1), atol=1e-10)
    assert torch.allclose(
        blr.posterior_covariance @ blr.precision, torch.eye(2, dtype=F64), atol=1e-12
    )


def test_blr_bad_input():
    X = torch.ones(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="targets"):
        BayesianLinearRegression(X, torch.ones(4, dtype=F64), 1.0, 1.0)
    with pytest.raises(ValueError, match="noise_std"):
        BayesianLinearRegression(X, torch.ones(3, dtype=F64), -1.0, 1.0)
    with pytest.raises(TypeError, match="float64"):
        BayesianLinearRegression(X.float(), torch.ones(3), 1.0, 1.0)


def test_gaussian_w2_closed_forms():
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    assert gaussian_w2(mean, cov, mean, cov) < 1e-7
    # equal covariances: the distance of the means; commuting ones: ‖√C_a − √C_b‖_F
    assert abs(gaussian_w2(mean, cov, mean + torch.tensor([3.0, 4.0], dtype=F64), cov) - 5.0) < 1e-7
    a, b = (
        torch.diag(torch.tensor([4.0, 9.0], dtype=F64)),
        torch.diag(torch.tensor([1.0, 1.0], dtype=F64)),
    )
    assert abs(gaussian_w2(mean, a, mean, b) - (1.0 + 4.0) ** 0.5) < 1e-12


def test_banana_regression_objective_is_the_banana_and_its_fisher_geodesics_the_closed_form():
    from rbmem_tutorial.riemannian import exp_map

    toy = Banana(sigma_1=0.8, sigma_2=0.3, b=1.2)
    objective = toy.regression_objective(prior_precision=1e-10)
    points = torch.randn(4, 2, generator=_generator(9), dtype=F64)
    for point in points:
        assert torch.isclose(objective.value(point), toy(point), rtol=1e-8)
    start = torch.tensor([0.2, -0.1], dtype=F64)
    v = torch.tensor([[0.9, 0.4], [-0.6, 0.2]], dtype=F64)
    result = exp_map(objective, start, v, metric="fisher", method="dopri5", rtol=1e-9, atol=1e-9)
    assert torch.allclose(result.endpoints, toy.fisher_exp_map(start, v), atol=1e-6)


def test_blr_regression_objective_matches_the_closed_form():
    blr = BayesianLinearRegression.line(12, _generator(10), noise_std=0.7, prior_precision=0.5)
    objective = blr.regression_objective()
    w = torch.randn(3, 2, generator=_generator(11), dtype=F64)
    for row in w:
        assert torch.isclose(objective.value(row), blr(row), rtol=1e-12)
    assert objective.grad(blr.posterior_mean).abs().max() < 1e-10
