"""The study's options (prior mean, base point, temperatures, the Fisher metric, the drift
control): each reaches its cells and cache keys, bad values fail before any work, and the drift
control's gradient flow lands on its target loss."""

import json
import math
from pathlib import Path

import pytest
import torch
from scipy.optimize import brentq

from rbmem_tutorial.experiments import __main__ as cli
from rbmem_tutorial.experiments import cell_compute, geodesic_cells, tradeoff
from rbmem_tutorial.experiments.drift import DriftSolveError, gradient_flow_to_loss
from rbmem_tutorial.flows import VelocityMLP
from rbmem_tutorial.laplace import fit_flow_posterior

A = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)  # L = ½ Σ a_i θ_i², anisotropic


def quadratic(theta):
    return 0.5 * (A * theta**2).sum()


def test_drift_control_stops_on_the_closed_form_gradient_flow():
    """θ_i(t) = θ0_i e^{−a_i t}, so L(t) = ½ Σ a_i θ0_i² e^{−2 a_i t}: solve L(t*) = target."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss_at(t):
        return 0.5 * float((A * theta0**2 * torch.exp(-2 * A * t)).sum())

    target = 0.3 * loss_at(0.0)
    t_star = brentq(lambda t: loss_at(t) - target, 0.0, 50.0, xtol=1e-14)
    out = gradient_flow_to_loss(quadratic, theta0, target, rtol=1e-10, atol=1e-12)
    assert out.reached
    assert out.time == pytest.approx(t_star, rel=1e-6)
    assert torch.allclose(out.theta, theta0 * torch.exp(-A * t_star), rtol=1e-6, atol=1e-9)
    assert out.loss == pytest.approx(target, rel=1e-7)
    assert out.start_loss == pytest.approx(loss_at(0.0))


def test_objects_with_value_and_grad_give_the_same_flow():
    class Quadratic:
        def value(self, theta):
            return quadratic(theta)

        def grad(self, theta):
            return A * theta

    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    by_autograd = gradient_flow_to_loss(quadratic, theta0, 1.0, rtol=1e-9, atol=1e-9)
    by_object = gradient_flow_to_loss(Quadratic(), theta0, 1.0, rtol=1e-9, atol=1e-9)
    assert torch.allclose(by_autograd.theta, by_object.theta, atol=1e-12)


def test_a_target_above_the_start_leaves_the_base_point():
    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    out = gradient_flow_to_loss(quadratic, theta0, 100.0)
    assert not out.reached and out.time == 0.0 and torch.equal(out.theta, theta0)


def test_a_target_below_the_minimum_is_a_clear_error():
    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(DriftSolveError, match="did not reach the target"):
        gradient_flow_to_loss(quadratic, theta0, -1.0, max_num_steps=200)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"theta0": torch.ones(3)}, TypeError, "float64"),
    ({"target": math.nan}, ValueError, "finite"),
    ({"rtol": 0.0}, ValueError, "rtol"),
    ({"max_num_steps": 0}, ValueError, "max_num_steps"),
])
def test_drift_control_rejects_bad_input(kwargs, error, message):
    args = {"theta0": torch.ones(3, dtype=torch.float64), "target": 0.5, **kwargs}
    with pytest.raises(error, match=message):
        gradient_flow_to_loss(quadratic, args.pop("theta0"), args.pop("target"), **args)


# --- the study's options ---------------------------------------------------------------------

STORED = Path(__file__).resolve().parents[1] / "book" / "data" / "paper-setting"


def test_tempered_cells_are_expanded_over_temperatures_and_keyed_by_them():
    config = tradeoff.TradeoffConfig(
        methods=("map", "laplace", "riemannian", "riemannian-fisher", "drift-control"),
        scales=(1.0,), temperatures=("sum", 16.0, "mean", "data-mean"))
    keys = {cell.key: cell for cell in tradeoff.cells(config)}
    assert set(keys) == {
        "map__a0__train0__sample0", "laplace__a1__train0__sample0",
        "riemannian__a1__train0__sample0", "riemannian__a1__T16__train0__sample0",
        "riemannian__a1__Tmean__train0__sample0", "riemannian__a1__Tdata-mean__train0__sample0",
        "riemannian-fisher__a1__train0__sample0", "drift-control__a1__train0__sample0",
        "drift-control__a1__T16__train0__sample0", "drift-control__a1__Tmean__train0__sample0",
        "drift-control__a1__Tdata-mean__train0__sample0"}
    assert keys["riemannian__a1__T16__train0__sample0"].temperature == 16.0
    assert keys["laplace__a1__train0__sample0"].temperature is None
    assert keys["riemannian-fisher__a1__train0__sample0"].temperature is None


def test_stored_study_keys_stay_valid():
    """Every cell of the stored CPU study is a cell of its saved configuration today."""
    record = json.loads((STORED / "config.json").read_text())
    config = tradeoff.TradeoffConfig(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in record.items()})
    stored = {row["key"] for row in json.loads((STORED / "results.json").read_text())}
    assert stored <= {cell.key for cell in tradeoff.cells(config)}
    assert "riemannian__a1__train0__sample0" in stored


@pytest.mark.parametrize("fields, message", [
    ({"temperatures": (-1.0,)}, "temperature must be"),
    ({"temperatures": ("median",)}, "unknown temperature"),
    ({"temperatures": ()}, "temperatures is empty"),
    ({"temperatures": (1.0, "sum")}, "repeat sum .1 and .sum. are the same temperature"),
    ({"prior_mean": "one"}, "unknown prior_mean"),
    ({"base_point": "map"}, "unknown base_point"),
    ({"methods": ("riemannian-fisher",), "geodesic_batch": 64}, "all frozen pairs"),
    ({"methods": ("riemannian",), "temperatures": ("mean",), "geodesic_batch": 64},
     "all frozen pairs"),
])
def test_bad_study_options_are_refused_by_the_config(fields, message):
    with pytest.raises(ValueError, match=message):
        tradeoff.TradeoffConfig(**fields)


@pytest.mark.parametrize("options, message", [
    (["--temperature", "hot"], "unknown temperature"),
    (["--temperature", "0"], "temperature must be"),
    (["--prior-mean", "one"], "unknown prior_mean"),
    (["--base-point", "map"], "unknown base_point"),
])
def test_bad_study_options_fail_on_the_command_line_before_any_work(tmp_path, capsys, options,
                                                                    message):
    code = cli.main(["tradeoff", "--quick", "--out", str(tmp_path / "out"), *options])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists()


def test_command_line_options_reach_the_config():
    args = cli._parser().parse_args(
        ["tradeoff", "--quick", "--out", "x", "--prior-mean", "zero", "--base-point", "sgd",
         "--temperature", "sum", "16", "mean", "data-mean"])
    config = cli._config(args)
    assert (config.prior_mean, config.base_point) == ("zero", "sgd")
    assert config.temperatures == ("sum", 16.0, "mean", "data-mean")


@pytest.fixture(scope="module")
def tiny_context():
    """A seed context around a small untrained net: the paper's setting (zero-mean prior, base
    point θ_SGD, where ∇L ≠ 0)."""
    torch.manual_seed(0)
    train = torch.randn(6, 2)
    model = VelocityMLP(2, hidden=(8,))
    fp = fit_flow_posterior(model, train, draws_per_point=2, use_cache=False, prior_mean="zero",
                            base_point="sgd", prior_precision=1.0)
    true = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    ctx = cell_compute.SeedContext(model, train, torch.randn(16, 2), true, fp,
                                   fp.theta_map.clone(), {"riemannian": fp.objective},
                                   fp.objective.num_examples)
    config = tradeoff.TradeoffConfig(n_param_samples=4, n_x0=4, prior_mean="zero",
                                     base_point="sgd", temperatures=("sum", "mean"))
    return config, ctx


def test_seed_context_passes_prior_mean_and_base_point_to_the_posterior(monkeypatch):
    seen = {}

    class StopError(Exception):
        pass

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise StopError

    monkeypatch.setattr(cell_compute, "fit_flow_posterior", fake)
    monkeypatch.setattr(cell_compute, "trained_flow", lambda *a: type(
        "T", (), {"model": VelocityMLP(2, hidden=(4,)), "train": torch.zeros(3, 2),
                  "test": torch.zeros(3, 2)})())
    config = tradeoff.TradeoffConfig(prior_mean="zero", base_point="tilted")
    with pytest.raises(StopError):
        cell_compute.seed_context(config, 0)
    assert (seen["prior_mean"], seen["base_point"]) == ("zero", "tilted")


def test_prior_mean_and_base_point_are_part_of_the_posterior_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("RBMEM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model, train = VelocityMLP(2, hidden=(4,)), torch.randn(4, 2)
    for prior_mean, base_point in (("sgd", "refined"), ("zero", "refined"), ("zero", "sgd")):
        fit_flow_posterior(model, train, draws_per_point=2, prior_mean=prior_mean,
                           base_point=base_point, refine_iterations=5, newton_steps=0)
    assert len(list(tmp_path.glob("posterior-*"))) == 3


def test_temperature_and_metric_reach_the_geodesic_solver(tiny_context, monkeypatch):
    config, ctx = tiny_context
    calls = []
    real = geodesic_cells.exp_map

    def spy(loss, theta0, v, **kwargs):
        calls.append((kwargs["metric"], kwargs["temperature"]))
        return real(loss, theta0, v, **{**kwargs, "metric": "monge"})

    monkeypatch.setattr(geodesic_cells, "exp_map", spy)
    for cell, expected in ((tradeoff.Cell("riemannian", 0.5, 0, 0, "mean"), ("monge", "mean")),
                           (tradeoff.Cell("riemannian", 0.5, 0, 0), ("monge", "sum")),
                           (tradeoff.Cell("riemannian-fisher", 0.5, 0, 0), ("fisher", 1.0))):
        ctx.geodesic_losses.setdefault(cell.method, ctx.flow_posterior.objective)
        calls.clear()
        tradeoff.parameter_samples(config, ctx, cell)
        assert set(calls) == {expected}


def test_rows_record_the_options_and_the_geodesic_diagnostics(tiny_context):
    config, ctx = tiny_context
    row, _ = tradeoff.run_cell(config, ctx, tradeoff.Cell("riemannian", 0.5, 0, 0, "mean"))
    assert (row["temperature"], row["prior_mean"], row["base_point"]) == ("mean", "zero", "sgd")
    assert row["key"] == "riemannian__a0.5__Tmean__train0__sample0"
    assert row["grad_norm_start"] == pytest.approx(ctx.flow_posterior.base_grad_norm)
    assert row["grad_norm_start"] > 0  # the paper's base point is not stationary
    assert 0 <= row["common_drift"] <= 1 and row["travel_mean"] > 0
    # the Monge bound √(T²‖v‖² + (∇L·v)²) holds for every sample, hence for the means
    assert abs(row["loss_rise_mean"]) <= row["bound_mean"] + 1e-9
    laplace, _ = tradeoff.run_cell(config, ctx, tradeoff.Cell("laplace", 0.5, 0, 0))
    assert laplace["temperature"] is None and laplace["travel_mean"] is None


@pytest.mark.parametrize("method", ["drift-control", "drift-control-centre"])
def test_drift_controls_land_on_their_riemannian_cells_loss_in_any_order(tiny_context, method):
    config, ctx = tiny_context
    cell = tradeoff.Cell(method, 1.0, 0, 0, "sum")
    ctx.ensemble_losses.clear()
    alone, info = tradeoff.parameter_samples(config, ctx, cell)  # partner recomputed
    partner_cell = tradeoff.Cell("riemannian", 1.0, 0, 0, "sum")
    partner, _ = tradeoff.run_cell(config, ctx, partner_cell)
    after, _ = tradeoff.parameter_samples(config, ctx, cell)  # partner's losses memoised
    assert torch.equal(alone, after)
    objective = ctx.flow_posterior.objective
    thetas, _ = tradeoff.parameter_samples(config, ctx, partner_cell)
    target = (partner["loss_mean"] if method == "drift-control"
              else float(objective.value(thetas.mean(0))))
    assert info["drift_target"] == pytest.approx(target)
    start = float(objective.value(ctx.flow_posterior.theta_map))
    assert info["drift_reached"] == (target < start)
    if info["drift_reached"]:
        assert float(objective.value(alone[0])) == pytest.approx(target, rel=1e-3)
    else:
        assert torch.equal(alone[0], ctx.flow_posterior.theta_map)


def test_ensemble_centre_is_the_mean_of_its_riemannian_cells_weights(tiny_context):
    config, ctx = tiny_context
    ctx.ensemble_losses.clear()
    centre, _ = tradeoff.parameter_samples(config, ctx, tradeoff.Cell("ensemble-centre", 1.0, 0,
                                                                      0, "mean"))
    thetas, _ = tradeoff.parameter_samples(config, ctx, tradeoff.Cell("riemannian", 1.0, 0, 0,
                                                                      "mean"))
    assert centre.shape == (1, thetas.shape[1])
    assert torch.allclose(centre[0], thetas.mean(0), atol=1e-12)


@pytest.mark.parametrize("tol", [1e-3, 1e-1])
def test_a_solve_that_leaves_the_flow_is_refused_not_returned(tol):
    """An anisotropic quadratic (curvatures 1 and 100): loose tolerances leave the flow's curve,
    where the loss clock no longer holds; the default tolerances land on the target."""
    curvatures = torch.tensor([1.0, 100.0], dtype=torch.float64)

    def valley(theta):
        return 0.5 * (curvatures * theta**2).sum()

    theta0 = torch.tensor([3.0, 1.0], dtype=torch.float64)
    assert gradient_flow_to_loss(valley, theta0, 1.0).loss == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(DriftSolveError, match="left the flow"):
        gradient_flow_to_loss(valley, theta0, 1.0, rtol=tol, atol=tol)
