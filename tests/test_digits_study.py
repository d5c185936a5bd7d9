"""Chapter 8's digits study: the profiles' settings reach its cells, every method runs end to
end at test size, the exact GGN diagonal, and the stored study against the code of today."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rbmem_tutorial.experiments import matched_run, matched_stats
from rbmem_tutorial.experiments import matched_study as study
from rbmem_tutorial.experiments.digits_matched import DIGITS_METHODS, DigitsMatchedConfig
from rbmem_tutorial.experiments.tradeoff import PROFILES, Cell, profile_config

STUDY = Path(__file__).resolve().parents[1] / "book" / "data" / "digits"
TINY = dict(replicates=(0,), costly_replicates=(0,), methods=DIGITS_METHODS, n_train=4,
            steps=100, hidden=(8,), weight_samples=2, points=8, members=2, draws_per_point=1,
            refine_iterations=5, newton_steps=1, top_scales=(1.0, 1.0, 0.5),
            geodesic_path_points=5, tolerance=0.5)


@pytest.mark.parametrize("profile", ["cpu-digits", "gpu-digits"])
def test_profiles_set_the_mean_loss_and_the_measured_tolerance(profile):
    config = profile_config(profile, device="cpu")
    assert config.temperatures == ("mean",) and config.geodesic_rtol == 1e-4
    cell = Cell("riemannian", 1.0, 0, 0, config.temperatures[0])
    assert cell.key.endswith("__Tmean__train0__sample0")  # the temperature keys the cell


def test_the_profile_reaches_the_digits_study_cells_and_its_saved_design(monkeypatch, tmp_path):
    config = DigitsMatchedConfig()
    cpu = PROFILES["cpu-digits"]
    assert config.geodesic_rtol == cpu["geodesic_rtol"]
    assert config.geodesic("riemannian-mean")[1] == cpu["temperatures"][0]
    assert (config.base_flow().n_train, config.draws_per_point) == (cpu["n_train"],
                                                                    cpu["draws_per_point"])
    seen = {}

    def spy(loss, theta0, v, **options):
        seen.update(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(study, "exp_map", spy)
    rep = type("Rep", (), {"flow_posterior": type("FP", (), {"posterior": type(
        "P", (), {"objective": None, "mean": None})})})()
    with pytest.raises(RuntimeError, match="stop here"):
        study.Method(config, rep, "riemannian-mean")._solve(torch.zeros(1, 3))
    assert seen["temperature"] == "mean" and seen["rtol"] == seen["atol"] == 1e-4
    matched_run.prepare(config, tmp_path)  # a resumed run must carry the same tolerance
    with pytest.raises(ValueError, match="geodesic_rtol"):
        matched_run.prepare(DigitsMatchedConfig(geodesic_rtol=1e-6), tmp_path)
    assert isinstance(matched_run.saved_config(tmp_path), DigitsMatchedConfig)


def test_digits_study_refuses_bad_options():
    with pytest.raises(ValueError, match="n_train"):
        DigitsMatchedConfig(n_train=1797)
    with pytest.raises(ValueError, match="geodesic_rtol"):
        DigitsMatchedConfig(geodesic_rtol=2.0)
    with pytest.raises(ValueError, match="unknown methods"):
        DigitsMatchedConfig(methods=("laplace", "magic"))


def test_levels_name_their_threshold():
    rep = type("Rep", (), {"floor": 0.0, "floor_loose": 0.07})()
    assert study.level_target(0.1, rep) == ("mem", 0.1)
    assert study.level_target("loose:0.3", rep) == ("mem_loose", 0.3)
    assert study.level_target("loose-floor", rep) == ("mem_loose", 0.07)
    assert study.level_target("floor", rep) == ("mem", 0.0)


def test_every_method_runs_end_to_end_at_test_size(tmp_path, private_cache):
    config = DigitsMatchedConfig(**TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = matched_run.run(config, tmp_path, log=lambda text: None)
    finally:
        torch.set_num_threads(threads)
    assert sorted(done) == sorted(study.cell_key(0, m) for m in DIGITS_METHODS)
    tables = matched_stats.write_tables(tmp_path)
    assert tables["failed"] == []
    levels = {entry["level"] for entry in tables["summary"]}
    assert levels == {"0.1", "loose:0.3", "loose-floor"}
    assert len(tables["primary"]) == 9
    for key in done:
        row = json.loads((tmp_path / "cells" / f"{key}.json").read_text())
        assert row["status"] == "done" and len(row["matched"]) == 3
        for point in row["matched"]:
            if point.get("reached"):
                assert abs(point["achieved"] - point["target"]) <= config.tolerance
    assert matched_run.run(config, tmp_path, log=lambda text: None) == []  # kept, not redone


@pytest.fixture(scope="module")
def digits_replicate_zero():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the study runs on one thread; so does its check
    config = matched_run.saved_config(STUDY)
    yield config, config.build_replicate(0)
    torch.set_num_threads(threads)


@pytest.mark.skipif(not (STUDY / "cells" / "r00__laplace.json").exists(),
                    reason="the digits study has not been stored")
@pytest.mark.parametrize("method", ["map", "laplace"])
def test_stored_digits_cells_are_what_the_code_computes(digits_replicate_zero, method):
    """Recompute two cheap stored cells of replicate 0: a change to what the package computes
    fails here until the study is regenerated (book/data/digits/regenerate.sh)."""
    config, rep = digits_replicate_zero
    stored = json.loads((STUDY / "cells" / f"r00__{method}.json").read_text())
    row, samples = study.run_cell(config, rep, method)
    assert row["floor"] == stored["floor"]
    assert row["curve"] == stored["curve"]
    assert row["matched"] == stored["matched"]
    with np.load(STUDY / "cells" / f"r00__{method}.npz") as arrays:
        assert np.array_equal(arrays["samples"], samples, equal_nan=True)


def test_stored_map_memorisation_against_size_is_what_the_code_computes(private_cache):
    """The 10-digit row of chapter 8's size table, recomputed (the MLP trains in about 20 s)."""
    spec = importlib.util.spec_from_file_location("map_vs_size", STUDY / "map_vs_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stored = json.loads((STUDY / "map_vs_size.json").read_text())["rows"][0]
    row = module.size_row("mlp", stored["n_train"])
    for key in ("mem", "mem_loose", "true_mem", "true_loose"):
        assert row[key] == stored[key], key
