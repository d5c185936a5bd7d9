"""The matched-memorisation analysis on synthetic rows whose answers are known by hand."""

import json

import numpy as np
import pytest
from scipy import stats

from rbmem_tutorial.experiments import matched


def row(method, scale, seed, mem, mmd2, precision=0.5, recall=0.5, floor=0.2, **extra):
    return {"method": method, "scale": scale, "train_seed": seed, "sample_seed": 0,
            "mem_strict": mem, "true_mem_strict": floor, "mmd2": mmd2, "precision": precision,
            "recall": recall, **extra}


def linear_curve(method, seed, slope, offset=0.0, **extra):
    """mem = 0.6 − 0.1 α and MMD² = offset + slope·α at α = 1..5 (so mem 0.5 .. 0.1)."""
    return [row(method, a, seed, 0.6 - 0.1 * a, offset + slope * a, **extra)
            for a in (1.0, 2.0, 3.0, 4.0, 5.0)]


def test_linear_curves_give_the_closed_form_and_its_t_interval():
    offsets = {0: 0.0, 1: 0.01, 2: 0.03}
    rows = [r for s, off in offsets.items() for r in linear_curve("laplace", s, 0.02, off)]
    rows += [r for s, off in offsets.items() for r in linear_curve("riemannian", s, 0.01, off,
                                                                   temperature="mean")]
    table = {(e["curve"], e["level"]): e for e in matched.matched_table(rows)}
    # mem = 0.45 at α = 1.5, 0.30 at α = 3, the floor 0.2 at α = 4
    for level, alpha in ((0.45, 1.5), (0.30, 3.0), ("floor", 4.0)):
        lap = table["laplace", level]
        values = [off + 0.02 * alpha for off in offsets.values()]
        half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
        assert lap["reached"] == 3
        assert lap["scale"]["mean"] == pytest.approx(alpha)
        assert lap["mmd2"]["mean"] == pytest.approx(np.mean(values))
        assert lap["mmd2"]["hi"] - lap["mmd2"]["mean"] == pytest.approx(half)
        # paired difference: the offsets cancel, so the interval has zero width
        diff = table["riemannian T=mean", level]["diff_mmd2"]
        assert diff["mean"] == pytest.approx(-0.01 * alpha)
        assert diff["hi"] - diff["lo"] == pytest.approx(0.0, abs=1e-12)
        assert lap["diff_mmd2"] is None  # the reference is not compared with itself


def test_a_level_never_reached_is_not_extrapolated():
    rows = [row("laplace", a, s, mem, 0.01 * a) for s in (0, 1)
            for a, mem in ((1.0, 0.6), (2.0, 0.5), (4.0, 0.35))]
    table = {(e["curve"], e["level"]): e for e in matched.matched_table(rows)}
    assert table["laplace", 0.45]["reached"] == 2
    for level in (0.30, "floor"):
        entry = table["laplace", level]
        assert entry["reached"] == 0
        assert entry["mmd2"]["mean"] is None
        assert "not reached" in matched.markdown([entry])


def test_non_monotone_curve_uses_its_first_crossing_and_says_so():
    points = [row("laplace", a, 0, mem, q)
              for a, mem, q in ((1.0, 0.5, 1.0), (2.0, 0.3, 2.0), (3.0, 0.5, 3.0),
                                (4.0, 0.1, 4.0))]
    first = matched.crossing(points, 0.4)
    assert first.scale == pytest.approx(1.5)  # the first of the two downward crossings
    assert first.values["mmd2"] == pytest.approx(1.5)
    assert first.crossings == 2 and not first.monotone
    table = matched.matched_table(points, levels=(0.4,))
    assert table[0]["non_monotone"] == 1 and table[0]["multiple_crossings"] == 1


def test_curves_start_at_the_base_point_cell():
    rows = [row("map", 0.0, 0, 0.66, 0.01), row("laplace", 1.0, 0, 0.26, 0.05)]
    entry = matched.matched_table(rows, levels=(0.46,))[0]
    assert entry["mmd2"]["mean"] == pytest.approx(0.03)  # halfway from the MAP (α = 0)
    assert entry["scale"]["mean"] == pytest.approx(0.5)
    without_map = matched.matched_table(rows[1:], levels=(0.46,))[0]
    assert without_map["reached"] == 0  # the curve starts below the level: not reached


def test_single_networks_are_points_with_their_seed_interval():
    rows = [row("map", 0.0, s, mem, 0.01) for s, mem in ((0, 0.6), (1, 0.7), (2, 0.8))]
    (point,) = matched.points_table(rows)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert point["mem_strict"]["mean"] == pytest.approx(0.7)
    assert point["mem_strict"]["hi"] == pytest.approx(0.7 + half)
    assert matched.matched_table(rows) == []  # no curve to walk along


def test_sampling_seeds_are_averaged_before_seeds_are_compared():
    rows = [row("laplace", a, 0, 0.6 - 0.1 * a, q, sample_seed=s)
            for a in (1.0, 2.0) for s, q in ((0, 1.0), (1, 3.0))]
    entry = matched.matched_table(rows, levels=(0.45,))[0]
    assert entry["n_seeds"] == 1 and entry["mmd2"]["mean"] == pytest.approx(2.0)


def test_cli_writes_table_and_refuses_a_folder_without_results(tmp_path, capsys):
    assert matched.main([str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err
    rows = linear_curve("laplace", 0, 0.02) + linear_curve("laplace", 1, 0.02, 0.01)
    (tmp_path / "results.json").write_text(json.dumps(rows))
    assert matched.main([str(tmp_path)]) == 0
    assert len(json.loads((tmp_path / "matched.json").read_text())["curves"]) == 3
    assert "| laplace | 0.45 | 2/2 |" in (tmp_path / "matched.md").read_text()


def test_shared_noise_rows_are_refused_in_a_comparison_table():
    rows = [row("laplace", a, 0, 0.6 - 0.1 * a, 0.01 * a, n_param_samples=4)
            for a in (1.0, 2.0, 3.0)]
    with pytest.raises(ValueError, match="share x0 between weight samples"):
        matched.matched_table(rows)
    assert matched.matched_table(rows, shared_noise=True)  # explicitly a paired diagnostic
