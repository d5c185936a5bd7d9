"""The trained-flow-to-posterior pipeline: one λ, a stationary θ*, and a faithful cache."""

import warnings

import pytest
import torch
from torch.func import functional_call

from rbmem_tutorial.cache import entry_path
from rbmem_tutorial.data import load_dataset
from rbmem_tutorial.flows import VelocityMLP, train_flow_matching
from rbmem_tutorial.laplace import (
    FlowPosterior,
    fit_flow_posterior,
    flow_matching_regression_set,
    parameters_vector,
    unflatten,
)


@pytest.fixture
def tiny_flow():
    torch.manual_seed(0)
    return VelocityMLP(2, hidden=(8,)), torch.randn(6, 2)


def test_one_lambda_and_a_stationary_mode(tiny_flow, tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, draws_per_point=4)
    assert fp.objective.prior_precision == fp.posterior.prior_precision
    assert fp.objective.num_examples == 6 * 4
    # θ* is refined on the objective that the posterior (and the geodesics) use
    assert float(fp.objective.grad(fp.theta_map).norm()) < 1e-4
    assert fp.refine_final.grad_norm_after < 1e-4
    assert fp.refine_first.loss_after <= fp.refine_first.loss_before
    assert torch.equal(fp.posterior.mean, fp.theta_map)


def test_cache_returns_the_same_posterior(tiny_flow, tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    net, train = tiny_flow
    first = fit_flow_posterior(net, train, draws_per_point=4)
    assert len(list(tmp_path.glob("posterior-*.pt"))) == 1
    again = fit_flow_posterior(net, train, draws_per_point=4)
    torch.testing.assert_close(again.theta_map, first.theta_map, rtol=0, atol=0)
    torch.testing.assert_close(again.posterior.variance, first.posterior.variance)
    # a different option is a different cache entry
    fit_flow_posterior(net, train, draws_per_point=4, prior_precision=3.0)
    assert len(list(tmp_path.glob("posterior-*.pt"))) == 2


def test_fixed_prior_precision_is_kept(tiny_flow, tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, draws_per_point=4, prior_precision=3.0, use_cache=False)
    assert fp.posterior.prior_precision == fp.objective.prior_precision == 3.0
    assert not list(tmp_path.glob("posterior-*.pt"))


def test_bad_options(tiny_flow):
    net, train = tiny_flow
    with pytest.raises(ValueError, match="draws_per_point"):
        fit_flow_posterior(net, train, draws_per_point=0)
    with pytest.raises(ValueError, match="initial_prior_precision"):
        fit_flow_posterior(net, train, initial_prior_precision=-1.0)


def test_weight_subset_posterior_is_restricted_and_stationary(tiny_flow, tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, draws_per_point=4, param_subset="last")
    assert fp.subset.names == ("net.2.weight", "net.2.bias")
    k = fp.subset.size
    assert fp.posterior.mean.shape == (k,) and fp.posterior.objective.num_params == k
    torch.testing.assert_close(fp.posterior.mean, fp.subset.restrict(fp.theta_map))
    assert float(fp.posterior.objective.grad(fp.posterior.mean).norm()) < 1e-4
    draws = fp.full(fp.posterior.sample(3, torch.Generator().manual_seed(0)))
    fixed = torch.ones(fp.theta_map.numel(), dtype=torch.bool)
    fixed[fp.subset.index] = False
    assert torch.equal(draws[:, fixed], fp.theta_map[fixed].expand(3, -1))
    # the subset is part of the cache key, and no subset keeps the full posterior
    full = fit_flow_posterior(net, train, draws_per_point=4)
    assert full.subset is None and full.posterior.mean.numel() == fp.theta_map.numel()
    assert len(list(tmp_path.glob("posterior-*.pt"))) == 2
    # chunking changes memory, not results
    chunked = fit_flow_posterior(net, train, draws_per_point=4, param_subset="last",
                                 chunk_size=3)
    torch.testing.assert_close(chunked.posterior.variance, fp.posterior.variance)


# -- prior mean, base point and λ tuning ---------------------------------------------------------

FAST = {"draws_per_point": 4, "refine_iterations": 200}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    return tmp_path


def test_zero_prior_mean_objective_is_the_hand_written_loss(tiny_flow, cache):
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, prior_mean="zero", **FAST)
    inputs, targets = flow_matching_regression_set(train, 4, 0)
    theta = fp.theta_map + 0.1
    params = unflatten(net, theta)
    out = functional_call(net.double(), params, (inputs[:, :-1], inputs[:, -1]))
    lam = fp.posterior.prior_precision
    by_hand = 0.5 * (out - targets).square().sum() / fp.noise_std**2 + 0.5 * lam * theta @ theta
    torch.testing.assert_close(fp.objective.value(theta), by_hand, rtol=1e-12, atol=0)
    assert fp.objective.prior_mean is None and fp.prior_mean == "zero"


