"""The on-disk cache of trained models and refined posteriors.

Everything cached is deterministic given its key, so a chapter that is rerun, or the book
build after the tests, reuses the work instead of repeating it. The folder is
``$RBMEM_CACHE``, else ``~/.cache/rbmem_tutorial``; it is never inside the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

CACHE_ENV = "RBMEM_CACHE"
DEFAULT_CACHE = "~/.cache/rbmem_tutorial"


def cache_dir() -> Path:
    """Folder of the cache: ``$RBMEM_CACHE``, else ``~/.cache/rbmem_tutorial``."""
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
    interrupted write never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(record, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
