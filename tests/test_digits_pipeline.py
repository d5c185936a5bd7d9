"""Images through the trade-off study: digits with both nets, a user's image file, weight
subsets, mini-batched geodesics, several processes, and bad files."""

import json

import numpy as np
import pytest
import torch
from conftest import cuda, in_private_cache, results_by_key, run_study_in_two_processes

from rbmem_tutorial.experiments import __main__ as cli
from rbmem_tutorial.experiments import tradeoff
from rbmem_tutorial.experiments.resume import config_from_record
from rbmem_tutorial.flows import build_velocity_net
from rbmem_tutorial.memorisation import memorisation_report

pytestmark = pytest.mark.usefixtures("private_cache")  # a model cache of their own

TINY = ["--profile", "cpu-digits", "--n-train", "6", "--n-test", "40", "--steps", "40",
        "--early-steps", "10", "--hidden", "8", "--channels", "2", "3", "--n-x0", "6",
        "--n-param-samples", "2", "--draws-per-point", "2", "--scales", "0.1",
        "--methods", *tradeoff.METHODS, "--no-progress"]
COLUMNS = {"mem_strict", "mem_loose", "true_mem_strict", "true_mem_loose", "mmd2", "precision",
           "net", "param_subset", "n_posterior_params", "geodesic_batch", "nfe_geodesic_mean"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    with in_private_cache(tmp_path_factory):
        assert cli.main(["tradeoff", *TINY, "--out", str(out)]) == 0
    return out


def test_digits_run_every_method_with_both_thresholds(digits_run):
    rows = results_by_key(digits_run)
    assert len(rows) == 2 * len(tradeoff.METHODS)  # the profile's two training seeds
    for row in rows.values():
        assert set(row) >= COLUMNS, COLUMNS - set(row)
        assert row["dataset"] == "digits"
        assert row["mem_strict"] <= row["mem_loose"]
        assert row["n_failed"] == 0
    config = json.loads((digits_run / "config.json").read_text())
    # every cell scores the same number of generated images, MAP and early stop included
    expected = config["n_param_samples"] * config["n_x0"]
    assert {row["n_generated"] for row in rows.values()} == {expected}
    train = tradeoff.study_data(config_from_record(config)).train
    assert train.shape == (6, 64)
    for key, row in rows.items():
        samples = torch.from_numpy(np.load(digits_run / "cells" / f"{key}.npz")["samples"])
        report = memorisation_report(samples, train)
        assert (report.fraction_strict, report.fraction_loose) == (row["mem_strict"],
                                                                   row["mem_loose"])


def test_preview_holds_samples_and_their_nearest_training_digits(digits_run):
    preview = np.load(digits_run / "preview.npz")
    cells = len(results_by_key(digits_run))
    assert preview["samples"].shape == (cells, min(tradeoff.PREVIEW_SAMPLES, 6), 64)
    assert preview["train"].shape == (6, 64)
    k = list(preview["keys"]).index("map__a0__train0__sample0")
    distances = np.linalg.norm(preview["samples"][k][:, None] - preview["train"][None], axis=2)
    assert np.array_equal(distances.argmin(1), preview["nearest"][k])
    ordered = np.sort(distances, axis=1)
    np.testing.assert_allclose(preview["ratio"][k], ordered[:, 0] / ordered[:, 1], rtol=1e-5)
    assert (digits_run / "samples.png").stat().st_size > 0


def test_a_users_image_file_with_the_conv_net_a_subset_and_minibatches(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(30, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "mine.npy", images)
    out = tmp_path / "out"
    argv = ["tradeoff", *TINY, "--n-test", "20", "--data-file", str(tmp_path / "mine.npy"),
            "--net", "conv", "--param-subset", "last2", "--geodesic-batch", "5",
            "--temperature", "sum",  # the profile's mean loss needs all frozen pairs
            "--train-seeds", "0",
            "--methods", "map", "laplace", "riemannian", "--out", str(out)]
    assert cli.main(argv) == 0
    rows = results_by_key(out)
    conv = build_velocity_net("conv", 16, hidden=(2, 3), image_shape=(1, 4, 4))
    subset = tradeoff.parameter_subset(conv, "last2")
    for row in rows.values():
        assert row["dataset"] == "file" and row["net"] == "conv"
        assert row["param_subset"] == "last2" and row["n_posterior_params"] == subset.size
        assert row["geodesic_batch"] == 5
    preview = np.load(out / "preview.npz")
    assert preview["train"].shape == (6, 16)
    pixels = set(np.round((preview["train"].ravel() + 1) * 127.5).astype(int).tolist())
    assert pixels <= set(images.ravel().tolist())  # uint8 0..255 mapped to [-1, 1]
    assert (out / "samples.png").stat().st_size > 0
    # posterior samples move only the subset: every other weight stays at θ*
    config = config_from_record(json.loads((out / "config.json").read_text()))
    ctx = tradeoff.seed_context(config, 0)
    thetas, _ = tradeoff.parameter_samples(config, ctx, tradeoff.Cell("riemannian", 0.1, 0, 0))
    moved = (thetas != ctx.flow_posterior.theta_map).any(0)
    outside = ~torch.isin(torch.arange(moved.numel()), subset.index)
    assert moved.any() and not moved[outside].any()
    # merging needs only the folder
    assert cli.main(["merge", "--out", str(out)]) == 0


@pytest.mark.parametrize(
    "content, extra, message",
    [(None, [], "does not exist"),
     (np.zeros((30, 2, 3, 4, 5)), [], "expected N x H x W"),
     (np.full((30, 4, 4), np.nan), [], "NaN"),
     (np.zeros((30, 8, 8, 3)), [], "channels-last"),
     (np.random.default_rng(0).random((30, 4, 4)), ["--dataset", "digits"], "not both"),
     (np.random.default_rng(0).random((30, 4, 4)), ["--param-subset", "decoder.*"],
      "matches no parameter")],
)
def test_bad_files_and_options_fail_before_any_work(tmp_path, capsys, content, extra, message):
    path = tmp_path / "images.npy"
    if content is not None:
        np.save(path, content)
    argv = ["tradeoff", *TINY, "--n-test", "20", "--data-file", str(path), *extra,
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists()


def test_conv_needs_images(tmp_path, capsys):
    assert cli.main(["tradeoff", "--quick", "--net", "conv", "--out", str(tmp_path)]) == 2
    assert "needs images" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_processes_equal_one_on_digits(digits_run, tmp_path):
    done = run_study_in_two_processes(["tradeoff", *TINY], tmp_path, port=29519)
    assert done.returncode == 0, done.stderr[-2000:]
    # one training seed per process: one cell per method (one scale)
    assert f"rank 1: computed {len(tradeoff.METHODS)} cells" in done.stdout
    expected, got = results_by_key(digits_run), results_by_key(tmp_path)
    assert expected.keys() == got.keys()
    for key in expected:
        for column in set(expected[key]) - {"seconds"}:
            assert got[key][column] == expected[key][column], (key, column)


@cuda
def test_digits_on_the_gpu_keep_float64_geodesics(tmp_path):
    argv = ["tradeoff", *TINY, "--device", "cuda", "--methods", "riemannian",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    config = config_from_record(json.loads((tmp_path / "config.json").read_text()))
    ctx = tradeoff.seed_context(config, 0)
    assert ctx.flow_posterior.theta_map.is_cuda
    assert ctx.flow_posterior.theta_map.dtype == torch.float64
    assert all(row["n_failed"] == 0 for row in results_by_key(tmp_path).values())
