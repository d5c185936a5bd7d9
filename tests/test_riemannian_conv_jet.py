"""The conv net's jet kernel against double-backward autograd, the generic path, forward-mode
derivatives and finite differences, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import jvp

from rbmem_tutorial.flows import RegressionAdapter, VelocityConvNet
from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
from rbmem_tutorial.riemannian import MongeMetric, data_mean_objective, exp_map
from rbmem_tutorial.riemannian.conv_jet import (
    ConvJetKernel,
    _downsample_sum,
    _upsample,
    supports,
)
from rbmem_tutorial.riemannian.generic import RowDerivatives

F64 = torch.float64

# (image shape, channels per level, activation): one, two and three levels, colour images, and
# channels that narrow going down
NETS = [
    ((1, 4, 4), (4,), "silu"),
    ((1, 4, 4), (4, 8), "tanh"),
    ((3, 8, 8), (3, 5, 6), "silu"),
    ((2, 4, 4), (5, 3), "tanh"),
]


def conv_objective(image_shape=(1, 4, 4), channels=(4, 8), activation="silu", pairs=9,
                   noise_std=0.5, prior_mean=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = math.prod(image_shape)
    z = torch.cat([torch.randn(pairs, dim, generator=g), torch.rand(pairs, 1, generator=g)], 1)
    y = torch.randn(pairs, dim, generator=g)
    torch.manual_seed(seed)
    net = VelocityConvNet(image_shape, channels, activation, time_features=2, time_width=5)
    mean = None
    if prior_mean:
        count = sum(p.numel() for p in net.parameters())
        mean = 0.1 * torch.randn(count, generator=g, dtype=F64)
    return RegressionObjective(RegressionAdapter(net), z, y, noise_std, 2.0, prior_mean=mean)


def points(objective, rows, seed=1):
    """``rows`` parameter vectors near the initial θ and directions, each ``[rows, D]``."""
    g = torch.Generator().manual_seed(seed)
    theta0 = parameters_vector(objective.model)
    theta = theta0 + 0.1 * torch.randn(rows, len(theta0), generator=g, dtype=F64)
    return theta, torch.randn(rows, len(theta0), generator=g, dtype=F64)


def double_backward(objective, theta, v):
    """∇L(θ) and vᵀ∇²L(θ)v by autograd through ``objective.value``."""
    point = theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective.value(point), point, create_graph=True)
    (hvp,) = torch.autograd.grad(gradient, point, grad_outputs=v)
    return gradient.detach(), v @ hvp


@pytest.mark.parametrize("image_shape, channels, activation", NETS)
@pytest.mark.parametrize("chunk", [1, 4, 32])
def test_gradient_and_curvature_equal_double_backward(image_shape, channels, activation, chunk):
    """Rows [S, D], a prior mean m ≠ 0, chunks of one pair, of four (the last one shorter) and
    all nine pairs at once."""
    objective = conv_objective(image_shape, channels, activation)
    theta, v = points(objective, 3)
    grad, curvature = ConvJetKernel(objective, chunk=chunk)(theta, v)
    assert grad.shape == theta.shape and curvature.shape == (3,)
    for row in range(3):
        reference_grad, reference_curvature = double_backward(objective, theta[row], v[row])
        scale = float(reference_grad.abs().max())
        torch.testing.assert_close(grad[row], reference_grad, rtol=1e-10, atol=1e-12 * scale)
        torch.testing.assert_close(curvature[row], reference_curvature, rtol=1e-10, atol=0)


def test_one_row_and_per_output_noise_equal_the_generic_path():
    """θ ``[D]`` gives ``[D]`` and ``[]``; σ per output weights each residual by 1/σ_j²."""
    g = torch.Generator().manual_seed(5)
    noise = 0.2 + torch.rand(32, generator=g, dtype=F64)
    objective = conv_objective((2, 4, 4), (3, 4), "silu", pairs=13, noise_std=noise)
    theta, v = points(objective, 2)
    kernel, generic = ConvJetKernel(objective, chunk=5), RowDerivatives(objective)
    for row in range(2):
        grad, curvature = kernel(theta[row], v[row])
        reference_grad, reference_curvature = generic(theta[row], v[row])
        assert grad.shape == theta[row].shape and curvature.shape == ()
        scale = float(reference_grad.abs().max())
        torch.testing.assert_close(grad, reference_grad, rtol=1e-10, atol=1e-12 * scale)
        torch.testing.assert_close(curvature, reference_curvature, rtol=1e-10, atol=0)


@pytest.mark.parametrize("image_shape, channels, activation", NETS[1:3])
def test_output_jet_equals_the_net_and_forward_mode_derivatives(image_shape, channels,
                                                                activation):
    """f is the net's output; ḟ = Jv and f̈ equal nested forward-mode derivatives of ``predict``
    along v to rounding, and central finite differences to their truncation error."""
    objective = conv_objective(image_shape, channels, activation, pairs=7)
    theta, v = (x[0] for x in points(objective, 1))
    f, f1, f2 = ConvJetKernel(objective, chunk=3).output_jet(theta, v)

    def first(point):
        return jvp(objective.predict, (point,), (v,))[1]

    torch.testing.assert_close(f, objective.predict(theta), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(f1, first(theta), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f2, jvp(first, (theta,), (v,))[1], rtol=1e-10, atol=1e-12)
    h = 2e-4  # truncation errors O(h²): about 2e-7 and 3e-6 of the largest f̈ here
    ahead, behind = objective.predict(theta + h * v), objective.predict(theta - h * v)
    scale = float(f2.abs().max())
    torch.testing.assert_close(f1, (ahead - behind) / (2 * h), rtol=0, atol=2e-6 * scale)
    torch.testing.assert_close(f2, (ahead - 2 * f + behind) / h**2, rtol=0, atol=2e-5 * scale)


def test_upsampling_and_its_transpose():
    """Nearest-neighbour upsampling is the net's ``repeat_interleave``, bit for bit, and the
    2 × 2 block sum is its transpose: ⟨up(x), y⟩ = ⟨x, down(y)⟩."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 3, generator=g, dtype=F64).contiguous(
        memory_format=torch.channels_last)
    y = torch.randn(3, 4, 4, 6, generator=g, dtype=F64)
    assert torch.equal(_upsample(x), x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1))
    torch.testing.assert_close((_upsample(x) * y).sum(), (x * _downsample_sum(y)).sum(),
                               rtol=1e-13, atol=0)


