"""From a trained flow to a Laplace posterior over its velocity net: the steps every later
chapter and the experiment scripts share.

1. Freeze K draws of (x_0, t) per training point, so the flow-matching loss becomes the fixed
   regression objective L(θ) of :class:`~rbmem_tutorial.laplace.objective.RegressionObjective`.
2. Set the noise σ from the residuals of the trained net θ_SGD.
3. Refine θ_SGD to a stationary point θ* of L: SGD on fresh draws stops near, not at, a
   minimiser of the frozen objective.
4. Tune the prior precision λ by the Laplace evidence at θ*, refine θ* again at that λ (λ moves
   the minimiser), and fit the posterior at the base point with λ fixed.

**Where the prior is centred** (``prior_mean``). ``"sgd"``, the default, centres the prior
N(θ_SGD, λ⁻¹I) at the trained parameters, which keeps the refined mode next to the network that
was trained, so the posterior describes uncertainty about *that* network. ``"zero"`` is the
usual N(0, λ⁻¹I) of the paper (Gegenfurtner, Jacobsen & Arvanitidis, arXiv 2602.00199). Its
penalty on each hidden unit's in- and outgoing weights acts like a sparsity penalty: refining
under it switches off most hidden units, and the pruned net memorises less for that reason
alone. Chapter 3 measures both (section 3.4).

**Where the posterior sits** (``base_point``). ``"refined"``, the default, is θ*, where
∇L = 0 as the Laplace approximation and the geodesics assume. ``"sgd"`` takes θ_SGD as it is,
the paper's setting: there ∇L ≠ 0, every geodesic starts with the same pull, and the samples
share a displacement (on the book's net, with the summed-loss metric, they run along the level
set of L and their common drift grows towards 1 with α). A drop in memorisation then measures
that shared step as much as posterior spread; chapter 7 separates the two with single-network
controls, and finds that at matched memorisation these samples do no better than the Euclidean
Laplace. That is why ``"refined"`` is the default. ``"tilted"`` keeps θ_SGD but removes the
gradient by a linear term,

.. math::

    \\tilde L(θ) = L(θ) − ∇L(θ_{\\mathrm{SGD}})^\\top (θ − θ_{\\mathrm{SGD}}),

which is stationary at θ_SGD with the Hessian of L
(:meth:`~rbmem_tutorial.laplace.objective.RegressionObjective.tilted`; the construction of
:func:`~rbmem_tutorial.laplace.subsets.anchored`); its samples are spread around θ_SGD
without the drift.

**λ** (``tune``, :mod:`rbmem_tutorial.laplace.prior_tuning`). ``"evidence-once"``, the default,
tunes
λ once at the first θ* and refines θ* at it; λ then need not maximise the evidence at the final
θ*, and ``tune_history`` records the λ that would. ``"fixed-point"`` alternates tuning and
refining until λ changes by less than 1%. With the prior centred at θ_SGD that runs towards
λ → ∞, θ* → θ_SGD (the prior's centre was fitted to the same data; chapter 3, exercise 1); with
a zero-mean prior it is MacKay's usual fixed point.

**Weight subsets** (chapter 8). With ``param_subset`` the posterior covers only the chosen
entries S of θ, the others fixed at the base point: the Laplace posterior is fitted to the
restricted objective L_S (:func:`~rbmem_tutorial.laplace.subsets.restrict_objective`), whose
geodesics
are the Riemannian samples, and λ is tuned by the evidence of that posterior. θ* is refined on
the full objective (a stationary point of L is one of L_S).

A :class:`FlowPosterior` can be saved with everything that made it and loaded without the cache
(:meth:`FlowPosterior.save`, :meth:`FlowPosterior.load`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rbmem_tutorial._checks import check_tensor
from rbmem_tutorial.cache import entry_path, save_atomic, save_entry, use_cached
from rbmem_tutorial.flows.nets import RegressionAdapter
from rbmem_tutorial.laplace.base import LaplacePosterior
from rbmem_tutorial.laplace.fitted import check_record, fit_record, record_of, to_float64
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.laplace.options import BASE_POINTS, PRIOR_MEANS, cache_key, check_options
from rbmem_tutorial.laplace.params import parameters_vector
from rbmem_tutorial.laplace.refinement import RefineRecord
from rbmem_tutorial.laplace.regression_set import (
    flow_matching_regression_set,
    noise_std_from_residuals,
)
from rbmem_tutorial.laplace.structures import fit_laplace
from rbmem_tutorial.laplace.subsets import ParameterSubset, parameter_subset, restrict_objective
from rbmem_tutorial.saving import build_net, net_architecture, read_saved, rebuilt, with_checksum

__all__ = ["BASE_POINTS", "PRIOR_MEANS", "FlowPosterior", "fit_flow_posterior"]

_KIND, _FORMAT = "rbmem_tutorial.FlowPosterior", 1


@dataclass
class FlowPosterior:
    """A Laplace posterior over a trained velocity net, with what it was built from.

    Attributes
    ----------
    objective : RegressionObjective
        The loss whose geodesics give the samples, over all D parameters, at the posterior's λ
        (``objective.prior_precision``): L for base points ``"refined"`` and ``"sgd"``, the
        tilted L̃ for ``"tilted"``.
    theta_sgd : Tensor [D]
        The trained parameters, as SGD left them (float64).
    theta_map : Tensor [D]
        The base point: the posterior's centre and the geodesics' start. θ*, refined to a
        stationary point of L, for ``base_point="refined"``; θ_SGD for ``"sgd"`` and
        ``"tilted"``.
    refine_first, refine_final : RefineRecord or None
        ‖∇L‖ and loss before and after refining at the initial and at the final λ; ``None``
        when nothing was refined (base point θ_SGD with a given λ).
    posterior : LaplacePosterior
        N(base, α² (GGN + λI)⁻¹) of the chosen structure; over θ_S when ``subset`` is set
        (then ``posterior.objective`` is the restricted L_S, the loss of its geodesics).
    noise_std : float
        σ from the residuals of θ_SGD.
    subset : ParameterSubset or None
        The weights the posterior covers; ``None`` for all of them.
    prior_mean, base_point : str
        The options that made it (module notes).
    base_grad_norm : float
        ‖∇L‖ at the base point for the untilted L over all D parameters at the final λ: about 0
        for ``"refined"``, the slope the samples drift down for ``"sgd"``, and the slope the
        tilt removed for ``"tilted"``.
    theta_refined : Tensor [D] or None
        The refined θ* at which λ was tuned (``theta_map`` itself for ``"refined"``).
    tune_history : list of dict
        One row per refinement: ``refined_at`` (the λ θ* was refined at), ``offset_norm``
        (‖θ* − prior mean‖) and ``evidence_optimum`` (the λ that maximises the evidence at that
        θ*). Empty for a given λ, and for a cache entry written before the history was kept.
    options : dict
        Every argument of :func:`fit_flow_posterior` except the net, the data and ``use_cache``.
    velocity_net : nn.Module
        A copy of the trained net it was fitted to.
    train : Tensor [N, d]
        The training set.

    Example
    -------
    >>> from rbmem_tutorial.flows.nets import VelocityMLP
    >>> _ = torch.manual_seed(0)
    >>> fp = fit_flow_posterior(VelocityMLP(2, hidden=(4,)), torch.randn(3, 2),
    ...                         draws_per_point=2, use_cache=False)
    >>> fp.base_point, fp.prior_mean, tuple(fp.full(fp.posterior.sample(2)).shape)
    ('refined', 'sgd', (2, 26))
    """

    objective: RegressionObjective
    theta_sgd: torch.Tensor
    theta_map: torch.Tensor
    refine_first: RefineRecord | None
    refine_final: RefineRecord | None
    posterior: LaplacePosterior
    noise_std: float
    subset: ParameterSubset | None = None
    prior_mean: str = "sgd"
    base_point: str = "refined"
    base_grad_norm: float = 0.0
    theta_refined: torch.Tensor | None = None
    tune_history: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    velocity_net: torch.nn.Module | None = None
    train: torch.Tensor | None = None

    def full(self, theta: torch.Tensor) -> torch.Tensor:
        """Full parameter vectors ``[..., D]`` from vectors in the posterior's space (the base
        point with the subset's entries replaced; the identity without a subset)."""
        if self.subset is None:
            return theta
        return self.subset.embed(self.theta_map, theta)

    def save(self, path) -> None:
        """Write the posterior and everything that made it to ``path`` (readable with
        ``torch.load(path, weights_only=True)``): the options, the net's architecture and
        weights, the data, θ_SGD, θ*, λ, σ and the refinement records.

        Example
        -------
        >>> import tempfile, pathlib
        >>> from rbmem_tutorial.flows.nets import VelocityMLP
        >>> _ = torch.manual_seed(0)
        >>> fp = fit_flow_posterior(VelocityMLP(2, hidden=(4,)), torch.randn(3, 2),
        ...                         draws_per_point=2, use_cache=False)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "posterior.pt"
        >>> fp.save(path)
        >>> again = FlowPosterior.load(path)
        >>> g = lambda: torch.Generator().manual_seed(0)
        >>> torch.equal(again.posterior.sample(2, g()), fp.posterior.sample(2, g()))
        True
        """
        cpu = {k: v.detach().cpu() for k, v in self.velocity_net.state_dict().items()}
        record = {
            "kind": _KIND, "format": _FORMAT, "options": dict(self.options),
            "net": net_architecture(self.velocity_net), "net_state": cpu,
            "train": self.train.detach().cpu(), "fitted": record_of(self),
            "theta_sgd": self.theta_sgd.cpu(), "theta_map": self.theta_map.cpu(),
            "prior_precision": self.posterior.prior_precision, "noise_std": self.noise_std,
            "base_grad_norm": self.base_grad_norm,
        }
        save_atomic(with_checksum(record), Path(path))

    @classmethod
    def load(cls, path, device=None) -> FlowPosterior:
        """Read a posterior written by :meth:`save`, on ``device`` (default: CPU).

        The net and the objective are rebuilt from the file and the posterior is refitted at
        the stored base point and λ (no refinement), so samples equal the original's for the
        same generator (the example of :meth:`save` checks this).
        """
        record = read_saved(path, _KIND, _FORMAT)
        return rebuilt(path, "posterior", lambda: cls._from_saved(path, record, device))

    @classmethod
    def _from_saved(cls, path, record: dict, device) -> FlowPosterior:
        known = set(inspect.signature(fit_flow_posterior).parameters) - {"velocity_net", "train"}
        unknown = sorted(set(record["options"]) - known)
        if unknown:
            raise KeyError(f"options {unknown} that fit_flow_posterior does not take")
        net = build_net(record["net"], record["net_state"])
        train = record["train"]
        if device is not None:
            net, train = net.to(device), train.to(device)
        options = check_options(net, record["options"])
        fitted = record["fitted"]
        fitted["theta_map"] = to_float64(fitted["theta_map"], train.device)
        fp = _assemble(_Setup(net, train, options), options, fitted)
        if not torch.equal(fp.theta_sgd.cpu(), record["theta_sgd"]):
            raise ValueError(f"{path}: the stored net does not give the stored θ_SGD; the file "
                             "is damaged.")
        return fp


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
    prior_mean: str = "sgd",
    base_point: str = "refined",
    tune: str = "evidence-once",
    max_tune_rounds: int = 10,
) -> FlowPosterior:
    """Build the frozen objective of a trained velocity net and fit a Laplace posterior to it.

    The combinations (module notes): ``prior_mean`` ∈ {``"sgd"``: N(θ_SGD, λ⁻¹I), ``"zero"``:
    N(0, λ⁻¹I)} × ``base_point`` ∈ {``"refined"``: the posterior at the refined θ*, ``"sgd"``:
    at θ_SGD with ∇L ≠ 0 (the paper's setting with ``prior_mean="zero"``), ``"tilted"``: at
    θ_SGD on the tilted loss L̃, stationary there}. λ is always tuned at a refined θ*, where the
    Laplace evidence is meant to be evaluated, and then used at the base point. The defaults
    (``"sgd"``, ``"refined"``, ``"evidence-once"``) are those chapters 3-7 are written for: a
    stationary base point next to the trained network, and the λ chapter 3 discusses.

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
        keyed by the net's parameters, the data and every option that changes them; a damaged
        entry is named on stderr, moved aside and recomputed.
    param_subset : str, optional
        Weights the posterior covers (:func:`~rbmem_tutorial.laplace.subsets.parameter_subset`:
        ``"all"``, ``"first"``, ``"last"``, ``"lastK"`` or name patterns of the velocity net);
        ``None`` for all.
    chunk_size : int, optional
        Examples per per-example-Jacobian chunk of the Laplace fit; by default as many as
        keep one chunk's Jacobian [chunk, d, D] under 256 MB. Memory only, not results.
    refine_iterations, newton_steps : int
        L-BFGS iterations and Newton-CG steps of each refinement
        (:func:`~rbmem_tutorial.laplace.refinement.refine_map`'s ``max_iter`` and ``newton_steps``).
        Fewer make large nets affordable on a CPU at the price of a less stationary θ*: check
        ``refine_final.grad_norm_after``.
    prior_mean : {"sgd", "zero"}
        The prior's centre: θ_SGD or 0.
    base_point : {"refined", "sgd", "tilted"}
        Where the posterior sits and on which loss its geodesics run (module notes).
    tune : {"evidence-once", "fixed-point"}
        How λ is tuned when ``prior_precision`` is not given.
    max_tune_rounds : int
        Refinements at most for ``tune="fixed-point"`` (a warning when λ has not settled).

    Example
    -------
    >>> from rbmem_tutorial.flows.nets import VelocityMLP
    >>> _ = torch.manual_seed(0)
    >>> fp = fit_flow_posterior(VelocityMLP(2, hidden=(8,)), torch.randn(4, 2), draws_per_point=4)
    >>> fp.posterior.sample(3).shape
    torch.Size([3, 50])
    """
    options = check_options(velocity_net, {
        "structure": structure, "draws_per_point": draws_per_point, "seed": seed,
        "prior_precision": prior_precision, "initial_prior_precision": initial_prior_precision,
        "param_subset": param_subset, "chunk_size": chunk_size,
        "refine_iterations": refine_iterations, "newton_steps": newton_steps,
        "prior_mean": prior_mean, "base_point": base_point, "tune": tune,
        "max_tune_rounds": max_tune_rounds,
    })
    setup = _Setup(velocity_net, train, options)
    path = entry_path("posterior", cache_key(setup, options))
    required = ("theta_map", "prior_precision", "refine_first", "refine_final")
    fitted = use_cached(path, required, lambda r: check_record(r, setup)) if use_cache else None
    if fitted is None:
        fitted = fit_record(setup, options)
        if use_cache and fitted["theta_map"] is not None:
            save_entry(fitted, path)
    fitted["theta_map"] = to_float64(fitted["theta_map"], setup.theta_sgd.device)
    return _assemble(setup, options, fitted)


