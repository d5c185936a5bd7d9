"""From a trained flow to a Laplace posterior over its velocity net: the steps every later
chapter and the experiment scripts share.

1. Freeze K draws of (x_0, t) per training point, so the flow-matching loss becomes the fixed
   regression objective L(θ) of :class:`~rbmem_tutorial.objective.RegressionObjective`.
2. Set the noise σ from the residuals of the trained net θ_SGD.
3. Refine θ_SGD to a stationary point θ* of L: SGD on fresh draws stops near, not at, a
   minimiser of the frozen objective.
4. Tune the prior precision λ by the Laplace evidence, refine θ* again at that λ (λ moves the
   minimiser), and fit the posterior there with λ fixed.

The prior N(θ_SGD, λ⁻¹I) is centred at the trained parameters, not at zero. Under a zero-mean
prior at the evidence-tuned λ (about 2 for the book's running example), refining switches off
about 90% of the hidden units: the weight-decay penalty on each unit's in- and outgoing weights
acts like a sparsity penalty, and the pruned net no longer memorises (0.29 of its samples
against 0.64 for θ_SGD, with 0.28 for true samples). Centring the prior at θ_SGD keeps the
refined mode next to the network that was trained, so the posterior describes uncertainty about
*that* network.

The result holds one objective with one λ: the posterior's covariance and the Riemannian
metric of chapter 4 both use it.

**Weight subsets** (chapter 6). With ``param_subset`` the posterior covers only the chosen
entries S of θ, the others fixed at θ*: the Laplace posterior is fitted to the restricted
objective L_S (:func:`~rbmem_tutorial.subsets.restrict_objective`), whose geodesics are the
Riemannian samples, and λ is tuned by the evidence of that posterior. θ* is refined on the full
objective (a stationary point of L is one of L_S).
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
from .subsets import ParameterSubset, parameter_subset, restrict_objective


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
        N(θ*, α² (GGN + λI)⁻¹) of the chosen structure; over θ_S when ``subset`` is set
        (then ``posterior.objective`` is the restricted L_S, the loss of its geodesics).
    noise_std : float
        σ from the residuals of θ_SGD.
    subset : ParameterSubset or None
        The weights the posterior covers; ``None`` for all of them.
    """

    objective: RegressionObjective
    theta_sgd: torch.Tensor
    theta_map: torch.Tensor
    refine_first: RefineRecord
    refine_final: RefineRecord
    posterior: LaplacePosterior
    noise_std: float
    subset: ParameterSubset | None = None

    def full(self, theta: torch.Tensor) -> torch.Tensor:
        """Full parameter vectors ``[..., D]`` from vectors in the posterior's space (θ* with
        the subset's entries replaced; the identity without a subset)."""
        if self.subset is None:
            return theta
        return self.subset.embed(self.theta_map, theta)


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
    param_subset: str | None = None,
    chunk_size: int | None = None,
    refine_iterations: int = 1000,
    newton_steps: int = 10,
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
    param_subset : str, optional
        Weights the posterior covers (:func:`~rbmem_tutorial.subsets.parameter_subset`:
        ``"all"``, ``"first"``, ``"last"``, ``"lastK"`` or name patterns of the velocity net);
        ``None`` for all.
    chunk_size : int, optional
        Examples per per-example-Jacobian chunk of the Laplace fit; by default as many as
        keep one chunk's Jacobian [chunk, d, D] under 256 MB. Memory only, not results.
    refine_iterations, newton_steps : int
        L-BFGS iterations and Newton-CG steps of each refinement
        (:func:`~rbmem_tutorial.objective.refine_map`'s ``max_iter`` and ``newton_steps``).
        Fewer make large nets affordable on a CPU at the price of a less stationary θ*: check
        ``refine_final.grad_norm_after``.

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
    subset = None if param_subset is None else parameter_subset(velocity_net, param_subset)
    model = RegressionAdapter(velocity_net)
    inputs, targets = flow_matching_regression_set(train, draws_per_point, seed)
    theta_sgd = parameters_vector(model).detach().to(torch.float64)
    sigma = float(noise_std_from_residuals(model, theta_sgd, inputs, targets))
    objective = RegressionObjective(model, inputs, targets, sigma, lam0, prior_mean=theta_sgd)
    if chunk_size is None:
        width = objective.num_params if subset is None else subset.size
        per_example = 8 * targets.shape[1] * width
        chunk_size = max(1, min(256, 2**28 // per_example))
    chunk_size = check_positive_int("chunk_size", chunk_size)

    def laplace(objective, theta, lam):
        if subset is None:
            return fit_laplace(objective, theta, structure, lam, chunk_size=chunk_size)
        restricted = restrict_objective(objective, theta, subset)
        return fit_laplace(restricted, subset.restrict(theta), structure, lam,
                           chunk_size=chunk_size)

    key = {"theta": theta_sgd, "train": train, "structure": structure, "K": draws_per_point,
           "seed": seed, "lambda": prior_precision, "lambda0": lam0, "prior_mean": "theta_sgd"}
    if subset is not None:
        key["subset"] = subset.index
    refine = {"max_iter": refine_iterations, "newton_steps": newton_steps}
    if refine != {"max_iter": 1000, "newton_steps": 10}:
        key["refine"] = refine
    path = cache_dir() / f"posterior-{digest(key)[:20]}.pt"
    if use_cache and path.exists():
        record = torch.load(path, weights_only=False)
        theta, lam = record["theta_map"], record["prior_precision"]
        first = RefineRecord(**record["refine_first"])
        final = RefineRecord(**record["refine_final"])
    else:
        theta, first = refine_map(objective, theta_sgd, **refine)
        lam = prior_precision
        if lam is None:
            lam = laplace(objective, theta, None).prior_precision
        theta, final = refine_map(objective.with_prior_precision(lam), theta, **refine)
        if use_cache:
            save_atomic({"theta_map": theta, "prior_precision": lam,
                         "refine_first": asdict(first), "refine_final": asdict(final)}, path)
    objective = objective.with_prior_precision(lam)
    posterior = laplace(objective, theta, lam)
    return FlowPosterior(objective, theta_sgd, theta, first, final, posterior, sigma, subset)
