"""Hidden-unit sizes against a loop over the weights, and units that switch off exactly."""

import pytest
import torch
from torch import nn

from rbmem_tutorial.flows import VelocityMLP
from rbmem_tutorial.laplace import hidden_unit_sizes, parameters_vector, unflatten, units_in_use


def test_sizes_match_a_loop_over_every_weight_touching_a_unit(generator):
    model = VelocityMLP(dim=2, hidden=(5, 4), activation="silu")
    theta = torch.randn(parameters_vector(model).numel(), generator=generator, dtype=torch.float64)
    p = unflatten(model, theta)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    sizes = hidden_unit_sizes(model, theta)
    assert [len(s) for s in sizes] == [5, 4]
    for layer, size in enumerate(sizes):
        w_in, b_in = p[f"{linear[layer]}.weight"], p[f"{linear[layer]}.bias"]
        w_out = p[f"{linear[layer + 1]}.weight"]
        for j in range(len(size)):
            touching = [*w_in[j].tolist(), b_in[j].item(), *w_out[:, j].tolist()]
            assert size[j].item() == max(abs(v) for v in touching)


def test_a_unit_with_zero_weights_is_off_and_the_function_does_not_need_it(generator):
    model = VelocityMLP(dim=2, hidden=(6, 6), activation="silu").double()
    theta = parameters_vector(model).detach().clone()
    p = unflatten(model, theta)  # views of theta: zeroing them edits theta
    p["net.2.weight"][3].zero_()
    p["net.2.bias"][3] = 0.0
    p["net.4.weight"][:, 3].zero_()
    assert units_in_use(model, theta) == [6, 5]
    assert hidden_unit_sizes(model, theta)[1][3].item() == 0.0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="chain"):
        hidden_unit_sizes(nn.Sequential(nn.Linear(2, 3), nn.Linear(4, 1)), torch.zeros(9 + 5))
    with pytest.raises(ValueError, match="at least two"):
        hidden_unit_sizes(nn.Linear(2, 3), torch.zeros(9))
    with pytest.raises(ValueError, match="tol"):
        units_in_use(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), torch.zeros(13), tol=-1.0)