class _Setup:
    """The frozen objective at the initial λ, θ_SGD, σ, the subset and the chunk size."""

    def __init__(self, velocity_net, train, options):
        train = check_tensor("train", train, ndim=2, min_rows=1)
        self.velocity_net = copy.deepcopy(velocity_net).eval()
        self.train = train.detach().clone()
        self.structure = options["structure"]
        self.subset = None
        if options["param_subset"] is not None:
            self.subset = parameter_subset(velocity_net, options["param_subset"])
        model = RegressionAdapter(velocity_net)
        inputs, targets = flow_matching_regression_set(train, options["draws_per_point"],
                                                       options["seed"])
        self.theta_sgd = parameters_vector(model).detach().to(torch.float64)
        self.noise_std = float(noise_std_from_residuals(model, self.theta_sgd, inputs, targets))
        mean = self.theta_sgd if options["prior_mean"] == "sgd" else None
        self.objective = RegressionObjective(model, inputs, targets, self.noise_std,
                                             options["initial_prior_precision"], prior_mean=mean)
        chunk = options["chunk_size"]
        if chunk is None:
            width = self.objective.num_params if self.subset is None else self.subset.size
            chunk = max(1, min(256, 2**28 // (8 * targets.shape[1] * width)))
        self.chunk_size = chunk

    def laplace(self, objective, theta, lam):
        """The posterior of ``objective`` at ``theta`` (over the subset when there is one)."""
        if self.subset is None:
            return fit_laplace(objective, theta, self.structure, lam, chunk_size=self.chunk_size)
        restricted = restrict_objective(objective, theta, self.subset)
        return fit_laplace(restricted, self.subset.restrict(theta), self.structure, lam,
                           chunk_size=self.chunk_size)


def _assemble(setup, options, fitted) -> FlowPosterior:
    """The posterior at the base point from the refined θ* and λ (fresh, cached or loaded)."""
    lam = fitted["prior_precision"]
    objective = setup.objective.with_prior_precision(lam)
    base_point = options["base_point"]
    base = fitted["theta_map"] if base_point == "refined" else setup.theta_sgd
    base_grad_norm = float(objective.grad(base).norm())
    if base_point == "tilted":
        objective = objective.tilted(base)
    records = [None if fitted[k] is None else RefineRecord(**fitted[k])
               for k in ("refine_first", "refine_final")]
    return FlowPosterior(
        objective, setup.theta_sgd, base, *records, setup.laplace(objective, base, lam),
        setup.noise_std, setup.subset, options["prior_mean"], base_point, base_grad_norm,
        fitted["theta_map"], list(fitted.get("tune_history", [])), options,
        setup.velocity_net, setup.train,
    )
