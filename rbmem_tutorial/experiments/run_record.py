"""The run record of a study folder: what ran, where, on what, and on which data.

``run.json`` beside ``config.json`` lists one entry per invocation (a resumed study has
several): the command line, the versions of this package, torch and numpy, the git commit of
the source when it is a checkout, the device, the number of processes, start and end times
(UTC, ISO 8601), how the run ended, and the data file's absolute path and SHA-256, so that a
shared folder says how to reproduce its numbers.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from . import store


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


def start_run(config, out, command: list[str], world_size: int = 1) -> dict:
    """Append this invocation (``command``: the program and its arguments) to
    ``out/run.json`` and return its entry (see :func:`end_run`)."""
    entry = {
        "command": list(command),
        "python": platform.python_version(), "rbmem_tutorial": __version__,
        "torch": torch.__version__, "numpy": np.__version__, "git_commit": git_commit(),
        "host": platform.node(), "device": device_name(config.device),
        "processes": world_size, "started": _now(), "ended": None, "status": "running",
    }
    if config.data_file is not None:
        entry["data_file"] = str(Path(config.data_file).resolve())
        entry["data_sha256"] = sha256(config.data_file)
    runs = read_runs(out)
    runs.append(entry)
    store.write_json(Path(out) / "run.json", {"runs": runs})
    return entry


def end_run(out, entry: dict, status: str, cells_computed: int) -> None:
    """Record how the run of ``entry`` ended (``finished``, ``interrupted`` or ``failed``)."""
    runs = read_runs(out)
    for run in runs:
        if run["started"] == entry["started"] and run["command"] == entry["command"]:
            run.update(ended=_now(), status=status, cells_computed=cells_computed)
    store.write_json(Path(out) / "run.json", {"runs": runs})


def read_runs(out) -> list[dict]:
    """The entries of ``out/run.json`` (empty when there is none or it is unreadable)."""
    path = Path(out) / "run.json"
    try:
        return list(json.loads(path.read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
