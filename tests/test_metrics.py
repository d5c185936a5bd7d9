"""Tests for rbmem_tutorial.memorisation.distances: sample quality against held-out data."""

import math

import pytest
import scipy.stats
import torch

from rbmem_tutorial.memorisation import (
    GeneralisationGap,
    default_bandwidths,
    energy_distance,
    generalisation_gap,
    held_out_log_likelihood,
    median_heuristic,
    mmd2,
    precision_recall,
    quality_report,
    sliced_wasserstein,
)


def pairwise(a, b):
    return (a.double()[:, None, :] - b.double()[None, :, :]).pow(2).sum(-1).sqrt()


def test_mmd2_matches_the_unbiased_formula(generator):
    x = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    y = 0.5 + torch.randn(5, 3, generator=generator, dtype=torch.float64)
    h = [0.7, 2.0]

    def k(a, b):
        d2 = pairwise(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in h) / len(h)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    truth = (
        (kxx.sum() - kxx.trace()) / (7 * 6)
        + (kyy.sum() - kyy.trace()) / (5 * 4)
        - 2 * kxy.mean()
    )
    assert mmd2(x, y, h) == pytest.approx(truth.item(), rel=1e-12)


def test_mmd2_of_one_distribution_is_zero_on_average(generator):
    values = torch.tensor(
        [mmd2(torch.randn(100, 3, generator=generator), torch.randn(100, 3, generator=generator))
         for _ in range(30)]
    )
    assert abs(values.mean().item()) < 3 * values.std().item() / math.sqrt(30)
    assert (values < 0).any()  # unbiased: negative values occur; a biased estimate never is


def test_default_bandwidths_come_from_the_reference_median():
    y = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances 5, 5, 10
    assert median_heuristic(y) == 5.0
    assert default_bandwidths(y) == [1.25, 2.5, 5.0, 10.0, 20.0]
    with pytest.raises(ValueError, match="median pairwise distance of 0"):
        median_heuristic(torch.zeros(4, 2))


def test_distances_grow_as_one_gaussian_is_shifted(generator):
    y = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    base = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    h = default_bandwidths(y)
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    scores = {"mmd2": [], "energy": [], "sw": []}
    for s in shifts:
        x = base + torch.tensor([s, 0.0], dtype=torch.float64)
        scores["mmd2"].append(mmd2(x, y, h))
        scores["energy"].append(energy_distance(x, y))
        seed = torch.Generator().manual_seed(1)
        scores["sw"].append(sliced_wasserstein(x, y, n_projections=64, generator=seed))
    for name, values in scores.items():
        assert all(a < b for a, b in zip(values, values[1:], strict=False)), (name, values)


def test_energy_distance_matches_brute_force(generator):
    x = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    y = 1 + torch.randn(6, 4, generator=generator, dtype=torch.float64)
    dxx, dyy, dxy = pairwise(x, x), pairwise(y, y), pairwise(x, y)
    unbiased = 2 * dxy.mean() - dxx.sum() / (9 * 8) - dyy.sum() / (6 * 5)
    v_stat = 2 * dxy.mean() - dxx.mean() - dyy.mean()
    assert energy_distance(x, y) == pytest.approx(unbiased.item(), rel=1e-12)
    assert energy_distance(x, y, unbiased=False) == pytest.approx(v_stat.item(), rel=1e-12)


def test_energy_distance_agrees_with_scipy_in_one_dimension(generator):
    x = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    y = 0.3 + 2 * torch.randn(25, 1, generator=generator, dtype=torch.float64)
    ours = math.sqrt(energy_distance(x, y, unbiased=False))
    assert ours == pytest.approx(scipy.stats.energy_distance(x[:, 0], y[:, 0]), rel=1e-10)


