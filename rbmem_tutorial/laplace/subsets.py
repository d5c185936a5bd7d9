"""Restricting the frozen objective to a subset of the weights, or of the data pairs.

Both restrictions make Laplace and geodesics cheaper on large nets (chapter 8).

**Weight subsets.** A subset is an index set S of θ. With the other entries held at θ*,

.. math::

    L_S(θ_S) = L(θ^* \\text{ with } θ_S \\text{ substituted})
             = \\tfrac12 \\sum_{n,j} (f(z_n)_j − y_{n,j})^2/σ_j^2
               + \\tfrac{λ}{2} \\lVert θ_S \\rVert^2 + \\text{const},

so ∇L_S = (∇L)_S and ∇²L_S = (∇²L)_{SS}. The Laplace posterior and the geodesics of the
Riemannian Laplace approximation (Bergamin et al. 2023, arXiv 2306.07158) then live in the
k-dimensional space of θ_S (k chosen entries), and a sample is θ* with its S entries replaced
(:meth:`ParameterSubset.embed`). The restricted objective is an ordinary
:class:`~rbmem_tutorial.laplace.objective.RegressionObjective` whose model holds only the chosen
tensors
as parameters (the others become buffers), so every Laplace structure works on it; KFAC needs
the chosen tensors to fill whole ``nn.Linear`` layers.

**Mini-batches.** A fixed random set B of n_B of the N frozen pairs, with the data term scaled
by N/n_B so that it is an unbiased estimate of the full one:

.. math::

    L_B(θ) = \\frac{N}{|B|} \\cdot \\tfrac12 \\sum_{n ∈ B} \\sum_j (f_θ(z_n)_j − y_{n,j})^2/σ_j^2
             + \\tfrac{λ}{2} \\lVert θ - m \\rVert^2,

which is the objective with noise σ√(n_B/N). Gradients and Hessian-vector products of L_B cost
n_B/N of the full ones; the geodesic end points move (measure it with a full-data solve).

θ* is stationary for L but not for L_B, and a geodesic that starts with ∇L_B(θ*) ≠ 0 slides
downhill on the batch's surface. :func:`anchored` removes that with a fixed linear term (a
control variate, as in SVRG):

.. math::

    \tilde L_B(θ) = L_B(θ) − (∇L_B(θ^*) − ∇L(θ^*))^\top θ,

whose gradient at θ* is the full ∇L(θ*) and whose Hessian is that of L_B; it is still unbiased,
since E_B[∇L_B(θ*)] = ∇L(θ*).

See Gegenfurtner, Jacobsen & Arvanitidis, arXiv 2602.00199, for the method these speed up.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rbmem_tutorial._checks import check_positive_int, check_tensor
from rbmem_tutorial.laplace import fast_mlp
from rbmem_tutorial.laplace.objective import RegressionObjective

__all__ = [
    "SUBSET_PRESETS",
    "AnchoredObjective",
    "ParameterSubset",
    "SubsetModel",
    "anchored",
    "minibatch_objective",
    "parameter_subset",
    "restrict_objective",
]

SUBSET_PRESETS = ("all", "first", "last", "last2")


@dataclass(frozen=True)
class ParameterSubset:
    """The parameter tensors chosen for the posterior, and their positions in θ.

    Attributes
    ----------
    names : tuple of str
        Names of the chosen tensors (``named_parameters`` of the model the subset was made on).
    tensors : tuple of int
        Their positions in the ``named_parameters`` list (independent of name prefixes).
    index : Tensor [k]
        Positions of the chosen entries in the flat θ (int64, increasing).
    num_params : int
        D, the length of θ.
    spec : str
        What was asked for.
    """

    names: tuple[str, ...]
    tensors: tuple[int, ...]
    index: torch.Tensor
    num_params: int
    spec: str

    @property
    def size(self) -> int:
        """k, the number of chosen entries."""
        return int(self.index.numel())

    def restrict(self, theta: torch.Tensor) -> torch.Tensor:
        """θ_S: the chosen entries of θ ``[..., D]``, shape ``[..., k]``."""
        self._check(theta, self.num_params, "theta")
        return theta[..., self.index.to(theta.device)]

    def embed(self, base: torch.Tensor, theta_sub: torch.Tensor) -> torch.Tensor:
        """``base`` θ* ``[D]`` with its S entries replaced by θ_S ``[..., k]``: ``[..., D]``."""
        self._check(base, self.num_params, "base")
        self._check(theta_sub, self.size, "theta_sub")
        out = base.expand(*theta_sub.shape[:-1], self.num_params).clone()
        out[..., self.index.to(base.device)] = theta_sub.to(out)
        return out

    @staticmethod
    def _check(value, length, name):
        if not isinstance(value, torch.Tensor) or value.shape[-1:] != (length,):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(f"{name} must have {length} entries in its last dimension, got "
                             f"{shape}.")


def _owners(model: nn.Module) -> list[list[int]]:
    """Positions in ``named_parameters`` grouped by the module that owns them, in order."""
    owner_of = {}
    for module_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            owner_of[f"{module_name}.{attr}" if module_name else attr] = module_name
    groups: dict[str, list[int]] = {}
    for position, (name, _) in enumerate(model.named_parameters()):
        groups.setdefault(owner_of[name], []).append(position)
    return list(groups.values())


def _chosen_positions(model: nn.Module, spec: str) -> list[int]:
    names = [name for name, _ in model.named_parameters()]
    groups = _owners(model)
    if spec == "all":
        return list(range(len(names)))
    if spec == "first":
        return groups[0]
    if spec == "last" or (spec.startswith("last") and spec[4:].isdigit()):
        count = int(spec[4:] or 1)
        if count < 1 or count > len(groups):
            raise ValueError(f"{spec!r} asks for {count} layers, the model has {len(groups)}.")
        return [p for group in groups[-count:] for p in group]
    patterns = [part.strip() for part in spec.split(",") if part.strip()]
    return [i for i, name in enumerate(names) if any(fnmatch.fnmatch(name, p) for p in patterns)]


def parameter_subset(model: nn.Module, spec: str = "all") -> ParameterSubset:
    """Choose parameter tensors of ``model`` by a preset or by name patterns.

    Parameters
    ----------
    model : nn.Module
    spec : str
        ``"all"``; ``"first"`` or ``"last"``: the tensors of the first or last module that owns
        parameters (for an MLP, its first or last ``nn.Linear``); ``"lastK"`` (e.g. ``"last2"``):
        the last K such modules; otherwise comma-separated shell patterns matched against the
        names of ``model.named_parameters()``, e.g. ``"net.4.*,net.2.weight"``.

    Returns
    -------
    ParameterSubset

    Example
    -------
    >>> mlp = nn.Sequential(nn.Linear(2, 3), nn.SiLU(), nn.Linear(3, 1))
    >>> s = parameter_subset(mlp, "last")
    >>> s.names, s.index.tolist()
    (('2.weight', '2.bias'), [9, 10, 11, 12])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a preset {SUBSET_PRESETS} or name patterns, got {spec!r}.")
    params = list(model.named_parameters())
    chosen = sorted(set(_chosen_positions(model, spec.strip())))
    if not chosen:
        sample = ", ".join(name for name, _ in params[:6])
        raise ValueError(f"parameter subset {spec!r} matches no parameter; names look like "
                         f"{sample}; presets are {', '.join(SUBSET_PRESETS)}.")
    offsets = [0]
    for _, p in params:
        offsets.append(offsets[-1] + p.numel())
    index = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in chosen])
    return ParameterSubset(tuple(params[i][0] for i in chosen), tuple(chosen), index,
                           offsets[-1], spec.strip())