def test_the_monge_metric_takes_the_kernel_and_solves_as_the_generic_path():
    """MongeMetric picks the jet kernel for this net (also under the data-mean preset); a
    subclass of the net goes to the generic path. A batched geodesic solve through the kernel
    ends where one through the generic path ends."""
    objective = conv_objective(pairs=6)
    start = parameters_vector(objective.model)
    metric = MongeMetric(objective, start)
    assert isinstance(metric._derivatives._batch.__self__, ConvJetKernel)
    assert supports(data_mean_objective(objective))

    class Subclass(VelocityConvNet):
        pass

    other = RegressionObjective(RegressionAdapter(Subclass((1, 4, 4), (2,))), objective.inputs,
                                objective.targets, 1.0, 1.0)
    assert not supports(other)
    assert type(MongeMetric(other, parameters_vector(other.model))._derivatives._batch) is (
        RowDerivatives)

    class GenericOnly:
        def __init__(self):
            self.grad_and_curvature = RowDerivatives(objective)

    g = torch.Generator().manual_seed(2)
    tangents = 0.05 * torch.randn(2, len(start), generator=g, dtype=F64)
    options = {"method": "dopri5", "rtol": 1e-9, "atol": 1e-9}
    jet = exp_map(objective, start, tangents, **options)
    generic = exp_map(GenericOnly(), start, tangents, **options)
    torch.testing.assert_close(jet.endpoints, generic.endpoints, rtol=0, atol=1e-8)


def test_other_models_and_bad_chunks_are_refused():
    with pytest.raises(TypeError, match="RegressionAdapter\\(VelocityConvNet\\)"):
        ConvJetKernel(RegressionObjective(nn.Linear(2, 1), torch.randn(3, 2), torch.randn(3, 1),
                                          1.0, 1.0))
    assert not supports(conv_objective().model)
    with pytest.raises(ValueError, match="chunk"):
        ConvJetKernel(conv_objective(), chunk=0)
