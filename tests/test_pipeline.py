"""The trained-flow-to-posterior pipeline: one λ, a stationary θ*, and a faithful cache."""

import pytest
import torch

from rbmem_tutorial.nets import VelocityMLP
from rbmem_tutorial.pipeline import fit_flow_posterior


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
