"""The experiment command line as a user meets it: every mistake is one ``error:`` line and
exit status 2 before any work; reruns refuse options that would mix results, extend the study
for new cells, recompute with --force; damaged files are named, moved aside and recomputed;
two processes on one folder never compute a cell twice; each run leaves a run record."""

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import in_private_cache, results_by_key

import rbmem_tutorial
from rbmem_tutorial.cache import entry_path, load_cached, save_atomic, save_entry
from rbmem_tutorial.experiments import __main__ as cli
from rbmem_tutorial.experiments import store, tradeoff
from rbmem_tutorial.experiments.map_check import MIN_PRECISION_FRACTION, map_quality_warning
from rbmem_tutorial.experiments.resume import CELL_FIELDS, differences
from rbmem_tutorial.laplace import generate
from rbmem_tutorial.reference import cache_path

pytestmark = pytest.mark.usefixtures("private_cache")

SMALL = ["--quick", "--steps", "30", "--early-steps", "10", "--hidden", "8", "--n-x0", "12",
         "--n-param-samples", "2", "--draws-per-point", "2", "--methods", "map", "laplace",
         "--no-progress"]
RBMEM = str(Path(sys.executable).parent / "rbmem")  # the console entry point


def tradeoff_main(out, *extra):
    return cli.main(["tradeoff", *SMALL, "--scales", "0.5", "--out", str(out), *extra])


