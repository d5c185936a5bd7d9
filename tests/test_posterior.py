"""Tests for rbmem_tutorial.laplace.sampled_nets: generation over parameter samples, velocity
spread."""

import pytest
import torch
from conftest import cuda
from torch import nn
from torch.func import functional_call
from torchdiffeq import odeint

from rbmem_tutorial.laplace import generate, parameters_vector, unflatten, velocity_uncertainty


class TinyVelocity(nn.Module):
    """u(x, t) = MLP([x, t]) with t a 0-d tensor or one time per row."""

    def __init__(self, d=2, width=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 1, width), nn.Tanh(), nn.Linear(width, d))

    def forward(self, x, t):
        t = t.reshape(-1, 1).expand(x.shape[0], 1).to(x)
        return self.net(torch.cat([x, t], dim=1))


class LinearField(nn.Module):
    """u(x, t) = A x, whose flow from x_0 to t = 1 is expm(A) x_0."""

    def __init__(self, d=2):
        super().__init__()
        self.A = nn.Linear(d, d, bias=False)

    def forward(self, x, t):
        return self.A(x)


def theta_samples(model, s=3, spread=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    theta = parameters_vector(model).double()
    return theta + spread * torch.randn(s, theta.numel(), generator=gen, dtype=torch.float64)


def x0(b=5, d=2, seed=1):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def solve_one(model, theta, start, **kwargs):
    """A plain torchdiffeq solve for one parameter vector: the reference."""
    net = model.double()

    def field(t, x):
        return functional_call(net, unflatten(net, theta), (x, t))

    times = torch.tensor([0.0, 1.0], dtype=torch.float64)
    return odeint(field, start, times, **kwargs)[-1]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyVelocity()


def test_one_adaptive_solve_matches_separate_solves(model):
    thetas, start = theta_samples(model), x0()
    joint = generate(model, thetas, start, method="dopri5", rtol=1e-7, atol=1e-7)
    assert joint.shape == (3, 5, 2) and joint.dtype == torch.float64
    for theta, end in zip(thetas, joint, strict=True):
        reference = solve_one(model, theta, start, method="dopri5", rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(end, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_fixed_step_solve_equals_separate_solves(model, method):
    thetas, start = theta_samples(model), x0()
    joint = generate(model, thetas, start, method=method, step_size=0.05)
    for theta, end in zip(thetas, joint, strict=True):
        reference = solve_one(
            model, theta, start, method=method, rtol=1e-5, atol=1e-5, options={"step_size": 0.05}
        )
        torch.testing.assert_close(end, reference, rtol=0, atol=1e-10)


def test_linear_field_flows_by_the_matrix_exponential():
    model = LinearField()
    thetas, start = theta_samples(model, s=4, spread=1.0), x0()
    ends = generate(model, thetas, start, rtol=1e-10, atol=1e-10)
    for theta, end in zip(thetas, ends, strict=True):
        exact = start @ torch.linalg.matrix_exp(theta.reshape(2, 2)).T
        torch.testing.assert_close(end, exact, rtol=0, atol=1e-8)


def test_trajectories(model):
    thetas, start = theta_samples(model), x0()
    times = torch.linspace(0, 1, 6, dtype=torch.float64)
    path = generate(model, thetas, start, method="rk4", step_size=0.05, times=times)
    assert path.shape == (6, 3, 5, 2)
    torch.testing.assert_close(path[0], start.expand(3, 5, 2), rtol=0, atol=0)
    end = generate(model, thetas, start, method="rk4", step_size=0.05)
    torch.testing.assert_close(path[-1], end, rtol=0, atol=1e-12)


def test_runs_in_the_dtype_of_the_samples(model):
    thetas = theta_samples(model).float()
    ends = generate(model, thetas, x0(), method="midpoint", step_size=0.1)
    assert ends.dtype == torch.float32
    assert model.net[0].weight.dtype == torch.float32  # the caller's model is untouched


def test_velocity_uncertainty_matches_a_loop(model):
    thetas = theta_samples(model, s=6)
    points = x0(b=7)
    times = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    out = velocity_uncertainty(model, thetas, points, times)
    net = TinyVelocity().double()
    velocities = torch.stack(
        [
            torch.stack([functional_call(net, unflatten(net, th), (points, t)) for t in times])
            for th in thetas
        ]
    )  # [S, T, P, d]
    torch.testing.assert_close(out.mean, velocities.mean(dim=0))
    torch.testing.assert_close(out.std, velocities.std(dim=0))
    variance_trace = velocities.var(dim=0).sum(dim=-1)
    torch.testing.assert_close(out.total_std, variance_trace.sqrt())
    assert out.mean.shape == (3, 7, 2) and out.total_std.shape == (3, 7)


def test_identical_samples_have_no_spread(model):
    thetas = parameters_vector(model).double().expand(4, -1)
    out = velocity_uncertainty(model, thetas, x0(), torch.tensor([0.5]))
    assert float(out.total_std.abs().max()) == 0.0


def test_bad_input_gets_a_clear_error(model):
    thetas, start = theta_samples(model), x0()
    with pytest.raises(ValueError, match="model has 50 parameters"):
        generate(model, thetas[:, :-1], start)
    with pytest.raises(ValueError, match="pass step_size"):
        generate(model, thetas, start, method="rk4")
    with pytest.raises(ValueError, match="step_size is for fixed-step"):
        generate(model, thetas, start, method="dopri5", step_size=0.1)
    with pytest.raises(ValueError, match="unknown method"):
        generate(model, thetas, start, method="rk45")
    with pytest.raises(ValueError, match="strictly increasing"):
        generate(model, thetas, start, times=torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="NaN"):
        generate(model, thetas, torch.full_like(start, float("nan")))
    with pytest.raises(ValueError, match="rtol"):
        generate(model, thetas, start, rtol=0.0)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        generate(model, thetas, start, rtol=1e-12, atol=1e-12, max_num_steps=3)
    with pytest.raises(ValueError, match="at least 2 parameter samples"):
        velocity_uncertainty(model, thetas[:1], start, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        generate(lambda x, t: x, thetas, start)


@cuda
def test_cuda_follows_the_samples(model):
    thetas, start = theta_samples(model), x0()
    cpu = generate(model, thetas, start, method="rk4", step_size=0.1)
    gpu = generate(model, thetas.cuda(), start, method="rk4", step_size=0.1)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
