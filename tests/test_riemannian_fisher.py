"""The Fisher (pull-back / GGN) metric: its geodesic acceleration against the Christoffel
symbols of G(θ) by autograd, straight geodesics and the exact posterior for a linear model,
conservation of the speed, temperature invariance, when RLA-F samples are exact, and bad
input."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd, jacrev
from torchdiffeq import odeint

from rbmem_tutorial.laplace import RegressionObjective, fit_laplace, parameters_vector
from rbmem_tutorial.riemannian import exp_map
from rbmem_tutorial.riemannian.fisher import FisherMetric
from rbmem_tutorial.riemannian.fisher_mlp import ROWS_IN_TURN

F64 = torch.float64


def tanh_objective(num_inputs, noise_std=0.4, prior_precision=1.5, seed=0, bias=True):
    """A 2 → 6 → 2 tanh MLP (32 parameters; 26 without the first bias) on random inputs."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6, bias=bias), torch.nn.Tanh(),
                              torch.nn.Linear(6, 2))
    inputs, targets = torch.randn(num_inputs, 2), torch.randn(num_inputs, 2)
    mean = 0.1 * torch.randn(32 if bias else 26, dtype=F64)
    return RegressionObjective(net, inputs, targets, noise_std, prior_precision, prior_mean=mean)


def christoffel_acceleration(objective, theta, velocity):
    """−Γᵏᵢⱼ ċⁱ ċʲ from G(θ) = JᵀΣ⁻¹J + λI and its derivative, both by autograd
    (J by reverse mode, ∂G by forward mode over it)."""
    out = objective.targets.shape[1]
    variance = (objective.noise_std**2 * torch.ones(out, dtype=F64)).repeat(len(objective.inputs))
    eye = torch.eye(objective.num_params, dtype=F64)

    def metric(point):
        jac = jacrev(lambda p: objective.predict(p).reshape(-1))(point)
        return jac.T @ (jac / variance[:, None]) + objective.prior_precision * eye

    g = metric(theta)
    dg = jacfwd(metric)(theta)  # dg[a, b, c] = ∂_c G_ab
    # Γ_kij ċⁱċʲ = ½ (∂_i G_kj + ∂_j G_ki − ∂_k G_ij) ċⁱċʲ
    first_kind = torch.einsum("kji,i,j->k", dg, velocity, velocity) - 0.5 * torch.einsum(
        "ijk,i,j->k", dg, velocity, velocity
    )
    return -torch.linalg.solve(g, first_kind)


@pytest.mark.parametrize(
    ("num_inputs", "noise_std", "gram", "used", "bias"),
    [
        (4, 0.4, "auto", "mlp", True),  # M = 8 < D = 32: Woodbury, hand-written MLP passes
        (4, torch.tensor([0.3, 0.7]), "mlp", "mlp", False),  # a layer without bias
        (4, torch.tensor([0.3, 0.7]), "jacobian", "jacobian", True),  # Woodbury, explicit J
        (24, torch.tensor([0.3, 0.7]), "auto", "mlp", True),  # M = 48 > D: D × D system
        (24, 0.4, "mlp", "mlp", False),  # D × D through the MLP passes, a layer without bias
        (24, torch.tensor([0.3, 0.7]), "jacobian", "jacobian", True),  # D × D, explicit J
    ],
)
def test_acceleration_equals_christoffel_formula(num_inputs, noise_std, gram, used, bias):
    objective = tanh_objective(num_inputs, noise_std, bias=bias)
    metric = FisherMetric(objective, gram=gram)
    assert metric.gram == used and metric.uses_woodbury is (num_inputs == 4)
    dim = objective.num_params
    generator = torch.Generator().manual_seed(1)
    theta = parameters_vector(objective.model) + 0.3 * torch.randn(3, dim, generator=generator,
                                                                   dtype=F64)
    velocity = torch.randn(3, dim, generator=generator, dtype=F64)
    expected = torch.stack([christoffel_acceleration(objective, t, v)
                            for t, v in zip(theta, velocity, strict=True)])
    assert expected.abs().max() > 1e-2  # the net is nonlinear: geodesics bend
    batch = metric.acceleration(theta, velocity)
    single = torch.stack([metric.acceleration(t, v) for t, v in zip(theta, velocity, strict=True)])
    for got in (batch, single):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8 * expected.abs().max())


