"""Saved files: plain records that rebuild their nets, one-line errors for other files."""

import pytest
import torch
from conftest import tiny_flow, tiny_posterior

from rbmem_tutorial.flows import VelocityConvNet, VelocityMLP
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


def _rewrite(path, change):
    """Load a saved record, change it and save it back with its old checksum."""
    record = torch.load(path, weights_only=True)
    change(record)
    torch.save(record, path)


def _pop_first_weight(record):
    state = record.get("state_dict", record.get("net_state"))
    state.pop(next(iter(state)))


def _widen_first_weight(record):
    state = record.get("state_dict", record.get("net_state"))
    name = next(iter(state))
    state[name] = torch.zeros(state[name].shape[0] + 1, *state[name].shape[1:])


CHANGES = {  # what a damaged or edited file may look like
    "a changed value": lambda r: r["train"].add_(1.0),
    "an extra option": lambda r: r.get("config", r.get("options")).update(extra=1),
    "a missing key": lambda r: r.pop("train"),
    "a missing weight": _pop_first_weight,
    "a weight of the wrong shape": _widen_first_weight,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("kind", ["flow", "posterior"])
def test_a_changed_saved_file_is_one_error_line(kind, change, tmp_path):
    from rbmem_tutorial.laplace import FlowPosterior
    from rbmem_tutorial.reference import TrainedFlow

    saved, cls = (tiny_flow(), TrainedFlow) if kind == "flow" else (tiny_posterior(), FlowPosterior)
    path = tmp_path / f"{kind}.pt"
    saved.save(path)
    cls.load(path)  # unchanged: loads
    _rewrite(path, CHANGES[change])
    with pytest.raises(ValueError, match="checksum") as caught:
        cls.load(path)
    assert "\n" not in str(caught.value)
    _rewrite(path, lambda r: r.update(checksum=_checksum_of(r)))  # changed and re-signed
    if change == "a changed value":
        cls.load(path)  # a consistent record: it loads what it holds
        return
    with pytest.raises(ValueError, match=f"{path} is not a usable {kind} file") as caught:
        cls.load(path)
    assert "\n" not in str(caught.value)


def _checksum_of(record):
    from rbmem_tutorial.cache import digest

    return digest({k: v for k, v in record.items() if k != "checksum"})


def test_saving_to_a_folder_is_one_error_line(tmp_path):
    with pytest.raises(ValueError, match="is a folder; save to a file name"):
        tiny_flow().save(tmp_path)
