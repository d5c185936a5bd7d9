"""Every reader of a file this package writes, fed damaged copies of real files: truncated,
with flipped bits, replaced by junk, or holding arrays of the wrong shapes. Each copy is read
correctly, or refused with one ``ValueError`` line, or set aside with one warning line; no
reader raises anything else."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_flow, tiny_posterior

from rbmem_tutorial.cache import entry_path, load_cached, save_entry, use_cached
from rbmem_tutorial.cache_listing import entries
from rbmem_tutorial.experiments import resume, run_record, store, tradeoff
from rbmem_tutorial.flows import VelocityMLP
from rbmem_tutorial.laplace import FlowPosterior
from rbmem_tutorial.reference import TrainedFlow

CASES = 24  # damaged copies per reader and kind of damage


def damaged(data: bytes, seed: int):
    """``(label, bytes)``: truncations, single and multiple bit flips, and junk of ``data``."""
    rng = np.random.default_rng(seed)
    yield "empty", b""
    for i in range(CASES):
        cut = int(rng.integers(1, len(data)))
        yield f"truncated at {cut}", data[:cut]
        flipped = bytearray(data)
        for bit in rng.integers(0, 8 * len(data), size=1 + i % 3):
            flipped[bit // 8] ^= 1 << (bit % 8)
        yield f"bits flipped ({i})", bytes(flipped)
    yield "junk", rng.bytes(len(data))


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_cache_entries(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    net = VelocityMLP(2, hidden=(6,))
    record = {"state_dict": net.state_dict(), "loss_history": torch.arange(5.0),
              "train_seconds": 1.5}
    path = entry_path("flow", {"fuzz": 1}, "moons")
    save_entry(record, path)
    original = path.read_bytes()
    for label, data in damaged(original, 0):
        path.write_bytes(data)
        loaded = load_cached(path, ("state_dict", "loss_history", "train_seconds"))
        warnings = _warnings(capsys)
        if loaded is not None:  # read correctly: only bytes nothing reads were hit
            assert _same(loaded, record) and not warnings, label
            continue
        assert len(warnings) == 1 and "is damaged" in warnings[0], (label, warnings)
        assert not path.exists() and path.with_name(path.name + ".damaged").exists(), label
        path.with_name(path.name + ".damaged").unlink()
    for name, value in [("a missing weight", {}), ("wrong shapes", torch.zeros(3, 3))]:
        state = {k: value if value != {} else v for k, v in record["state_dict"].items()}
        if name == "a missing weight":
            state.pop(next(iter(state)))
        save_entry({**record, "state_dict": state}, path)
        assert use_cached(path, (), lambda r: net.load_state_dict(r["state_dict"])) is None
        assert len(_warnings(capsys)) == 1 and not path.exists(), name


def test_cache_listing_and_clearing_of_damaged_entries(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    path = entry_path("posterior", {"fuzz": 2})
    save_entry({"theta_map": torch.zeros(4), "prior_precision": 2.0,
                "refine_final": {"grad_norm_after": 1e-6}}, path)
    original = path.read_bytes()
    for i, (_, data) in enumerate(damaged(original, 1)):
        (tmp_path / path.name.replace(path.name[-8:-3], f"{i:05x}")).write_bytes(data)
    listed = entries()  # a damaged entry is not known as ours: neither listed nor renamed
    assert all(entry.path.read_bytes() == original for entry in listed)
    assert not list(tmp_path.glob("*.damaged")) and not _warnings(capsys)


@pytest.fixture
def cell(tmp_path):
    row = {"key": "map__a0__train0__sample0", "method": "map", "scale": 0.0, "train_seed": 0,
           "sample_seed": 0, "mem_strict": 0.25, "true_mem_strict": 0.125, "precision": 0.5,
           "baseline_precision": 0.75, "mmd2": 0.01, "temperature": None}
    samples = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    store.save_cell(tmp_path, row["key"], row, samples=samples, x0=samples)
    return tmp_path, row


@pytest.mark.parametrize("part", ["json", "npz"])
def test_cells(cell, part, capsys):
    out, row = cell
    row_path, array_path = store.cell_paths(out, row["key"])
    path = row_path if part == "json" else array_path
    originals = {p: p.read_bytes() for p in (row_path, array_path)}
    for label, data in damaged(originals[path], 2):
        for p, original in originals.items():
            p.write_bytes(original)
        path.write_bytes(data)
        got = store.read_cell(out, row["key"], tradeoff.check_row, 2)
        warnings = _warnings(capsys)
        if got is not None:
            assert got == row and not warnings, label
            continue
        assert len(warnings) == 1 and f"cell {row['key']} is damaged" in warnings[0], label
        assert not row_path.exists(), label


@pytest.mark.parametrize("change", [
    lambda row, arrays: row.pop("method"),
    lambda row, arrays: row.update(scale="0.5"),
    lambda row, arrays: row.update(method="mystery"),
    lambda row, arrays: arrays.update(samples=arrays["samples"][:, :1]),
    lambda row, arrays: arrays.update(samples=arrays["samples"][None]),
    lambda row, arrays: arrays.pop("samples"),
])
def test_cells_of_the_wrong_shape_or_fields(cell, change, capsys):
    out, row = cell
    row_path, array_path = store.cell_paths(out, row["key"])
    changed, arrays = dict(row), dict(np.load(array_path))
    change(changed, arrays)
    arrays["row_sha256"] = np.array(store._row_digest(changed))  # consistent, but unfit
    np.savez(array_path, **arrays)
    row_path.write_text(json.dumps(changed))
    assert store.read_cell(out, row["key"], tradeoff.check_row, 2) is None
    assert len(_warnings(capsys)) == 1


@pytest.mark.parametrize("kind", ["flow", "posterior"])
def test_saved_flows_and_posteriors(kind, tmp_path):
    saved, cls = (tiny_flow(), TrainedFlow) if kind == "flow" else (tiny_posterior(), FlowPosterior)
    path = tmp_path / f"{kind}.pt"
    saved.save(path)
    original = path.read_bytes()
    weights = {k: v.clone() for k, v in cls.load(path).__dict__.items()
               if isinstance(v, torch.Tensor)}
    for label, data in damaged(original, 3 if kind == "flow" else 4):
        path.write_bytes(data)
        try:
            loaded = cls.load(path)
        except ValueError as err:
            assert "\n" not in str(err) and str(path) in str(err), label
            continue
        assert all(torch.equal(getattr(loaded, k), v) for k, v in weights.items()), label


def test_run_records_and_study_configs(tmp_path):
    config = tradeoff.TradeoffConfig(scales=(0.5,))
    store.write_json(tmp_path / "config.json", resume.config_record(config))
    entry = run_record.start_run(config, tmp_path, ["rbmem", "tradeoff"])
    run_record.end_run(tmp_path, entry, "finished", 3)
    originals = {name: (tmp_path / name).read_bytes() for name in ("config.json", "run.json")}
    for label, data in damaged(originals["run.json"], 5):
        (tmp_path / "run.json").write_bytes(data)
        runs = run_record.read_runs(tmp_path)
        assert isinstance(runs, list) and all(isinstance(r, dict) for r in runs), label
        again = run_record.start_run(config, tmp_path, ["rbmem", "tradeoff"])
        run_record.end_run(tmp_path, again, "finished", 1)
        assert run_record.read_runs(tmp_path)[-1]["cells_computed"] == 1, label
    for label, data in damaged(originals["config.json"], 6):
        (tmp_path / "config.json").write_bytes(data)
        for read in (lambda: resume.study_config(config, tmp_path),
                     lambda: resume.load_study_config(tmp_path)):
            try:
                read()
            except ValueError as err:
                assert "\n" not in str(err), label


def test_claims(tmp_path):
    store.claim(tmp_path, "a")
    original = (tmp_path / "cells" / "a.claim").read_bytes()
    store.release(tmp_path, "a")
    for label, data in [*damaged(original, 7), ("a number", b"5"), ("pid 0", b'{"pid": 0}')]:
        (tmp_path / "cells" / "a.claim").write_bytes(data)
        os.utime(tmp_path / "cells" / "a.claim", (0, 0))  # written long ago
        assert store.claim(tmp_path, "a") in (True, False), label
        store.release(tmp_path, "a")
