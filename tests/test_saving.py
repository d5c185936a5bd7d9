"""Saved files: plain records that rebuild their nets, one-line errors for other files."""

import pytest
import torch

from rbmem_tutorial.image_nets import VelocityConvNet
from rbmem_tutorial.nets import VelocityMLP
from rbmem_tutorial.saving import build_net, net_architecture, read_saved


@pytest.mark.parametrize("net", [
    VelocityMLP(3, hidden=(5, 4), activation="tanh", time_features=2),
    VelocityMLP(2, hidden=()),
    VelocityConvNet((1, 4, 4), (2, 3), activation="tanh", time_features=1, time_width=3),
])
def test_a_net_is_rebuilt_from_its_architecture_and_weights(net, tmp_path):
    torch.save({"net": net_architecture(net), "state": net.state_dict()}, tmp_path / "n.pt")
    record = torch.load(tmp_path / "n.pt", weights_only=True)
    copy = build_net(record["net"], record["state"])
    assert type(copy) is type(net) and not copy.training
    x = torch.randn(3, net.dim)
    assert torch.equal(copy(x, 0.4), net(x, 0.4))


def test_unsupported_nets_and_architectures_are_refused():
    with pytest.raises(TypeError, match="VelocityMLP and VelocityConvNet"):
        net_architecture(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown net class"):
        build_net({"class": "Transformer"})


def test_read_saved_checks_kind_and_format(tmp_path):
    torch.save({"kind": "a", "format": 1, "x": torch.ones(2)}, tmp_path / "a.pt")
    assert torch.equal(read_saved(tmp_path / "a.pt", "a", 1)["x"], torch.ones(2))
    with pytest.raises(ValueError, match="holds a, not a b"):
        read_saved(tmp_path / "a.pt", "b", 1)
    with pytest.raises(ValueError, match="format 1; this version of the package reads format 2"):
        read_saved(tmp_path / "a.pt", "a", 2)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="no known kind"):
        read_saved(tmp_path / "list.pt", "a", 1)
