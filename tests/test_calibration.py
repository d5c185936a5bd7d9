"""Calibration: the search hits known targets of synthetic methods, scores on fresh draws."""

import math

import pytest
import torch

from rbmem_tutorial.laplace import calibrate, calibrate_scale
from rbmem_tutorial.memorisation import memorised_fraction

SCALES = [0.02 * 1.06**k for k in range(100)]


@pytest.mark.parametrize("target", [0.55, 0.45, 0.30, 0.12])
def test_decreasing_knob_hits_each_target(target):
    visited = []

    def fraction(a):
        visited.append(a)
        return 0.6 * math.exp(-a)  # the memorised fraction of a synthetic posterior

    found = calibrate(fraction, target, SCALES, tolerance=0.01)
    assert found.reached and found.reason == "reached"
    assert abs(found.achieved - target) <= 0.01
    assert found.achieved == pytest.approx(0.6 * math.exp(-found.knob))
    assert len(visited) <= math.ceil(math.log2(len(SCALES))) + 2  # bisection, each knob once
    assert len(set(visited)) == len(visited)


def test_increasing_knob_early_stopping():
    steps = list(range(50, 10_001, 50))
    found = calibrate(lambda s: 0.65 * (1 - math.exp(-s / 800)), 0.30, steps,
                      increasing=True)
    exact = -800 * math.log(1 - 0.30 / 0.65)
    assert found.reached and abs(found.achieved - 0.30) <= 0.02
    assert abs(found.knob - exact) < 100


def test_out_of_range_both_ways():
    below = calibrate(lambda a: 0.4 * math.exp(-a), 0.45, SCALES)  # never memorises 0.45
    pinned = calibrate(lambda a: 0.6 - 0.001 * a, 0.30, SCALES)  # never copies less
    assert (below.reached, below.reason) == (False, "out of range")
    assert (pinned.reached, pinned.reason) == (False, "out of range")
    assert pinned.knob == max(SCALES)  # the closest end is reported


def test_refine_crosses_a_coarse_jump():
    def fraction(a):  # jumps from 0.5 to 0.1 between 1.0 and 2.0 on a coarse grid
        return 0.5 if a < 1.0 else 0.5 - 0.4 * min(a - 1.0, 1.0)

    coarse = [0.5, 1.0, 2.0, 3.0]
    plain = calibrate(fraction, 0.30, coarse)
    assert (plain.reached, plain.reason) == (False, "resolution")
    found = calibrate(fraction, 0.30, coarse, refine=lambda a, b: 0.5 * (a + b),
                      max_refine=6)
    assert found.reached and abs(found.achieved - 0.30) <= 0.02


def test_scores_on_independent_draws():
    """A synthetic sampler that copies training points with a known probability: the knob
    found on calibration draws gives the target on fresh draws too (up to sampling noise)."""
    train = torch.tensor([[4.0 * i, 0.0] for i in range(8)])

    def draws(knob, seed, n=4000):
        g = torch.Generator().manual_seed(seed)
        copy = torch.rand(n, generator=g) < math.exp(-knob)  # P(copy) = e^-knob
        points = train[torch.randint(8, (n,), generator=g)]
        spread = torch.randn(n, 2, generator=g) * 1.5
        return torch.where(copy[:, None], points + 0.01 * spread, points + spread)

    found = calibrate(lambda k: memorised_fraction(draws(k, seed=1), train), 0.30, SCALES)
    assert found.reached
    calibration, fresh = draws(found.knob, seed=1), draws(found.knob, seed=2)
    assert not torch.equal(calibration, fresh)
    assert abs(memorised_fraction(fresh, train) - 0.30) < 0.02 + 3 * math.sqrt(0.21 / 4000)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="target"):
        calibrate(lambda a: 0.5, 1.5, SCALES)
    with pytest.raises(ValueError, match="knobs"):
        calibrate(lambda a: 0.5, 0.3, [1.0])
    with pytest.raises(ValueError, match="strictly between"):
        calibrate(lambda a: 0.5 if a < 1.5 else 0.0, 0.3, [1.0, 2.0],
                  refine=lambda a, b: b)


def test_calibrate_scale_gives_each_sample_its_own_noise(monkeypatch):
    import rbmem_tutorial.laplace.calibration as calibration

    seen = []
    original = calibration.generate
    monkeypatch.setattr(calibration, "generate",
                        lambda *a, **k: (seen.append(a[2]), original(*a, **k))[1])
    class Still(torch.nn.Module):  # u(x, t) = 0: every sample stays at its noise
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(6))

        def forward(self, x, t):
            return x * self.weight[0]

    train = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    found = calibrate_scale(Still(), train, lambda s: torch.zeros(4, 6), 0.3, [0.5, 1.0],
                            points=64)
    assert found.reason == "out of range"  # pure noise memorises little
    assert all(x0.shape == (4, 16, 2) for x0 in seen)  # one noise set per weight sample
    start = seen[0].reshape(-1, 2)
    assert len(torch.unique(start, dim=0)) == 64  # no x0 shared between weight samples
    assert all(torch.equal(x0, seen[0]) for x0 in seen)  # the same draws at every scale


@pytest.mark.usefixtures("private_cache")
def test_docstring_examples_run():
    import doctest

    from rbmem_tutorial.experiments import matched_stats, replicates
    from rbmem_tutorial.laplace import calibration
    from rbmem_tutorial.memorisation import coverage, distances, quality

    for module in (calibration, matched_stats, replicates, distances, coverage, quality):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
