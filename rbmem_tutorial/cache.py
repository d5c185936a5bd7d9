"""The on-disk cache of trained models and refined posteriors.

Everything cached is deterministic given its key, so a chapter that is rerun, or the book
build after the tests, reuses the work instead of repeating it. The folder is
``$RBMEM_CACHE``, else ``~/.cache/rbmem_tutorial``; it is never inside the repository.

**Which files are entries.** An entry is written by :func:`save_entry` under a name made by
:func:`entry_path`: a kind prefix, an optional label and 20 hex digits of its key, ``.pt``.
Inside it carries a signature: its own file name and a SHA-256 of its contents. An entry whose
signature does not verify (a truncated write, a flipped bit, a file of another program, a
pickled object, a record that lacks a required key) is named on stderr, renamed to
``<name>.damaged`` and computed again by :func:`load_cached`; a caller that finds a verified
record unusable (wrong shapes) sets it aside with :func:`set_aside`.
:func:`~rbmem_tutorial.cache_listing.entries` and :func:`~rbmem_tutorial.cache_listing.clear`
(``rbmem cache list|clear``) touch only files with an entry's exact name form whose signature
verifies, and the ``.damaged`` files set aside from them: a user's
``flow-myproject.pt`` or a folder named ``flow-dir.pt`` is never listed, renamed or deleted.

**When the computation changes.** Every key includes :data:`ENTRY_VERSIONS`, one version per
kind of entry (besides the package version). The design is *a version per kind, bumped by a
test*: ``tests/test_cache_versions.py`` computes a small entry of each kind and compares its
fingerprint with the one recorded beside that kind's version; when training, refining or
fitting computes something else, that test fails and asks for the kind's version to be bumped
and the new fingerprint recorded, so entries of the old code are never reused.

Entries hold tensors and plain values only and load with ``torch.load(weights_only=True)``,
which runs no code from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

from rbmem_tutorial import _version
from rbmem_tutorial._checks import check_writable_folder

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
    interrupted write never leaves a truncated file; creates the folder if needed. A ``path``
    that is a folder is a one-line ``ValueError``.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "new" / "flow-x.pt"
    >>> save_atomic({"x": torch.ones(2)}, path)
    >>> [p.name for p in path.parent.iterdir()], torch.load(path, weights_only=True)["x"]
    (['flow-x.pt'], tensor([1., 1.]))
    """
    if path.is_dir():
        raise ValueError(f"{path} is a folder; save to a file name, e.g. {path / 'model.pt'}.")
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


#: Kinds of entry, by name prefix: reference flows of the book, flows of a study's own data or
#: conv net, refined posteriors (MAP and prior precision).
KINDS = {"flow": "flow-", "study-flow": "study-flow-", "posterior": "posterior-",
         "checkpoints": "checkpoints-"}

#: The version of each kind's computation, part of every key of that kind (module notes).
ENTRY_VERSIONS = {"flow": 2, "study-flow": 2, "posterior": 2, "checkpoints": 1}

#: The key of an entry's signature: ``{"name": file name, "checksum": SHA-256 of the rest}``.
SIGNATURE = "rbmem_cache_entry"

ENTRY_NAME = re.compile(r"(?P<prefix>study-flow-|flow-(?:[a-z0-9_]+-)?|posterior-|checkpoints-)"
                        r"[0-9a-f]{20}"
                        r"\.pt(?P<damaged>\.damaged)?")