def dense_acceleration(objective, theta, velocity):
    """c̈ = −(JᵀΣ⁻¹J + λI)⁻¹ JᵀΣ⁻¹ f''[ċ, ċ] by brute force: J by jacrev, f'' by jvp of jvp, and
    a dense D × D solve."""
    out = objective.targets.shape[1]
    variance = (objective.noise_std**2 * torch.ones(out, dtype=F64)).repeat(len(objective.inputs))

    def outputs(point):
        return objective.predict(point).reshape(-1)

    def first(point):
        return torch.func.jvp(outputs, (point,), (velocity,))[1]

    second = torch.func.jvp(first, (theta,), (velocity,))[1]
    jac = jacrev(outputs)(theta)
    metric = jac.T @ (jac / variance[:, None]) + objective.prior_precision * torch.eye(
        objective.num_params, dtype=F64)
    return -torch.linalg.solve(metric, jac.T @ (second / variance))


@pytest.mark.parametrize(
    ("widths", "activation", "noise_std", "bias"),
    [
        ((2, 5, 4, 3), torch.nn.SiLU, torch.tensor([0.3, 0.7, 0.5]), True),  # two hidden layers
        ((3, 7, 2), torch.nn.Tanh, 0.4, False),  # layers without bias
        ((4, 1), None, 0.6, True),  # one linear layer: straight geodesics
    ],
)
def test_woodbury_passes_equal_a_dense_solve(widths, activation, noise_std, bias):
    """The M × M route of the MLP passes (outputs ordered (j, n), the input Gram built once)
    against a dense D × D solve with autograd derivatives, to 1e-10, one row and a batch."""
    torch.manual_seed(2)
    layers = []
    for index, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [torch.nn.Linear(a, b, bias=bias or index == len(widths) - 2)]
        if index < len(widths) - 2:
            layers.append(activation())
    net = torch.nn.Sequential(*layers)
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(3, widths[0], generator=generator)
    targets = torch.randn(3, widths[-1], generator=generator)
    objective = RegressionObjective(net, inputs, targets, noise_std, 1.3)
    metric = FisherMetric(objective)
    dim = objective.num_params
    assert metric.gram == "mlp" and metric.uses_woodbury and metric.num_outputs < dim
    theta = parameters_vector(net) + 0.5 * torch.randn(4, dim, generator=generator, dtype=F64)
    velocity = torch.randn(4, dim, generator=generator, dtype=F64)
    expected = torch.stack([dense_acceleration(objective, t, v)
                            for t, v in zip(theta, velocity, strict=True)])
    scale = expected.abs().max()
    if activation is None:
        assert scale == 0  # f is linear in θ
    else:
        assert scale > 1e-2  # geodesics bend
    for got in (metric.acceleration(theta, velocity), metric.acceleration(theta[1], velocity[1])):
        torch.testing.assert_close(got, expected[1] if got.ndim == 1 else expected,
                                   rtol=1e-10, atol=1e-10 * float(scale) + 1e-300)


