"""Flow matching as a fixed regression problem: the frozen draws and the noise level σ.

Flow matching trains on fresh Monte-Carlo draws of (x_0, t) at every step; a Laplace
approximation needs one fixed function of θ. :func:`flow_matching_regression_set` freezes K
draws per training point into inputs z = [x_t, t] and targets y = x_1 − x_0, and
:func:`noise_std_from_residuals` sets the Gaussian likelihood's σ from the residuals of the
trained net. Both feed :class:`~rbmem_tutorial.laplace.objective.RegressionObjective`.
"""

from __future__ import annotations

import torch
from torch import nn

from rbmem_tutorial._checks import check_positive_int, check_tensor
from rbmem_tutorial.laplace.objective import RegressionObjective

__all__ = ["flow_matching_regression_set", "noise_std_from_residuals"]


def flow_matching_regression_set(
    train: torch.Tensor, draws_per_point: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Freeze K draws of (x_0, t) per training point: flow matching as a fixed regression set.

    For every training point x_1 and draw k, x_0 ~ N(0, I) and t ~ U[0, 1] give the input
    z = [x_t, t] with x_t = (1 − t) x_0 + t x_1 and the target y = x_1 − x_0 (the linear-path
    velocity of Lipman et al. 2022, arXiv 2210.02747). Rows are ordered point by point
    (row n·K + k is draw k of point n).

    Parameters
    ----------
    train : Tensor [N, d]
        Training points x_1.
    draws_per_point : int
        K, the number of frozen (x_0, t) draws per point.
    seed : int
        Seed of the draws; the same seed gives the same set.

    Returns
    -------
    inputs : Tensor [N·K, d + 1]
        ``[x_t, t]`` in float64, on the device of ``train``.
    targets : Tensor [N·K, d]
        ``x_1 − x_0`` in float64.

    Example
    -------
    >>> z, y = flow_matching_regression_set(torch.zeros(4, 2), draws_per_point=3, seed=0)
    >>> z.shape, y.shape
    (torch.Size([12, 3]), torch.Size([12, 2]))
    """
    train = check_tensor("train", train, ndim=2, min_rows=1)
    k = check_positive_int("draws_per_point", draws_per_point)
    generator = torch.Generator().manual_seed(int(seed))
    n, d = train.shape
    x0 = torch.randn(n, k, d, generator=generator, dtype=torch.float64)
    t = torch.rand(n, k, 1, generator=generator, dtype=torch.float64)
    x0, t = x0.to(train.device), t.to(train.device)
    x1 = train.to(torch.float64).unsqueeze(1)
    xt = (1 - t) * x0 + t * x1
    inputs = torch.cat([xt, t], dim=-1).reshape(n * k, d + 1)
    targets = (x1 - x0).reshape(n * k, d)
    return inputs, targets


def noise_std_from_residuals(
    source: RegressionObjective | nn.Module,
    theta: torch.Tensor,
    inputs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    per_dimension: bool = False,
) -> float | torch.Tensor:
    """σ from the residuals at θ*: σ² = (1/(N·out)) Σ_n Σ_j (f_θ*(z_n)_j − y_{n,j})².

    This is the maximum-likelihood noise variance of the Gaussian likelihood at θ*, pooled over
    the output dimensions (the residual variance per output dimension). With
    ``per_dimension=True`` each output j gets its own σ_j² = (1/N) Σ_n r_{n,j}², returned as a
    float64 tensor [out]; otherwise a float.

    ``source`` is a :class:`~rbmem_tutorial.laplace.objective.RegressionObjective` (its data are
    used unless ``inputs`` and ``targets`` are given) or an ``nn.Module`` (then both are required).

    Example
    -------
    >>> from rbmem_tutorial.laplace.params import parameters_vector
    >>> lin = torch.nn.Linear(1, 1)
    >>> z = torch.randn(20, 1)
    >>> round(noise_std_from_residuals(lin, parameters_vector(lin), z, lin(z).detach() + 1), 6)
    1.0
    """
    if isinstance(source, RegressionObjective):
        inputs = source.inputs if inputs is None else inputs
        targets = source.targets if targets is None else targets
        source = source.model
    if inputs is None or targets is None:
        raise ValueError("pass inputs and targets when source is a model, not an objective.")
    objective = RegressionObjective(source, inputs, targets, 1.0, 1.0)
    with torch.no_grad():
        residual = objective.predict(objective.check_theta(theta)) - objective.targets
    variance = residual.square().mean(dim=0) if per_dimension else residual.square().mean()
    if bool((variance <= 0).any()):
        raise ValueError(
            "the residuals at theta are all zero, so the noise variance would be 0; "
            "pass a positive noise_std yourself."
        )
    return variance.sqrt() if per_dimension else float(variance.sqrt())
