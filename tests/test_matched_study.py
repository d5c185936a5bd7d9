"""The matched study: its statistics against worked examples, its sample design, its metrics
against hand-computed values, and the stored study against what the code computes today."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from rbmem_tutorial.experiments import matched_stats
from rbmem_tutorial.experiments.matched_study import (
    MatchedConfig,
    Method,
    noise,
    run_cell,
    unit_tangents,
)
from rbmem_tutorial.memorisation import energy_distance, outlier_rate

STUDY = Path(__file__).resolve().parents[1] / "book" / "data" / "matched-study"


def test_holm_worked_example():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(1·0.04, 0.06)
    assert matched_stats.holm([0.01, 0.04, 0.03, 0.005]) == [0.03, 0.06, 0.06, 0.02]
    assert matched_stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert matched_stats.holm([0.04]) == [0.04]


def test_paired_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=9), rng.normal(0.3, 1, size=9)
    result = matched_stats.paired(a - b)
    assert result["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    half = stats.t.ppf(0.975, 8) * np.std(a - b, ddof=1) / 3
    assert result["hi"] - result["mean"] == pytest.approx(half)


def test_primary_family_is_holm_adjusted_with_bonferroni_intervals():
    rows = []
    rng = np.random.default_rng(1)
    for r in range(6):
        for method, shift in (("early-stop", 0.0), ("laplace", 0.05), ("riemannian-mean", 0.02)):
            for level in matched_stats.LEVELS:
                rows.append({"replicate": r, "method": method, "level": level, "reached": True,
                             "energy": shift + 0.01 * rng.normal()})
    family = matched_stats.primary(rows)
    assert len(family) == 9
    raw = [f["p"] for f in family]
    assert [f["p_holm"] for f in family] == matched_stats.holm(raw)
    d = [rows_by(rows, "laplace", "0.3", r) - rows_by(rows, "early-stop", "0.3", r)
         for r in range(6)]
    entry = next(f for f in family if (f["a"], f["b"], f["level"]) ==
                 ("laplace", "early-stop", "0.3"))
    half = stats.t.ppf(1 - 0.05 / 9 / 2, 5) * np.std(d, ddof=1) / np.sqrt(6)
    assert entry["hi"] - entry["mean"] == pytest.approx(half)
    assert entry["significant"]  # a shift of 0.05 against noise 0.01 over 6 replicates


def rows_by(rows, method, level, replicate):
    (row,) = [r for r in rows if (r["method"], r["level"], r["replicate"]) ==
              (method, level, replicate)]
    return row["energy"]


def test_unreached_levels_are_left_out_of_the_pairs():
    rows = [{"replicate": r, "method": m, "level": "0.3", "reached": r != 2 or m != "laplace",
             "energy": float(r)} for r in range(4) for m in ("laplace", "early-stop")]
    result = matched_stats.compare(rows, "laplace", "early-stop", "0.3", "energy")
    assert result["replicates"] == [0, 1, 3] and result["mean"] == 0.0


def test_energy_distance_and_outlier_rate_by_hand():
    x = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[1.0], [3.0]])
    # E|X−Y| = (1 + 3 + 1 + 1)/4 = 1.5; within-set means over i ≠ j: 2 and 2
    assert energy_distance(x, y) == pytest.approx(2 * 1.5 - 2 - 2)
    # V-statistics keep the zero diagonal: within-set means 1 and 1
    assert energy_distance(x, y, unbiased=False) == pytest.approx(2 * 1.5 - 1 - 1)
    held_out = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])  # NN distances 1, 1, 2
    radius = float(np.quantile([1.0, 1.0, 2.0], 0.5))  # 1.0
    generated = torch.tensor([[0.5, 0.0], [3.0, 1.5], [10.0, 0.0], [1.0, 0.9]])
    nearest = np.array([0.5, 1.5, 7.0, 0.9])  # each point's distance to the held-out set
    expected = np.mean(nearest > radius)
    assert outlier_rate(generated, held_out, quantile=0.5) == expected == 0.5
    with pytest.raises(ValueError, match="quantile"):
        outlier_rate(generated, held_out, quantile=1.0)


def test_every_scored_point_has_its_own_noise_and_draws_are_independent():
    config = MatchedConfig()
    rep = SimpleNamespace(index=3, train=torch.zeros(16, 2))
    calibration, scoring = noise(rep, "calibration", 2048), noise(rep, "score", 2048)
    assert len(torch.unique(calibration, dim=0)) == 2048  # 32 nets × 64 distinct x0 each
    assert not torch.equal(calibration, scoring)
    per_net = calibration.reshape(config.weight_samples, -1, 2)
    assert per_net.shape == (32, 64, 2)


def test_config_refuses_bad_options():
    with pytest.raises(ValueError, match="unknown methods"):
        MatchedConfig(methods=("laplace", "magic"))
    with pytest.raises(ValueError, match="multiple"):
        MatchedConfig(points=1000)


@pytest.fixture(scope="module")
def replicate_zero():
    from rbmem_tutorial.experiments.replicates import replicate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the study runs on one thread; so does its check
    config = MatchedConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in json.loads((STUDY / "config.json").read_text()).items()})
    yield config, replicate(0, members=config.members, points=config.points)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["map", "laplace"])
def test_stored_cells_are_what_the_code_computes(replicate_zero, method):
    """Recompute two cheap stored cells of replicate 0: a change to what the package computes
    fails here until the study is regenerated (book/data/matched-study/regenerate.sh)."""
    config, rep = replicate_zero
    stored = json.loads((STUDY / "cells" / f"r00__{method}.json").read_text())
    row, samples = run_cell(config, rep, method)
    assert row["floor"] == stored["floor"]
    assert row["curve"] == stored["curve"]
    assert row["matched"] == stored["matched"]
    with np.load(STUDY / "cells" / f"r00__{method}.npz") as arrays:
        assert np.array_equal(arrays["samples"], samples, equal_nan=True)


def test_geodesic_path_gives_the_end_points_of_direct_solves(replicate_zero):
    """Exp(α v) = c_v(α): the calibration's one path solve equals a solve at each scale."""
    config, rep = replicate_zero
    method = Method(config, rep, "riemannian-mean")
    v = unit_tangents(rep, "calibration", 2)
    path = method._solve(2.0 * v, return_path=True, num_path_points=5)
    direct = method._solve(1.0 * v)
    moved = (direct.endpoints - rep.flow_posterior.posterior.mean).norm(dim=1)
    gap = (path.path[:, 2] - direct.endpoints).norm(dim=1) / moved
    assert bool((gap < 0.02).all())  # within the solver's promised end-point error


