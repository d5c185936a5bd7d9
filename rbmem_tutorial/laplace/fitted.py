"""The fitted part of a flow posterior as a plain record: the refined θ*, the tuned λ and the
refinement records, as :func:`~rbmem_tutorial.laplace.pipeline.fit_flow_posterior` computes them,
stores them in the cache and in saved files, and checks them when they are read back.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from rbmem_tutorial.laplace.prior_tuning import refine_and_tune
from rbmem_tutorial.laplace.refinement import refine_map

__all__ = ["check_record", "fit_record", "record_of", "to_float64"]


def fit_record(setup, options) -> dict:
    """Refine θ* and tune λ (:mod:`rbmem_tutorial.laplace.prior_tuning`); a plain record for the
    cache and for files. Nothing to refine for a base point θ_SGD with a given λ."""
    lam = options["prior_precision"]
    if lam is not None and options["base_point"] != "refined":
        return {"theta_map": None, "prior_precision": lam, "refine_first": None,
                "refine_final": None, "tune_history": []}
    refine = {"max_iter": options["refine_iterations"], "newton_steps": options["newton_steps"]}
    if lam is None:
        return refine_and_tune(
            setup.objective, setup.theta_sgd,
            lambda objective, theta: setup.laplace(objective, theta, None).prior_precision,
            tune=options["tune"], max_rounds=options["max_tune_rounds"], **refine)
    theta, first = refine_map(setup.objective, setup.theta_sgd, **refine)
    theta, final = refine_map(setup.objective.with_prior_precision(lam), theta, **refine)
    return {"theta_map": theta.detach().cpu(), "prior_precision": lam,
            "refine_first": asdict(first), "refine_final": asdict(final), "tune_history": []}


def record_of(fp) -> dict:
    """The fitted record of a :class:`~rbmem_tutorial.laplace.pipeline.FlowPosterior`."""
    refined = fp.theta_refined
    return {"theta_map": None if refined is None else refined.detach().cpu(),
            "prior_precision": fp.posterior.prior_precision,
            "refine_first": None if fp.refine_first is None else asdict(fp.refine_first),
            "refine_final": None if fp.refine_final is None else asdict(fp.refine_final),
            "tune_history": list(fp.tune_history)}


def check_record(fitted: dict, setup) -> dict:
    """A cached fit, checked to match the net of ``setup`` (else a ``ValueError``)."""
    theta = fitted["theta_map"]
    if theta is not None and tuple(theta.shape) != tuple(setup.theta_sgd.shape):
        raise ValueError(f"θ* of shape {tuple(theta.shape)} for a net of "
                         f"{setup.theta_sgd.numel()} weights")
    if not float(fitted["prior_precision"]) > 0:
        raise ValueError(f"prior precision {fitted['prior_precision']}, not a positive number")
    return fitted


def to_float64(theta, device):
    """θ as float64 on ``device`` (None stays None)."""
    return None if theta is None else theta.to(device=device, dtype=torch.float64)
