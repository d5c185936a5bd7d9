"""Tests of rbmem_tutorial.flows.sampling against hand computations and closed forms."""

import math

import pytest
import torch

from rbmem_tutorial.flows import (
    EmpiricalOptimalVelocity,
    VelocityMLP,
    cfm_loss,
    linear_path,
    train_flow_matching,
)
from rbmem_tutorial.flows.sampling import METHODS, log_prob, sample

F64 = torch.float64


# ---------------------------------------------------------------- path and loss


def test_linear_path_by_hand():
    x0 = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64)
    x1 = torch.tensor([[3.0, -1.0], [4.0, 8.0]], dtype=F64)
    xt, u = linear_path(x0, x1, torch.tensor([0.25, 1.0], dtype=F64))
    torch.testing.assert_close(xt, torch.tensor([[1.5, 1.25], [4.0, 8.0]], dtype=F64))
    torch.testing.assert_close(u, torch.tensor([[2.0, -3.0], [4.0, 8.0]], dtype=F64))
    xt0, _ = linear_path(x0, x1, 0.0)
    assert torch.equal(xt0, x0)


def test_cfm_loss_by_hand():
    # u_theta(x, t) = t * x; with x0 = (1, 0), x1 = (0, 2), t = 0.5: x_t = (0.5, 1),
    # u_theta = (0.25, 0.5), target (-1, 2), squared error 1.25^2 + 1.5^2 = 3.8125.
    # Second row: x0 = 0, x1 = (1, 1), t = 1: u_theta = (1, 1) = target, error 0.
    model = lambda x, t: t[:, None] * x  # noqa: E731
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    x1 = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=F64)
    loss = cfm_loss(model, x1, x0=x0, t=torch.tensor([0.5, 1.0], dtype=F64))
    assert loss.item() == pytest.approx(3.8125 / 2, abs=1e-14)


def test_cfm_loss_draws_noise_then_times_from_the_generator():
    model = VelocityMLP(2, hidden=(8,)).double()
    x1 = torch.randn(6, 2, dtype=F64)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 2, generator=g, dtype=F64)
    t = torch.rand(6, generator=g, dtype=F64)
    drawn = cfm_loss(model, x1, generator=torch.Generator().manual_seed(3))
    assert drawn.item() == cfm_loss(model, x1, x0=x0, t=t).item()
    drawn.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(x1=torch.zeros(3)), ValueError, "x1 must be 2-D"),
        (dict(x1=torch.zeros(0, 2)), ValueError, "x1 needs at least 1 row"),
        (dict(x1=torch.tensor([[float("nan"), 0.0]])), ValueError, "x1 contains NaN"),
        (dict(x1=torch.zeros(3, 2), x0=torch.zeros(3, 3)), ValueError, "x0 must have the shape"),
        (dict(x1=torch.zeros(3, 2), t=1.5), ValueError, r"t must lie in \[0, 1\]"),
        (dict(x1=torch.zeros(3, 2), t=torch.full((3,), -0.1)), ValueError, "t must lie"),
        (dict(x1=torch.zeros(3, 2), t=torch.zeros(4)), ValueError, "t must be a scalar"),
        (dict(x1=torch.zeros(3, 2), t=float("nan")), ValueError, "t contains NaN"),
        (dict(x1=[[0.0, 1.0]]), TypeError, "x1 must be a torch.Tensor"),
    ],
)
def test_cfm_loss_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        cfm_loss(lambda x, t: x, **kwargs)


# ---------------------------------------------------------------- training


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return VelocityMLP(2, hidden=(16, 16))