def entry_path(kind: str, key, label: str | None = None) -> Path:
    """The cache file of an entry of ``kind`` whose computation is determined by ``key`` (a
    record for :func:`digest`), with :data:`ENTRY_VERSIONS` and the package version in the key;
    ``label`` (lower-case letters, digits, ``_``) is shown in the name.

    Example
    -------
    >>> entry_path("posterior", {"a": 1}).name[:10], len(entry_path("flow", {}, "moons").name)
    ('posterior-', 34)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if label is not None and not re.fullmatch(r"[a-z0-9_]+", label):
        raise ValueError(f"cache label {label!r} must be lower-case letters, digits or _.")
    stamp = digest({"key": key, "kind": kind, "entry_version": ENTRY_VERSIONS[kind],
                    "version": _version.__version__})[:20]
    return cache_dir() / f"{KINDS[kind]}{label + '-' if label else ''}{stamp}.pt"


def _checksum(record: dict) -> str:
    return digest({k: v for k, v in record.items() if k != SIGNATURE})


def save_entry(record: dict, path: Path) -> None:
    """Write cache entry ``record`` to ``path`` (:func:`entry_path`) atomically, signed with
    its file name and a checksum of its contents (module notes).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "posterior-0123456789abcdef0123.pt"
    >>> save_entry({"theta_map": torch.ones(2)}, path)
    >>> load_cached(path)["theta_map"]
    tensor([1., 1.])
    """
    path = Path(path)
    signed = {**record, SIGNATURE: {"name": path.name, "checksum": _checksum(record)}}
    save_atomic(signed, path)


def verify_entry(path: Path, required: tuple[str, ...] = ()) -> tuple[dict | None, str | None]:
    """``(record, None)`` for an entry whose signature verifies, else ``(None, problem)``."""
    try:
        record = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable bytes are the same problem
        return None, f"unreadable: {type(err).__name__}"
    if not isinstance(record, dict) or not isinstance(record.get(SIGNATURE), dict):
        return None, "no signature of this package"
    signature = record.pop(SIGNATURE)
    if signature.get("name") != path.name:
        return None, f"signed as {signature.get('name')!r}, not as this file"
    try:
        checksum = _checksum(record)
    except (TypeError, ValueError, RuntimeError):  # contents no entry of ours holds
        checksum = None
    if checksum is None or signature.get("checksum") != checksum:
        return None, "checksum mismatch"
    missing = [key for key in required if key not in record]
    return (None, f"lacks {', '.join(missing)}") if missing else (record, None)


def set_aside(path: Path, problem: str) -> None:
    """Rename the damaged entry ``path`` to ``<name>.damaged`` and say so on stderr, so that
    the caller computes it again (also for a verified record that turned out unusable)."""
    path = Path(path)
    damaged = path.with_name(path.name + ".damaged")
    with contextlib.suppress(FileNotFoundError):  # another process renamed it first
        os.replace(path, damaged)
    print(f"warning: cache entry {path} is damaged ({problem}); renamed it to "
          f"{damaged.name} and computing it again.", file=sys.stderr)


def load_cached(path: Path, required: tuple[str, ...] = ()) -> dict | None:
    """The entry cached at ``path`` (tensors on the CPU, without its signature), or ``None``
    when there is none.

    Loads with ``torch.load(weights_only=True)``, which runs no code from the file. A file
    whose signature does not verify, or that lacks one of the ``required`` keys, is named on
    stderr and set aside (:func:`set_aside`), so that the caller computes the entry again and
    :func:`entries` lists what was set aside.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "posterior-0123456789abcdef0123.pt"
    >>> load_cached(path) is None
    True
    >>> save_entry({"theta_map": torch.zeros(2)}, path)
    >>> load_cached(path, required=("theta_map",))["theta_map"]
    tensor([0., 0.])
    >>> load_cached(path, required=("theta_map", "prior_precision")) is None  # named on stderr
    True
    >>> sorted(p.name for p in path.parent.iterdir())
    ['posterior-0123456789abcdef0123.pt.damaged']
    """
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise ValueError(f"the cache entry {path} is not a file; move it out of the cache "
                         "folder.")
    record, problem = verify_entry(path, required)
    if problem is None:
        return record
    set_aside(path, problem)
    return None


def use_cached(path: Path, required: tuple[str, ...], use):
    """``use(record)`` for the entry at ``path`` (:func:`load_cached`); ``None`` when there is
    none, or when ``use`` fails on it (wrong shapes): then the entry is set aside.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "flow-0123456789abcdef0123.pt"
    >>> save_entry({"state_dict": {"weight": torch.ones(3)}}, path)
    >>> net = torch.nn.Linear(2, 1)
    >>> use_cached(path, ("state_dict",), lambda r: net.load_state_dict(r["state_dict"])) is None
    True
    >>> path.exists()  # a record of the wrong shapes: set aside and named on stderr
    False
    """
    record = load_cached(path, required)
    if record is None:
        return None
    try:
        return use(record)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        set_aside(path, f"unusable: {type(err).__name__}: {first}")
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
