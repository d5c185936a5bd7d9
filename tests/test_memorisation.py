"""Tests for rbmem_tutorial.memorisation: exact nearest / second-nearest search and ratio test."""

import math

import pytest
import torch

from rbmem_tutorial.memorisation import (
    NearestTwo,
    is_memorised,
    memorisation_ratio,
    memorisation_report,
    memorised_fraction,
    nearest_two,
)
from rbmem_tutorial.memorisation import ratio as mem

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def brute_force(generated, train):
    """Float64 distances from differences, sorted per row: (values, indices)."""
    diff = generated.double()[:, None, :] - train.double()[None, :, :]
    return diff.pow(2).sum(-1).sqrt().sort(dim=1)


@pytest.mark.parametrize("dim", [1, 2, 7, 64])
@pytest.mark.parametrize("chunk_size", [None, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_brute_force(generator, dim, chunk_size, dtype):
    train = torch.randn(41, dim, generator=generator, dtype=torch.float64).to(dtype)
    generated = torch.randn(23, dim, generator=generator, dtype=torch.float64).to(dtype)
    nt = nearest_two(generated, train, chunk_size)
    values, indices = brute_force(generated, train)
    torch.testing.assert_close(nt.d1, values[:, 0], rtol=1e-12, atol=0)
    torch.testing.assert_close(nt.d2, values[:, 1], rtol=1e-12, atol=0)
    assert torch.equal(nt.i1, indices[:, 0]) and torch.equal(nt.i2, indices[:, 1])
    assert nt.d1.dtype == torch.float64 and nt.i1.dtype == torch.int64


def test_half_precision_inputs_are_screened_in_float32(generator):
    train = torch.randn(30, 5, generator=generator).half()
    generated = torch.randn(10, 5, generator=generator).half()
    nt = nearest_two(generated, train)
    values, indices = brute_force(generated, train)
    torch.testing.assert_close(nt.d1, values[:, 0], rtol=1e-12, atol=0)
    assert torch.equal(nt.i2, indices[:, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_planted_near_duplicates_give_exact_ratios(generator, dtype, offset):
    train = (offset + torch.randn(200, 64, generator=generator, dtype=torch.float64)).to(dtype)
    noise = 1e-6 * torch.randn(20, 64, generator=generator, dtype=torch.float64)
    generated = (train[:20].double() + noise).to(dtype)
    values, indices = brute_force(generated, train)
    truth = values[:, 0] / values[:, 1]
    assert bool((values[:, 0] > 0).all())  # the copies are not bit-identical
    ratio = memorisation_ratio(generated, train)
    torch.testing.assert_close(ratio, truth, rtol=1e-6, atol=0)
    assert torch.equal(nearest_two(generated, train).i1, indices[:, 0])
    # The float32 product form alone is badly wrong here, so this test can tell the two apart.
    naive = torch.cdist(generated.float(), train.float(), compute_mode="use_mm_for_euclid_dist")
    naive = naive.double().sort(dim=1).values
    assert ((naive[:, 0] / naive[:, 1] - truth).abs() / truth).max() > 1e-2


def test_rows_the_float32_screen_gets_wrong_are_redone_in_float64(generator):
    """Points on a unit shell far from the training mean: float32 rounding exceeds the gaps."""
    dirs = torch.randn(100, 32, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    radii = 1 + 1e-3 * torch.randperm(100, generator=generator).double()
    far = torch.zeros(32, dtype=torch.float64)
    far[0] = 1000.0
    near_origin = torch.randn(100, 32, generator=generator, dtype=torch.float64)
    train = torch.cat([far + dirs * radii[:, None], near_origin]).float()
    generated = (far + 1e-3 * torch.randn(3, 32, generator=generator, dtype=torch.float64)).float()
    values, indices = brute_force(generated, train)
    _, screened, certified = mem._search(generated, train, 2, 2048, torch.float32)
    assert not bool(certified.any())
    assert not torch.equal(screened[:, 0], indices[:, 0])  # float32 alone picks wrong points
    nt = nearest_two(generated, train, candidates=2)
    torch.testing.assert_close(nt.d2, values[:, 1], rtol=1e-12, atol=0)
    assert torch.equal(nt.i1, indices[:, 0]) and torch.equal(nt.i2, indices[:, 1])


def test_reduced_precision_matmuls_are_still_exact(generator):
    """Under TF32/bfloat16 float32 matmuls the bound widens and uncertain rows are redone."""
    train = torch.randn(300, 64, generator=generator)
    generated = torch.cat([train[:10] + 1e-6, torch.randn(30, 64, generator=generator)])
    values, indices = brute_force(generated, train)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert mem._unit_roundoff(torch.float32) == 2.0**-8
        nt = nearest_two(generated, train)
    finally:
        torch.set_float32_matmul_precision(previous)
    torch.testing.assert_close(nt.d2, values[:, 1], rtol=1e-12, atol=0)
    assert torch.equal(nt.i1, indices[:, 0])


def test_memory_stays_within_one_chunk_block(generator, monkeypatch):
    blocks = []
    addmm = torch.addmm

    def spy(*args, **kwargs):
        out = addmm(*args, **kwargs)
        blocks.append(out.shape)
        return out

    monkeypatch.setattr(torch, "addmm", spy)
    nearest_two(torch.randn(50, 3, generator=generator), torch.randn(70, 3, generator=generator), 8)
    assert len(blocks) == math.ceil(50 / 8) * math.ceil(70 / 8)
    assert max(rows * cols for rows, cols in blocks) <= 64


def test_single_point_and_two_training_points():
    train = torch.tensor([[3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    nt = nearest_two(torch.zeros(1, 2, dtype=torch.float64), train)
    assert nt == NearestTwo(*nt)  # a plain NamedTuple
    assert (nt.d1.item(), nt.d2.item(), nt.i1.item(), nt.i2.item()) == (5.0, 10.0, 0, 1)
    assert memorisation_ratio(torch.zeros(1, 2), train.float()).item() == 0.5


def test_ties_between_training_points():
    train = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    nt = nearest_two(torch.zeros(1, 2), train)
    assert (nt.d1.item(), nt.d2.item()) == (1.0, 1.0)
    assert {nt.i1.item(), nt.i2.item()} == {0, 1}
    assert memorisation_ratio(torch.zeros(1, 2), train).item() == 1.0


def test_duplicated_training_point_gives_ratio_one():
    """A copy of a point that appears twice has d1 = d2 = 0; the ratio is defined as 1."""
    train = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    assert memorisation_ratio(torch.zeros(1, 2), train).item() == 1.0
    assert not is_memorised(torch.zeros(1, 2), train).item()
    assert not is_memorised(torch.zeros(1, 2), train, c=1 / 3).item()


def test_many_equidistant_points_beyond_the_candidates(generator):
    angles = 2 * math.pi * torch.arange(20, dtype=torch.float64) / 20
    train = torch.stack([angles.cos(), angles.sin()], 1).float()
    nt = nearest_two(torch.zeros(1, 2), train, candidates=2)
    values, _ = brute_force(torch.zeros(1, 2), train)
    torch.testing.assert_close(torch.stack([nt.d1, nt.d2], 1), values[:, :2], rtol=1e-12, atol=0)


def test_boundary_strict_ratio_and_non_strict_squared_form():
    train = torch.tensor([[0.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    on_quarter = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # d1 = 1, d2 = 4
    assert memorisation_ratio(on_quarter, train).item() == 0.25
    assert not is_memorised(on_quarter, train, 0.25).item()  # ratio < k is strict
    assert is_memorised(on_quarter, train, math.nextafter(0.25, 1)).item()
    assert is_memorised(on_quarter, train, c=1 / 16).item()  # d1² <= c d2² is not
    assert not is_memorised(on_quarter, train, c=math.nextafter(1 / 16, 0)).item()
    train = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    on_third = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # d1 = 1, d2 = 3
    assert not is_memorised(on_third, train).item()  # default k = 1/3, strict


def test_fraction_uses_the_chosen_threshold(generator):
    train = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    ratios_wanted = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    generated = torch.stack([4 * ratios_wanted / (1 + ratios_wanted), 0 * ratios_wanted], 1)
    ratios = memorisation_ratio(generated, train)
    torch.testing.assert_close(ratios, ratios_wanted.double(), rtol=1e-6, atol=0)
    assert memorised_fraction(generated, train) == 0.4
    assert memorised_fraction(generated, train, c=1 / 3) == 0.6  # ratio below 0.577
    assert memorised_fraction(generated, train, 0.8) == 0.8


@pytest.mark.parametrize(
    ("generated", "train", "error", "match"),
    [
        (torch.zeros(1, 2), torch.zeros(1, 2), ValueError, "at least 2 row"),
        (torch.zeros(1, 3), torch.zeros(4, 2), ValueError, "same number of columns"),
        (torch.tensor([[0.0, float("nan")]]), torch.zeros(4, 2), ValueError, "NaN"),
        (torch.zeros(1, 2), torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]), ValueError, "NaN"),
        (torch.zeros(2), torch.zeros(4, 2), ValueError, "2-D"),
        (torch.zeros(0, 2), torch.zeros(4, 2), ValueError, "at least 1 row"),
        (torch.zeros(1, 2, dtype=torch.long), torch.zeros(4, 2), TypeError, "floating"),
        ([[0.0, 0.0]], torch.zeros(4, 2), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(generated, train, error, match):
    with pytest.raises(error, match=match):
        nearest_two(generated, train)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.3, "c": 0.1}, "not both"),
        ({"threshold": 1.5}, r"\(0, 1\]"),
        ({"threshold": 0.0}, "positive"),
        ({"c": 2.0}, r"\(0, 1\]"),
        ({"c": -0.1}, "positive"),
    ],
)
def test_bad_thresholds_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        is_memorised(torch.zeros(1, 2), torch.eye(2), **kwargs)


def test_bad_search_settings_raise():
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_two(torch.zeros(1, 2), torch.eye(2), 0)
    with pytest.raises(ValueError, match="candidates"):
        nearest_two(torch.zeros(1, 2), torch.eye(2), candidates=1)


def test_inputs_that_require_grad_are_fine(generator):
    generated = torch.randn(5, 3, generator=generator, requires_grad=True)
    ratio = memorisation_ratio(generated, torch.randn(9, 3, generator=generator))
    assert not ratio.requires_grad


def make_report_data(n_copies, n_far):
    """Two training points; copies sit at ratio 1/39, far points at ratio 1."""
    train = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    copies = torch.tensor([[0.1, 0.0]], dtype=torch.float64).repeat(n_copies, 1)
    far = torch.tensor([[2.0, 0.0]], dtype=torch.float64).repeat(n_far, 1)
    return torch.cat([copies, far]), train


def test_report_fractions_counts_and_copies():
    train = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [9.0, 9.0]])
    generated = torch.tensor([[0.1, 0.0], [0.0, 0.1], [3.9, 0.0], [2.0, 2.0], [3.0, 0.0]])
    rep = memorisation_report(generated, train)
    ratios = memorisation_ratio(generated, train)
    torch.testing.assert_close(rep.ratios, ratios)
    assert rep.fraction_strict == memorised_fraction(generated, train) == 0.6
    assert rep.fraction_loose == memorised_fraction(generated, train, c=1 / 3) == 0.8
    assert rep.fraction == rep.fraction_strict
    assert rep.counts.tolist() == [2, 1, 0, 0]
    assert rep.copied_indices.tolist() == [0, 1]
    assert rep.fraction_at(c=1 / 3) == rep.fraction_loose
    assert rep.fraction_at(0.8) == memorised_fraction(generated, train, 0.8)
    assert rep.baseline is None
    loose = memorisation_report(generated, train, c=1 / 3)
    assert loose.counts.tolist() == [2, 2, 0, 0] and loose.fraction == 0.8


def test_report_baseline_for_true_samples():
    generated, train = make_report_data(3, 1)
    true_samples, _ = make_report_data(1, 3)
    rep = memorisation_report(generated, train, true_samples=true_samples)
    assert rep.fraction_strict == 0.75
    assert rep.baseline.fraction_strict == 0.25
    assert rep.baseline.baseline is None


def test_bootstrap_interval_matches_the_binomial_spread(generator):
    generated, train = make_report_data(1200, 2800)
    rep = memorisation_report(generated, train)
    lo, hi = rep.bootstrap_interval(generator=generator, n_boot=4000)
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 4000)
    assert lo < 0.3 < hi
    assert abs((hi - lo) / 2 - half) < 0.1 * half
    again = rep.bootstrap_interval(generator=torch.Generator().manual_seed(0), n_boot=4000)
    assert again == (lo, hi)
    lo90, hi90 = rep.bootstrap_interval(level=0.9, generator=generator)
    assert hi90 - lo90 < hi - lo
    with pytest.raises(ValueError, match="level"):
        rep.bootstrap_interval(level=1.0)


@needs_cuda
def test_cuda_matches_cpu(generator):
    train = torch.randn(300, 64, generator=generator)
    generated = torch.cat([train[:10] + 1e-6, torch.randn(90, 64, generator=generator)])
    cpu = nearest_two(generated, train, 64)
    gpu = nearest_two(generated.cuda(), train.cuda(), 64)
    assert gpu.d1.device.type == "cuda"
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=0)
