"""A JupyterLab server for the browser tests, started as a student starts it and always stopped.

:func:`running_lab` runs the README's ``jupyter lab`` from the repository root, on the loopback
address with a random token. Its configuration, data, runtime, settings and checkpoint folders
are private and autosave is off, so neither the user's Jupyter settings nor announcement pop-ups
reach the test and a run leaves the repository as it was. The app object is exposed to the page
(``window.jupyterapp``) so a test can read the notebook's state. Whatever happens inside the
``with`` block, the server is asked to shut down (kernels included) through its REST API, then
terminated, then killed.

Example
-------
>>> with running_lab(ROOT) as lab:  # doctest: +SKIP
...     lab.url("lab/tree/book/01_flow_matching.ipynb")
'http://127.0.0.1:40123/lab/tree/book/01_flow_matching.ipynb?token=...'
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# No "would you like news / update checks?" toast over the notebook, and no autosave: a run
# must not write its outputs into the repository's notebooks.
QUIET_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


@dataclass(frozen=True)
class Lab:
    """A running server: its address, token and process.

    Attributes
    ----------
    base : str
        ``http://127.0.0.1:PORT/``.
    token : str
        The token every request carries.
    process : subprocess.Popen
        The server process.
    log : Path
        Its standard output and error.
    """

    base: str
    token: str
    process: subprocess.Popen
    log: Path

    def url(self, path: str) -> str:
        """The address of ``path`` (relative to the server root) with the token."""
        return f"{self.base}{path}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        """The JSON answer of the REST endpoint ``api/<path>``."""
        request = urllib.request.Request(
            f"{self.base}api/{path}", method=method,
            headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            body = answer.read()
        return json.loads(body) if body else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(lab: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({lab.process.returncode}):\n"
                               f"{lab.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            lab.api("status")
            return
        time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer in {timeout:g} s:\n"
                       f"{lab.log.read_text()[-3000:]}")


def _stop(lab: Lab) -> None:
    """Shut the server and its kernels down; terminate, then kill, a server that does not go."""
    with contextlib.suppress(OSError):
        lab.api("shutdown", method="POST")
    for stop in (lab.process.terminate, lab.process.kill):
        try:
            lab.process.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            stop()
    lab.process.wait(timeout=20)


def jupyter_command() -> str:
    """The ``jupyter`` command installed beside this Python (the README's ``jupyter lab``)."""
    found = shutil.which("jupyter", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError("no jupyter command: pip install -r requirements.txt")
    return found


@contextlib.contextmanager
def running_lab(
    root: Path, *, env: dict | None = None, timeout: float = 600.0, keep_log: Path | None = None
) -> Iterator[Lab]:
    """Run ``jupyter lab`` from ``root`` for the ``with`` block and stop it in every outcome.

    Parameters
    ----------
    root : Path
        The folder the server serves and starts in (kernels start in their notebook's folder).
    env : dict, optional
        The server's environment (its kernels inherit it); default ``os.environ``.
    timeout : float
        Seconds to wait for the server to answer.
    keep_log : Path, optional
        Where to copy the server's log once it has stopped.

    Yields
    ------
    Lab
        The running server.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be an existing folder to serve, got {root}.")
    with tempfile.TemporaryDirectory(prefix="rbmem-lab-") as private:
        private = Path(private)
        for name, values in QUIET_SETTINGS.items():
            path = private / "config" / "lab" / "user-settings" / name
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(values))
        server_env = {**(os.environ if env is None else env),
                      "JUPYTER_CONFIG_DIR": str(private / "config"),
                      "JUPYTER_DATA_DIR": str(private / "data"),
                      "JUPYTER_RUNTIME_DIR": str(private / "runtime")}
        port, token = _free_port(), secrets.token_hex(24)
        command = [jupyter_command(), "lab", "--no-browser",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                   f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
                   f"--FileCheckpoints.checkpoint_dir={private / 'checkpoints'}",
                   "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        log = private / "server.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=root, env=server_env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        lab = Lab(base=f"http://127.0.0.1:{port}/", token=token, process=process, log=log)
        try:
            _wait_until_up(lab, timeout)
            yield lab
        finally:
            _stop(lab)
            if keep_log is not None:
                keep_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, keep_log)
