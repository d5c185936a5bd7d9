"""Weight subsets and mini-batches of the frozen objective: exact restrictions of L."""

import pytest
import torch

from rbmem_tutorial.flows import RegressionAdapter, VelocityConvNet, VelocityMLP
from rbmem_tutorial.laplace import (
    RegressionObjective,
    anchored,
    fast_mlp,
    fit_laplace,
    minibatch_objective,
    parameter_subset,
    restrict_objective,
)
from rbmem_tutorial.riemannian import exp_map

F64 = torch.float64


def regression(net, dim, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.randn(n, dim, generator=g), torch.rand(n, 1, generator=g)], 1)
    y = torch.randn(n, dim, generator=g)
    return RegressionObjective(RegressionAdapter(net), z.double(), y.double(), 0.8, 1.5)


@pytest.fixture(params=["mlp", "conv"])
def objective(request):
    torch.manual_seed(0)
    if request.param == "mlp":
        return regression(VelocityMLP(3, hidden=(5, 4)), 3)
    return regression(VelocityConvNet((1, 4, 4), (2, 3), time_features=1, time_width=3), 16)


def random_theta(objective, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(objective.num_params, generator=g, dtype=F64) * 0.3


def test_presets_pick_whole_layers_in_order():
    net = VelocityMLP(3, hidden=(5, 4))  # net.0, net.2, net.4
    assert parameter_subset(net, "last").names == ("net.4.weight", "net.4.bias")
    assert parameter_subset(net, "last2").names == ("net.2.weight", "net.2.bias",
                                                    "net.4.weight", "net.4.bias")
    assert parameter_subset(net, "first").names == ("net.0.weight", "net.0.bias")
    everything = parameter_subset(net, "all")
    assert torch.equal(everything.index, torch.arange(everything.num_params))
    by_pattern = parameter_subset(net, "net.0.weight, *.4.bias")
    assert by_pattern.names == ("net.0.weight", "net.4.bias")
    # positions do not depend on a name prefix
    wrapped = parameter_subset(RegressionAdapter(net), "last")
    assert wrapped.tensors == parameter_subset(net, "last").tensors
    assert torch.equal(wrapped.index, parameter_subset(net, "last").index)
    with pytest.raises(ValueError, match="matches no parameter"):
        parameter_subset(net, "decoder.*")
    with pytest.raises(ValueError, match="the model has 3"):
        parameter_subset(net, "last4")


def test_restrict_and_embed_are_inverse():
    net = VelocityMLP(2, hidden=(4,))
    subset = parameter_subset(net, "first")
    theta = torch.randn(subset.num_params, dtype=F64)
    batch = torch.randn(3, subset.size, dtype=F64)
    full = subset.embed(theta, batch)
    assert full.shape == (3, subset.num_params)
    assert torch.equal(subset.restrict(full), batch)
    rest = torch.ones(subset.num_params, dtype=torch.bool)
    rest[subset.index] = False
    assert torch.equal(full[:, rest], theta[rest].expand(3, -1))
    with pytest.raises(ValueError, match="last dimension"):
        subset.embed(theta, batch[:, 1:])


@pytest.mark.parametrize("spec", ["last", "first", "last2"])
def test_restricted_objective_is_the_block_of_the_full_one(objective, spec):
    theta = random_theta(objective)
    subset = parameter_subset(objective.model, spec)
    sub = restrict_objective(objective, theta, subset)
    theta_s = subset.restrict(theta)
    assert sub.num_params == subset.size
    rest = theta.clone()
    rest[subset.index] = 0
    lam = objective.prior_precision
    torch.testing.assert_close(sub.value(theta_s),
                               objective.value(theta) - 0.5 * lam * rest.square().sum())
    v = torch.randn(subset.size, generator=torch.Generator().manual_seed(2), dtype=F64)
    grad, hvp = sub.grad_and_hvp(theta_s, v)
    full_grad, full_hvp = objective.grad_and_hvp(theta, subset.embed(torch.zeros_like(theta), v))
    torch.testing.assert_close(grad, subset.restrict(full_grad))
    torch.testing.assert_close(hvp, subset.restrict(full_hvp))
    # the diagonal GGN is the same block as well
    torch.testing.assert_close(sub.ggn_diagonal(theta_s),
                               subset.restrict(objective.ggn_diagonal(theta)))
    assert not fast_mlp.supports(sub)


def test_kfac_on_a_layer_subset_equals_those_layers_of_full_kfac():
    torch.manual_seed(0)
    objective = regression(VelocityMLP(3, hidden=(5, 4)), 3)
    theta = random_theta(objective)
    subset = parameter_subset(objective.model, "last2")
    sub = restrict_objective(objective, theta, subset)
    full_post = fit_laplace(objective, theta, "kfac", prior_precision=1.5)
    sub_post = fit_laplace(sub, subset.restrict(theta), "kfac", prior_precision=1.5)
    torch.testing.assert_close(sub_post.precision_diag, subset.restrict(full_post.precision_diag))
    last = fit_laplace(sub, subset.restrict(theta), "last_layer", prior_precision=1.5)
    full_last = fit_laplace(objective, theta, "last_layer", prior_precision=1.5)
    torch.testing.assert_close(last.variance, subset.restrict(full_last.variance))


def test_kfac_on_the_linear_layers_of_a_conv_net():
    torch.manual_seed(0)
    objective = regression(VelocityConvNet((1, 4, 4), (2, 3), time_features=1, time_width=3), 16)
    theta = random_theta(objective)
    with pytest.raises(ValueError, match="nn.Linear"):
        fit_laplace(objective, theta, "kfac", prior_precision=1.0)
    subset = parameter_subset(objective.model, "*time_embedding.*,*shifts.*")
    sub = restrict_objective(objective, theta, subset)
    post = fit_laplace(sub, subset.restrict(theta), "kfac", prior_precision=1.0)
    assert post.sample(2).shape == (2, subset.size)
    # a partly chosen linear layer is not offered to KFAC as a trainable layer
    partial = parameter_subset(objective.model, "*time_embedding.weight")
    with pytest.raises(ValueError, match="nn.Linear"):
        fit_laplace(restrict_objective(objective, theta, partial),
                    subset.restrict(theta)[: partial.size], "kfac", prior_precision=1.0)


def test_geodesic_on_the_subset_equals_one_on_the_substituted_loss():
    torch.manual_seed(0)
    objective = regression(VelocityMLP(2, hidden=(6,)), 2)
    theta = random_theta(objective)
    subset = parameter_subset(objective.model, "last")
    sub = restrict_objective(objective, theta, subset)

    def substituted(theta_s):  # an independent route: autograd through the full loss
        return objective.value(subset.embed(theta, theta_s))

    v = 0.1 * torch.randn(subset.size, generator=torch.Generator().manual_seed(3), dtype=F64)
    start = subset.restrict(theta)
    a = exp_map(sub, start, v, rtol=1e-8, atol=1e-8).endpoints
    b = exp_map(substituted, start, v, rtol=1e-8, atol=1e-8).endpoints
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_minibatch_objective_is_the_scaled_sum_over_its_rows():
    torch.manual_seed(0)
    objective = regression(VelocityMLP(2, hidden=(6,)), 2, n=12)
    theta = random_theta(objective)
    batch = minibatch_objective(objective, 4, seed=5)
    rows = torch.randperm(12, generator=torch.Generator().manual_seed(5))[:4]
    residual = objective.predict(theta)[rows] - objective.targets[rows]
    expected = (12 / 4) * 0.5 * residual.square().sum() / objective.noise_std**2
    torch.testing.assert_close(batch.data_fit(theta), expected)
    assert batch.prior_precision == objective.prior_precision
    whole = minibatch_objective(objective, 12)
    torch.testing.assert_close(whole.value(theta), objective.value(theta))
    # still a plain MLP objective: the fused kernel applies
    assert fast_mlp.supports(batch)
    # unbiased: averaged over all rows of a partition, the batches give the full data term
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    parts = [perm[i : i + 4] for i in range(0, 12, 4)]
    full_residual = (objective.predict(theta) - objective.targets).square().sum(1)
    per_batch = [3 * 0.5 * full_residual[p].sum() / 0.8**2 for p in parts]
    torch.testing.assert_close(sum(per_batch) / 3, objective.data_fit(theta))
    with pytest.raises(ValueError, match="exceeds the 12"):
        minibatch_objective(objective, 13)


def test_anchored_minibatch_has_the_full_gradient_at_the_anchor_and_the_batch_hessian():
    torch.manual_seed(0)
    objective = regression(VelocityMLP(2, hidden=(6,)), 2, n=12)
    theta = random_theta(objective)
    batch = minibatch_objective(objective, 4, seed=1)
    anchor = anchored(batch, theta, objective.grad(theta))
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    grad, hvp = anchor.grad_and_hvp(theta, v)
    torch.testing.assert_close(grad, objective.grad(theta))
    torch.testing.assert_close(hvp, batch.grad_and_hvp(theta, v)[1])
    other = theta + 0.1 * v
    torch.testing.assert_close(anchor.grad(other), batch.grad(other) - anchor.shift)
    # the value is consistent with the gradient
    point = other.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(anchor.value(point), point)
    torch.testing.assert_close(auto, anchor.grad(other))
    with pytest.raises(ValueError, match="shape of theta_star"):
        anchored(batch, theta, objective.grad(theta)[:-1])