def test_energy_distance_of_shifted_normals_matches_closed_form(generator):
    """N(0,1) vs N(1,1): 2E|N(1,2)| - 2E|N(0,2)|, with E|N(μ,σ²)| = σ√(2/π)e^{-μ²/2σ²} + μ erf."""
    s = math.sqrt(2)

    def mean_abs(mu):
        return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(
            mu / (s * math.sqrt(2))
        )

    truth = 2 * mean_abs(1.0) - 2 * mean_abs(0.0)
    estimates = [
        energy_distance(torch.randn(1000, 1, generator=generator),
                        1 + torch.randn(1000, 1, generator=generator))
        for _ in range(20)
    ]
    assert sum(estimates) / 20 == pytest.approx(truth, abs=0.04)  # 3.5 standard errors


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("dim", [2, 5])
def test_sliced_wasserstein_of_a_shifted_sample_is_exact(generator, p, dim):
    """Shifting a sample by δe₁ moves each projection by δθ₁ without reordering it."""
    x = torch.randn(500, dim, generator=generator, dtype=torch.float64)
    delta = 1.5
    y = x.clone()
    y[:, 0] += delta
    seed = torch.Generator().manual_seed(3)
    sw = sliced_wasserstein(x, y, n_projections=2000, p=p, generator=seed)
    theta = torch.randn(dim, 2000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    theta1 = theta[0] / theta.norm(dim=0)
    assert sw == pytest.approx((delta * theta1.abs()).pow(p).mean().item() ** (1 / p), rel=1e-10)
    # Population value: E|θ₁| = Γ(d/2) / (√π Γ((d+1)/2)) and E θ₁² = 1/d.
    mean_abs = math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)
    population = delta * mean_abs if p == 1 else delta / math.sqrt(dim)
    assert sw == pytest.approx(population, rel=0.05)


def test_sliced_wasserstein_with_unequal_sizes(generator):
    x = torch.randn(13, 1, generator=generator, dtype=torch.float64)
    y = 0.4 + 3 * torch.rand(8, 1, generator=generator, dtype=torch.float64)
    # In 1-D every direction is ±1, and W_p does not care about the sign.
    w1 = sliced_wasserstein(x, y, n_projections=3, p=1.0, generator=generator)
    assert w1 == pytest.approx(scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-12)
    # W2 of uniform empirical measures equals W2 of the samples repeated to a common size.
    xs, ys = x[:, 0].repeat(8).sort().values, y[:, 0].repeat(13).sort().values
    w2 = (xs - ys).pow(2).mean().sqrt().item()
    assert sliced_wasserstein(x, y, n_projections=3, generator=generator) == pytest.approx(
        w2, rel=1e-12
    )


def test_precision_recall_matches_brute_force(generator):
    real = torch.randn(30, 2, generator=generator, dtype=torch.float64)
    fake = 0.7 + torch.randn(25, 2, generator=generator, dtype=torch.float64)
    k = 3

    def radii(a):
        return pairwise(a, a).sort(dim=1).values[:, k]  # column 0 is the point itself

    precision = (pairwise(fake, real) <= radii(real)[None]).any(1).double().mean().item()
    recall = (pairwise(real, fake) <= radii(fake)[None]).any(1).double().mean().item()
    assert precision_recall(fake, real, k) == (precision, recall)
    assert 0 < precision < 1 and 0 < recall < 1


def test_precision_recall_extremes_and_nested_supports(generator):
    real = torch.rand(1000, 2, generator=generator)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real + 10, real) == (0.0, 0.0)
    half = torch.rand(1000, 2, generator=generator) * torch.tensor([0.5, 1.0])
    precision, recall = precision_recall(half, real)
    assert precision > 0.94  # inside the real support, up to its jagged boundary
    assert 0.45 < recall < 0.6  # covers half of it, plus the balls' overhang


def test_generalisation_gap_tells_copies_from_fresh_samples(generator):
    train = torch.randn(200, 2, generator=generator)
    test = torch.randn(200, 2, generator=generator)
    copies = train + 1e-3 * torch.randn(200, 2, generator=generator)
    fresh = torch.randn(300, 2, generator=generator)
    assert generalisation_gap(copies, train, test).ratio < 0.02
    assert 0.85 < generalisation_gap(fresh, train, test).ratio < 1.15


