"""Cache keys, atomic writes, signed entries, damaged entries set aside, and files of others
never touched."""

import os

import pytest
import torch

from rbmem_tutorial.cache import (
    cache_dir,
    digest,
    entry_path,
    load_cached,
    save_atomic,
    save_entry,
    use_cached,
)
from rbmem_tutorial.cache_listing import clear, entries

ENTRY = "posterior-0123456789abcdef0123.pt"


def test_digest_depends_on_tensor_contents_not_identity():
    a = torch.arange(4.0)
    assert digest({"t": a}) == digest({"t": a.clone()})
    assert digest({"t": a}) != digest({"t": a + torch.tensor([0, 0, 0, 1.0])})
    assert digest({"t": a}) != digest({"t": a.double()})
    assert digest({"x": 1, "y": 2}) == digest({"y": 2, "x": 1})


def test_digest_rejects_unhashable_values():
    with pytest.raises(TypeError, match="cannot hash"):
        digest({"f": object()})


def test_save_atomic_round_trip_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "record.pt"
    save_atomic({"x": torch.ones(3)}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["record.pt"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("RBMEM_CACHE")
    assert cache_dir().name == "rbmem_tutorial"


def test_damaged_entry_is_renamed_and_recomputed(tmp_path, capsys):
    path = tmp_path / "flow-0123456789abcdef0123.pt"
    save_entry({"state_dict": {"w": torch.ones(50)}}, path)
    path.write_bytes(path.read_bytes()[:200])  # a truncated write
    assert load_cached(path) is None
    assert "cache entry" in capsys.readouterr().err
    assert not path.exists() and (tmp_path / f"{path.name}.damaged").exists()
    assert load_cached(path) is None  # nothing cached now: the caller computes it


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_cached_files_load_weights_only(tmp_path, capsys):
    path = tmp_path / ENTRY
    torch.save({"theta_map": _Payload()}, path)  # a file that would run code when unpickled
    assert load_cached(path) is None
    assert "code ran" not in capsys.readouterr().out
    save_entry({"theta_map": torch.arange(3.0)}, path)
    assert torch.equal(load_cached(path)["theta_map"], torch.arange(3.0))


def test_an_entry_without_its_required_keys_is_set_aside(tmp_path, capsys, monkeypatch):
    path = tmp_path / ENTRY
    save_entry({"x": 1}, path)
    assert load_cached(path, ("x",)) == {"x": 1}
    assert load_cached(path, ("x", "y")) is None
    assert f"cache entry {path} is damaged (lacks y)" in capsys.readouterr().err
    save_atomic([1, 2], path)  # not a record at all
    assert load_cached(path, ("x",)) is None
    assert not path.exists() and (tmp_path / f"{ENTRY}.damaged").exists()
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    assert [(e.path.name, e.summary) for e in entries()] == [(f"{ENTRY}.damaged", "damaged")]


def test_a_tampered_value_or_a_renamed_entry_fails_its_signature(tmp_path, capsys):
    path = tmp_path / ENTRY
    save_entry({"theta_map": torch.zeros(4)}, path)
    record = torch.load(path, weights_only=True)
    record["theta_map"][2] = 1.0  # a changed value under the old checksum
    save_atomic(record, path)
    assert load_cached(path) is None
    assert "checksum mismatch" in capsys.readouterr().err
    other = tmp_path / "posterior-ffffffffffffffffffff.pt"
    save_entry({"theta_map": torch.zeros(4)}, path)
    os.replace(path, other)  # another key's file under this name
    assert load_cached(other) is None
    assert "signed as" in capsys.readouterr().err


def test_a_verified_entry_the_caller_cannot_use_is_set_aside(tmp_path, capsys):
    path = tmp_path / ENTRY
    save_entry({"state_dict": {"weight": torch.zeros(5, 5), "bias": torch.zeros(5)}}, path)
    net = torch.nn.Linear(3, 2)
    assert use_cached(path, ("state_dict",), lambda r: net.load_state_dict(r["state_dict"])) \
        is None
    assert "unusable: RuntimeError" in capsys.readouterr().err
    assert (tmp_path / f"{ENTRY}.damaged").exists()


def test_keys_change_with_the_kind_and_its_computation_version(monkeypatch):
    from rbmem_tutorial import cache

    key = {"config": {"steps": 5}}
    assert entry_path("flow", key) == entry_path("flow", dict(key))
    assert entry_path("flow", key).name[-23:] != entry_path("study-flow", key).name[-23:]
    before = entry_path("flow", key)
    monkeypatch.setitem(cache.ENTRY_VERSIONS, "flow", cache.ENTRY_VERSIONS["flow"] + 1)
    assert entry_path("flow", key) != before
    with pytest.raises(ValueError, match="unknown cache kind 'model'"):
        entry_path("model", key)


def test_list_and_clear_touch_only_verified_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    ours = entry_path("posterior", {"a": 1})
    save_entry({"theta_map": torch.zeros(2), "prior_precision": 1.0}, ours)
    look_alikes = ["flow-myproject.pt", "posterior-final.pt", "notes.txt",
                   "flow-moons-0123456789abcdef0123.pt",  # an entry's name, no signature
                   "posterior-0123456789abcdef012.pt.damaged"]  # one hex digit short
    for name in look_alikes:
        (tmp_path / name).write_text("a user's file")
    (tmp_path / "flow-dir.pt").mkdir()
    (tmp_path / "posterior-aaaaaaaaaaaaaaaaaaaa.pt").mkdir()  # a folder of an entry's name
    (tmp_path / "study-flow-bbbbbbbbbbbbbbbbbbbb.pt").symlink_to(ours)
    assert [e.path for e in entries()] == [ours]
    assert [e.path for e in clear()] == [ours]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted([*look_alikes, "flow-dir.pt", "posterior-aaaaaaaaaaaaaaaaaaaa.pt",
                           "study-flow-bbbbbbbbbbbbbbbbbbbb.pt"])
