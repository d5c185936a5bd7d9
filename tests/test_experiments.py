"""The trade-off experiment script: schema, resume, recomputation and bad options."""

import json

import numpy as np
import pytest
import torch
from conftest import in_private_cache, results_by_key, run_study_in_two_processes

from rbmem_tutorial.experiments import __main__ as cli
from rbmem_tutorial.experiments import tradeoff
from rbmem_tutorial.memorisation import memorisation_report
from rbmem_tutorial.reference import load_or_train

pytestmark = pytest.mark.usefixtures("private_cache")  # a model cache of their own

TINY = ["--quick", "--steps", "60", "--early-steps", "20", "--hidden", "8",
        "--n-x0", "12", "--n-param-samples", "2", "--draws-per-point", "2",
        "--methods", "map", "early-stop", "isotropic", "laplace", "riemannian",
        "riemannian-linearised", "--scales", "0.05", "0.1", "--no-progress"]
SCHEMA = {"key", "method", "scale", "train_seed", "sample_seed", "mem_strict", "mem_strict_lo",
          "mem_strict_hi", "mem_loose", "mem_loose_lo", "mem_loose_hi", "true_mem_strict",
          "true_mem_loose", "mmd2", "energy", "precision", "recall", "loss_mean", "seconds",
          "nfe_geodesic_mean", "n_failed", "baseline_mmd2", "gap_ratio"}


def run(out, *extra):
    return cli.main(["tradeoff", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    with in_private_cache(tmp_path_factory):
        assert run(out) == 0
    return out


def test_cli_writes_the_documented_schema(reference_run):
    rows = results_by_key(reference_run)
    assert len(rows) == 2 + 4 * 2  # map and early-stop once, four scaled methods at two scales
    for row in rows.values():
        assert set(row) >= SCHEMA, SCHEMA - set(row)
        assert 0 <= row["mem_strict_lo"] <= row["mem_strict"] <= row["mem_strict_hi"] <= 1
        assert row["mem_strict"] <= row["mem_loose"]  # ratio < 1/3 implies ratio < 0.577
        assert (reference_run / "cells" / f"{row['key']}.npz").exists()
    for name in ("results.csv", "config.json", "frontier.png", "samples.png"):
        assert (reference_run / name).stat().st_size > 0
    header = (reference_run / "results.csv").read_text().splitlines()[0].split(",")
    assert set(header) >= SCHEMA


def test_fractions_equal_a_recomputation_from_saved_samples(reference_run):
    config = json.loads((reference_run / "config.json").read_text())
    flow = tradeoff.profile_config("quick", hidden=tuple(config["hidden"]), steps=60,
                                   early_steps=20).flow_config(0)
    train = load_or_train(flow, progress=False).train
    for key, row in results_by_key(reference_run).items():
        samples = torch.from_numpy(np.load(reference_run / "cells" / f"{key}.npz")["samples"])
        report = memorisation_report(samples, train)
        assert report.fraction_strict == row["mem_strict"]
        assert report.fraction_loose == row["mem_loose"]


def test_interrupted_run_resumes_and_matches(reference_run, tmp_path, monkeypatch, capsys):
    calls = []
    real = tradeoff.run_cell

    def crash_after_three(config, ctx, cell):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cell.key)
        return real(config, ctx, cell)

    monkeypatch.setattr(tradeoff, "run_cell", crash_after_three)
    assert run(tmp_path) == 130  # Ctrl-C: the shell's status for SIGINT
    assert "interrupted: 3 of 10 cells" in capsys.readouterr().err
    assert len(list((tmp_path / "cells").glob("*.json"))) == 3
    assert not list((tmp_path / "cells").glob("*.claim"))  # the interrupted cell's is released
    assert json.loads((tmp_path / "run.json").read_text())["runs"][-1]["status"] == "interrupted"
    monkeypatch.setattr(tradeoff, "run_cell", real)
    config = cli._config(cli._parser().parse_args(["tradeoff", *TINY, "--out", str(tmp_path)]))
    computed = tradeoff.run_study(config, tmp_path, progress=False)
    assert {c.key for c in computed}.isdisjoint(calls)
    assert len(computed) == 10 - 3
    tradeoff.finish(config, tmp_path)
    expected, got = results_by_key(reference_run), results_by_key(tmp_path)
    assert expected.keys() == got.keys()
    for key in expected:
        for column in SCHEMA - {"seconds"}:
            assert got[key][column] == expected[key][column], (key, column)


@pytest.mark.parametrize(
    "options, message",
    [(["--methods", "bayes"], "unknown method"),
     (["--scales"], "expected at least one"),
     (["--methods", "laplace", "--scales", "-1"], "scale must be"),
     (["--train-seeds"], "expected at least one")],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, options, message):
    argv = ["tradeoff", "--quick", "--out", str(tmp_path / "out"), *options]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists()


def test_unwritable_output_folder_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["tradeoff", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "not a writable folder" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_processes_equal_one(reference_run, tmp_path):
    done = run_study_in_two_processes(["tradeoff", *TINY], tmp_path, port=29517)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 1: computed" in done.stdout
    run = json.loads((tmp_path / "run.json").read_text())["runs"][-1]
    by_rank = {rank: int(done.stdout.split(f"rank {rank}: computed ")[1].split()[0])
               for rank in ("0", "1")}
    assert run["cells_by_rank"] == by_rank and run["cells_computed"] == len(tradeoff.cells(
        cli._config(cli._parser().parse_args(["tradeoff", *TINY, "--out", str(tmp_path)]))))
    expected, got = results_by_key(reference_run), results_by_key(tmp_path)
    assert expected.keys() == got.keys()
    for key in expected:
        for column in SCHEMA - {"seconds"}:
            assert got[key][column] == expected[key][column], (key, column)


def test_shards_cover_every_cell_once_and_keep_seeds_together():
    config = tradeoff.profile_config("quick", train_seeds=(0, 1, 2, 3), methods=("map", "laplace"))
    for world in (1, 2, 3, 4):
        shards = [tradeoff.shard(config, rank, world) for rank in range(world)]
        keys = [cell.key for part in shards for cell in part]
        assert sorted(keys) == sorted(cell.key for cell in tradeoff.cells(config))
        if 4 % world == 0:  # whole seeds per rank: no seed's nets are built on two ranks
            seeds = [{cell.train_seed for cell in part} for part in shards]
            assert all(a.isdisjoint(b) for i, a in enumerate(seeds) for b in seeds[i + 1 :])
