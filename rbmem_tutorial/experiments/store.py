"""Result storage for experiment studies: one file pair per finished cell, written atomically.

A cell's samples go to ``cells/<key>.npz`` first and its row to ``cells/<key>.json`` last, so a
cell counts as finished exactly when its JSON exists: an interrupted run loses only the cell
it was working on, and a rerun skips every finished one. Files are readable by the group
(the mode an ordinary ``open`` would give under the user's umask, not ``mkstemp``'s 0600).

A damaged cell (a truncated or unreadable ``.json`` or ``.npz``, from a full disk or a copy
that stopped half-way; a row changed after it was stored, caught by the SHA-256 of the row
kept in the ``.npz``; a row that lacks a field or a sample array of the wrong shape, checked
by the study's ``check`` and ``columns``) is named on stderr and moved to ``damaged/``, so a
rerun computes it again and a merge leaves it out. Several processes may write into one
folder: each claims a cell with a ``cells/<key>.claim`` file created exclusively
(``O_EXCL``) before computing it, so no cell is computed twice; a claim left by a process
that died is taken over.

A cell that failed while computing leaves a small JSON record, ``cells/<key>.failed``
(:func:`save_failure`), written atomically like a row; it does not count as finished, so a
rerun computes the cell again, and storing the cell deletes the record.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from rbmem_tutorial._checks import check_writable_folder

#: What reading a damaged ``.json`` or ``.npz`` raises (found by tests/test_readers_fuzz.py).
UNREADABLE = (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, EOFError,
              zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError)

#: A claim file that stays empty this long (its writer died between create and write) is stale.
EMPTY_CLAIM_SECONDS = 60.0


def file_mode() -> int:
    """The permissions of a new file under the current umask (0o644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, file_mode())
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


