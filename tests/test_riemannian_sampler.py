"""Tests for rbmem_tutorial.riemannian.sampler: Laplace tangents pushed through Exp_θ*."""

import pytest
import torch
from riemannian_cases import F64, SmoothLoss, regression, small_mlp, tight

from rbmem_tutorial import riemannian
from rbmem_tutorial.riemannian import (
    RiemannianLaplace,
    exp_map,
)


class DiagonalPosterior:
    """Stand-in for a Laplace posterior: N(mean, scale² I) in the tangent space."""

    def __init__(self, mean, scale, objective=None):
        self.mean, self.scale, self.objective = mean, scale, objective

    def sample_tangent(self, n, generator=None, scale=None):
        noise = torch.randn(n, len(self.mean), generator=generator, dtype=F64)
        return (self.scale if scale is None else scale) * noise

    def sample(self, n, generator=None):
        return self.mean + self.sample_tangent(n, generator)


def test_sampler_pushes_tangents_through_exp_map():
    loss = SmoothLoss(4, 5)
    posterior = DiagonalPosterior(torch.zeros(4, dtype=F64), 0.5)
    sampler = RiemannianLaplace(posterior, loss, **tight(1e-8))
    samples, info = sampler.sample(3, torch.Generator().manual_seed(7), return_diagnostics=True)
    tangents = posterior.sample_tangent(3, torch.Generator().manual_seed(7))
    expected = exp_map(loss, posterior.mean, tangents, **tight(1e-8)).endpoints
    torch.testing.assert_close(samples, expected)
    assert info.endpoints is samples and info.nfe.shape == (3,)
    again = sampler.sample(3, torch.Generator().manual_seed(7))
    assert torch.equal(samples, again)
    zero = sampler.sample(2, torch.Generator().manual_seed(7), scale=0.0)
    assert torch.equal(zero, posterior.mean.expand(2, 4))


def test_sampler_keeps_loss_lower_than_euclidean():
    objective, theta_star = regression(small_mlp(), n=30)
    fitted = theta_star.clone()
    for _ in range(200):  # move towards the mode so the tangent space sits at a low point
        fitted -= 2e-3 * torch.func.grad(objective)(fitted)
    posterior = DiagonalPosterior(fitted, 0.6, objective)
    generator = torch.Generator().manual_seed(8)
    riemann = RiemannianLaplace(posterior).sample(6, generator)
    euclid = posterior.sample(6, torch.Generator().manual_seed(8))
    riemann_loss = torch.stack([objective(t) for t in riemann]).mean()
    euclid_loss = torch.stack([objective(t) for t in euclid]).mean()
    assert riemann_loss < euclid_loss


def test_sampler_linearised_and_its_errors():
    objective, theta_star = regression(small_mlp())
    posterior = DiagonalPosterior(theta_star, 0.1, objective)
    sampler = RiemannianLaplace(posterior, linearised=True)
    assert isinstance(sampler.loss, riemannian.LinearisedObjective)
    assert sampler.sample(2, torch.Generator().manual_seed(9)).shape == (2, len(theta_star))
    with pytest.raises(TypeError, match="plain loss function"):
        RiemannianLaplace(posterior, lambda th: (th**2).sum(), linearised=True)
    with pytest.raises(TypeError, match="posterior needs"):
        RiemannianLaplace(object(), lambda th: (th**2).sum())
    with pytest.raises(ValueError, match="n must be"):
        sampler.sample(0)
