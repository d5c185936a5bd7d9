"""The cache's computation versions (:data:`rbmem_tutorial.cache.ENTRY_VERSIONS`): a small
entry of each kind is computed and its fingerprint compared with the one recorded for the
kind's current version. When one fails, the code now computes that kind differently: bump
its version in ``ENTRY_VERSIONS`` (so no entry of the old code is reused) and record the new
fingerprint and version here."""

import numpy as np
import pytest
import torch

from rbmem_tutorial.cache import ENTRY_VERSIONS
from rbmem_tutorial.experiments.flows import trained_flow
from rbmem_tutorial.experiments.replicates import checkpoints
from rbmem_tutorial.experiments.tradeoff import TradeoffConfig
from rbmem_tutorial.flows import VelocityMLP
from rbmem_tutorial.laplace import fit_flow_posterior
from rbmem_tutorial.reference import FlowConfig, load_or_train

#: kind: (the version these fingerprints belong to, the fingerprint).
RECORDED = {
    "flow": (2, [7.769177436828613, 12.559432730078697]),
    "study-flow": (2, [-0.8996850848197937, 14.815001402515918]),
    "posterior": (2, [7.385394288226484, 1.8054831863052192]),
    "checkpoints": (1, [12.320381147786975, 12.559432730078697]),
}


def _weights(net: torch.nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in net.parameters()))


def _flow() -> list[float]:
    flow = load_or_train(FlowConfig(n_train=8, n_test=10, hidden=(8,), steps=20), False)
    return [float(flow.loss_history[-1]), _weights(flow.model)]


def _study_flow(folder) -> list[float]:
    points = np.linspace(-1.0, 1.0, 36).reshape(12, 3) ** 3
    np.save(folder / "points.npy", points)
    config = TradeoffConfig(dataset="file", data_file=str(folder / "points.npy"), n_train=8,
                            hidden=(8,), steps=20, early_steps=10, batch_size=4)
    flow = trained_flow(config, 0, 20)
    return [float(flow.train.sum()), _weights(flow.model)]


def _checkpoints() -> list[float]:
    config = FlowConfig(n_train=8, n_test=10, hidden=(8,), steps=20)
    return [float(w.double().abs().sum()) for w in checkpoints(config, steps=(10, 20))]


def _posterior() -> list[float]:
    torch.manual_seed(0)
    net, train = VelocityMLP(2, hidden=(4,)), torch.linspace(-1.0, 1.0, 6).reshape(3, 2)
    fitted = fit_flow_posterior(net, train, draws_per_point=2, use_cache=False)
    return [float(fitted.theta_map.abs().sum()), float(fitted.posterior.prior_precision)]


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("kind", sorted(RECORDED))
def test_each_kind_computes_what_its_version_recorded(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path / "cache"))  # computed, never loaded
    version, recorded = RECORDED[kind]
    found = {"flow": _flow, "posterior": _posterior, "checkpoints": _checkpoints,
             "study-flow": lambda: _study_flow(tmp_path)}[kind]()
    assert ENTRY_VERSIONS[kind] == version, (
        f"ENTRY_VERSIONS[{kind!r}] is {ENTRY_VERSIONS[kind]}; record its fingerprint {found} "
        "with that version in RECORDED")
    assert np.allclose(found, recorded, rtol=1e-4, atol=1e-6), (
        f"{kind} entries are now computed differently (fingerprint {found}, recorded "
        f"{recorded}): bump ENTRY_VERSIONS[{kind!r}] in rbmem_tutorial/cache.py and record "
        "the new version and fingerprint in RECORDED")
