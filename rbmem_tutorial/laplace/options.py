"""The options of :func:`~rbmem_tutorial.laplace.pipeline.fit_flow_posterior`: their checks and the
cache key they make.

Every option is checked before any work starts (a one-line error names the bad one), and the
options that change the refined θ* or the tuned λ enter the key of the posterior's cache
entry (:mod:`rbmem_tutorial.cache`).
"""

from __future__ import annotations

import torch

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int
from rbmem_tutorial.laplace.prior_tuning import TUNE_RTOL, TUNINGS
from rbmem_tutorial.laplace.structures import STRUCTURES
from rbmem_tutorial.laplace.subsets import parameter_subset

__all__ = ["BASE_POINTS", "PRIOR_MEANS", "cache_key", "check_options"]

#: Where the prior is centred: θ_SGD or 0 (:mod:`rbmem_tutorial.laplace.pipeline` notes).
PRIOR_MEANS = ("sgd", "zero")
#: Where the posterior sits: the refined θ*, θ_SGD, or θ_SGD on the tilted loss.
BASE_POINTS = ("refined", "sgd", "tilted")


def check_options(velocity_net, options: dict) -> dict:
    """The options of :func:`~rbmem_tutorial.laplace.pipeline.fit_flow_posterior` (a dict of all its
    keyword arguments except ``use_cache``), checked before any work, with integers made
    plain ``int``; a one-line error names the bad one.

    Example
    -------
    >>> from rbmem_tutorial.flows.nets import VelocityMLP
    >>> options = {"structure": "diag", "draws_per_point": 4, "seed": 0, "prior_precision": None,
    ...            "initial_prior_precision": 1.0, "param_subset": None, "chunk_size": None,
    ...            "refine_iterations": 100, "newton_steps": 5, "prior_mean": "sgd",
    ...            "base_point": "refined", "tune": "evidence-once", "max_tune_rounds": 10}
    >>> check_options(VelocityMLP(2, hidden=(4,)), options) == options
    True
    >>> check_options(VelocityMLP(2, hidden=(4,)), {**options, "base_point": "map"})
    Traceback (most recent call last):
    ...
    ValueError: unknown base_point 'map'; choose one of 'refined', 'sgd', 'tilted'.
    """
    if not isinstance(velocity_net, torch.nn.Module):
        raise TypeError(f"velocity_net must be an nn.Module, got {type(velocity_net).__name__}.")
    out = dict(options)
    check_choice("structure", out["structure"], STRUCTURES)
    check_positive_int("draws_per_point", out["draws_per_point"])
    if hasattr(out["seed"], "__index__") and not isinstance(out["seed"], bool):
        out["seed"] = int(out["seed"])  # NumPy integers too
    check_positive_int("seed", out["seed"], minimum=0)
    if out["prior_precision"] is not None:
        out["prior_precision"] = check_positive("prior_precision", out["prior_precision"])
    out["initial_prior_precision"] = check_positive("initial_prior_precision",
                                                    out["initial_prior_precision"])
    if out["param_subset"] is not None:
        parameter_subset(velocity_net, out["param_subset"])
    if out["chunk_size"] is not None:
        check_positive_int("chunk_size", out["chunk_size"])
    check_positive_int("refine_iterations", out["refine_iterations"])
    check_positive_int("newton_steps", out["newton_steps"], minimum=0)
    check_choice("prior_mean", out["prior_mean"], PRIOR_MEANS)
    check_choice("base_point", out["base_point"], BASE_POINTS)
    check_choice("tune", out["tune"], TUNINGS)
    check_positive_int("max_tune_rounds", out["max_tune_rounds"], minimum=2)
    if out["tune"] != "evidence-once" and out["prior_precision"] is not None:
        raise ValueError(f"tune={out['tune']!r} tunes λ, but prior_precision="
                         f"{out['prior_precision']} fixes it; pass one of the two.")
    return out


def cache_key(setup, options: dict) -> dict:
    """The record whose digest names the cache entry of a posterior: θ_SGD, the data and every
    option that changes θ* or λ. ``setup`` holds ``theta_sgd``, ``train`` and ``subset``.

    The default options keep the key of earlier versions, so existing entries stay valid;
    every other option value enters it. ``chunk_size`` changes memory, not results, and is
    left out.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> setup = SimpleNamespace(theta_sgd=torch.zeros(3), train=torch.ones(2, 2), subset=None)
    >>> defaults = {"structure": "diag", "draws_per_point": 16, "seed": 0,
    ...             "prior_precision": None, "initial_prior_precision": 1.0,
    ...             "refine_iterations": 1000, "newton_steps": 10, "prior_mean": "sgd",
    ...             "base_point": "refined", "tune": "evidence-once"}
    >>> sorted(cache_key(setup, defaults))
    ['K', 'lambda', 'lambda0', 'prior_mean', 'seed', 'structure', 'theta', 'train']
    >>> other = cache_key(setup, {**defaults, "base_point": "tilted", "newton_steps": 5})
    >>> sorted(set(other) - set(cache_key(setup, defaults)))
    ['base_point', 'refine']
    """
    key = {"theta": setup.theta_sgd, "train": setup.train, "structure": options["structure"],
           "K": options["draws_per_point"], "seed": options["seed"],
           "lambda": options["prior_precision"], "lambda0": options["initial_prior_precision"],
           "prior_mean": "theta_sgd" if options["prior_mean"] == "sgd" else "zero"}
    if setup.subset is not None:
        key["subset"] = setup.subset.index
    refine = {"max_iter": options["refine_iterations"], "newton_steps": options["newton_steps"]}
    if refine != {"max_iter": 1000, "newton_steps": 10}:
        key["refine"] = refine
    if options["base_point"] != "refined":
        key["base_point"] = options["base_point"]
    if options["tune"] != "evidence-once":
        key["tune"] = [options["tune"], options["max_tune_rounds"], TUNE_RTOL]
    return key
