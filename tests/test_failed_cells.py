"""A cell that fails while computing does not stop the study: the other cells are computed,
the failure is stored beside them and listed by the tables, the command ends with a one-line
summary per failed cell and exit status 1, and the same command retries the failed cell."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rbmem_tutorial.experiments import __main__ as cli
from rbmem_tutorial.experiments import resume, run_record, store, tradeoff

pytestmark = pytest.mark.usefixtures("private_cache")

SMALL = ["--quick", "--steps", "30", "--early-steps", "10", "--hidden", "8", "--n-x0", "12",
         "--n-param-samples", "2", "--draws-per-point", "2", "--methods", "map", "laplace",
         "--scales", "0.5", "1", "--no-progress"]
BAD = "laplace__a0.5__train0__sample0"
#: What the adaptive ODE solve raises when its step size underflows (laplace.sampled_nets).
SOLVER_ERROR = ("the adaptive solve's step size underflowed to 0: the velocity field is too "
                "stiff (or not finite) at these weights; use smaller posterior scales, float64 "
                "weights or a fixed-step method.")
REAL_RUN_CELL = tradeoff.run_cell


def failing(key):
    """``run_cell`` that raises the solver's error for cell ``key`` and computes the others."""
    def run_cell(config, context, cell):
        if cell.key == key:
            raise RuntimeError(SOLVER_ERROR)
        return REAL_RUN_CELL(config, context, cell)

    return run_cell


def study(out, *extra):
    return cli.main(["tradeoff", *SMALL, "--out", str(out), *extra])


def test_a_failed_cell_is_recorded_listed_and_retried(tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    monkeypatch.setattr(tradeoff, "run_cell", failing(BAD))
    assert study(out) == 1
    printed, err = capsys.readouterr()
    assert "computed 2 cells, 1 failed" in printed and "2 cells in" in printed
    assert f"error: cell {BAD} (method laplace, scale α=0.5, training seed 0) failed: " \
           f"RuntimeError: {SOLVER_ERROR}" in err
    assert "lower this scale (--scales)" in err and "retries this one" in err
    summary = err[err.index("error: 1 of 3 cells failed"):].splitlines()
    assert len(summary) == 2 and "rerunning the same command retries them" in summary[0]
    assert summary[1].startswith(f"  {BAD}: RuntimeError: the adaptive solve's step size")
    assert "Fix: the ODE solver blew up" in summary[1]

    cells = out / "cells"
    assert sorted(p.name for p in cells.iterdir()) == sorted(
        [f"{BAD}.failed"] + [f"{key}.{ext}" for key in ("laplace__a1__train0__sample0",
                                                         "map__a0__train0__sample0")
                             for ext in ("json", "npz")])  # no claim is left
    record = json.loads((cells / f"{BAD}.failed").read_text())
    assert record["method"] == "laplace" and record["scale"] == 0.5
    assert record["error"] == f"RuntimeError: {SOLVER_ERROR[:-1]}" and record["message"] in err

    rows = json.loads((out / "results.json").read_text())
    assert sorted(row["key"] for row in rows) == ["laplace__a1__train0__sample0",
                                                  "map__a0__train0__sample0"]
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["key"] for row in table] == [row["key"] for row in rows]
    assert not any(value.lower() in ("nan", "") for row in table for key, value in row.items()
                   if key in tradeoff.ROW_FIELDS)
    assert [r["key"] for r in json.loads((out / resume.FAILED_FILE).read_text())] == [BAD]
    assert (out / "frontier.png").exists()
    run = run_record.read_runs(out)[-1]
    assert (run["status"], run["cells_computed"], run["cells_failed"]) == ("finished", 2, 1)

    assert cli.main(["merge", "--out", str(out)]) == 0  # merging names it too
    assert "1 failed cell(s) are not in the tables" in capsys.readouterr().err

    assert study(out) == 1  # the same command retries the failed cell (and only it)
    printed, err = capsys.readouterr()
    assert "computed 0 cells, 1 failed" in printed and "error: 1 of 3 cells failed" in err

    monkeypatch.setattr(tradeoff, "run_cell", REAL_RUN_CELL)  # the cause is gone
    assert study(out) == 0
    printed, err = capsys.readouterr()
    assert "rank 0: computed 1 cells\n" in printed and "cells failed" not in err
    assert store.failures(out) == [] and not (cells / f"{BAD}.failed").exists()
    assert json.loads((out / resume.FAILED_FILE).read_text()) == []
    assert len(json.loads((out / "results.json").read_text())) == 3
    runs = run_record.read_runs(out)
    assert [(r["cells_computed"], r["cells_failed"]) for r in runs] == [(2, 1), (0, 1), (1, 0)]


def test_force_deletes_failure_records_like_cells(tmp_path, monkeypatch):
    out = tmp_path / "study"
    monkeypatch.setattr(tradeoff, "run_cell", failing(BAD))
    assert study(out, "--methods", "laplace", "--scales", "0.5") == 1
    assert (out / "cells" / f"{BAD}.failed").exists()
    resume.clear_study(out)
    assert not (out / "cells").exists() and not (out / resume.FAILED_FILE).exists()


def test_a_failure_seen_by_another_process_meanwhile_is_left_alone(tmp_path):
    store.save_failure(tmp_path, "a", {"error": "E"})
    record = store.failure_path(tmp_path, "a")
    assert store.failed_since(tmp_path, "a", record.stat().st_mtime - 1.0)
    assert not store.failed_since(tmp_path, "a", record.stat().st_mtime + 1.0)  # an old one
    assert not store.failed_since(tmp_path, "b", 0.0)
    store.save_cell(tmp_path, "a", {"key": "a"}, samples=np.zeros((1, 2)))
    assert store.failures(tmp_path) == []  # finished since: no longer failed


SCRIPT = """\
import sys
from rbmem_tutorial.experiments import __main__ as cli, tradeoff
real = tradeoff.run_cell
def run_cell(config, context, cell):
    if cell.key == sys.argv[1]:
        raise RuntimeError("the adaptive solve's step size underflowed to 0")
    return real(config, context, cell)
tradeoff.run_cell = run_cell
raise SystemExit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_processes_release_a_failed_cell_and_rank_0_reports_it(tmp_path):
    script = tmp_path / "failing_study.py"
    script.write_text(SCRIPT)
    bad = "laplace__a0.5__train1__sample0"  # a cell of rank 1 (one training seed per rank)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29531", str(script), bad, "tradeoff", *SMALL,
               "--train-seeds", "0", "1", "--out", str(tmp_path / "study")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "rank 1: computed 2 cells, 1 failed" in done.stdout
    assert "rank 0: computed 3 cells" in done.stdout and "5 cells in" in done.stdout
    assert "error: 1 of 6 cells failed" in done.stderr
    assert f"  {bad}: RuntimeError: the adaptive solve's" in done.stderr
    cells = tmp_path / "study" / "cells"
    assert not list(cells.glob("*.claim")) and (cells / f"{bad}.failed").exists()
    run = run_record.read_runs(tmp_path / "study")[-1]
    assert run["failed_by_rank"] == {"0": 0, "1": 1} and run["cells_computed"] == 5
