"""Chapter-facing calls of the study: curve labels, stored studies, the live slice's checks."""

from pathlib import Path

import pytest

from rbmem_tutorial.experiments.slices import curve_label, load_study, run_slice
from rbmem_tutorial.experiments.tradeoff import Cell, TradeoffConfig

STORED = Path(__file__).resolve().parents[1] / "book" / "data" / "paper-setting"


def test_curve_label_names_the_temperature_of_tempered_methods_only():
    assert curve_label({"method": "riemannian", "temperature": "mean"}) == "riemannian T=mean"
    assert curve_label({"method": "laplace", "temperature": None}) == "laplace"
    assert curve_label({"method": "riemannian-fisher", "temperature": None}) == "riemannian-fisher"
    assert curve_label(Cell("riemannian", 1.0, 0, 0, "sum")) == "riemannian T=sum"
    assert curve_label(Cell("riemannian", 1.0, 0, 0)) == "riemannian T=sum"


def test_curve_label_agrees_with_the_matched_table_on_stored_rows():
    study = load_study(STORED)
    table_curves = {e["curve"] for e in study.matched(shared_noise=True)} | {"map"}
    assert {curve_label(r) for r in study.rows} == table_curves


def test_load_study_reads_rows_config_and_readme():
    study = load_study(STORED)
    assert len(study.rows) == len({row["key"] for row in study.rows}) > 0
    assert set(study.config["methods"]) == {row["method"] for row in study.rows}
    assert "python -m rbmem_tutorial.experiments tradeoff" in study.readme
    row = next(r for r in study.rows if r["method"] == "map")
    assert study.cell_samples(row).shape == (row["n_generated"], 2)


def test_load_study_concatenates_the_studies_of_subfolders(tmp_path):
    for name, method in (("a", "map"), ("b", "laplace")):
        (tmp_path / name).mkdir()
        row = f'{{"key": "{method}", "method": "{method}"}}'
        (tmp_path / name / "results.json").write_text(f"[{row}]")
        (tmp_path / name / "config.json").write_text(f'{{"methods": ["{method}"]}}')
    study = load_study(tmp_path)
    assert [r["method"] for r in study.rows] == ["map", "laplace"]
    assert study.config == {"a": {"methods": ["map"]}, "b": {"methods": ["laplace"]}}
    assert study.select(method="laplace") == [{"key": "laplace", "method": "laplace"}]


def test_load_study_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        load_study(tmp_path)


def test_cell_samples_of_a_study_without_cells_says_how_to_get_them(tmp_path):
    (tmp_path / "results.json").write_text('[{"key": "map__a0__train0__sample0"}]')
    (tmp_path / "config.json").write_text("{}")
    study = load_study(tmp_path)
    with pytest.raises(FileNotFoundError, match="rerun its command"):
        study.cell_samples(study.rows[0])


def test_run_slice_refuses_a_seed_outside_the_config_before_work():
    with pytest.raises(ValueError, match="train_seed 3"):
        run_slice(TradeoffConfig(train_seeds=(0,)), train_seed=3)
    with pytest.raises(TypeError, match="TradeoffConfig"):
        run_slice({"methods": ("map",)})