def test_training_lowers_the_loss_and_is_deterministic():
    data = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    fixed = dict(x0=torch.randn(512, 2, generator=torch.Generator().manual_seed(1)),
                 t=torch.rand(512, generator=torch.Generator().manual_seed(2)))
    x1 = data[torch.arange(512) % 8]
    first, second, other = _tiny_net(), _tiny_net(), _tiny_net()
    with torch.no_grad():
        before = cfm_loss(first, x1, **fixed).item()
    history = train_flow_matching(first, data, steps=300, batch_size=64, lr=3e-3, seed=5,
                                  progress=False)
    with torch.no_grad():
        after = cfm_loss(first, x1, **fixed).item()
    assert after < 0.8 * before
    assert history.shape == (300,) and history[-50:].mean() < history[:50].mean()
    again = train_flow_matching(second, data, steps=300, batch_size=64, lr=3e-3, seed=5,
                                progress=False)
    assert torch.equal(history, again)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(),
                                                 strict=True))
    different = train_flow_matching(other, data, steps=300, batch_size=64, lr=3e-3, seed=6,
                                    progress=False)
    assert not torch.equal(history, different)


def _last_update(schedule, steps=50, lr=1e-2):
    """Largest parameter change of the final optimiser step (snapshots taken before each call)."""
    model = _tiny_net()
    snapshots = []
    model.register_forward_pre_hook(
        lambda module, args: snapshots.append(
            torch.nn.utils.parameters_to_vector(module.parameters()).detach().clone()
        )
    )
    data = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    train_flow_matching(model, data, steps=steps, lr=lr, seed=0, schedule=schedule,
                        progress=False)
    final = torch.nn.utils.parameters_to_vector(model.parameters())
    return (final - snapshots[-1]).abs().max().item()


def test_cosine_schedule_ends_with_a_vanishing_learning_rate():
    # Adam moves a parameter by about lr per step; the cosine factor of the last of 50 steps is
    # (1 + cos(pi 49 / 50)) / 2 ~ 1e-3, so the last update shrinks by about that factor.
    constant, cosine = _last_update("constant"), _last_update("cosine")
    assert 0.2e-2 < constant < 2e-2
    assert cosine < 0.01 * constant


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(data=torch.zeros(0, 2)), ValueError, "data needs at least 1 row"),
        (dict(data=torch.tensor([[float("nan"), 0.0]])), ValueError, "data contains NaN"),
        (dict(data=torch.zeros(4, 2), steps=0), ValueError, "steps"),
        (dict(data=torch.zeros(4, 2), lr=-1.0), ValueError, "lr"),
        (dict(data=torch.zeros(4, 2), schedule="linear"), ValueError, "unknown schedule"),
    ],
)
def test_training_rejects_bad_input(kwargs, error, match):
    arguments = dict(steps=2, progress=False) | kwargs
    with pytest.raises(error, match=match):
        train_flow_matching(_tiny_net(), **arguments)


def test_training_reports_divergence():
    data = torch.randn(4, 2)
    with pytest.raises(FloatingPointError, match="lower lr"):
        train_flow_matching(_tiny_net(), data * 1e30, steps=3, lr=1e10, progress=False)


# ---------------------------------------------------------------- ODE sampling

TOLERANCE = {"dopri5": 1e-6, "rk4": 1e-6, "midpoint": 1e-3, "euler": 2e-2}
OPTIONS = {"dopri5": dict(rtol=1e-9, atol=1e-9)} | {m: dict(step_size=0.01) for m in METHODS[1:]}


@pytest.mark.parametrize("method", METHODS)
def test_sample_constant_field_is_exact(method):
    x0 = torch.randn(5, 3, dtype=F64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    out = sample(lambda x, t: c.expand_as(x), x0, method=method, **OPTIONS[method])
    torch.testing.assert_close(out, x0 + c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_sample_time_dependent_field(method):
    # dx/dt = 3 t^2  =>  x(t) = x0 + t^3; Euler's left sums err by 1.5 h, midpoint by h^2 / 4
    x0 = torch.randn(4, 2, dtype=F64)
    times = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=F64)
    path = sample(lambda x, t: 3 * t**2 * torch.ones_like(x), x0, method=method, times=times,
                  **OPTIONS[method])
    expected = x0[None] + times[:, None, None] ** 3
    torch.testing.assert_close(path, expected, rtol=0, atol=TOLERANCE[method])


def _linear_field():
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=F64)
    return A, (lambda x, t: x @ A.T)


