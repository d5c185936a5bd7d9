"""Listing and clearing the on-disk cache (``rbmem cache list|clear``): only files with an
entry's exact name form whose signature verifies, and the ``.damaged`` files set aside from them
(:mod:`rbmem_tutorial.cache` writes and reads the entries).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import NamedTuple

from rbmem_tutorial.cache import ENTRY_NAME, KINDS, cache_dir, verify_entry

__all__ = ["CacheEntry", "clear", "entries"]


class CacheEntry(NamedTuple):
    """One file of the cache: its kind, a summary of what it holds, size and modification."""

    path: Path
    kind: str
    summary: str
    size: int
    modified: float


def _kind(path: Path) -> str | None:
    """The kind of an entry's name (``None`` for any other name or anything not a file)."""
    match = ENTRY_NAME.fullmatch(path.name)
    if match is None or path.is_symlink() or not path.is_file():
        return None
    prefix = match["prefix"]
    return next(kind for kind, start in KINDS.items() if prefix.startswith(start))


def _summary(record: dict, kind: str) -> str:
    if kind == "checkpoints":
        steps = record["steps"]
        return (f"{len(steps)} checkpoints of {record['weights'].shape[1]} weights, "
                f"{int(steps[0])} to {int(steps[-1])} Adam steps")
    if kind == "posterior":
        final = (record.get("refine_final") or {}).get("grad_norm_after", float("nan"))
        return (f"MAP of {record['theta_map'].numel()} weights, prior precision "
                f"{float(record['prior_precision']):.3g}, final |grad| {final:.2e}")
    state = record["state_dict"]
    weights = [v for k, v in state.items() if k.endswith("weight")]
    count = sum(v.numel() for v in state.values())
    shapes = ", ".join("x".join(map(str, v.shape)) for v in weights[:6])
    seconds = float(record.get("train_seconds", record.get("seconds", 0.0)))
    text = f"{count} weights (layers {shapes}), trained in {seconds:.0f} s"
    config = record.get("config")
    if isinstance(config, dict):
        text += ", " + ", ".join(f"{k}={v}" for k, v in config.items() if k != "train")
    return text


def _describe(path: Path, kind: str, summarise: bool) -> str | None:
    """The summary of an entry, ``"damaged"`` for one set aside, ``None`` when ``path`` is not
    a verified entry (then it is not this package's to touch)."""
    if path.name.endswith(".damaged"):
        return "damaged"
    record, problem = verify_entry(path)
    if problem is not None:
        return None
    if not summarise:
        return ""
    try:
        return _summary(record, kind)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return f"unexpected contents ({type(err).__name__})"


def entries(kind: str | None = None, summarise: bool = True) -> list[CacheEntry]:
    """This package's entries in the cache folder, oldest first: files of an entry's name
    whose signature verifies, and entries set aside as ``.damaged`` (module notes); only those
    of ``kind`` when given; ``summarise`` describes what each holds.

    Example
    -------
    >>> import os, tempfile
    >>> import torch
    >>> from rbmem_tutorial.cache import CACHE_ENV, entry_path, save_entry
    >>> previous = os.environ.get(CACHE_ENV)
    >>> os.environ[CACHE_ENV] = tempfile.mkdtemp()
    >>> path = entry_path("posterior", {"net": "a"})
    >>> save_entry({"theta_map": torch.zeros(3), "prior_precision": 2.0,
    ...             "refine_final": {"grad_norm_after": 1e-6}}, path)
    >>> (cache_dir() / "posterior-final.pt").write_text("a user's file")
    13
    >>> [(e.kind, e.summary) for e in entries()]
    [('posterior', 'MAP of 3 weights, prior precision 2, final |grad| 1.00e-06')]
    >>> [e.path == path for e in clear(kind="posterior")], [e.path for e in entries()]
    ([True], [])
    >>> _ = os.environ.pop(CACHE_ENV)
    >>> os.environ.update({} if previous is None else {CACHE_ENV: previous})
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; choose one of {', '.join(KINDS)}.")
    folder = cache_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        found_kind = _kind(path)
        if found_kind is None or (kind is not None and found_kind != kind):
            continue
        summary = _describe(path, found_kind, summarise)
        if summary is None:
            continue
        with contextlib.suppress(FileNotFoundError):  # deleted by another process meanwhile
            stat = path.stat()
            found.append(CacheEntry(path, found_kind, summary, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda entry: entry.modified)


def clear(kind: str | None = None, older_than_days: float | None = None) -> list[CacheEntry]:
    """Delete this package's entries (:func:`entries`; of ``kind``, and older than
    ``older_than_days`` when given); returns what was deleted. Nothing else is touched.

    Example
    -------
    >>> import os, tempfile
    >>> import torch
    >>> from rbmem_tutorial.cache import CACHE_ENV, entry_path, save_entry
    >>> previous = os.environ.get(CACHE_ENV)
    >>> os.environ[CACHE_ENV] = tempfile.mkdtemp()
    >>> old, new = entry_path("flow", "old"), entry_path("flow", "new")
    >>> save_entry({"state_dict": {}}, old)
    >>> os.utime(old, (0, 0))  # last modified in 1970
    >>> save_entry({"state_dict": {}}, new)
    >>> (cache_dir() / "flow-myproject.pt").write_text("not ours")
    8
    >>> [e.path == old for e in clear(older_than_days=30)]
    [True]
    >>> sorted(p.name for p in cache_dir().iterdir()) == sorted([new.name, "flow-myproject.pt"])
    True
    >>> _ = os.environ.pop(CACHE_ENV)
    >>> os.environ.update({} if previous is None else {CACHE_ENV: previous})
    """
    cutoff = None if older_than_days is None else time.time() - 86400.0 * older_than_days
    deleted = []
    for entry in entries(kind, summarise=False):
        if cutoff is None or entry.modified < cutoff:
            entry.path.unlink(missing_ok=True)
            deleted.append(entry)
    return deleted