def test_large_woodbury_batches_are_solved_row_by_row_and_equal_a_dense_solve():
    """From ROWS_IN_TURN outputs on, a batch goes row by row; the rows equal the dense solve."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(2, 24), torch.nn.SiLU(), torch.nn.Linear(24, 24),
                              torch.nn.SiLU(), torch.nn.Linear(24, 2))
    generator = torch.Generator().manual_seed(5)
    num = ROWS_IN_TURN // 2
    objective = RegressionObjective(net, torch.randn(num, 2, generator=generator),
                                    torch.randn(num, 2, generator=generator), 0.3, 0.8)
    metric = FisherMetric(objective)
    dim = objective.num_params
    assert metric.uses_woodbury and metric.num_outputs == ROWS_IN_TURN < dim
    theta = parameters_vector(net) + 0.3 * torch.randn(2, dim, generator=generator, dtype=F64)
    velocity = torch.randn(2, dim, generator=generator, dtype=F64)
    expected = torch.stack([dense_acceleration(objective, t, v)
                            for t, v in zip(theta, velocity, strict=True)])
    scale = float(expected.abs().max())
    assert scale > 1e-2
    torch.testing.assert_close(metric.acceleration(theta, velocity), expected, rtol=1e-10,
                               atol=1e-10 * scale)


def test_temperature_scales_the_metric_and_leaves_geodesics_unchanged():
    objective, temperature = tanh_objective(4), 7.0
    tempered = RegressionObjective(objective.model, objective.inputs, objective.targets,
                                   objective.noise_std * temperature**0.5,
                                   objective.prior_precision / temperature)
    theta = parameters_vector(objective.model)
    velocity = torch.randn(32, generator=torch.Generator().manual_seed(2), dtype=F64)
    plain, hot = FisherMetric(objective), FisherMetric(tempered)
    speed = plain.speed(theta, velocity)
    torch.testing.assert_close(hot.speed(theta, velocity), speed / temperature)
    torch.testing.assert_close(hot.acceleration(theta, velocity),
                               plain.acceleration(theta, velocity), rtol=1e-10, atol=1e-12)


def linear_objective(num_inputs, seed=0):
    """f(θ) = Zθ: an ``nn.Linear(3, 2)`` (8 parameters) with σ = 0.5, λ = 2."""
    torch.manual_seed(seed)
    inputs = torch.randn(num_inputs, 3, dtype=F64)
    targets = inputs @ torch.randn(3, 2, dtype=F64) + 0.5 * torch.randn(num_inputs, 2, dtype=F64)
    return RegressionObjective(torch.nn.Linear(3, 2), inputs, targets, 0.5, 2.0)


def geodesic_endpoints(metric, theta0, velocity, tol):
    """States [c, ċ] at t = 0, ½, 1 of ``G c̈ = −JᵀΣ⁻¹f''[ċ, ċ]`` per row of ``velocity``."""
    dim = theta0.shape[-1]

    def field(_t, state):
        theta, rate = state[..., :dim], state[..., dim:]
        return torch.cat([rate, metric.acceleration(theta, rate)], dim=-1)

    start = torch.cat([theta0.expand_as(velocity), velocity], dim=-1)
    times = torch.linspace(0.0, 1.0, 3, dtype=F64)
    return odeint(field, start, times, method="dopri5", rtol=tol, atol=tol)


@pytest.mark.parametrize("num_inputs", [2, 12])  # M = 4 < D = 8 (Woodbury), M = 24 > D
def test_linear_model_gives_straight_geodesics_and_the_exact_posterior(num_inputs):
    objective = linear_objective(num_inputs)
    metric = FisherMetric(objective, gram="jacobian")  # rows vmapped: fast for 4,000 samples
    jac = objective.jacobian(torch.zeros(8, dtype=F64)).reshape(-1, 8)  # Z, constant
    precision = jac.T @ jac / 0.25 + 2.0 * torch.eye(8, dtype=F64)
    covariance = torch.linalg.inv(precision)
    mean = torch.linalg.solve(precision, jac.T @ objective.targets.reshape(-1) / 0.25)
    assert objective.grad(mean).abs().max() < 1e-10  # the closed-form posterior mean is θ*

    samples = 4000
    posterior = fit_laplace(objective, mean, "full", prior_precision=2.0)
    tangents = posterior.sample_tangent(samples, torch.Generator().manual_seed(3))
    assert metric.acceleration(mean.expand_as(tangents[:5]), tangents[:5]).abs().max() == 0
    assert FisherMetric(objective).acceleration(mean, tangents[0]).abs().max() == 0
    if metric.uses_woodbury:
        states = geodesic_endpoints(metric, mean, tangents, tol=1e-8)[:, :, :8]
    else:  # the package's solver, as RLA-F samples are drawn
        result = exp_map(objective, mean, tangents, metric="fisher", method="dopri5",
                         rtol=1e-8, atol=1e-8, return_path=True, num_path_points=3)
        states = result.path.movedim(1, 0)
    middle, end = states[1], states[-1]
    torch.testing.assert_close(middle, mean + 0.5 * tangents, rtol=0, atol=1e-12)  # straight
    torch.testing.assert_close(end, mean + tangents, rtol=0, atol=1e-12)

    # sample mean and covariance against N(μ, (ZᵀΣ⁻¹Z + λI)⁻¹), within 4 standard errors
    variance = covariance.diagonal()
    mean_error = (end.mean(0) - mean).abs() / (variance / samples).sqrt()
    assert mean_error.max() < 4
    centred = end - mean
    sample_cov = centred.T @ centred / samples
    cov_se = ((torch.outer(variance, variance) + covariance.square()) / samples).sqrt()
    assert ((sample_cov - covariance).abs() / cov_se).max() < 4
    # the test can fail: a diagonal tangent Gaussian misses the off-diagonal covariance
    wrong = torch.diag(1 / precision.diagonal())
    assert ((sample_cov - wrong).abs() / cov_se).max() > 4


def test_speed_is_conserved_along_a_bent_fisher_geodesic():
    objective = tanh_objective(4)
    metric = FisherMetric(objective)
    theta0 = parameters_vector(objective.model)
    velocity = 0.7 * torch.randn(1, 32, generator=torch.Generator().manual_seed(4), dtype=F64)
    states = geodesic_endpoints(metric, theta0, velocity, tol=1e-11)[:, 0]
    assert len(states) == 3  # t = 0, ½, 1
    speeds = metric.speed(states[:, :32], states[:, 32:])
    drift = (speeds - speeds[0]).abs().max() / speeds[0]
    assert drift < 1e-6
    bend = (states[-1, :32] - theta0 - velocity[0]).norm() / velocity.norm()
    assert bend > 1e-2  # the curve is not the straight line θ0 + t v
    # G-speed is conserved, the Euclidean one is not
    euclid = states[:, 32:].square().sum(-1)
    assert (euclid - euclid[0]).abs().max() / euclid[0] > 1e-3


def test_loss_rise_bound_holds_and_is_attained():
    objective = tanh_objective(4)
    metric = FisherMetric(objective)
    theta0 = parameters_vector(objective.model)
    velocity = 3 * torch.randn(4, 32, generator=torch.Generator().manual_seed(5), dtype=F64)
    result = exp_map(objective, theta0, velocity, metric="fisher", method="dopri5",
                     rtol=1e-9, atol=1e-9)
    bound = metric.loss_rise_bound(theta0.expand_as(velocity), velocity)
    assert bool((result.loss_rise.abs() <= bound).all())
    assert bool((result.loss_rise.abs() > 0.05 * bound).all())  # not a vacuous bound here
    # equality: L(θ0) = 0 (f(θ0) = y, θ0 = m) and a linear f, so ΔL = ½‖v‖_G² exactly
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    inputs = torch.randn(5, 3, dtype=F64)
    theta = parameters_vector(lin)
    exact = RegressionObjective(lin, inputs, lin(inputs).detach(), 0.5, 2.0, prior_mean=theta)
    flat = FisherMetric(exact)
    v = torch.randn(8, dtype=F64)
    rise = exact.value(theta + v) - exact.value(theta)
    torch.testing.assert_close(flat.loss_rise_bound(theta, v), rise, rtol=1e-10, atol=0)


def test_loss_and_gradient_norm_rows():
    objective = tanh_objective(4)
    metric = FisherMetric(objective)
    theta = parameters_vector(objective.model) + torch.zeros(2, 32, dtype=F64)
    theta[1] += 0.1
    torch.testing.assert_close(metric.loss_value(theta)[1], objective.value(theta[1]))
    torch.testing.assert_close(metric.grad_norm(theta[0]), objective.grad(theta[0]).norm())


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match="RegressionObjective"):
        FisherMetric(lambda theta: theta.square().sum())
    with pytest.raises(ValueError, match="gram"):
        FisherMetric(tanh_objective(4), gram="dense")
    conv = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 2)), torch.nn.Conv1d(1, 2, 2),
                               torch.nn.Flatten())  # not a plain MLP
    not_linear = RegressionObjective(conv, torch.randn(2, 2), torch.randn(2, 2), 1.0, 1.0)
    with pytest.raises(ValueError, match="nn.Sequential"):
        FisherMetric(not_linear, gram="mlp")
    assert FisherMetric(not_linear).gram == "jacobian"
    metric = FisherMetric(tanh_objective(4))
    theta = torch.zeros(32, dtype=F64)
    with pytest.raises(TypeError, match="float64"):
        metric.acceleration(theta.float(), theta.float())
    with pytest.raises(ValueError, match="32 entries"):
        metric.acceleration(torch.zeros(31, dtype=F64), torch.zeros(31, dtype=F64))
    with pytest.raises(ValueError, match="same shape"):
        metric.speed(theta, torch.zeros(2, 32, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        metric.acceleration(theta, torch.full((32,), float("nan"), dtype=F64))


class CubicOutput(torch.nn.Module):
    """``f(θ) = θ + θ³/3`` for every input row: −log p = ½ h(θ)² with h' = 1 + θ²."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(1, dtype=F64))

    def forward(self, inputs):
        return (self.theta + self.theta**3 / 3).to(inputs.dtype).expand(inputs.shape[0], 1)