def command(*args):
    return subprocess.run([RBMEM, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def base_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    with in_private_cache(tmp_path_factory):
        assert tradeoff_main(out) == 0
    return out


def copy_of(study, tmp_path):
    shutil.copytree(study, tmp_path / "study")
    return tmp_path / "study"


def mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}


@pytest.fixture
def files(tmp_path):
    """A text file saved as .npy, a plain point array, and a file in the way of a folder."""
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")
    points = np.random.default_rng(0).normal(size=(40, 3))
    np.save(tmp_path / "points.npy", points)
    (tmp_path / "blocker").write_text("a file, not a folder")
    return tmp_path


BAD = [  # (options, words of the one-line error)
    (["--structure", "foo"], "unknown structure 'foo'"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--lr", "-1"], "lr must be a finite positive"),
    (["--geodesic-rtol", "0"], "geodesic_rtol must be a finite positive"),
    (["--geodesic-rtol", "2"], "must be below 1"),
    (["--steps", "50", "--early-steps", "50"], "fewer Adam steps than steps"),
    (["--scales", "0.1", "0.1000001"], "repeat the cell key(s) ['0.1']"),
    (["--profile", "cpu"], "not allowed with argument --quick"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--hidden", "0"], "hidden must be at least 1"),
    (["--newton-steps", "-1"], "newton_steps must be at least 0"),
    (["--n-x0", "1"], "n_x0 must be at least 2"),
    (["--dataset", "digits", "--n-train", "5000"], "lower --n-train to at most 1795"),
    (["--data-file", "{tmp}/text.npy"], "is not a NumPy .npy file"),
    (["--data-file", "{tmp}/missing.npy"], "does not exist"),
    (["--data-file", "{tmp}/points.npy", "--n-train", "39"], "at most 38"),
    (["--data-file", "{tmp}/points.npy", "--net", "conv"], "net 'conv' needs images"),
    (["--data-file", "{tmp}/points.npy", "--dataset", "moons"], "not both"),
    (["--param-subset", "nosuchlayer"], "nosuchlayer"),
    (["--param-subset", "last9"], "asks for 9 layers"),
    (["--dataset", "foo"], "unknown dataset 'foo'"),
    (["--net", "foo"], "unknown net 'foo'"),
    (["--draws-per-point", "0"], "draws_per_point must be at least 1"),
    (["--dataset", "digits", "--n-test", "5000"], "Lower n_test"),
    (["--train-seeds", "-1"], "train_seeds must be at least 0, got -1"),
    (["--sample-seeds", "0", "-2"], "sample_seeds must be at least 0, got -2"),
    (["--temperature", "2.0", "2"], "temperatures [2.0, 2.0] repeat 2;"),
    (["--temperature", "1", "sum"], "1 and 'sum' are the same temperature"),
    (["--out", "{tmp}"], "holds files but no study"),
    (["--out", "{tmp}/blocker"], "is not a writable folder"),
    (["--out", "{tmp}/blocker/out"], "is not a writable folder"),
]


@pytest.mark.parametrize("options, message", BAD)
def test_each_bad_option_is_one_error_line_before_any_work(files, capsys, options, message):
    options = [o.replace("{tmp}", str(files)) for o in options]
    try:
        code = cli.main(["tradeoff", "--quick", "--out", str(files / "out"), *options])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        ("error:", f"{cli._prog()} tradeoff: error:"))
    assert not (files / "out" / "cells").exists()


def test_unwritable_cache_and_merge_mistakes_are_errors(files, capsys, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(files / "blocker" / "cache"))
    assert cli.main(["tradeoff", "--quick", "--out", str(files / "out")]) == 2
    assert "the model cache" in capsys.readouterr().err
    assert cli.main(["merge", "--out", str(files / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["merge", "--out", str(files)]) == 2  # a folder, but not a study
    assert "holds no config.json" in capsys.readouterr().err
    results = files / "shipped" / "results.json"  # merged results without their cells
    store.write_json(files / "shipped" / "config.json", {"profile": "quick"})
    results.write_text("[]")
    assert cli.main(["merge", "--out", str(files / "shipped")]) == 2
    assert "nothing to merge" in capsys.readouterr().err
    assert results.read_text() == "[]"


def test_rerun_with_other_options_is_refused_naming_them(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    before = mtimes(out)
    assert tradeoff_main(out, "--steps", "40", "--n-x0", "10") == 2
    err = capsys.readouterr().err
    assert "steps (saved 30, now 40)" in err and "n_x0 (saved 12, now 10)" in err
    assert "--force" in err
    assert mtimes(out) == before
    assert json.loads((out / "config.json").read_text())["steps"] == 30


def test_resume_check_compares_every_field_and_only_cell_fields_extend():
    saved = tradeoff.TradeoffConfig()
    record = json.loads(json.dumps(tradeoff.resume.config_record(saved)))
    changed = {"n_x0": 7, "structure": "full", "scales": (3.0,), "train_seeds": (5,),
               "profile": "gpu"}
    found = differences(record, tradeoff.TradeoffConfig(**changed))
    assert [text.split(" ")[0] for text in found] == ["structure", "n_x0"]
    assert {"train_seeds", "sample_seeds", "scales", "methods"} <= set(CELL_FIELDS)
    del record["n_x0"]  # a field a newer version added counts as its default
    assert differences(record, saved) == []


def test_force_recomputes_and_new_cells_extend(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    before = mtimes(out)
    assert tradeoff_main(out, "--scales", "0.25") == 0  # one more scale: one more cell
    assert "computed 1 cells" in capsys.readouterr().out
    assert {k: v for k, v in mtimes(out).items() if k in before} == before
    assert json.loads((out / "config.json").read_text())["scales"] == [0.5, 0.25]
    assert len(results_by_key(out)) == 3
    assert tradeoff_main(out, "--n-x0", "10", "--force") == 0
    assert "computed 2 cells" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["n_x0"] == 10
    assert {row["n_generated"] for row in results_by_key(out).values()} == {20}


def test_damaged_cells_are_named_moved_aside_and_recomputed(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    expected = results_by_key(base_study)
    npz = next((out / "cells").glob("laplace*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    (out / "cells" / "map__a0__train0__sample0.json").write_text('{"key": "map__a')
    assert cli.main(["merge", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert npz.stem in err and "map__a0__train0__sample0 is damaged" in err
    assert len(results_by_key(out)) == 0
    assert len(list((out / "damaged").iterdir())) == 4  # both files of both cells
    assert tradeoff_main(out) == 0
    got = results_by_key(out)
    assert got.keys() == expected.keys()
    for key in expected:  # recomputed bit for bit
        assert got[key]["mem_strict"] == expected[key]["mem_strict"]
        assert got[key]["mmd2"] == expected[key]["mmd2"]


def test_damaged_cache_entry_is_named_and_retrained(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    (out / "cells" / "map__a0__train0__sample0.json").unlink()  # one cell left to compute
    config = cli._config(cli._parser().parse_args(["tradeoff", *SMALL, "--out", str(out)]))
    entry = cache_path(config.flow_config(0))
    entry.write_bytes(entry.read_bytes()[:300])
    assert tradeoff_main(out) == 0
    assert f"cache entry {entry} is damaged" in capsys.readouterr().err
    assert torch.load(entry, weights_only=True)["state_dict"]  # trained and cached again
    again, before = (results_by_key(f)["map__a0__train0__sample0"] for f in (out, base_study))
    for column in ("mem_strict", "mmd2", "precision", "loss_map"):  # retraining is seeded
        assert again[column] == before[column], column


def test_cell_claims_exclude_other_processes_and_expire_with_them(tmp_path):
    assert store.claim(tmp_path, "a")
    assert not store.claim(tmp_path, "a")  # held by a live process (this one)
    dead = _dead_pid()
    claim = tmp_path / "cells" / "b.claim"
    claim.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead)}))
    assert store.claim(tmp_path, "b")  # its process is gone
    claim.write_text(json.dumps({"host": "elsewhere", "pid": int(dead)}))
    assert not store.claim(tmp_path, "b")  # cannot tell for another machine: respected
    store.release(tmp_path, "a")
    assert store.claim(tmp_path, "a")


def _run_and_exit_with_count(config, out):
    os._exit(len(tradeoff.run_study(config, out, progress=False)))


def test_two_processes_on_one_folder_compute_each_cell_once(base_study, tmp_path):
    argv = ["tradeoff", *SMALL, "--scales", "0.5", "--sample-seeds", "0", "1", "2",
            "--out", str(tmp_path)]
    config = cli._config(cli._parser().parse_args(argv))  # nets and posterior cached already
    fork = multiprocessing.get_context("fork")  # two processes, started together
    running = [fork.Process(target=_run_and_exit_with_count, args=(config, tmp_path))
               for _ in range(2)]
    for process in running:
        process.start()
    for process in running:
        process.join(timeout=300)
    counts = [process.exitcode for process in running]
    assert sum(counts) == len(tradeoff.cells(config)) == 6, counts
    assert len(list((tmp_path / "cells").glob("*.json"))) == 6
    assert not list((tmp_path / "cells").glob("*.claim"))


def test_point_file_run_record_progress_and_merge_elsewhere(files, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(files)  # a relative --data-file and --out
    argv = ["tradeoff", *SMALL[:-1], "--scales", "0.5", "--data-file", "points.npy",
            "--n-train", "20", "--out", "study"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "seed 0 set up in" in err and "1/2 cells" in err and "2/2 cells" in err
    assert "left" in err  # the time estimate after the first cell
    study = files / "study"
    run = json.loads((study / "run.json").read_text())["runs"][-1]
    assert run["data_file"] == str(files / "points.npy")
    assert run["data_sha256"] == hashlib.sha256((files / "points.npy").read_bytes()).hexdigest()
    assert run["status"] == "finished" and run["ended"] >= run["started"]
    assert run["command"][1:] == argv
    assert run["torch"] == torch.__version__ and run["numpy"] == np.__version__
    assert run["device"].startswith("cpu")
    monkeypatch.chdir(tmp_path)  # merge from another working directory
    assert cli.main(["merge", "--out", str(study)]) == 0
    assert (study / "results.csv").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_result_files_are_group_readable(tmp_path):
    old = os.umask(0o022)
    try:
        store.write_json(tmp_path / "a.json", {"x": 1})
        store.write_npz(tmp_path / "b.npz", x=np.zeros(2))
        save_atomic({"x": torch.zeros(1)}, tmp_path / "c.pt")  # the model cache's writer
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes == {"a.json": 0o644, "b.npz": 0o644, "c.pt": 0o644}


def test_solver_blow_up_names_the_cell_and_the_fix(base_study, tmp_path, capsys, monkeypatch):
    def underflow(config, ctx, cell):
        raise AssertionError("underflow in dt 0.0")

    monkeypatch.setattr(tradeoff, "run_cell", underflow)
    assert tradeoff_main(tmp_path, "--methods", "laplace") == 1
    err = capsys.readouterr().err
    assert "cell laplace__a0.5__train0__sample0" in err and "scale α=0.5" in err
    assert "underflow in dt" in err and "lower this scale (--scales)" in err
    assert "rerunning the same command retries this one" in err
    assert "error: 1 of 1 cells failed" in err  # the summary after the (empty) tables


def test_half_precision_weights_are_refused_before_the_solver():
    net = torch.nn.Linear(2, 2)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = net

        def forward(self, x, t):
            return self.lin(x)

    with pytest.raises(ValueError, match="theta_samples.float()"):
        generate(Field(), torch.zeros(1, 6, dtype=torch.float16), torch.ones(3, 2))


def test_map_quality_warning_reaches_log_and_results(base_study):
    rows = results_by_key(base_study)  # 30 Adam steps on 8 units: the MAP does not fit
    row = rows["map__a0__train0__sample0"]
    assert row["precision"] < MIN_PRECISION_FRACTION * row["baseline_precision"]
    assert all(r["map_warning"] == map_quality_warning(row) != "" for r in rows.values())
    fitted = {**row, "precision": MIN_PRECISION_FRACTION * row["baseline_precision"]}
    assert map_quality_warning(fitted) == ""  # at the threshold: no warning


def test_help_is_plain_text_with_profiles_and_adam_steps():
    done = command("tradeoff", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert "``" not in text and ":mod:" not in text and ":func:" not in text
    assert "usage: rbmem tradeoff" in text
    assert "Adam steps of the MAP net" in text and "SGD steps" not in text
    for name, values in tradeoff.PROFILES.items():
        assert f"  {name}: " in text
        assert f"--{next(iter(values)).replace('_', '-')}" in text


def test_cache_list_and_clear_touch_only_this_packages_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    flow = entry_path("study-flow", "a")
    save_entry({"state_dict": {"w.weight": torch.zeros(3, 2)}, "seconds": 1.0}, flow)
    save_entry({"theta_map": torch.zeros(5), "prior_precision": 2.0,
                "refine_final": {"grad_norm_after": 1e-7}}, entry_path("posterior", "b"))
    users = ["notes.txt", "flow-myproject.pt", "posterior-final.pt"]
    for name in users:
        (tmp_path / name).write_text("not ours")
    (tmp_path / "flow-dir.pt").mkdir()
    assert cli.main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "study-flow" in listing and "6 weights (layers 3x2)" in listing
    assert "MAP of 5 weights, prior precision 2" in listing
    assert not any(name in listing for name in users)
    assert cli.main(["cache", "clear", "--kind", "posterior"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "flow-dir.pt",
                                                                 flow.name])
    assert cli.main(["cache", "clear"]) == 0
    assert "deleted 1 file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "flow-dir.pt"])


def test_point_arrays_load_as_rows_with_distance_ratios_kept(files):
    from rbmem_tutorial.data import load_image_file

    points = np.load(files / "points.npy")
    loaded = load_image_file(files / "points.npy")
    assert tuple(loaded.shape) == (40, 1, 1, 3)
    rows = loaded.reshape(40, 3).numpy()
    assert rows.min() == -1.0 and rows.max() == 1.0
    before = np.linalg.norm(points[1:] - points[0], axis=1)
    after = np.linalg.norm(rows[1:] - rows[0], axis=1)
    np.testing.assert_allclose(after / after[0], before / before[0], rtol=1e-12)


def _points_study(files, out, *extra):
    return cli.main(["tradeoff", *SMALL, "--scales", "0.5", "--data-file",
                     str(files / "points.npy"), "--n-train", "20", "--out", str(out), *extra])


def test_a_data_file_with_other_contents_at_the_same_path_is_refused(files, capsys):
    out = files / "study"
    assert _points_study(files, out) == 0
    before = mtimes(out)
    points = np.load(files / "points.npy")
    np.save(files / "points.npy", points * 1.01)  # same path and shape, other numbers
    assert _points_study(files, out) == 2
    err = capsys.readouterr().err
    assert "data_sha256" in err and "points.npy changed" in err and "--force" in err
    assert cli.main(["merge", "--out", str(out)]) == 2
    assert "computed on other data" in capsys.readouterr().err
    np.save(files / "points.npy", points[:, :2])  # other dimensions: refused the same way
    assert _points_study(files, out) == 2
    assert "data_sha256" in capsys.readouterr().err
    assert mtimes(out) == before
    np.save(files / "points.npy", points)  # the study's data again: it resumes and merges
    assert _points_study(files, out) == 0 and cli.main(["merge", "--out", str(out)]) == 0


def test_force_recomputes_a_study_whose_cells_folder_is_a_link(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    (out / "cells").rename(tmp_path / "elsewhere")
    (out / "cells").symlink_to(tmp_path / "elsewhere")
    assert tradeoff_main(out, "--n-x0", "10", "--force") == 0
    assert "computed 2 cells" in capsys.readouterr().out
    assert (out / "cells").is_symlink()
    assert {row["n_generated"] for row in results_by_key(out).values()} == {20}


def test_a_folder_with_files_but_no_study_is_refused_unless_allowed(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.csv").write_text("mine\n")
    assert tradeoff_main(folder) == 2
    err = capsys.readouterr().err
    assert "holds files but no study (results.csv)" in err and "--allow-nonempty" in err
    assert (folder / "results.csv").read_text() == "mine\n"
    assert sorted(p.name for p in folder.iterdir()) == ["results.csv"]
    assert tradeoff_main(folder, "--allow-nonempty") == 0
    assert len(results_by_key(folder)) == 2


def test_run_record_counts_each_invocations_own_cells_and_marks_killed_runs(base_study,
                                                                            tmp_path):
    out = tmp_path / "shared"
    argv = ["tradeoff", *SMALL, "--scales", "0.5", "--sample-seeds", "0", "1", "2",
            "--out", str(out)]
    assert command(*argv[:-2], "--sample-seeds", "0", "--out", str(out)).returncode == 0
    runs = json.loads((out / "run.json").read_text())["runs"]
    runs.append({**runs[0], "id": "dead", "status": "running", "pid": _dead_pid()})
    store.write_json(out / "run.json", {"runs": runs})
    both = [subprocess.Popen([RBMEM, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            for _ in range(2)]
    printed = []
    for process in both:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        assert "skipped" not in stderr
        printed.append(int(stdout.split("rank 0: computed ")[1].split()[0]))
    runs = json.loads((out / "run.json").read_text())["runs"]
    assert [run["status"] for run in runs] == ["finished", "killed", "finished", "finished"]
    assert sorted(run["cells_computed"] for run in runs[2:]) == sorted(printed)
    assert runs[0]["cells_computed"] == 2 and sum(printed) == 4  # 6 cells, 2 done before


def _dead_pid():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    return int(done.stdout)


def test_a_saved_value_this_version_refuses_is_one_line_with_the_fix(base_study, tmp_path,
                                                                    capsys):
    out = copy_of(base_study, tmp_path)
    record = json.loads((out / "config.json").read_text())
    store.write_json(out / "config.json", {**record, "train_seeds": [-1]})
    assert tradeoff_main(out) == 2
    err = capsys.readouterr().err
    assert "holds a value this version refuses (train_seeds must be at least 0" in err
    assert "--force" in err and "Traceback" not in err
    assert tradeoff_main(out, "--force") == 0


def test_cells_that_parse_but_lack_a_field_or_a_column_are_moved_aside(base_study, tmp_path,
                                                                      capsys):
    out = copy_of(base_study, tmp_path)
    row_path = out / "cells" / "map__a0__train0__sample0.json"
    row = json.loads(row_path.read_text())
    del row["method"]
    row_path.write_text(json.dumps(row))
    npz = next((out / "cells").glob("laplace*.npz"))
    arrays = dict(np.load(npz))
    np.savez(npz, **{**arrays, "samples": arrays["samples"][:, :1]})  # one column, not two
    assert cli.main(["merge", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "map__a0__train0__sample0 is damaged (KeyError: 'the row has no field method')" in err
    assert f"{npz.stem} is damaged (ValueError: its samples are 24 x 1, not N x 2)" in err
    assert "Traceback" not in err and results_by_key(out) == {}
    assert tradeoff_main(out) == 0
    assert results_by_key(out).keys() == results_by_key(base_study).keys()


def test_a_cells_path_that_takes_no_files_is_one_line(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    shutil.rmtree(out / "cells")
    (out / "cells").write_text("a file where the cells folder belongs")
    assert tradeoff_main(out) == 2
    assert f"the cells folder {out / 'cells'} is not a writable folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cells_folder_is_one_line(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    (out / "cells").chmod(0o500)
    try:
        assert tradeoff_main(out) == 2
    finally:
        (out / "cells").chmod(0o700)
    assert "is not a writable folder (Permission denied)" in capsys.readouterr().err


def test_junk_or_ill_fitting_cache_entries_are_set_aside_and_retrained(base_study, tmp_path,
                                                                      capsys):
    out = copy_of(base_study, tmp_path)
    (out / "cells" / "map__a0__train0__sample0.json").unlink()
    config = cli._config(cli._parser().parse_args(["tradeoff", *SMALL, "--out", str(out)]))
    entry = cache_path(config.flow_config(0))
    entry.write_bytes(np.random.default_rng(0).bytes(entry.stat().st_size))
    assert cli.main(["cache", "list"]) == 0
    assert tradeoff_main(out) == 0
    assert f"cache entry {entry} is damaged (unreadable" in capsys.readouterr().err
    (out / "cells" / "map__a0__train0__sample0.json").unlink()
    record = load_cached(entry)
    first = next(iter(record["state_dict"]))
    record["state_dict"][first] = torch.zeros(3, 3)  # signed, but not this net's shapes
    save_entry(record, entry)
    assert tradeoff_main(out) == 0
    assert "is damaged (unusable: RuntimeError" in capsys.readouterr().err
    assert load_cached(entry)["state_dict"][first].shape != (3, 3)  # trained and cached again
    again, before = (results_by_key(f)["map__a0__train0__sample0"] for f in (out, base_study))
    for column in ("mem_strict", "mmd2", "precision", "loss_map"):  # retraining is seeded
        assert again[column] == before[column], column


def test_the_default_held_out_size_given_explicitly_is_no_change(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    assert tradeoff_main(out, "--n-test", "2000") == 0  # max(2000, 24 generated samples)
    assert "computed 0 cells" in capsys.readouterr().out
    assert tradeoff_main(out, "--n-test", "1999") == 2
    assert "n_test (saved 2000, now 1999)" in capsys.readouterr().err


def test_a_quoted_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for study in ("merge", "tradeoff"):
        assert cli._parser().parse_args([study, "--out", "~/runs"]).out == tmp_path / "runs"


def test_no_profile_is_announced_as_the_cpu_profile(base_study, tmp_path, capsys):
    out = copy_of(base_study, tmp_path)
    same = [o for o in SMALL if o != "--quick"] + ["--train-seeds", "0", "--scales", "0.5"]
    assert cli.main(["tradeoff", *same, "--out", str(out)]) == 0
    assert "no --profile given, so this runs the 'cpu' profile" in capsys.readouterr().err


def test_help_shows_every_default_version_and_what_each_method_means(capsys):
    run = cli._parser()._subparsers._group_actions[0].choices["tradeoff"]
    fields = set(tradeoff.TradeoffConfig.__dataclass_fields__) - {"profile"}
    options = [a for a in run._actions if a.dest in fields]
    assert len(options) >= 28
    assert all("default" in a.help for a in options), [
        a.dest for a in options if "default" not in a.help]
    lr = next(a.help for a in options if a.dest == "lr")
    assert lr.endswith(f"(default {tradeoff.TradeoffConfig().lr}, or as the profile sets it)")
    assert command("--version").stdout.strip() == f"rbmem {rbmem_tutorial.__version__}"
    assert cli.main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in (*tradeoff.METHODS, "MAP", "θ*", "HVP", "Monge metric", "frozen (x0, t) draws",
                 "L-BFGS", "kfac"):
        assert f"{name}" in text, name
    assert text.count("\n  ") >= len(tradeoff.METHODS)


def test_sigterm_stops_releases_claims_and_is_recorded(base_study, tmp_path):
    out = copy_of(base_study, tmp_path)
    argv = [RBMEM, "tradeoff", *SMALL[:-1], "--scales", "0.5", "--sample-seeds", "0", "1", "2",
            "3", "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stderr:  # stop it while it works on a claimed cell
        if "seed 0:" in line:
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "terminated:" in err and "Traceback" not in err
    assert not list((out / "cells").glob("*.claim"))
    assert json.loads((out / "run.json").read_text())["runs"][-1]["status"] == "terminated"


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path):
    process = subprocess.Popen([RBMEM, "cache", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the interpreter has started; torch is being imported
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode in (0, 130)  # 0 only when it finished first
    assert "Traceback" not in err