def test_sgd_base_point_keeps_the_gradient(tiny_flow, cache):
    net, train = tiny_flow
    refined = fit_flow_posterior(net, train, **FAST)
    fp = fit_flow_posterior(net, train, base_point="sgd", **FAST)
    assert torch.equal(fp.theta_map, fp.theta_sgd) and torch.equal(fp.posterior.mean, fp.theta_sgd)
    slope = float(fp.objective.grad(fp.theta_sgd).norm())
    assert fp.base_grad_norm == pytest.approx(slope, rel=1e-12) and slope > 1e-2
    assert fp.posterior.gradient_norm == pytest.approx(slope, rel=1e-12)
    # λ is tuned at the refined θ*, as for the refined base point
    assert fp.posterior.prior_precision == refined.posterior.prior_precision
    torch.testing.assert_close(fp.theta_refined, refined.theta_map, rtol=0, atol=0)
    assert refined.base_grad_norm < 1e-4 and torch.equal(refined.theta_refined, refined.theta_map)


def test_tilted_base_point_is_stationary_with_the_untilted_hessian(tiny_flow, cache):
    net, train = tiny_flow
    drift = fit_flow_posterior(net, train, base_point="sgd", **FAST)
    fp = fit_flow_posterior(net, train, base_point="tilted", **FAST)
    assert torch.equal(fp.theta_map, fp.theta_sgd)
    assert float(fp.objective.grad(fp.theta_sgd).norm()) < 1e-10
    assert fp.posterior.gradient_norm < 1e-10
    assert fp.base_grad_norm == pytest.approx(drift.base_grad_norm, rel=1e-12)
    theta = fp.theta_sgd + 0.05 * torch.randn(fp.theta_sgd.shape, dtype=torch.float64)
    v = torch.randn(2, theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(fp.objective.grad_and_hvp(theta, v)[1],
                               drift.objective.grad_and_hvp(theta, v)[1], rtol=1e-10, atol=1e-10)
    # the same Hessian at θ_SGD gives the same Laplace posterior as the untilted loss there
    torch.testing.assert_close(fp.posterior.variance, drift.posterior.variance)


def test_a_given_lambda_at_the_sgd_weights_needs_no_refinement(tiny_flow, cache):
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, base_point="sgd", prior_mean="zero",
                            prior_precision=2.0, **FAST)
    assert fp.refine_first is None and fp.refine_final is None and fp.theta_refined is None
    assert fp.objective.prior_precision == fp.posterior.prior_precision == 2.0
    assert not list(cache.glob("posterior-*.pt"))


def test_fixed_point_tuning_ends_where_lambda_maximises_the_evidence(cache):
    """Under a zero-mean prior, on a briefly trained net, tuning and refining in turn settles
    where λ maximises the evidence at the θ* refined at that λ (within the 1% rule)."""
    torch.manual_seed(0)
    net = VelocityMLP(2, hidden=(8,))
    train, _ = load_dataset("moons", 30, 10, 0)
    train_flow_matching(net, train, 300, 64, 1e-2, 0, progress=False)
    fp = fit_flow_posterior(net, train, prior_mean="zero", tune="fixed-point", **FAST)
    assert 3 <= len(fp.tune_history) < 10
    last = fp.tune_history[-1]
    lam = fp.posterior.prior_precision
    assert last["refined_at"] == lam and abs(last["evidence_optimum"] / lam - 1) < 0.01
    assert fp.posterior.evidence_optimum() == pytest.approx(last["evidence_optimum"], rel=1e-9)
    assert fp.refine_final.grad_norm_after < 1e-4
    once = fit_flow_posterior(net, train, prior_mean="zero", **FAST)
    assert len(once.tune_history) == 2
    assert once.tune_history[1]["refined_at"] == once.posterior.prior_precision