def cubic_inverse(z):
    """h⁻¹(z), the real root of θ³ + 3θ − 3z = 0 (Cardano; the discriminant is positive)."""
    root = (2.25 * z**2 + 1).sqrt()
    return torch.sign(1.5 * z + root) * (1.5 * z + root).abs() ** (1 / 3) + torch.sign(
        1.5 * z - root
    ) * (1.5 * z - root).abs() ** (1 / 3)


def test_rla_f_samples_are_exact_only_for_a_constant_jacobian_determinant():
    """On −log p = ½(θ + θ³/3)², det J_h = 1 + θ² varies: RLA-F gives E θ² = 0.531, not 0.387."""
    zeros = torch.zeros(1, 1, dtype=F64)
    objective = RegressionObjective(CubicOutput(), zeros, zeros, 1.0, 1e-12)
    theta_star = torch.zeros(1, dtype=F64)
    # G(0) = h'(0)² + λ = 1, so RLA-F draws v ~ N(0, 1); its geodesic ends at h⁻¹(h(0) + v)
    v = torch.tensor([[-2.0], [-0.5], [1.0], [2.5]], dtype=F64)
    out = exp_map(objective, theta_star, v, metric="fisher", method="dopri5", rtol=1e-10,
                  atol=1e-10)
    torch.testing.assert_close(out.endpoints, cubic_inverse(v), rtol=0, atol=1e-8)

    # E θ² by quadrature: the posterior ∝ N(h(θ)) against the samples' N(h(θ)) h'(θ)
    theta = torch.linspace(-6, 6, 120_001, dtype=F64)
    gauss = torch.exp(-0.5 * (theta + theta**3 / 3) ** 2)
    exact = torch.trapezoid(theta**2 * gauss, theta) / torch.trapezoid(gauss, theta)
    pushed = gauss * (1 + theta**2) / (2 * torch.pi) ** 0.5
    assert abs(float(torch.trapezoid(pushed, theta)) - 1) < 1e-10  # a density
    rla_f = torch.trapezoid(theta**2 * pushed, theta)
    assert abs(float(exact) - 0.3875) < 1e-4 and abs(float(rla_f) - 0.5311) < 1e-4

    # Monte Carlo through the solver lands on the pushed-forward moment, not the exact one
    z = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    second = exp_map(objective, theta_star, z, metric="fisher").endpoints.square()
    standard_error = float(second.std() / len(z) ** 0.5)
    assert abs(float(second.mean()) - float(rla_f)) < 4 * standard_error
    assert abs(float(second.mean()) - float(exact)) > 8 * standard_error
