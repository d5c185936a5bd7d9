"""A trade-off cell's geodesics solved one at a time or as one batch (``geodesic_solve``)."""

from dataclasses import replace

import pytest
import torch

from rbmem_tutorial.experiments import cost_model, geodesic_cells, resume
from rbmem_tutorial.experiments.geodesic_cells import geodesic_samples
from rbmem_tutorial.experiments.tradeoff import TradeoffConfig, profile_config
from rbmem_tutorial.flows import RegressionAdapter, VelocityMLP
from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
from rbmem_tutorial.riemannian import GeodesicSolveError


def small_problem():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = VelocityMLP(2, hidden=(8,))
    z = torch.cat([torch.randn(12, 2, generator=g), torch.rand(12, 1, generator=g)], 1)
    objective = RegressionObjective(RegressionAdapter(net), z, torch.randn(12, 2, generator=g),
                                    1.0, 1.0)
    theta = parameters_vector(objective.model).detach().to(torch.float64)
    v = 0.5 * torch.randn(4, theta.numel(), generator=g, dtype=torch.float64)
    return objective, theta, v


def solve(batched, rtol=1e-8):
    objective, theta, v = small_problem()
    return theta, geodesic_samples(objective, theta, v, metric="monge", temperature=1.0,
                                   rtol=rtol, max_num_steps=20_000, key="k", batched=batched)


def test_a_batch_ends_where_the_geodesics_solved_one_at_a_time_end():
    theta, (each, info_each) = solve(False)
    _, (batch, info_batch) = solve(True)
    moved = (each - theta).norm(dim=1)
    assert each.shape == batch.shape == (4, theta.numel())
    assert ((batch - each).norm(dim=1) / moved).max() < 1e-5
    assert info_batch["travel_mean"] == pytest.approx(info_each["travel_mean"], rel=1e-5)
    assert info_batch["loss_rise_mean"] == pytest.approx(info_each["loss_rise_mean"], rel=1e-4)
    assert info_batch["n_failed"] == 0 and info_batch["nfe_geodesic_mean"] > 0


def test_a_batch_that_hits_the_step_limit_is_solved_again_one_at_a_time(monkeypatch):
    calls = []
    solve_one = geodesic_cells.exp_map

    def refuse_batches(loss, theta0, v, **options):
        calls.append(v.dim())
        if v.dim() == 2 and len(v) > 1:
            raise GeodesicSolveError("max_num_steps reached")
        return solve_one(loss, theta0, v, **options)

    monkeypatch.setattr(geodesic_cells, "exp_map", refuse_batches)
    theta, (batch, _) = solve(True)
    monkeypatch.setattr(geodesic_cells, "exp_map", solve_one)
    _, (each, _) = solve(False)
    assert calls[0] == 2 and len(calls) == 5        # the batch, then its four rows
    assert torch.equal(batch, each)


def test_the_option_is_checked_saved_and_counted_by_the_cost_model():
    with pytest.raises(ValueError, match="geodesic_solve"):
        TradeoffConfig(geodesic_solve="all")
    config = profile_config("gpu-digits", device="cpu")
    record = resume.config_record(config)
    del record["geodesic_solve"]               # a study saved before the option existed
    assert resume.differences(record, config) == []
    assert any("geodesic_solve" in d
               for d in resume.differences(record, replace(config, geodesic_solve="batched")))
    launches = cost_model.CostModel(overhead=2.4e-3, rate=1e15)   # a GPU: the calls cost
    each = cost_model.profile_prediction(config, launches, 200)
    batched = cost_model.profile_prediction(replace(config, geodesic_solve="batched"),
                                            launches, 200)
    assert each / batched == pytest.approx(config.n_param_samples, rel=0.01)


def test_the_command_line_flag_reaches_the_study_and_a_bad_value_is_refused(tmp_path):
    from rbmem_tutorial.experiments import __main__ as cli

    argv = ["tradeoff", "--profile", "quick", "--out", str(tmp_path / "s")]
    assert cli._config(cli._parser().parse_args(argv)).geodesic_solve == "each"
    args = cli._parser().parse_args([*argv, "--geodesic-solve", "batched"])
    assert cli._config(args).geodesic_solve == "batched"
    with pytest.raises(ValueError, match="geodesic_solve"):
        cli._config(cli._parser().parse_args([*argv, "--geodesic-solve", "together"]))
