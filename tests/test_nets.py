"""Tests of rbmem_tutorial.flows.nets: structure, parameter count, features, time handling,
adapter."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from rbmem_tutorial.flows import RegressionAdapter, VelocityMLP, time_column


def test_reference_architecture_has_4546_parameters():
    model = VelocityMLP(2, hidden=(64, 64), activation="silu", time_features=0)
    assert sum(p.numel() for p in model.parameters()) == 3 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2
    assert sum(p.numel() for p in model.parameters()) == 4546


@pytest.mark.parametrize(("activation", "module"), [("silu", nn.SiLU), ("tanh", nn.Tanh)])
@pytest.mark.parametrize("hidden", [(), (16,), (8, 16, 4)])
def test_net_alternates_linear_and_activation(activation, module, hidden):
    model = VelocityMLP(3, hidden=hidden, activation=activation, time_features=2)
    layers = list(model.net)
    assert len(layers) == 2 * len(hidden) + 1
    assert all(isinstance(layer, nn.Linear) for layer in layers[::2])
    assert all(isinstance(layer, module) for layer in layers[1::2])
    widths = [layer.in_features for layer in layers[::2]] + [layers[-1].out_features]
    assert widths == [3 + 1 + 4, *hidden, 3]


def test_features_are_x_t_and_fixed_fourier_features():
    model = VelocityMLP(2, hidden=(8,), time_features=3).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    features = model.features(x, t)
    k = torch.arange(1, 4, dtype=torch.float64)
    expected = torch.cat(
        [x, t[:, None], torch.sin(math.pi * k * t[:, None]), torch.cos(math.pi * k * t[:, None])],
        dim=1,
    )
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-15)
    assert "frequencies" not in dict(model.named_parameters())
    assert torch.equal(model(x, t), model.net(expected))


def test_forward_matches_a_hand_written_mlp():
    model = VelocityMLP(2, hidden=(5, 7), activation="tanh").double()
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight, m.bias) for m in model.net[::2]]
    h = torch.tanh(torch.cat([x, t[:, None]], dim=1) @ w1.T + b1)
    h = torch.tanh(h @ w2.T + b2)
    torch.testing.assert_close(model(x, t), h @ w3.T + b3)


@pytest.mark.parametrize("t", [0.3, torch.tensor(0.3)])
def test_scalar_time_equals_broadcast_time(t):
    model = VelocityMLP(2, hidden=(8,))
    x = torch.randn(5, 2)
    assert torch.equal(model(x, t), model(x, torch.full((5,), 0.3)))


def test_time_column_shapes_and_errors():
    x = torch.zeros(3, 2, dtype=torch.float64)
    assert time_column(torch.tensor([0.1, 0.2, 0.3]), x).shape == (3, 1)
    assert time_column(0.5, x).dtype == torch.float64
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        time_column(torch.zeros(4), x)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        time_column(torch.zeros(3, 1), x)


def test_forward_rejects_wrong_x_shape():
    model = VelocityMLP(2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        model(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        model(torch.zeros(2), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(dim=0), ValueError, "dim"),
        (dict(dim=2, hidden=(64, 0)), ValueError, "hidden width"),
        (dict(dim=2, activation="relu"), ValueError, "unknown activation"),
        (dict(dim=2, time_features=-1), ValueError, "time_features"),
        (dict(dim=2.0), TypeError, "dim"),
    ],
)
def test_constructor_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        VelocityMLP(**kwargs)


def test_regression_adapter_shares_parameters_and_output():
    net = VelocityMLP(2, time_features=2)
    adapter = RegressionAdapter(net)
    names = [name for name, _ in adapter.named_parameters()]
    assert names == [f"velocity_net.{name}" for name, _ in net.named_parameters()]
    assert all(a is b for a, b in zip(adapter.parameters(), net.parameters(), strict=True))
    flat = parameters_to_vector(net.parameters())
    assert torch.equal(parameters_to_vector(adapter.parameters()), flat)
    z = torch.randn(7, 3)
    assert torch.equal(adapter(z), net(z[:, :2], z[:, 2]))


def test_regression_adapter_rejects_bad_input():
    with pytest.raises(TypeError, match="velocity_net must be an nn.Module"):
        RegressionAdapter(lambda x, t: x)
    adapter = RegressionAdapter(VelocityMLP(2))
    with pytest.raises(ValueError, match="z must be 2-D"):
        adapter(torch.zeros(3))
    with pytest.raises(ValueError, match="x must have shape"):
        adapter(torch.zeros(3, 4))


def test_docstring_examples_run():
    import doctest

    from rbmem_tutorial.flows import nets

    assert doctest.testmod(nets).failed == 0