@pytest.mark.parametrize("method", METHODS)
def test_sample_linear_field_matches_matrix_exponential(method):
    A, field = _linear_field()
    x0 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = sample(field, x0, method=method, **OPTIONS[method])
    torch.testing.assert_close(out, x0 @ torch.linalg.matrix_exp(A).T, rtol=0,
                               atol=TOLERANCE[method])


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    A, field = _linear_field()
    x0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    errors = [
        (sample(field, x0, method=method, step_size=h) - exact).norm().item() for h in (0.1, 0.05)
    ]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.3)


@pytest.mark.parametrize(("method", "per_step"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_nfe_of_fixed_step_methods(method, per_step):
    _, nfe = sample(lambda x, t: x, torch.ones(2, 2), method=method, step_size=0.25,
                    return_nfe=True)
    assert nfe == 4 * per_step
    _, nfe = sample(lambda x, t: x, torch.ones(2, 2), method=method, step_size=0.25,
                    times=[0.0, 0.5], return_nfe=True)
    assert nfe == 2 * per_step  # steps of 0.25 up to the last output time only


def test_sample_times_without_zero_and_no_grad():
    model = VelocityMLP(2, hidden=(8,))
    x0 = torch.randn(3, 2)
    path = sample(model, x0, times=[0.5, 1.0])
    assert path.shape == (2, 3, 2) and not path.requires_grad
    torch.testing.assert_close(path[-1], sample(model, x0))


@pytest.mark.parametrize("method", METHODS)
def test_sample_evaluates_the_velocity_only_inside_the_unit_interval(method):
    # a slow field far from the origin makes dopri5 guess a huge first step (t0 + h0 >> 1)
    seen = []

    def slow(x, t):
        seen.append(float(t))
        return 1e-3 * torch.ones_like(x)

    out = sample(slow, torch.full((2, 2), 5.0, dtype=F64), method=method)
    torch.testing.assert_close(out, torch.full((2, 2), 5.001, dtype=F64))
    assert min(seen) >= 0 and max(seen) <= 1


def test_sample_reports_too_many_steps():
    with pytest.raises(RuntimeError, match="max_num_steps=3"):
        sample(lambda x, t: torch.sin(20 * x) * 30, torch.randn(4, 2), rtol=1e-10, atol=1e-10,
               max_num_steps=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(x0=torch.zeros(4)), ValueError, "x0 must be 2-D"),
        (dict(x0=torch.tensor([[float("inf"), 0.0]])), ValueError, "x0 contains NaN"),
        (dict(method="heun"), ValueError, "unknown method"),
        (dict(step_size=0.1), ValueError, "step_size applies to the fixed-step methods"),
        (dict(method="euler", step_size=0.0), ValueError, "step_size"),
        (dict(times=[0.0, 1.5]), ValueError, r"times in \[0, 1\]"),
        (dict(times=[0.5, 0.2]), ValueError, "strictly increasing"),
        (dict(rtol=0.0), ValueError, "rtol"),
    ],
)
def test_sample_rejects_bad_input(kwargs, error, match):
    arguments = dict(x0=torch.zeros(4, 2)) | kwargs
    with pytest.raises(error, match=match):
        sample(lambda x, t: x, **arguments)


# ---------------------------------------------------------------- empirical optimal velocity


def _brute_force_conditional_expectation(train, x, t):
    """E[x_1 - x_0 | x_t = x] from Gaussian likelihoods and the implied noise, per training point.

    Given x_1 = x_i, x_t ~ N(t x_i, (1 - t)^2 I) and x_0 = (x - t x_i) / (1 - t).
    """
    d = train.shape[1]
    sigma = 1 - t
    density = torch.exp(-((x - t * train) ** 2).sum(dim=1) / (2 * sigma**2))
    density = density / (2 * math.pi * sigma**2) ** (d / 2)
    posterior = density / density.sum()
    noise = (x - t * train) / sigma
    return (posterior[:, None] * (train - noise)).sum(dim=0)


def test_empirical_optimal_velocity_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(7, 3, generator=g, dtype=F64)
    u_star = EmpiricalOptimalVelocity(train)
    for t in (0.0, 0.2, 0.5, 0.8):
        x = 1.5 * torch.randn(5, 3, generator=g, dtype=F64)
        expected = torch.stack([_brute_force_conditional_expectation(train, row, t) for row in x])
        torch.testing.assert_close(u_star(x, torch.tensor(t, dtype=F64)), expected,
                                   rtol=1e-10, atol=1e-10)