@pytest.mark.parametrize("args, message", [
    (["--replicates", "-1"], "must be 0 or more"),
    (["--methods", "laplace", "--finish"], "holds no matched study"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    from rbmem_tutorial.experiments.__main__ import main

    assert main(["matched", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_cli_refuses_a_folder_of_another_design(tmp_path, capsys):
    from rbmem_tutorial.experiments.matched_run import prepare

    prepare(MatchedConfig(replicates=(0, 1)), tmp_path)
    from rbmem_tutorial.experiments.__main__ import main

    assert main(["matched", "--out", str(tmp_path), "--replicates", "0"]) == 2
    assert "replicates" in capsys.readouterr().err


def test_stored_cells_read_as_matched_cells_and_not_as_tradeoff_ones(tmp_path):
    import shutil

    from rbmem_tutorial.experiments import store

    (tmp_path / "cells").mkdir()
    for suffix in (".json", ".npz"):
        shutil.copy(STUDY / "cells" / f"r00__laplace{suffix}", tmp_path / "cells")
    assert store.read_cell(tmp_path, "r00__laplace", dims=3)["method"] == "laplace"
    assert store.read_cell(tmp_path, "r00__laplace") is None  # [levels, N, d] is no tradeoff cell
    assert not (tmp_path / "cells" / "r00__laplace.json").exists()  # set aside, as damaged


def test_frontier_shares_replicates_per_level_but_draws_the_map_over_all():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rbmem_tutorial.experiments.matched_figures import (
        common_replicates,
        load_matched,
        matched_frontiers,
    )

    study = load_matched(STUDY)
    methods = ("map", "early-stop", "laplace", "riemannian-mean")
    fig = matched_frontiers(study, methods, metrics=("energy",))
    ax = fig.axes[0]
    flat = study.flat

    def mean(method, level, key, replicates):
        return np.mean([r[key] for r in flat if r["method"] == method and r["level"] == level
                        and r["replicate"] in replicates])

    every = {r["replicate"] for r in flat}
    (square,) = [line for line in ax.lines if line.get_marker() == "s"]
    # the MAP: its mean over every replicate, the summary table's row
    table = next(e for e in study.tables["summary"] if e["method"] == "map"
                 and e["level"] == "0.45")
    assert square.get_xdata()[0] == pytest.approx(mean("map", "0.45", "mem", every))
    assert square.get_ydata()[0] == pytest.approx(table["energy"])
    # a method: at each level, its mean over the replicates where all the methods reached it
    shared = [common_replicates(flat, methods, level) for level in study.levels]
    assert len(shared[0]) < len(every)  # the study's 0.45 is not reached everywhere
    (curve,) = [c for c in ax.containers if c.get_label() == "laplace"]
    assert list(curve.lines[0].get_ydata()) == pytest.approx(
        [mean("laplace", level, "energy", keep)
         for level, keep in zip(study.levels, shared, strict=True)])
    plt.close(fig)