class _PlainLinear(nn.Module):
    """``F.linear`` with whatever weight/bias are parameters or buffers (not an ``nn.Linear``,
    so KFAC does not treat a partly frozen layer as a trainable one)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        for attr in ("weight", "bias"):
            if linear._parameters.get(attr) is not None:
                self.register_parameter(attr, linear._parameters[attr])
            else:
                self.register_buffer(attr, linear._buffers.get(attr))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SubsetModel(nn.Module):
    """A copy of ``model`` whose only parameters are the chosen tensors, the rest fixed buffers.

    The fixed tensors take their values from ``theta`` (a full flat θ). ``nn.Linear`` layers
    that are not wholly chosen are replaced by an equivalent plain module, so KFAC sees only
    trainable layers. ``forward`` is the model's own.
    """

    def __init__(self, model: nn.Module, subset: ParameterSubset, theta: torch.Tensor):
        super().__init__()
        inner = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(theta.detach().to(next(inner.parameters())),
                                            inner.parameters())
        chosen = set(subset.tensors)
        frozen = {name for i, (name, _) in enumerate(inner.named_parameters()) if i not in chosen}
        for module_name, module in list(inner.named_modules()):
            for attr, param in list(module._parameters.items()):
                full = f"{module_name}.{attr}" if module_name else attr
                if param is not None and full in frozen:
                    del module._parameters[attr]
                    module.register_buffer(attr, param.detach())
        for module_name, module in list(inner.named_modules()):
            partly_frozen = any(b is not None for b in module._buffers.values())
            if isinstance(module, nn.Linear) and partly_frozen:
                if not module_name:
                    inner = _PlainLinear(module)
                    continue
                parent, _, child = module_name.rpartition(".")
                setattr(inner.get_submodule(parent), child, _PlainLinear(module))
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


def restrict_objective(
    objective: RegressionObjective, theta: torch.Tensor, subset: ParameterSubset
) -> RegressionObjective:
    """L_S(θ_S): the objective over the subset's entries, the others fixed at ``theta``.

    Same data, noise and prior precision; the prior covers θ_S only (the rest is a constant).
    Its value at ``subset.restrict(theta)`` is L(theta) − (λ/2)‖θ_rest‖², its gradient
    (∇L)_S and its Hessian the block (∇²L)_SS.

    Example
    -------
    >>> lin = nn.Linear(2, 1).double()
    >>> obj = RegressionObjective(lin, torch.randn(5, 2), torch.randn(5, 1), 1.0, 1.0)
    >>> theta = torch.nn.utils.parameters_to_vector(obj.model.parameters()).detach()
    >>> sub = restrict_objective(obj, theta, parameter_subset(obj.model, "bias"))
    >>> sub.num_params
    1
    """
    if not isinstance(objective, RegressionObjective):
        raise TypeError("objective must be a RegressionObjective.")
    theta = objective.check_theta(theta)
    if subset.num_params != objective.num_params:
        raise ValueError(f"the subset was made for {subset.num_params} parameters, the "
                         f"objective has {objective.num_params}; make it on the same net.")
    model = SubsetModel(objective.model, subset, theta)
    mean = None if objective.prior_mean is None else subset.restrict(objective.prior_mean)
    return RegressionObjective(model, objective.inputs, objective.targets,
                               objective.noise_std, objective.prior_precision, prior_mean=mean)


def minibatch_objective(
    objective: RegressionObjective, batch_size: int, seed: int = 0
) -> RegressionObjective:
    """L_B: the objective on a fixed random set of ``batch_size`` pairs, data term scaled N/n_B.

    The pairs are drawn without replacement by a generator seeded with ``seed``; the scaling
    is done through the noise, σ_B = σ √(n_B/N), so the data term is unbiased for the full one
    and the prior is unchanged. A batch as large as the data gives the objective back.

    Example
    -------
    >>> lin = nn.Linear(2, 1)
    >>> obj = RegressionObjective(lin, torch.randn(8, 2), torch.randn(8, 1), 1.0, 1.0)
    >>> minibatch_objective(obj, 2).num_examples, minibatch_objective(obj, 2).noise_std
    (2, 0.5)
    """
    if not isinstance(objective, RegressionObjective):
        raise TypeError("objective must be a RegressionObjective.")
    n = objective.num_examples
    batch_size = check_positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} frozen pairs; use at most {n}.")
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:batch_size]
    rows = rows.sort().values.to(objective.inputs.device)
    factor = math.sqrt(batch_size / n)
    noise = objective.noise_std
    noise = noise * factor if isinstance(noise, torch.Tensor) else float(noise) * factor
    return RegressionObjective(objective.model, objective.inputs[rows], objective.targets[rows],
                               noise, objective.prior_precision, prior_mean=objective.prior_mean)


class AnchoredObjective:
    """``loss(θ) − shiftᵀθ``: the same Hessian, the gradient moved by a constant vector.

    Has ``value``, ``grad`` and ``grad_and_hvp`` (what :mod:`rbmem_tutorial.riemannian` needs);
    the derivatives of a plain MLP regression loss come from the fused kernel of
    :mod:`rbmem_tutorial.laplace.fast_mlp`. Build it with :func:`anchored`.
    """

    def __init__(self, loss, shift: torch.Tensor):
        self.loss = loss
        self.shift = shift.detach()
        self.num_params = shift.numel()
        self.num_examples = getattr(loss, "num_examples", None)
        source = loss
        if fast_mlp.supports(loss):
            source = fast_mlp.MLPRegressionKernel.from_objective(loss)
        self._derivatives = source.grad_and_hvp
        if hasattr(source, "grad_and_curvature"):  # the geodesic's cheaper form, if offered
            self._curvature = source.grad_and_curvature
            self.grad_and_curvature = self._grad_and_curvature

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """``loss(θ) − shiftᵀθ``."""
        return self.loss.value(theta) - self.shift @ theta

    __call__ = value

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """``∇loss(θ) − shift``."""
        return self.loss.grad(theta) - self.shift

    def grad_and_hvp(self, theta: torch.Tensor, v: torch.Tensor):
        """``(∇loss(θ) − shift, ∇²loss(θ) v)``."""
        grad, hvp = self._derivatives(theta, v)
        return grad - self.shift, hvp

    def _grad_and_curvature(self, theta, v):
        grad, curvature = self._curvature(theta, v)
        return grad - self.shift, curvature


def anchored(loss, theta_star: torch.Tensor, target_grad: torch.Tensor) -> AnchoredObjective:
    """``loss`` shifted by a linear term so that its gradient at θ* is ``target_grad``.

    For a mini-batch loss L_B and the full objective L, ``anchored(L_B, θ*, ∇L(θ*))`` is the
    control-variate loss of the module notes: geodesics from θ* no longer slide down the
    batch's own slope. ``loss`` needs ``value``, ``grad`` and ``grad_and_hvp``.

    Example
    -------
    >>> lin = nn.Linear(2, 1)
    >>> obj = RegressionObjective(lin, torch.randn(8, 2), torch.randn(8, 1), 1.0, 1.0)
    >>> theta = torch.zeros(3, dtype=torch.float64)
    >>> batch = anchored(minibatch_objective(obj, 2), theta, obj.grad(theta))
    >>> torch.allclose(batch.grad(theta), obj.grad(theta))
    True
    """
    theta_star = check_tensor("theta_star", theta_star, ndim=1)
    target_grad = check_tensor("target_grad", target_grad, ndim=1)
    if target_grad.shape != theta_star.shape:
        raise ValueError(f"target_grad must have the shape of theta_star {tuple(theta_star.shape)}"
                         f", got {tuple(target_grad.shape)}.")
    return AnchoredObjective(loss, loss.grad(theta_star) - target_grad.to(theta_star))
