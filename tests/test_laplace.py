"""Tests for rbmem_tutorial.laplace: structures, evidence, prior tuning and sampling."""

import math

import pytest
import torch
from conftest import cuda
from test_objective import kfac_dense
from torch import nn

from rbmem_tutorial.laplace import (
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    LastLayerLaplace,
    RegressionObjective,
    fit_laplace,
    optimal_prior_precision,
    parameters_vector,
    refine_map,
)

STRUCTURES = ["full", "diag", "kfac", "last_layer"]
SIGMA = torch.tensor([0.5, 1.3], dtype=torch.float64)
LAST_LAYER = slice(20, 32)  # weight [2, 5] and bias [2] of the 3→5→2 MLP below


def regression_data(n=30, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    y = torch.tanh(z) @ w.T + 0.3 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return z, y


# -- Bayesian linear regression: the closed-form truth ----------------------------------------


def linear_regression_truth(z, y, sigma, lam):
    """Exact posterior and evidence of y = W z + b + ε, ε ~ N(0, diag σ²), θ ~ N(0, λ⁻¹ I).

    θ is [W row-major, b], as nn.Linear(3, 2).named_parameters() orders it.
    """
    n, n_in = z.shape
    n_out = y.shape[1]
    jac = torch.zeros(n, n_out, n_out * n_in + n_out, dtype=torch.float64)
    for j in range(n_out):
        jac[:, j, j * n_in : (j + 1) * n_in] = z
        jac[:, j, n_out * n_in + j] = 1.0
    weights = 1 / sigma**2
    eye = torch.eye(jac.shape[2], dtype=torch.float64)
    precision = torch.einsum("noa,o,nob->ab", jac, weights, jac) + lam * eye
    mean = torch.linalg.solve(precision, torch.einsum("noa,o,no->a", jac, weights, y))
    features = torch.cat([z, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    evidence = sum(
        torch.distributions.MultivariateNormal(
            torch.zeros(n, dtype=torch.float64),
            sigma[j] ** 2 * torch.eye(n, dtype=torch.float64) + features @ features.T / lam,
        ).log_prob(y[:, j])
        for j in range(n_out)
    )
    return mean, precision, float(evidence)


@pytest.fixture(scope="module")
def linear_problem():
    z, y = regression_data()
    lam = 0.8
    obj = RegressionObjective(nn.Linear(3, 2), z, y, SIGMA, lam)
    theta, record = refine_map(obj, torch.zeros(obj.num_params, dtype=torch.float64), gtol=1e-12)
    return obj, theta, record, linear_regression_truth(z, y, SIGMA, lam), lam


def test_refine_map_finds_the_closed_form_posterior_mean(linear_problem):
    _, theta, record, (mean, _, _), _ = linear_problem
    assert record.converged
    torch.testing.assert_close(theta, mean, rtol=0, atol=1e-8)


@pytest.mark.parametrize("structure", ["full", "kfac", "last_layer"])
def test_exact_structures_recover_bayesian_linear_regression(linear_problem, structure):
    # For one nn.Linear layer the GGN is the Hessian, KFAC is exact (the output gradients
    # are unit vectors for every example) and the last layer is the whole model.
    obj, theta, _, (_, precision, evidence), lam = linear_problem
    post = fit_laplace(obj, theta, structure, prior_precision=lam)
    torch.testing.assert_close(post.covariance(), torch.linalg.inv(precision), rtol=0, atol=1e-10)
    torch.testing.assert_close(post.precision_diag, precision.diagonal(), rtol=1e-12, atol=0)
    assert post.log_marginal_likelihood() == pytest.approx(evidence, abs=1e-8)


def test_diag_is_the_diagonal_of_the_exact_precision(linear_problem):
    obj, theta, _, (_, precision, _), lam = linear_problem
    post = fit_laplace(obj, theta, "diag", prior_precision=lam)
    torch.testing.assert_close(post.precision_diag, precision.diagonal(), rtol=1e-12, atol=0)
    torch.testing.assert_close(post.variance, 1 / precision.diagonal(), rtol=1e-12, atol=0)


# -- a small nonlinear net --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    z, y = regression_data()
    obj = RegressionObjective(net, z, y, SIGMA, 1.0)
    theta, _ = refine_map(obj, parameters_vector(obj.model))
    jac = torch.autograd.functional.jacobian(lambda t: obj.predict(t), theta)
    ggn = torch.einsum("noa,o,nob->ab", jac, 1 / SIGMA**2, jac)
    return obj, theta, ggn


def expected_precision(structure, obj, theta, ggn, lam):
    """The structure's precision from brute-force pieces; +inf marks fixed parameters."""
    eye = torch.eye(obj.num_params, dtype=torch.float64)
    if structure == "full":
        return ggn + lam * eye
    if structure == "diag":
        return torch.diag(ggn.diagonal()) + lam * eye
    if structure == "kfac":
        factors = obj.kronecker_factors(theta)
        return kfac_dense(factors, obj.num_params, obj.num_examples) + lam * eye
    precision = torch.diag(torch.full((obj.num_params,), math.inf, dtype=torch.float64))
    block = ggn[LAST_LAYER, LAST_LAYER]
    precision[LAST_LAYER, LAST_LAYER] = block + lam * torch.eye(len(block), dtype=torch.float64)
    return precision


def expected_covariance(precision):
    fixed = torch.isinf(precision.diagonal())
    free = torch.nonzero(~fixed).squeeze(1)
    covariance = torch.zeros_like(precision)
    covariance[free[:, None], free[None, :]] = torch.linalg.inv(precision[free][:, free])
    return covariance


@pytest.mark.parametrize("structure", STRUCTURES)
def test_sample_covariance_matches_the_posterior(mlp_problem, structure):
    obj, theta, ggn = mlp_problem
    post = fit_laplace(obj, theta, structure, prior_precision=2.0, scale=0.7)
    truth = 0.49 * expected_covariance(expected_precision(structure, obj, theta, ggn, 2.0))
    torch.testing.assert_close(post.covariance(), truth, rtol=0, atol=1e-12)
    torch.testing.assert_close(post.variance, truth.diagonal(), rtol=0, atol=1e-12)
    n = 20_000
    samples = post.sample(n, torch.Generator().manual_seed(7))
    assert samples.shape == (n, obj.num_params) and samples.dtype == torch.float64
    mean_error = (samples.mean(dim=0) - theta).abs()
    assert bool((mean_error <= 5 * (truth.diagonal() / n).sqrt() + 1e-12).all())
    std = truth.diagonal().sqrt()
    standard_error = ((torch.outer(std, std) ** 2 + truth**2) / n).sqrt()
    assert bool(((torch.cov(samples.T) - truth).abs() <= 5 * standard_error + 1e-12).all())


@pytest.mark.parametrize("structure", STRUCTURES)
def test_precision_diagonal(mlp_problem, structure):
    obj, theta, ggn = mlp_problem
    post = fit_laplace(obj, theta, structure, prior_precision=2.0)
    expected = expected_precision(structure, obj, theta, ggn, 2.0).diagonal()
    torch.testing.assert_close(post.precision_diag, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_evidence_maximiser_agrees_with_a_grid_search(mlp_problem, structure):
    obj, theta, _ = mlp_problem
    post = fit_laplace(obj, theta, structure)
    best = post.prior_precision
    grid = torch.logspace(math.log10(best) - 1, math.log10(best) + 1, 2001).tolist()
    values = [post.log_marginal_likelihood(lam) for lam in grid]
    grid_best = grid[max(range(len(grid)), key=values.__getitem__)]
    assert abs(math.log10(grid_best / best)) <= 0.001  # one grid step
    assert post.log_marginal_likelihood() >= max(values) - 1e-12
    # And MacKay's fixed point λ = γ / ‖θ*‖² holds there.
    spectrum = post._eigenvalues
    gamma = float((spectrum / (spectrum + best)).sum())
    assert best == pytest.approx(gamma / post._prior_sq_norm, rel=1e-10)


def test_one_prior_precision_and_the_refit_recipe(mlp_problem):
    obj, theta, _ = mlp_problem
    post = fit_laplace(obj, theta, "diag")
    assert post.objective.prior_precision == post.prior_precision != obj.prior_precision
    assert post.gradient_norm == pytest.approx(float(post.objective.grad(theta).norm()))
    assert post.gradient_norm > 1e-3  # changing λ moved the minimiser of the zero-mean prior
    refined, _ = refine_map(post.objective, theta, gtol=1e-9)
    again = fit_laplace(post.objective, refined, "diag", post.prior_precision)
    assert again.prior_precision == post.prior_precision and again.gradient_norm < 1e-8


def test_last_layer_samples_move_only_the_last_layer(mlp_problem):
    obj, theta, _ = mlp_problem
    post = fit_laplace(obj, theta, "last_layer")
    moves = post.sample(50, torch.Generator().manual_seed(3)) - theta
    assert bool((moves[:, : LAST_LAYER.start] == 0).all())
    assert bool((moves[:, LAST_LAYER] != 0).all())


@pytest.mark.parametrize("structure", STRUCTURES)
def test_tangents_scale_and_reproducibility(mlp_problem, structure):
    obj, theta, _ = mlp_problem
    post = fit_laplace(obj, theta, structure, prior_precision=2.0)
    classes = [FullLaplace, DiagLaplace, KronLaplace, LastLayerLaplace]
    assert type(post) is classes[STRUCTURES.index(structure)]
    tangent = post.sample_tangent(4, torch.Generator().manual_seed(1))
    samples = post.sample(4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples - post.mean, tangent, rtol=0, atol=1e-15)
    half = post.sample_tangent(4, torch.Generator().manual_seed(1), scale=0.5)
    torch.testing.assert_close(half, 0.5 * tangent)
    post.scale = 0.5
    torch.testing.assert_close(post.sample_tangent(4, torch.Generator().manual_seed(1)), half)
    evidence = post.log_marginal_likelihood()
    post.scale = 3.0
    assert post.log_marginal_likelihood() == evidence  # α leaves the posterior's L alone


def test_optimal_prior_precision_closed_form():
    # Two equal eigenvalues e: γ = 2e/(e + λ) = λ s has the positive root below.
    e, s = 3.0, 0.5
    expected = (-e + math.sqrt(e**2 + 8 * e / s)) / 2
    got = optimal_prior_precision(torch.tensor([e, e]), s)
    assert got == pytest.approx(expected, rel=1e-12)


def test_bad_input_gets_a_clear_error(mlp_problem):
    obj, theta, _ = mlp_problem
    with pytest.raises(ValueError, match="unknown structure 'kron'"):
        fit_laplace(obj, theta, "kron")
    with pytest.raises(ValueError, match="prior_precision"):
        fit_laplace(obj, theta, "diag", prior_precision=0.0)
    with pytest.raises(ValueError, match="scale"):
        fit_laplace(obj, theta, "diag", 1.0, scale=-1.0)
    with pytest.raises(ValueError, match="theta has 3 entries"):
        fit_laplace(obj, theta[:3], "diag")
    with pytest.raises(ValueError, match="NaN"):
        fit_laplace(obj, torch.full_like(theta, float("nan")), "diag")
    with pytest.raises(TypeError, match="RegressionObjective"):
        fit_laplace(obj.model, theta, "diag")
    post = fit_laplace(obj, theta, "diag", 1.0)
    with pytest.raises(ValueError, match="prior_precision"):
        post.log_marginal_likelihood(-1.0)
    with pytest.raises(TypeError, match="n must be an int"):
        post.sample(2.5)
    z, y = regression_data()
    normed = RegressionObjective(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), z, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="nn.Linear layer"):
        fit_laplace(normed, parameters_vector(normed.model), "kfac")
    with pytest.raises(ValueError, match="GGN is zero"):
        optimal_prior_precision(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="theta_sq_norm"):
        optimal_prior_precision(torch.ones(3), 0.0)


@cuda
@pytest.mark.parametrize("structure", STRUCTURES)
def test_cuda_follows_the_objective(mlp_problem, structure):
    obj, theta, _ = mlp_problem
    gpu = RegressionObjective(obj.model, obj.inputs.cuda(), obj.targets.cuda(), SIGMA.cuda(), 1.0)
    post = fit_laplace(gpu, theta.cuda(), structure, prior_precision=2.0)
    reference = fit_laplace(obj, theta, structure, prior_precision=2.0)
    samples = post.sample(3, torch.Generator().manual_seed(0))
    assert samples.device.type == "cuda" and post.sample(2).device.type == "cuda"
    torch.testing.assert_close(post.variance.cpu(), reference.variance)
    assert post.log_marginal_likelihood() == pytest.approx(reference.log_marginal_likelihood())


# -- a prior centred away from zero ------------------------------------------------------------


def test_prior_mean_gives_the_closed_form_posterior_and_evidence():
    """θ ~ N(m, λ⁻¹I): the posterior mean is P⁻¹(JᵀΣ⁻¹y + λm), and the evidence is that of the
    zero-mean problem for the shifted targets y − f_m(z)."""
    z, y = regression_data(seed=3)
    lam = 1.7
    gen = torch.Generator().manual_seed(4)
    m = torch.randn(8, generator=gen, dtype=torch.float64)  # [W (2x3) row-major, b (2)]
    obj = RegressionObjective(nn.Linear(3, 2), z, y, SIGMA, lam, prior_mean=m)
    theta, record = refine_map(obj, torch.zeros(8, dtype=torch.float64), gtol=1e-12)
    assert record.converged
    f_m = z @ m[:6].view(2, 3).T + m[6:]
    shifted_mean, precision, evidence = linear_regression_truth(z, y - f_m, SIGMA, lam)
    torch.testing.assert_close(theta, shifted_mean + m, rtol=0, atol=1e-8)
    post = fit_laplace(obj, theta, "full", prior_precision=lam)
    torch.testing.assert_close(post.covariance(), torch.linalg.inv(precision), rtol=1e-8, atol=0)
    assert post.log_marginal_likelihood() == pytest.approx(evidence, rel=1e-8)
    # tuning λ uses ‖θ* − m‖², so it matches the zero-mean problem of the shifted targets
    zero_mean = RegressionObjective(nn.Linear(3, 2), z, y - f_m, SIGMA, lam)
    tuned = fit_laplace(obj, theta, "full").prior_precision
    reference = fit_laplace(zero_mean, theta - m, "full").prior_precision
    assert tuned == pytest.approx(reference, rel=1e-8)


def test_evidence_optimum_is_the_type_two_maximiser_of_bayesian_linear_regression():
    """For a linear model with prior N(m, λ⁻¹I) the exact evidence's derivative in λ equals the
    Laplace evidence's at the re-optimised θ*(λ) (envelope theorem), so at the exact maximiser
    λ̂ the Laplace optimum with θ*(λ̂) held fixed is λ̂ again. It uses ‖θ* − m‖², not ‖θ*‖²."""
    from scipy.optimize import minimize_scalar

    z, y = regression_data(seed=6)
    m = torch.randn(8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    f_m = z @ m[:6].view(2, 3).T + m[6:]

    def exact(log_lam):  # evidence of y under prior N(m, λ⁻¹I) = zero-mean problem for y − f_m
        return -linear_regression_truth(z, y - f_m, SIGMA, math.exp(log_lam))[2]

    best = math.exp(minimize_scalar(exact, bounds=(-8, 8), method="bounded",
                                    options={"xatol": 1e-10}).x)
    obj = RegressionObjective(nn.Linear(3, 2), z, y, SIGMA, best, prior_mean=m)
    theta = linear_regression_truth(z, y - f_m, SIGMA, best)[0] + m
    post = fit_laplace(obj, theta, "full", prior_precision=best)
    assert post.evidence_optimum() == pytest.approx(best, rel=1e-6)
    gamma = float((post._eigenvalues / (post._eigenvalues + best)).sum())
    assert best == pytest.approx(gamma / float((theta - m).square().sum()), rel=1e-6)
    assert abs(gamma / float(theta.square().sum()) / best - 1) > 0.1  # ‖θ*‖² would be wrong
