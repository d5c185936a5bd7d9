"""From a trained flow to a Laplace posterior over its velocity net: the steps every later
chapter and the experiment scripts share.

1. Freeze K draws of (x_0, t) per training point, so the flow-matching loss becomes the fixed
   regression objective L(θ) of :class:`~rbmem_tutorial.objective.RegressionObjective`.
2. Set the noise σ from the residuals of the trained net θ_SGD.
3. Refine θ_SGD to a stationary point θ* of L: SGD on fresh draws stops near, not at, a
   minimiser of the frozen objective.
4. Tune the prior precision λ by the Laplace evidence, refine θ* again at that λ (the prior is
   centred at zero, so λ moves the minimiser), and fit the posterior there with λ fixed.

The result holds one objective with one λ: the posterior's covariance and the Riemannian
metric of chapter 4 both use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ._checks import check_positive, check_positive_int
from .cache import cache_dir, digest, save_atomic
from .laplace import LaplacePosterior, fit_laplace
from .nets import RegressionAdapter
from .objective import (
    RefineRecord,
    RegressionObjective,
    flow_matching_regression_set,
    noise_std_from_residuals,
    parameters_vector,
    refine_map,
)


@dataclass
class FlowPosterior:
    """A Laplace posterior over a trained velocity net, with what it was built from.

    Attributes
    ----------
    objective : RegressionObjective
        The frozen negative log posterior at the tuned λ (``objective.prior_precision``).
    theta_sgd : Tensor [D]
        The trained parameters, as SGD left them (float64).
    theta_map : Tensor [D]
        θ*, refined to a stationary point of ``objective``.
    refine_first, refine_final : RefineRecord
        ‖∇L‖ and loss before and after refining at the initial and at the tuned λ.
    posterior : LaplacePosterior
        N(θ*, α² (GGN + λI)⁻¹) of the chosen structure.
    noise_std : float
        σ from the residuals of θ_SGD.
    """

    objective: RegressionObjective
    theta_sgd: torch.Tensor
    theta_map: torch.Tensor
    refine_first: RefineRecord
    refine_final: RefineRecord
    posterior: LaplacePosterior
    noise_std: float


def fit_flow_posterior(
    velocity_net: torch.nn.Module,
    train: torch.Tensor,
    *,
    structure: str = "diag",
    draws_per_point: int = 16,
    seed: int = 0,
    prior_precision: float | None = None,
    initial_prior_precision: float = 1.0,
    use_cache: bool = True,
) -> FlowPosterior:
    """Build the frozen objective of a trained velocity net and fit a Laplace posterior to it.

    Parameters
    ----------
    velocity_net : nn.Module
        The trained net ``u_θ(x, t)``; it is not modified.
    train : Tensor [N, d]
        The training set it was fitted on.
    structure : {"full", "diag", "kfac", "last_layer"}
        The Laplace structure.
    draws_per_point : int
        K, frozen (x_0, t) draws per training point: N·K regression pairs.
    seed : int
        Seed of the frozen draws.
    prior_precision : float, optional
        λ; by default tuned by maximising the Laplace evidence.
    initial_prior_precision : float
        λ used for the first refinement, before λ is tuned.
    use_cache : bool
        Reuse θ*, λ and the refinement records from the cache (:mod:`rbmem_tutorial.cache`),
        keyed by the net's parameters, the data and every option; refining takes tens of
        seconds, refitting the posterior from them well under one.

    Example
    -------
    >>> from rbmem_tutorial.nets import VelocityMLP
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> fp = fit_flow_posterior(VelocityMLP(2, hidden=(8,)), torch.randn(4, 2), draws_per_point=4)
    >>> fp.posterior.sample(3).shape
    torch.Size([3, 49])
    """
    check_positive_int("draws_per_point", draws_per_point)
    lam0 = check_positive("initial_prior_precision", initial_prior_precision)
    model = RegressionAdapter(velocity_net)
    inputs, targets = flow_matching_regression_set(train, draws_per_point, seed)
    theta_sgd = parameters_vector(model).detach().to(torch.float64)
    sigma = float(noise_std_from_residuals(model, theta_sgd, inputs, targets))
    objective = RegressionObjective(model, inputs, targets, sigma, lam0)
    key = {"theta": theta_sgd, "train": train, "structure": structure, "K": draws_per_point,
           "seed": seed, "lambda": prior_precision, "lambda0": lam0}
    path = cache_dir() / f"posterior-{digest(key)[:20]}.pt"
    if use_cache and path.exists():
        record = torch.load(path, weights_only=False)
        theta, lam = record["theta_map"], record["prior_precision"]
        first = RefineRecord(**record["refine_first"])
        final = RefineRecord(**record["refine_final"])
    else:
        theta, first = refine_map(objective, theta_sgd)
        lam = prior_precision
        if lam is None:
            lam = fit_laplace(objective, theta, structure).prior_precision
        theta, final = refine_map(objective.with_prior_precision(lam), theta)
        if use_cache:
            save_atomic({"theta_map": theta, "prior_precision": lam,
                         "refine_first": asdict(first), "refine_final": asdict(final)}, path)
    objective = objective.with_prior_precision(lam)
    posterior = fit_laplace(objective, theta, structure, prior_precision=lam)
    return FlowPosterior(objective, theta_sgd, theta, first, final, posterior, sigma)
