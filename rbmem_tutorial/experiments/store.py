"""Result storage for experiment studies: one file pair per finished cell, written atomically.

A cell's samples go to ``cells/<key>.npz`` first and its row to ``cells/<key>.json`` last, so a
cell counts as finished exactly when its JSON exists: an interrupted run loses only the cell
it was working on, and a rerun skips every finished one. Ranks of a multi-process run write
disjoint cells into the same folder; :func:`collect` merges whatever is there.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_json(path: Path, record) -> None:
    """Write ``record`` as indented JSON, atomically."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))


def write_npz(path: Path, **arrays) -> None:
    """Write arrays to a compressed ``.npz``, atomically."""
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    _atomic(Path(path), write)


def cell_paths(out: Path, key: str) -> tuple[Path, Path]:
    """The ``(json, npz)`` files of cell ``key``."""
    folder = Path(out) / "cells"
    return folder / f"{key}.json", folder / f"{key}.npz"


def is_done(out: Path, key: str) -> bool:
    """Whether cell ``key`` finished (its JSON row exists)."""
    return cell_paths(out, key)[0].exists()


def save_cell(out: Path, key: str, row: dict, **arrays) -> None:
    """Store a finished cell: arrays first, the row last (the row marks it finished)."""
    row_path, array_path = cell_paths(out, key)
    write_npz(array_path, **arrays)
    write_json(row_path, row)


def collect(out: Path) -> list[dict]:
    """All finished rows under ``out/cells``, sorted by key."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]


def write_table(out: Path, rows: list[dict], name: str = "results") -> None:
    """Write ``rows`` to ``out/<name>.csv`` and ``out/<name>.json``, atomically."""
    out = Path(out)
    write_json(out / f"{name}.json", rows)
    columns = list(dict.fromkeys(column for row in rows for column in row))

    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    _atomic(out / f"{name}.csv", write)


def check_writable(out: Path) -> Path:
    """Create ``out`` and check that files can be written there, before any work starts."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder ({err.strerror}); "
                         "choose another output folder.") from None
    return out