def _row_digest(row: dict) -> str:
    text = json.dumps(json.loads(json.dumps(row)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_cell(out: Path, key: str, row: dict, **arrays) -> None:
    """Store a finished cell: arrays first, with the SHA-256 of the row (``row_sha256``), the
    row last (the row marks it finished)."""
    row_path, array_path = cell_paths(out, key)
    write_npz(array_path, **arrays, row_sha256=np.array(_row_digest(row)))
    write_json(row_path, row)


def _check_samples(samples: np.ndarray, columns: int | None, dims: int = 2) -> None:
    """Samples are ``[N, d]`` (``dims`` 2), or ``[sets, N, d]`` (``dims`` 3) for a study that
    keeps several sets per cell (the matched study: one per level); ``columns`` is d."""
    if samples.ndim != dims or (columns is not None and samples.shape[-1] != columns):
        want = ("sets x " if dims == 3 else "") + (f"N x {columns}" if columns is not None
                                                  else "N x d")
        raise ValueError(f"its samples are {' x '.join(map(str, samples.shape))}, not {want}")
    samples.sum()  # reads the whole array: a damaged one fails its CRC


def read_cell(out: Path, key: str, check=None, columns: int | None = None,
              dims: int = 2) -> dict | None:
    """The row of finished cell ``key`` after checking both its files; ``None`` when the cell
    is unfinished or damaged (a damaged cell is named on stderr and moved to ``damaged/``).

    ``check(row)`` raises ``ValueError``, ``KeyError`` or ``TypeError`` for a row that lacks
    what the study needs; ``columns`` is the width its ``samples`` array must have and
    ``dims`` its number of dimensions (:func:`_check_samples`).
    """
    row_path, array_path = cell_paths(out, key)
    if not row_path.exists():
        return None
    try:
        row = json.loads(row_path.read_text())
        if not isinstance(row, dict) or row.get("key") != key:
            raise ValueError("it does not hold the row of this cell")
        if check is not None:
            check(row)
        with np.load(array_path, allow_pickle=False) as arrays:
            _check_samples(arrays["samples"], columns, dims)
            if "row_sha256" in arrays.files and str(arrays["row_sha256"]) != _row_digest(row):
                raise ValueError("its row differs from the one stored with its samples")
    except UNREADABLE as err:
        moved = _move_aside(out, row_path, array_path)
        print(f"warning: cell {key} is damaged ({type(err).__name__}: {err}); moved "
              f"{', '.join(moved)} aside; rerunning the study recomputes it.", file=sys.stderr)
        return None
    return row


def _move_aside(out: Path, *paths: Path) -> list[str]:
    folder = Path(out) / "damaged"
    stamp = time.strftime("%Y%m%dT%H%M%S") + f".{os.getpid()}"
    moved = []
    for path in paths:
        if not path.exists():
            continue
        target = folder / f"{path.name}.{stamp}"
        try:
            folder.mkdir(exist_ok=True)
            shutil.move(path, target)  # also from a cells folder linked to another disk
        except OSError as err:
            moved.append(f"not {path.name} ({err.strerror})")
            continue
        moved.append(f"{path.name} to {target.relative_to(out)}")
    return moved


def collect(out: Path, check=None, columns: int | None = None, dims: int = 2) -> list[dict]:
    """All finished rows under ``out/cells``, sorted by key; damaged cells (:func:`read_cell`
    with ``check``, ``columns`` and ``dims``) are named, moved aside and left out."""
    rows = (read_cell(out, p.stem, check, columns, dims)
            for p in sorted((Path(out) / "cells").glob("*.json")))
    return [row for row in rows if row is not None]


def claim(out: Path, key: str) -> bool:
    """Take cell ``key`` for this process; ``False`` when a live process holds it.

    The claim is ``cells/<key>.claim`` created with ``O_EXCL`` and holding this host and
    process id. A claim whose process is gone (same host, no such pid) is taken over.
    """
    path = Path(out) / "cells" / f"{key}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
        except FileExistsError:
            if not _stale(path):
                return False
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as claim_file:
            json.dump({"host": socket.gethostname(), "pid": os.getpid()}, claim_file)
        return True
    return False


def failure_path(out: Path, key: str) -> Path:
    """The failure record of cell ``key``: ``cells/<key>.failed``."""
    return Path(out) / "cells" / f"{key}.failed"


def save_failure(out: Path, key: str, record: dict) -> None:
    """Record that cell ``key`` failed (``record``: what failed and how), atomically."""
    write_json(failure_path(out, key), record)


def clear_failure(out: Path, key: str) -> None:
    """Delete the failure record of cell ``key`` (once the cell is stored)."""
    failure_path(out, key).unlink(missing_ok=True)


def failed_since(out: Path, key: str, since: float) -> bool:
    """Whether cell ``key`` failed at or after time ``since`` (seconds since the epoch)."""
    try:
        return failure_path(out, key).stat().st_mtime >= since
    except FileNotFoundError:
        return False


def failures(out: Path) -> list[dict]:
    """The records of the cells under ``out/cells`` that failed and have not finished since,
    sorted by key; an unreadable record still counts, with an ``error`` saying so.

    Example
    -------
    >>> out = Path(tempfile.mkdtemp())
    >>> save_failure(out, "laplace__a8__train0__sample0", {"error": "step size underflowed"})
    >>> [record["key"] for record in failures(out)]
    ['laplace__a8__train0__sample0']
    """
    found = []
    for path in sorted((Path(out) / "cells").glob("*.failed")):
        if is_done(out, path.stem):
            continue
        try:
            record = json.loads(path.read_text())
        except UNREADABLE as err:
            record = {"error": f"its failure record {path.name} is unreadable ({err})"}
        record = record if isinstance(record, dict) else {"error": f"{path.name} is no record"}
        found.append({**record, "key": path.stem})
    return found


def release(out: Path, key: str) -> None:
    """Give up the claim on cell ``key`` (after storing it, or on an interruption)."""
    (Path(out) / "cells" / f"{key}.claim").unlink(missing_ok=True)


def _stale(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):  # still being written, or its writer died mid-write
        return _old(path)
    pid = owner.get("pid") if isinstance(owner, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return _old(path)  # not a claim as this package writes them
    if owner.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell, so respect it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _old(path: Path) -> bool:
    """Whether the claim ``path`` was last written more than ``EMPTY_CLAIM_SECONDS`` ago."""
    try:
        return time.time() - path.stat().st_mtime > EMPTY_CLAIM_SECONDS
    except FileNotFoundError:
        return True


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
    """Create ``out`` and check that files can be written there and in its ``cells`` folder
    when it has one, before any work starts."""
    out = check_writable_folder(out, f"--out {out}", "choose another output folder.")
    if (out / "cells").exists():
        check_writable_folder(out / "cells", f"the cells folder {out / 'cells'}",
                              "make it writable or choose another --out.")
    return out
