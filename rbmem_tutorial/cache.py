"""The on-disk cache of trained models and refined posteriors.

Everything cached is deterministic given its key, so a chapter that is rerun, or the book
build after the tests, reuses the work instead of repeating it. The folder is
``$RBMEM_CACHE``, else ``~/.cache/rbmem_tutorial``; it is never inside the repository.

Entries hold tensors and plain values only and load with ``torch.load(weights_only=True)``
(:func:`load_cached`), which runs no code from the file. A damaged entry (a truncated write
from another tool, a full disk) is named, renamed to ``*.damaged`` and computed again.
:func:`entries` and :func:`clear` list and delete this package's files (``rbmem cache``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch

from ._checks import check_writable_folder

CACHE_ENV = "RBMEM_CACHE"
DEFAULT_CACHE = "~/.cache/rbmem_tutorial"


def cache_dir() -> Path:
    """Folder of the cache: ``$RBMEM_CACHE``, else ``~/.cache/rbmem_tutorial``.

    Example
    -------
    >>> previous = os.environ.pop(CACHE_ENV, None)
    >>> cache_dir() == Path.home() / ".cache" / "rbmem_tutorial"
    True
    >>> os.environ[CACHE_ENV] = "~/my-cache"
    >>> cache_dir() == Path.home() / "my-cache"
    True
    >>> _ = os.environ.pop(CACHE_ENV)
    >>> os.environ.update({} if previous is None else {CACHE_ENV: previous})
    """
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def digest(record) -> str:
    """SHA-256 of a JSON-serialisable record, with tensors hashed by their bytes.

    Example
    -------
    >>> digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})
    True
    """
    def encode(value):
        if isinstance(value, torch.Tensor):
            array = value.detach().cpu().contiguous()
            return {"tensor": hashlib.sha256(array.numpy().tobytes()).hexdigest(),
                    "shape": list(array.shape), "dtype": str(array.dtype)}
        raise TypeError(f"cannot hash {type(value).__name__} into a cache key")

    text = json.dumps(record, sort_keys=True, default=encode)
    return hashlib.sha256(text.encode()).hexdigest()


def save_atomic(record: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place, so an
    interrupted write never leaves a truncated file; creates the folder if needed.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "new" / "flow-x.pt"
    >>> save_atomic({"x": torch.ones(2)}, path)
    >>> [p.name for p in path.parent.iterdir()], load_cached(path)["x"]
    (['flow-x.pt'], tensor([1., 1.]))
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(record, temporary)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # group-readable like any file, not mkstemp's 0600
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def load_cached(path: Path, required: tuple[str, ...] = ()) -> dict | None:
    """The record cached at ``path`` (tensors on the CPU), or ``None`` when there is none.

    Loads with ``torch.load(weights_only=True)``, which runs no code from the file. A file that
    cannot be read (a truncated write, a full disk, a pickled object), or a record that lacks
    one of the ``required`` keys, is named on stderr and renamed to ``<name>.damaged``, so that
    the caller computes the entry again and :func:`entries` lists what was set aside.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "posterior-x.pt"
    >>> load_cached(path) is None
    True
    >>> save_atomic({"theta_map": torch.zeros(2)}, path)
    >>> load_cached(path, required=("theta_map",))["theta_map"]
    tensor([0., 0.])
    >>> load_cached(path, required=("theta_map", "prior_precision")) is None  # named on stderr
    True
    >>> sorted(p.name for p in path.parent.iterdir())
    ['posterior-x.pt.damaged']
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        record, problem = None, type(err).__name__
    else:
        missing = [key for key in required if not isinstance(record, dict) or key not in record]
        problem = f"lacks {', '.join(missing)}" if missing else None
    if problem is None:
        return record
    damaged = path.with_name(path.name + ".damaged")
    with contextlib.suppress(FileNotFoundError):  # another process renamed it first
        os.replace(path, damaged)
    print(f"warning: cache entry {path} is damaged ({problem}); renamed it to "
          f"{damaged.name} and computing it again.", file=sys.stderr)
    return None


def check_cache_writable() -> Path:
    """Create the cache folder and check that it takes files, before any work starts; a
    one-line ``ValueError`` names the folder and ``RBMEM_CACHE`` otherwise.

    Example
    -------
    >>> import tempfile
    >>> previous = os.environ.get(CACHE_ENV)
    >>> os.environ[CACHE_ENV] = tempfile.mkdtemp()
    >>> check_cache_writable() == cache_dir()
    True
    >>> _ = os.environ.pop(CACHE_ENV)
    >>> os.environ.update({} if previous is None else {CACHE_ENV: previous})
    """
    return check_writable_folder(cache_dir(), f"the model cache {cache_dir()}",
                                 f"set {CACHE_ENV} to a writable folder.")