def test_every_option_has_its_own_cache_entry(tiny_flow, cache):
    net, train = tiny_flow
    legacy = {"theta": parameters_vector(net).double(), "train": train, "structure": "diag",
              "K": 16, "seed": 0, "lambda": None, "lambda0": 1.0, "prior_mean": "theta_sgd"}
    fit_flow_posterior(net, train)  # the default key record is the one of earlier versions
    assert entry_path("posterior", legacy).exists()
    combos = [{"prior_mean": p, "base_point": b} for p in ("sgd", "zero")
              for b in ("refined", "sgd", "tilted")]
    combos.append({"tune": "fixed-point", "max_tune_rounds": 2})
    combos.append({"tune": "fixed-point", "max_tune_rounds": 3})
    for combo in combos:
        before = set(cache.glob("posterior-*.pt"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_flow_posterior(net, train, **combo)
        assert len(set(cache.glob("posterior-*.pt")) - before) == (combo != combos[0]), combo


def test_a_damaged_cache_entry_is_named_moved_aside_and_recomputed(tiny_flow, cache, capsys):
    net, train = tiny_flow
    first = fit_flow_posterior(net, train, **FAST)
    (path,) = cache.glob("posterior-*.pt")
    path.write_bytes(path.read_bytes()[:100])
    again = fit_flow_posterior(net, train, **FAST)
    assert f"cache entry {path} is damaged" in capsys.readouterr().err
    torch.testing.assert_close(again.theta_map, first.theta_map, rtol=0, atol=0)
    assert len(list(cache.glob("posterior-*.pt.damaged"))) == 1 and path.exists()


@pytest.mark.parametrize("bad, match", [
    ({"prior_mean": "theta"}, "prior_mean"), ({"base_point": "map"}, "base_point"),
    ({"tune": "twice"}, "tune"), ({"structure": "block"}, "structure"),
    ({"tune": "fixed-point", "prior_precision": 2.0}, "prior_precision"),
    ({"max_tune_rounds": 1}, "max_tune_rounds"), ({"newton_steps": -1}, "newton_steps"),
    ({"param_subset": "nothing*"}, "nothing"),
])
def test_bad_values_are_rejected_before_any_work(tiny_flow, monkeypatch, bad, match):
    import rbmem_tutorial.laplace.pipeline as pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(pipeline, "flow_matching_regression_set", no_work)
    net, train = tiny_flow
    with pytest.raises(ValueError, match=match):
        fit_flow_posterior(net, train, **bad)


# -- save and load ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"structure": "diag"}, {"structure": "kfac"}, {"structure": "full"},
    {"structure": "diag", "param_subset": "last", "base_point": "tilted", "prior_mean": "zero"},
])
def test_a_saved_posterior_loads_without_the_cache_and_samples_the_same(tiny_flow, cache,
                                                                        options):
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, use_cache=False, **FAST, **options)
    path = cache / "shared" / "posterior.pt"
    fp.save(path)
    assert isinstance(torch.load(path, weights_only=True), dict)
    with torch.no_grad():  # the file, not the caller's net, supplies the weights
        for p in net.parameters():
            p.zero_()
    again = FlowPosterior.load(path)
    assert again.options == fp.options and again.base_point == fp.base_point
    assert again.posterior.prior_precision == fp.posterior.prior_precision
    for name in ("theta_sgd", "theta_map", "theta_refined"):
        assert torch.equal(getattr(again, name), getattr(fp, name)), name
    assert again.refine_final == fp.refine_final and again.tune_history == fp.tune_history
    draws = [f.full(f.posterior.sample(5, torch.Generator().manual_seed(3))) for f in (fp, again)]
    assert torch.equal(*draws)
    assert torch.equal(fp.objective.grad(fp.theta_map), again.objective.grad(again.theta_map))


def test_loading_the_wrong_file_says_so(tiny_flow, cache):
    net, train = tiny_flow
    fp = fit_flow_posterior(net, train, use_cache=False, **FAST)
    path = cache / "posterior.pt"
    fp.save(path)
    record = torch.load(path, weights_only=True)
    torch.save({**record, "format": 99}, cache / "future.pt")
    with pytest.raises(ValueError, match="format 99"):
        FlowPosterior.load(cache / "future.pt")
    torch.save({"kind": "rbmem_tutorial.TrainedFlow", "format": 1}, cache / "flow.pt")
    with pytest.raises(ValueError, match="not a rbmem_tutorial.FlowPosterior"):
        FlowPosterior.load(cache / "flow.pt")
    (cache / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        FlowPosterior.load(cache / "text.pt")