def test_generalisation_gap_matches_brute_force_and_subsamples_the_larger_set(generator):
    generated = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    train = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    test = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    gap = generalisation_gap(generated, train, test)
    near_train = pairwise(generated, train).min(1).values.mean().item()
    near_test = pairwise(generated, test).min(1).values.mean().item()
    assert gap == pytest.approx(GeneralisationGap(near_train, near_test, near_train / near_test))
    big_test = torch.randn(80, 3, generator=generator, dtype=torch.float64)
    seeded, again = (
        generalisation_gap(generated, train, big_test, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    )
    assert seeded == again
    assert seeded.train == pytest.approx(near_train)
    full = pairwise(generated, big_test).min(1).values.mean().item()
    assert seeded.test > full  # subsets of 8 points lie farther than all 80


def test_quality_report_gathers_the_measures_and_a_baseline(generator):
    test = torch.randn(60, 2, generator=generator)
    train = torch.randn(60, 2, generator=generator)
    fake = 1 + torch.randn(60, 2, generator=generator)
    true = torch.randn(60, 2, generator=generator)
    rep = quality_report(fake, test, train, true_samples=true,
                         generator=torch.Generator().manual_seed(2))
    assert rep.mmd2 == mmd2(fake, test)
    assert rep.energy == energy_distance(fake, test)
    assert rep.sliced_wasserstein == sliced_wasserstein(
        fake, test, generator=torch.Generator().manual_seed(2)
    )
    assert (rep.precision, rep.recall) == precision_recall(fake, test)
    assert rep.gap == generalisation_gap(fake, train, test)
    assert rep.baseline.mmd2 == mmd2(true, test) < rep.mmd2
    row = rep.as_dict()
    assert row["gap_ratio"] == rep.gap.ratio and row["baseline_recall"] == rep.baseline.recall
    assert rep.baseline.baseline is None
    assert set(quality_report(fake, test).as_dict()) == {
        "mmd2", "energy", "sliced_wasserstein", "precision", "recall"
    }


def test_held_out_log_likelihood_of_closed_form_flows():
    """u = b moves N(0, I) to N(b, I); u = 0 leaves it there."""
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def log_normal(points, mean):
        return (-0.5 * (points - mean).pow(2).sum(1) - math.log(2 * math.pi)).mean().item()

    def still(z, t):
        return torch.zeros_like(z)

    def drift(z, t):
        return b.expand_as(z)

    zero = torch.zeros(2, dtype=torch.float64)
    assert held_out_log_likelihood(still, x) == pytest.approx(log_normal(x, zero), abs=1e-6)
    assert held_out_log_likelihood(drift, x, rtol=1e-7, atol=1e-7) == pytest.approx(
        log_normal(x, b), abs=1e-5
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: mmd2(torch.zeros(3, 2), torch.zeros(3, 3)), ValueError, "same number of columns"),
        (lambda: mmd2(torch.zeros(1, 2), torch.randn(3, 2)), ValueError, "at least 2 row"),
        (lambda: mmd2(torch.randn(3, 2), torch.randn(3, 2), []), ValueError, "empty"),
        (lambda: mmd2(torch.randn(3, 2), torch.randn(3, 2), [-1.0]), ValueError, "bandwidths"),
        (lambda: energy_distance(torch.full((3, 2), math.nan), torch.randn(3, 2)), ValueError,
         "NaN"),
        (lambda: sliced_wasserstein(torch.randn(3, 2), torch.randn(3, 2), p=0.5), ValueError,
         "at least 1"),
        (lambda: sliced_wasserstein(torch.randn(3, 2), torch.randn(3, 2), n_projections=0),
         ValueError, "n_projections"),
        (lambda: precision_recall(torch.randn(3, 2), torch.randn(9, 2)), ValueError,
         "at least 4 row"),
        (lambda: generalisation_gap(torch.randn(3, 2), torch.randn(1, 2), torch.randn(5, 2)),
         ValueError, "at least 2 row"),
        (lambda: generalisation_gap(torch.eye(2), torch.randn(2, 2), torch.eye(2)), ValueError,
         "coincides"),
        (lambda: mmd2(torch.zeros(3, 2, dtype=torch.long), torch.randn(3, 2)), TypeError,
         "floating"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
