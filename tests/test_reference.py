"""Tests of rbmem_tutorial.reference: configuration, cache keys, caching and reproducibility."""

import dataclasses
from pathlib import Path

import pytest
import torch

from rbmem_tutorial.cache import cache_dir
from rbmem_tutorial.data import load_dataset
from rbmem_tutorial.flows import train_flow_matching
from rbmem_tutorial.reference import (
    REFERENCE,
    FlowConfig,
    TrainedFlow,
    build_model,
    cache_path,
    load_or_train,
)

TINY = FlowConfig(n_train=6, n_test=20, hidden=(8,), steps=30, batch_size=16)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_reference_is_the_shared_moons_net():
    assert isinstance(REFERENCE, FlowConfig)
    assert REFERENCE.dataset == "moons" and REFERENCE.hidden == (64, 64)
    assert sum(p.numel() for p in build_model(REFERENCE).parameters()) == 4546
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFERENCE.steps = 1


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert cache_path(TINY).parent == tmp_path
    monkeypatch.delenv("RBMEM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "rbmem_tutorial"


def test_cache_key_depends_on_every_field(cache):
    changes = dict(dataset="rings", n_train=7, n_test=21, hidden=(9,), activation="tanh",
                   time_features=1, steps=31, batch_size=17, lr=1e-3, schedule="cosine", seed=1,
                   data_seed=1)
    assert set(changes) == {field.name for field in dataclasses.fields(FlowConfig)}
    paths = {cache_path(dataclasses.replace(TINY, **{k: v})) for k, v in changes.items()}
    assert len(paths) == len(changes) and cache_path(TINY) not in paths
    assert cache_path(FlowConfig(**dataclasses.asdict(TINY))) == cache_path(TINY)


def test_cache_key_depends_on_the_package_version(cache, monkeypatch):
    from rbmem_tutorial import _version

    before = cache_path(TINY)
    monkeypatch.setattr(_version, "__version__", "0.0.0-test")
    assert cache_path(TINY) != before


def test_load_or_train_trains_once_then_loads(cache):
    first = load_or_train(TINY, progress=False)
    assert not first.from_cache and not first.model.training
    assert cache_path(TINY).exists()
    assert [p.name for p in cache.iterdir()] == [cache_path(TINY).name]  # no temporary left
    second = load_or_train(TINY, progress=False)
    assert second.from_cache and not second.model.training
    assert second.train_seconds == first.train_seconds > 0
    assert torch.equal(second.loss_history, first.loss_history)
    for (name, a), (_, b) in zip(first.model.state_dict().items(),
                                 second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    train, test = load_dataset("moons", 6, 20, 0)
    assert torch.equal(second.train, train) and torch.equal(second.test, test)


def test_load_or_train_reproduces_a_run_by_hand(cache):
    result = load_or_train(TINY, progress=False)
    model = build_model(TINY)
    history = train_flow_matching(model, result.train, TINY.steps, TINY.batch_size, TINY.lr,
                                  TINY.seed, progress=False)
    assert torch.equal(history, result.loss_history)
    for a, b in zip(model.parameters(), result.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_build_model_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    first = build_model(TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = build_model(TINY)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(),
                                                 strict=True))


def test_cache_never_defaults_into_the_working_tree(monkeypatch):
    monkeypatch.delenv("RBMEM_CACHE", raising=False)
    repository = Path(__file__).resolve().parents[1]
    assert repository not in cache_dir().resolve().parents


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(dataset="spirals"), ValueError, "unknown dataset"),
        (dict(n_train=0), ValueError, "n_train"),
        (dict(hidden=[64, 64]), TypeError, "hidden must be a tuple"),
        (dict(hidden=(64, 0)), ValueError, "hidden width"),
        (dict(activation="relu"), ValueError, "unknown activation"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(schedule="step"), ValueError, "unknown schedule"),
        (dict(seed=-1), ValueError, "seed"),
    ],
)
def test_config_rejects_bad_values(changes, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(TINY, **changes)


def test_load_or_train_rejects_a_plain_dict():
    with pytest.raises(TypeError, match="config must be a FlowConfig"):
        load_or_train(dataclasses.asdict(TINY))


def test_docstring_examples_run(cache):
    import doctest

    from rbmem_tutorial import reference

    assert doctest.testmod(reference).failed == 0


def test_a_damaged_flow_cache_entry_is_named_and_retrained(cache, capsys):
    first = load_or_train(TINY, progress=False)
    path = cache_path(TINY)
    path.write_bytes(b"not a torch file")
    again = load_or_train(TINY, progress=False)
    assert f"cache entry {path} is damaged" in capsys.readouterr().err
    assert not again.from_cache and torch.equal(again.loss_history, first.loss_history)
    assert (cache / f"{path.name}.damaged").exists()
    assert load_or_train(TINY, progress=False).from_cache


def test_a_saved_flow_loads_with_its_config_and_weights(cache, tmp_path):
    flow = load_or_train(TINY, progress=False)
    path = tmp_path / "shared" / "flow.pt"
    flow.save(path)
    record = torch.load(path, weights_only=True)
    assert record["kind"] == "rbmem_tutorial.TrainedFlow"
    again = TrainedFlow.load(path)
    assert again.config == flow.config and again.from_cache
    x = torch.randn(5, 2)
    assert torch.equal(again.model(x, 0.3), flow.model(x, 0.3))
    for name in ("train", "test", "loss_history"):
        assert torch.equal(getattr(again, name), getattr(flow, name)), name
    torch.save({**record, "format": 2}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="format 2"):
        TrainedFlow.load(tmp_path / "newer.pt")
    with pytest.raises(FileNotFoundError, match="no file"):
        TrainedFlow.load(tmp_path / "missing.pt")