def test_empirical_optimal_velocity_is_the_least_squares_regressor():
    # The conditional expectation makes the residual (x1 - x0) - u*(x_t) orthogonal to every
    # function g(x_t); checked by Monte Carlo for a few g at a fixed t.
    g = torch.Generator().manual_seed(1)
    train = torch.randn(5, 2, generator=g, dtype=F64)
    u_star = EmpiricalOptimalVelocity(train)
    m, t = 200_000, 0.6
    x1 = train[torch.randint(5, (m,), generator=g)]
    x0 = torch.randn(m, 2, generator=g, dtype=F64)
    xt, target = linear_path(x0, x1, t)
    residual = target - u_star(xt, torch.tensor(t, dtype=F64))
    for test_function in (torch.ones_like(xt), xt, torch.sin(2 * xt), xt.flip(1) ** 2):
        products = residual * test_function
        standard_error = products.std(dim=0) / math.sqrt(m)
        assert (products.mean(dim=0).abs() < 4 * standard_error).all()
    # and a direction that is not optimal leaves a visibly correlated residual
    biased = target - 0.9 * u_star(xt, torch.tensor(t, dtype=F64))
    products = biased * xt
    assert (products.mean(dim=0).abs() > 10 * products.std(dim=0) / math.sqrt(m)).any()


def test_empirical_optimal_velocity_weights_and_the_end_time():
    train = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], dtype=F64)
    u_star = EmpiricalOptimalVelocity(train, eps=1e-4)
    x = torch.tensor([[0.3, 0.1], [1.0, 0.0]], dtype=F64)
    for t in (0.0, 0.5, 1.0):
        weights = u_star.weights(x, torch.tensor(t, dtype=F64))
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, dtype=F64))
    # at t = 0 the weights are uniform: x_0 carries no information about x_1
    torch.testing.assert_close(u_star.weights(x, 0.0), torch.full((2, 3), 1 / 3, dtype=F64))
    at_end = u_star(x, torch.tensor(1.0, dtype=F64))
    assert torch.isfinite(at_end).all()
    assert at_end[1].abs().max() == 0  # sitting on a training point: no motion


def test_empirical_optimal_flow_lands_on_training_points():
    g = torch.Generator().manual_seed(2)
    train = 2 * torch.randn(6, 2, generator=g, dtype=F64)
    x0 = torch.randn(64, 2, generator=g, dtype=F64)
    x1 = sample(EmpiricalOptimalVelocity(train), x0)
    nearest = torch.cdist(x1, train).min(dim=1)
    assert nearest.values.max() < 1e-3
    assert nearest.indices.unique().numel() >= 4  # noise spreads over the training points


@pytest.mark.parametrize(
    ("build", "call", "error", "match"),
    [
        (torch.zeros(0, 2), None, ValueError, "train needs at least 1 row"),
        (torch.tensor([[float("nan"), 1.0]]), None, ValueError, "train contains NaN"),
        (torch.zeros(3), None, ValueError, "train must be 2-D"),
        (torch.zeros(3, 2), (torch.zeros(2, 3), 0.5), ValueError, "same number of columns"),
        (torch.zeros(3, 2), (torch.zeros(2, 2), 1.2), ValueError, r"t must lie in \[0, 1\]"),
        (torch.zeros(3, 2), (torch.full((2, 2), float("nan")), 0.5), ValueError, "x contains"),
    ],
)
def test_empirical_optimal_velocity_rejects_bad_input(build, call, error, match):
    with pytest.raises(error, match=match):
        EmpiricalOptimalVelocity(build)(*call)


# ---------------------------------------------------------------- log-likelihood


