"""The run record of a study folder: what ran, where, on what, and on which data.

``run.json`` beside ``config.json`` lists one entry per invocation (a resumed study has
several): the command line, the versions of this package, torch and numpy, the git commit of
the source when it is a checkout, the device, the number of processes, start and end times
(UTC, ISO 8601), how the run ended, and the data file's absolute path and SHA-256, so that a
shared folder says how to reproduce its numbers.

``cells_computed`` counts the cells this invocation computed itself, summed over its
processes (``cells_by_rank``), never the cells other invocations added to the folder meanwhile;
``cells_failed`` (``failed_by_rank``) counts the cells that failed while it computed them.
Every change is a read-modify-write of ``run.json`` under an exclusive lock
(``.run.json.lock``), so invocations sharing a folder do not lose each other's entries. An
entry still ``running`` whose process is gone (same host; killed with ``kill -9``, or the
machine stopped) is marked ``killed`` by the next invocation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from rbmem_tutorial._version import __version__
from rbmem_tutorial.experiments import store


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the package's source checkout (``+dirty`` with local changes), or
    ``None`` for an installed copy or without git."""
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def device_name(device: str) -> str:
    """The device in words: the GPU's name for CUDA, the processor otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def _locked_runs(out):
    """The entries of ``out/run.json`` to change in place, written back under an exclusive
    lock when the block ends."""
    lock = Path(out) / ".run.json.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            runs = read_runs(out)
            yield runs
            store.write_json(Path(out) / "run.json", {"runs": runs})
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _mark_killed(runs: list[dict]) -> None:
    host = platform.node()
    for run in runs:
        if run.get("status") == "running" and run.get("host") == host and \
                not _alive(run.get("pid")):
            run["status"] = "killed"


def start_run(config, out, command: list[str], world_size: int = 1) -> dict:
    """Append this invocation (``command``: the program and its arguments) to
    ``out/run.json`` and return its entry (see :func:`end_run`); earlier entries whose process
    died while running are marked ``killed``."""
    entry = {
        "id": uuid.uuid4().hex, "command": list(command),
        "python": platform.python_version(), "rbmem_tutorial": __version__,
        "torch": torch.__version__, "numpy": np.__version__, "git_commit": git_commit(),
        "host": platform.node(), "pid": os.getpid(), "device": device_name(config.device),
        "processes": world_size, "started": _now(), "ended": None, "status": "running",
        "cells_computed": 0, "cells_by_rank": {}, "cells_failed": 0, "failed_by_rank": {},
    }
    if config.data_file is not None:
        entry["data_file"] = str(Path(config.data_file).resolve())
        entry["data_sha256"] = sha256(config.data_file)
    with _locked_runs(out) as runs:
        _mark_killed(runs)
        runs.append(entry)
    return entry


def end_run(out, entry: dict, status: str | None, cells_computed: int, rank: int = 0,
            cells_failed: int = 0) -> None:
    """Record the cells that process ``rank`` of the run of ``entry`` computed and those that
    failed, and how the run ended (``finished``, ``interrupted``, ``terminated`` or ``failed``;
    ``None`` leaves the status to rank 0). A run that went through all its cells is
    ``finished`` also when some of them failed: ``cells_failed`` says how many."""
    with _locked_runs(out) as runs:
        for run in runs:
            if run.get("id", run.get("started")) != entry.get("id", entry["started"]):
                continue
            done = dict(run.get("cells_by_rank") or {}) | {str(rank): int(cells_computed)}
            failed = dict(run.get("failed_by_rank") or {}) | {str(rank): int(cells_failed)}
            run.update(cells_by_rank=done, cells_computed=sum(done.values()),
                       failed_by_rank=failed, cells_failed=sum(failed.values()))
            if status is not None:
                run.update(ended=_now(), status=status)


def read_runs(out) -> list[dict]:
    """The entries of ``out/run.json`` (empty when there is none or it is unreadable)."""
    path = Path(out) / "run.json"
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [run for run in runs if isinstance(run, dict)] if isinstance(runs, list) else []
