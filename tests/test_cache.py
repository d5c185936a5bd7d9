"""Cache keys, atomic writes and damaged entries set aside."""

import pytest
import torch

from rbmem_tutorial.cache import cache_dir, digest, save_atomic


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
    from rbmem_tutorial.cache import load_cached

    path = tmp_path / "flow-x.pt"
    save_atomic({"state_dict": {"w": torch.ones(50)}}, path)
    path.write_bytes(path.read_bytes()[:200])  # a truncated write
    assert load_cached(path) is None
    assert "cache entry" in capsys.readouterr().err
    assert not path.exists() and (tmp_path / "flow-x.pt.damaged").exists()
    assert load_cached(path) is None  # nothing cached now: the caller computes it


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_cached_files_load_weights_only(tmp_path, capsys):
    from rbmem_tutorial.cache import load_cached

    path = tmp_path / "posterior-x.pt"
    torch.save({"theta_map": _Payload()}, path)  # a file that would run code when unpickled
    assert load_cached(path) is None
    assert "code ran" not in capsys.readouterr().out
    save_atomic({"theta_map": torch.arange(3.0)}, path)
    assert torch.equal(load_cached(path)["theta_map"], torch.arange(3.0))


def test_an_entry_without_its_required_keys_is_set_aside(tmp_path, capsys, monkeypatch):
    from rbmem_tutorial.cache import entries, load_cached

    path = tmp_path / "posterior-x.pt"
    save_atomic({"x": 1}, path)
    assert load_cached(path, ("x",)) == {"x": 1}
    assert load_cached(path, ("x", "y")) is None
    assert f"cache entry {path} is damaged (lacks y)" in capsys.readouterr().err
    save_atomic([1, 2], path)  # not a record at all
    assert load_cached(path, ("x",)) is None
    assert not path.exists() and (tmp_path / "posterior-x.pt.damaged").exists()
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    assert [(e.path.name, e.summary) for e in entries()] == [("posterior-x.pt.damaged", "damaged")]