def _affine_flow(d, seed):
    """u(x, t) = A x + b pushes N(0, I) to N(A^-1 (e^A - I) b, e^A e^A^T) at t = 1."""
    g = torch.Generator().manual_seed(seed)
    A = 0.6 * torch.randn(d, d, generator=g, dtype=F64)
    b = torch.randn(d, generator=g, dtype=F64)
    expA = torch.linalg.matrix_exp(A)
    mean = torch.linalg.solve(A, (expA - torch.eye(d, dtype=F64)) @ b)
    target = torch.distributions.MultivariateNormal(mean, covariance_matrix=expA @ expA.T)
    return A, (lambda x, t: x @ A.T + b), target


@pytest.mark.parametrize(("d", "method", "options"), [
    (2, "dopri5", dict(rtol=1e-9, atol=1e-9)),
    (3, "dopri5", dict(rtol=1e-9, atol=1e-9)),
    (2, "rk4", dict(step_size=0.05)),
])
def test_log_prob_of_an_affine_flow_is_exact(d, method, options):
    _, field, target = _affine_flow(d, seed=d)
    x = target.sample((50,))
    result = log_prob(field, x, method=method, **options)
    tolerance = 1e-7 if method == "dopri5" else 1e-6  # rk4 with h = 0.05: error ~ h^4
    torch.testing.assert_close(result, target.log_prob(x), rtol=0, atol=tolerance)


def test_log_prob_hutchinson_is_unbiased_with_the_predicted_spread():
    # With a Rademacher probe e and constant A, e^T A e = tr A + e_1 e_2 (A_12 + A_21) in 2-D:
    # every estimate is off by exactly +-(A_12 + A_21), with mean zero over the probes.
    A, field, target = _affine_flow(2, seed=7)
    x = target.sample((4000,))
    exact = target.log_prob(x)
    estimate = log_prob(field, x, divergence="hutchinson", rtol=1e-9, atol=1e-9,
                        generator=torch.Generator().manual_seed(0))
    error = estimate - exact
    spread = (A[0, 1] + A[1, 0]).abs()
    torch.testing.assert_close(error.abs(), spread.expand_as(error), rtol=0, atol=1e-6)
    assert error.mean().abs() < 4 * spread / math.sqrt(x.shape[0])
    again = log_prob(field, x, divergence="hutchinson", rtol=1e-9, atol=1e-9,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(estimate, again)


def test_log_prob_hutchinson_in_higher_dimension():
    A, field, target = _affine_flow(6, seed=3)
    x = target.sample((3000,))
    error = log_prob(field, x, divergence="hutchinson", generator=torch.Generator().manual_seed(1),
                     rtol=1e-8, atol=1e-8) - target.log_prob(x)
    # Var(e^T A e) = sum_{i != j} A_ij^2 + A_ij A_ji for Rademacher probes
    off = A - torch.diag(torch.diag(A))
    std = torch.sqrt((off**2 + off * off.T).sum())
    assert error.mean().abs() < 4 * std / math.sqrt(x.shape[0])
    assert error.std().item() == pytest.approx(std.item(), rel=0.1)


def test_log_prob_of_a_field_without_x_dependence():
    # a constant drift c shifts N(0, I) to N(c, I) and has zero divergence
    c = torch.tensor([1.0, -1.0], dtype=F64)
    x = torch.randn(5, 2, dtype=F64)
    target = torch.distributions.MultivariateNormal(c, torch.eye(2, dtype=F64))
    result = log_prob(lambda x, t: c.expand_as(x), x)
    torch.testing.assert_close(result, target.log_prob(x))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(x=torch.zeros(3)), ValueError, "x must be 2-D"),
        (dict(x=torch.tensor([[float("nan"), 0.0]])), ValueError, "x contains NaN"),
        (dict(divergence="skilling"), ValueError, "unknown divergence"),
        (dict(method="rk45"), ValueError, "unknown method"),
    ],
)
def test_log_prob_rejects_bad_input(kwargs, error, match):
    arguments = dict(x=torch.zeros(3, 2)) | kwargs
    with pytest.raises(error, match=match):
        log_prob(lambda x, t: x, **arguments)


def test_docstring_examples_run():
    import doctest

    from rbmem_tutorial.flows import optimal, paths, sampling, training

    for module in (paths, training, optimal, sampling):
        assert doctest.testmod(module).failed == 0, module.__name__
