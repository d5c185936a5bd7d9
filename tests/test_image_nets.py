"""The convolutional velocity net: shapes, smoothness, time conditioning, Laplace and geodesics."""

import pytest
import torch
from torch.func import functional_call

from rbmem_tutorial.flows import RegressionAdapter, VelocityConvNet, VelocityMLP, build_velocity_net
from rbmem_tutorial.laplace import (
    RegressionObjective,
    fast_mlp,
    fit_laplace,
    parameters_vector,
    unflatten,
)
from rbmem_tutorial.riemannian import conv_jet, exp_map


def tiny(image_shape=(1, 4, 4), channels=(2, 3), seed=0):
    torch.manual_seed(seed)
    return VelocityConvNet(image_shape, channels, time_features=2, time_width=4).double()


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 4, 4), (2, 4, 8)])
@pytest.mark.parametrize("channels", [(3,), (3, 5), (2, 3, 4)])
def test_shapes_and_flat_convention(image_shape, channels):
    if len(channels) == 3 and min(image_shape[1:]) < 4:
        pytest.skip("too small for three levels")
    net = VelocityConvNet(image_shape, channels)
    dim = image_shape[0] * image_shape[1] * image_shape[2]
    x = torch.randn(5, dim)
    assert net(x, torch.tensor(0.3)).shape == (5, dim)
    assert net(x, torch.rand(5)).shape == (5, dim)
    # examples do not interact: a batch equals its rows one by one
    rows = torch.cat([net(x[i : i + 1], torch.tensor(0.3)) for i in range(5)])
    torch.testing.assert_close(net(x, torch.tensor(0.3)), rows)


def test_gradients_match_finite_differences():
    net = tiny()
    theta = parameters_vector(net).requires_grad_(True)
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, dtype=torch.float64, requires_grad=True)

    def f(theta, x, t):
        return functional_call(net, unflatten(net, theta), (x, t))

    assert torch.autograd.gradcheck(f, (theta, x, t), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (theta, x, t), fast_mode=True)


def test_float64_convolutions_read_channels_last_and_compute_the_same_net(monkeypatch):
    """On a CPU every float64 convolution reads channels-last memory; outputs, gradient and
    curvature equal the channels-first computation to rounding, and float32 is untouched."""
    net = tiny(channels=(3, 4))
    layouts = []

    def record(_module, inputs):
        layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))

    for conv in [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]:
        conv.register_forward_pre_hook(record)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 16, generator=g, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    theta, v = parameters_vector(net), torch.randn(parameters_vector(net).numel(), generator=g,
                                                   dtype=torch.float64)

    def loss(point):
        return functional_call(net, unflatten(net, point), (x, t)).square().sum()

    def derivatives():
        out = net(x, t)
        gradient, hvp = torch.func.jvp(torch.func.grad(loss), (theta,), (v,))
        return out, gradient, v @ hvp

    channels_last = derivatives()
    assert layouts and all(layouts)
    single = net.float()(x[:1].float(), t[:1].float())
    monkeypatch.setattr(VelocityConvNet, "_conv", staticmethod(lambda conv, h: conv(h)))
    assert torch.equal(net(x[:1].float(), t[:1].float()), single)  # float32: the same code
    net.double()
    layouts.clear()
    channels_first = derivatives()
    assert not all(layouts)  # (a one-channel image is both orders at once)
    for new, old in zip(channels_last, channels_first, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12 * float(old.abs().max()))


def test_time_conditioning_changes_the_output():
    net = tiny()
    x = torch.randn(4, 16, dtype=torch.float64)
    early, late = net(x, torch.tensor(0.1)), net(x, torch.tensor(0.9))
    assert (early - late).abs().max() > 1e-3
    torch.testing.assert_close(net(x, torch.full((4,), 0.1, dtype=torch.float64)), early)


def test_bad_inputs_and_options():
    net = tiny()
    with pytest.raises(ValueError, match=r"x must have shape \[B, 16\]"):
        net(torch.zeros(2, 15, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="divisible by 4"):
        VelocityConvNet((1, 6, 6), channels=(2, 3, 4))
    with pytest.raises(ValueError, match="image_shape must be"):
        VelocityConvNet((8, 8), channels=(2,))
    with pytest.raises(ValueError, match="channels is empty"):
        VelocityConvNet((1, 8, 8), channels=())
    with pytest.raises(ValueError, match="needs image_shape"):
        build_velocity_net("conv", 64)
    with pytest.raises(ValueError, match="pixels, not dim"):
        build_velocity_net("conv", 63, image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="unknown net"):
        build_velocity_net("transformer", 64)


def test_build_is_seeded_and_leaves_global_state():
    state = torch.random.get_rng_state()
    a = build_velocity_net("conv", 16, hidden=(2, 3), image_shape=(1, 4, 4), seed=1)
    b = build_velocity_net("conv", 16, hidden=(2, 3), image_shape=(1, 4, 4), seed=1)
    assert torch.equal(parameters_vector(a), parameters_vector(b))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(build_velocity_net("mlp", 16, hidden=(8,)), VelocityMLP)


@pytest.fixture
def conv_objective():
    net = tiny()
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(6, 16, generator=g), torch.rand(6, 1, generator=g)], 1).double()
    y = torch.randn(6, 16, generator=g, dtype=torch.float64)
    return RegressionObjective(RegressionAdapter(net), z, y, 0.7, 2.0)


def test_hvp_matches_finite_differences_of_the_gradient(conv_objective):
    theta = parameters_vector(conv_objective.model)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, hvp = conv_objective.grad_and_hvp(theta, v)
    eps = 1e-6
    fd = (conv_objective.grad(theta + eps * v) - conv_objective.grad(theta - eps * v)) / (2 * eps)
    torch.testing.assert_close(hvp, fd, rtol=1e-5, atol=1e-6)


def test_laplace_diag_works_and_kfac_says_what_to_use(conv_objective):
    theta = parameters_vector(conv_objective.model)
    post = fit_laplace(conv_objective, theta, "diag", prior_precision=2.0)
    brute = torch.diagonal(conv_objective.ggn(theta))
    torch.testing.assert_close(post.precision_diag, brute + 2.0)
    with pytest.raises(ValueError, match="Use structure 'diag'"):
        fit_laplace(conv_objective, theta, "kfac", prior_precision=2.0)


def test_geodesics_use_the_jet_kernel_and_conserve_speed(conv_objective):
    assert not fast_mlp.supports(conv_objective) and conv_jet.supports(conv_objective)
    theta = parameters_vector(conv_objective.model)
    v = 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64)
    result = exp_map(conv_objective, theta, v, rtol=1e-9, atol=1e-9)
    assert float(result.speed_drift) < 1e-4
    # shooting back from the end point returns to the start
    back = exp_map(conv_objective, result.endpoints, -result.end_velocities, rtol=1e-9,
                   atol=1e-9)
    torch.testing.assert_close(back.endpoints, theta, rtol=0, atol=1e-5)
