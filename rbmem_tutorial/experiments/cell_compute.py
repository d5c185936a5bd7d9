"""Computing one cell of the trade-off study: the seed's shared context, the cell's parameter
samples, and its scored row (:mod:`.tradeoff` describes the study and its methods).

Every random draw is seeded from the cell's own coordinates (:func:`coordinate_generator`),
so a cell's numbers do not depend on which other cells ran, in what order, or on how many
processes. The one cross-cell dependency, what the controls take from the Riemannian cell they
pair with (its mean loss, its mean weights and their loss), is recomputed from that cell's
seeded draws when the cell did not run in this process, so it is the same either way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from rbmem_tutorial.data import TOY_DATASETS, sample_dataset
from rbmem_tutorial.experiments.flows import trained_flow
from rbmem_tutorial.experiments.geodesic_cells import (
    DRIFT_CONTROLS,
    TEMPERED,
    drift_control_sample,
    empty_diagnostics,
    geodesic_samples,
)
from rbmem_tutorial.laplace.params import parameters_vector
from rbmem_tutorial.laplace.pipeline import fit_flow_posterior
from rbmem_tutorial.laplace.sampled_nets import generate
from rbmem_tutorial.laplace.subsets import anchored, minibatch_objective
from rbmem_tutorial.memorisation.quality import quality_report
from rbmem_tutorial.memorisation.ratio import LOOSE_C, RATIO_THRESHOLD
from rbmem_tutorial.memorisation.report import memorisation_report
from rbmem_tutorial.riemannian import common_drift, linearised_objective


@dataclass
class SeedContext:
    """What every cell of one training seed shares: data, nets and the posterior.

    ``geodesic_losses`` maps each geodesic method to the loss whose geodesics give its samples:
    the posterior's objective (restricted to the weight subset, if any), or its linearisation
    at the base point; on a mini-batch if asked for, then anchored so that its gradient at the
    base point is the full one (:func:`rbmem_tutorial.laplace.subsets.anchored`).
    ``ensemble_losses``
    keeps, for each Riemannian cell computed here (keyed by cell key), its mean loss, its mean
    weights θ̄ and their loss, for the controls that pair with it.
    """

    model: torch.nn.Module
    train: torch.Tensor
    test: torch.Tensor
    true: torch.Tensor
    flow_posterior: object
    theta_early: torch.Tensor
    geodesic_losses: dict
    geodesic_pairs: int
    ensemble_losses: dict = field(default_factory=dict)


def seed_context(config, train_seed: int, progress: bool = False) -> SeedContext:
    """Train (or load) the nets of one seed and fit the posterior; on ``config.device``.

    The posterior's prior mean and base point are ``config.prior_mean`` and
    ``config.base_point`` (:func:`rbmem_tutorial.laplace.pipeline.fit_flow_posterior`).
    """
    device = torch.device(config.device)
    trained = trained_flow(config, train_seed, config.steps, progress)
    early = trained_flow(config, train_seed, config.early_steps, progress)
    model = trained.model.to(device)
    train, test = trained.train.to(device), trained.test.to(device)
    fp = fit_flow_posterior(model, train, structure=config.structure,
                            draws_per_point=config.draws_per_point, seed=train_seed,
                            param_subset=config.param_subset,
                            refine_iterations=config.refine_iterations,
                            newton_steps=config.newton_steps, prior_mean=config.prior_mean,
                            base_point=config.base_point)
    if config.dataset in TOY_DATASETS:
        g = torch.Generator().manual_seed(10_000 + train_seed)
        true = sample_dataset(config.dataset, config.n_generated, generator=g).to(device)
    else:  # images: one half of the held-out images scores quality, the other is the baseline
        half = len(test) // 2
        test, true = test[:half], test[half:][: config.n_generated]
    theta_early = parameters_vector(early.model).detach().to(device, torch.float64)
    full, mean = fp.posterior.objective, fp.posterior.mean
    batch = full
    if config.geodesic_batch is not None and config.geodesic_batch < full.num_examples:
        batch = minibatch_objective(full, config.geodesic_batch, seed=train_seed)
    losses = {"riemannian": batch, "riemannian-fisher": batch}
    if "riemannian-linearised" in config.methods:
        losses["riemannian-linearised"] = linearised_objective(batch, mean)
    if batch is not full:
        target = full.grad(mean)
        losses = {method: anchored(loss, mean, target) for method, loss in losses.items()}
    return SeedContext(model, train, test, true, fp, theta_early, losses, batch.num_examples)


def coordinate_generator(*coordinates: int) -> torch.Generator:
    """A CPU generator seeded by a cell's integer coordinates only (shared by the studies)."""
    seed = 0
    for c in coordinates:
        seed = (seed * 1_000_003 + int(c)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _temperature(cell) -> float | str | None:
    """The cell's metric temperature: ``"sum"`` when a tempered cell leaves it unset."""
    if cell.method not in TEMPERED:
        return None
    return "sum" if cell.temperature is None else cell.temperature


def _ensemble_summary(objective, thetas: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(mean_s L(θ_s), L(θ̄), θ̄) of weight samples ``[S, D]``, θ̄ their mean."""
    centre = thetas.mean(0)
    mean = float(np.mean([float(objective.value(t)) for t in thetas]))
    return mean, float(objective.value(centre)), centre


def ensemble_summary(config, ctx: SeedContext, cell) -> tuple[float, float, torch.Tensor]:
    """Mean loss, loss at the mean weights and the mean weights θ̄ (full vector) of the
    ``riemannian`` cell that a control ``cell`` pairs with (same scale, temperature, seeds)."""
    partner = replace(cell, method="riemannian")
    if partner.key not in ctx.ensemble_losses:
        thetas, _ = parameter_samples(config, ctx, partner)
        ctx.ensemble_losses[partner.key] = _ensemble_summary(ctx.flow_posterior.objective,
                                                             thetas)
    return ctx.ensemble_losses[partner.key]


def parameter_samples(config, ctx: SeedContext, cell):
    """The parameter vectors of a cell ``[S, D]`` and its diagnostics
    (:func:`.geodesic_cells.empty_diagnostics`).

    Posterior samples live in the posterior's space (θ_S for a weight subset, centred at its
    mean, the base point) and are mapped to full vectors with ``flow_posterior.full``.
    """
    fp = ctx.flow_posterior
    posterior, theta_star = fp.posterior, fp.posterior.mean
    info = empty_diagnostics()
    if cell.method == "map":
        return fp.theta_map[None], info
    if cell.method == "early-stop":
        return ctx.theta_early[None], info
    if cell.method == "ensemble-centre":
        return ensemble_summary(config, ctx, cell)[2][None], info
    if cell.method in DRIFT_CONTROLS:
        target = ensemble_summary(config, ctx, cell)[DRIFT_CONTROLS.index(cell.method)]
        theta, info = drift_control_sample(posterior.objective, theta_star, target,
                                           max_num_steps=5 * config.max_geodesic_steps)
        return fp.full(theta), info
    n = config.n_param_samples
    if cell.method == "isotropic":
        z = torch.randn(n, theta_star.numel(), generator=coordinate_generator(cell.train_seed,
                        cell.sample_seed, 2), dtype=torch.float64).to(theta_star.device)
        return fp.full(theta_star + cell.scale * posterior.variance.mean().sqrt() * z), info
    v = posterior.sample_tangent(n, coordinate_generator(cell.train_seed, cell.sample_seed, 1),
                                 scale=cell.scale).to(theta_star.device)
    if cell.method == "laplace":
        return fp.full(theta_star + v), info
    metric = "fisher" if cell.method == "riemannian-fisher" else "monge"
    endpoints, info = geodesic_samples(
        ctx.geodesic_losses[cell.method], theta_star, v, metric=metric,
        temperature=_temperature(cell) or 1.0, rtol=config.geodesic_rtol,
        max_num_steps=config.max_geodesic_steps, key=cell.key,
        batched=config.geodesic_solve == "batched")
    return fp.full(endpoints), info


def _interval(report, **test) -> tuple[float, float]:
    return report.bootstrap_interval(**test, generator=torch.Generator().manual_seed(0))


def run_cell(config, ctx: SeedContext, cell) -> tuple[dict, dict]:
    """Compute one cell: its result row and the arrays to store beside it."""
    start = time.perf_counter()
    thetas, info = parameter_samples(config, ctx, cell)
    dim = ctx.train.shape[1]
    # A single weight vector starts from as many x0 as a posterior's S samples share in all, so
    # every cell scores the same number of generated points (k-NN recall depends on it).
    n_x0 = config.n_x0 if len(thetas) > 1 else config.n_generated
    x0 = torch.randn(n_x0, dim, generator=coordinate_generator(cell.sample_seed, 7)).to(ctx.train)
    samples = generate(ctx.model, thetas.to(torch.float32), x0,
                       rtol=config.rtol, atol=config.rtol).reshape(-1, dim)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(f"cell {cell.key} generated non-finite samples; lower the scale.")
    fp = ctx.flow_posterior
    objective = fp.objective
    losses = torch.stack([objective.value(t) for t in thetas]).cpu().numpy()
    if cell.method == "riemannian":
        ctx.ensemble_losses[cell.key] = _ensemble_summary(objective, thetas)
    true = ctx.true[: len(samples)]
    mem = memorisation_report(samples, ctx.train, true_samples=true)
    quality = quality_report(samples, ctx.test, ctx.train, true_samples=true,
                             generator=torch.Generator().manual_seed(cell.sample_seed))
    lo, hi = _interval(mem, threshold=RATIO_THRESHOLD)
    loose_lo, loose_hi = _interval(mem, c=LOOSE_C)
    moved = len(thetas) > 1 and bool((thetas != fp.theta_map).any())
    row = {
        "key": cell.key, **asdict(cell), "temperature": _temperature(cell),
        "prior_mean": config.prior_mean, "base_point": config.base_point,
        "dataset": config.dataset, "n_train": config.n_train,
        "net": config.net, "param_subset": config.param_subset or "all",
        "n_posterior_params": fp.posterior.mean.numel(),
        "geodesic_batch": ctx.geodesic_pairs,
        "n_param_samples": len(thetas), "n_generated": len(samples),
        "mem_strict": mem.fraction_strict, "mem_strict_lo": lo, "mem_strict_hi": hi,
        "mem_loose": mem.fraction_loose, "mem_loose_lo": loose_lo, "mem_loose_hi": loose_hi,
        "true_mem_strict": mem.baseline.fraction_strict,
        "true_mem_loose": mem.baseline.fraction_loose,
        **{k: v for k, v in quality.as_dict().items() if not k.startswith("gap")},
        "gap_train": quality.gap.train, "gap_test": quality.gap.test,
        "gap_ratio": quality.gap.ratio,
        "loss_mean": float(losses.mean()), "loss_median": float(np.median(losses)),
        "loss_map": float(objective.value(fp.theta_map)),
        "grad_norm_map": fp.base_grad_norm,
        **info,
        "common_drift": common_drift(thetas.double(), fp.theta_map) if moved else None,
        "seconds": time.perf_counter() - start,
    }
    arrays = {"samples": samples.cpu().numpy(), "x0": x0.cpu().numpy(), "losses": losses}
    return row, arrays