#: Kinds of cached file, by name prefix: reference flows of the book, flows of a study's own
#: data or conv net, refined posteriors (MAP and prior precision).
KINDS = {"flow": "flow-", "study-flow": "study-flow-", "posterior": "posterior-"}


class CacheEntry(NamedTuple):
    """One file of the cache: its kind, a summary of what it holds, size and modification."""

    path: Path
    kind: str
    summary: str
    size: int
    modified: float


def _kind(path: Path) -> str | None:
    name = path.name
    if not name.endswith((".pt", ".pt.damaged")):
        return None
    for kind in sorted(KINDS, key=lambda k: -len(KINDS[k])):  # study-flow- before flow-
        if name.startswith(KINDS[kind]):
            return kind
    return None


def _summary(path: Path, kind: str) -> str:
    if not path.name.endswith(".pt"):
        return "damaged"
    record = load_cached(path)
    if record is None:
        return "damaged (renamed)"
    if kind == "posterior":
        final = record["refine_final"]["grad_norm_after"]
        return (f"MAP of {record['theta_map'].numel()} weights, prior precision "
                f"{float(record['prior_precision']):.3g}, final |grad| {final:.2e}")
    state = record["state_dict"]
    weights = [v for k, v in state.items() if k.endswith("weight")]
    count = sum(v.numel() for v in state.values())
    shapes = ", ".join("x".join(map(str, v.shape)) for v in weights[:6])
    seconds = record.get("train_seconds", record.get("seconds", 0.0))
    text = f"{count} weights (layers {shapes}), trained in {seconds:.0f} s"
    if kind == "flow":
        text = f"{path.name.split('-')[1]}, " + text
    config = record.get("config")
    if config:
        text += ", " + ", ".join(f"{k}={v}" for k, v in config.items() if k != "train")
    return text


def entries(kind: str | None = None, summarise: bool = True) -> list[CacheEntry]:
    """This package's files in the cache folder (others are never listed), oldest first;
    only those of ``kind`` when given; ``summarise`` reads each file for its summary.

    Example
    -------
    >>> import tempfile
    >>> previous = os.environ.get(CACHE_ENV)
    >>> os.environ[CACHE_ENV] = tempfile.mkdtemp()
    >>> save_atomic({"theta_map": torch.zeros(3), "prior_precision": 2.0,
    ...              "refine_final": {"grad_norm_after": 1e-6}}, cache_dir() / "posterior-ab.pt")
    >>> [(e.kind, e.summary) for e in entries()]
    [('posterior', 'MAP of 3 weights, prior precision 2, final |grad| 1.00e-06')]
    >>> [e.path.name for e in clear(kind="posterior")], entries()
    (['posterior-ab.pt'], [])
    >>> _ = os.environ.pop(CACHE_ENV)
    >>> os.environ.update({} if previous is None else {CACHE_ENV: previous})
    """
    folder = cache_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        found_kind = _kind(path)
        if found_kind is None or (kind is not None and found_kind != kind):
            continue
        stat = path.stat()
        summary = _summary(path, found_kind) if summarise else ""
        found.append(CacheEntry(path, found_kind, summary, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda entry: entry.modified)


def clear(kind: str | None = None, older_than_days: float | None = None) -> list[CacheEntry]:
    """Delete this package's cache files (of ``kind``, and older than ``older_than_days``
    when given); returns what was deleted. Files of other programs are never touched.

    Example
    -------
    >>> import tempfile
    >>> previous = os.environ.get(CACHE_ENV)
    >>> os.environ[CACHE_ENV] = tempfile.mkdtemp()
    >>> save_atomic({"state_dict": {}}, cache_dir() / "flow-old.pt")
    >>> os.utime(cache_dir() / "flow-old.pt", (0, 0))  # last modified in 1970
    >>> save_atomic({"state_dict": {}}, cache_dir() / "flow-new.pt")
    >>> (cache_dir() / "notes.txt").write_text("not ours")
    8
    >>> [e.path.name for e in clear(older_than_days=30)]
    ['flow-old.pt']
    >>> sorted(p.name for p in cache_dir().iterdir())
    ['flow-new.pt', 'notes.txt']
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
