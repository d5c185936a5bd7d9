"""The temperature of the Monge metric: the metric of L/T, its presets and the bound it sets.

The metric ``M = I + ∇L∇Lᵀ`` of the loss graph is not invariant to rescaling ``L``. Built on
``L/T`` (the tangent Gaussian unchanged) it reads

    M_T(θ) = I + ∇L ∇Lᵀ / T²,   c̈ = −(∇L / T) · (ċᵀ∇²L ċ / T) / (1 + ‖∇L‖² / T²).

**How far a geodesic can climb.** The speed ``E = ċᵀM_T ċ = ‖ċ‖² + (∇L·ċ)²/T²`` is conserved
along a geodesic, so ``(dL/dt)² = (∇L·ċ)² ≤ T² E(t) = T² E(0)`` and

    ``|L(c(1)) − L(θ0)| ≤ T √E(0) = √(T² ‖v‖² + (∇L(θ0)·v)²)``,

which is ``T‖v‖`` at a stationary point ``θ0 = θ*``. A Euclidean sample ``θ* + v`` at scale α
raises ``L`` by about ``α²D/2`` instead. ``T → 0`` pins the samples to θ*; ``T → ∞`` makes
``M_T → I`` and the geodesics the straight lines of the Euclidean Laplace.

**Presets** for a ``RegressionObjective`` with ``N`` regression pairs (its ``num_examples``,
N·K in the book's notation) and ``d`` outputs:

- ``"sum"``: ``T = 1``, the loss as the package writes it (summed over the pairs);
- ``"mean"``: ``T = N``, the mean loss over the pairs, as deep-learning code writes it;
- ``"data-mean"``: the poster authors' default (``RegressionManifold`` of their geomtools,
  ``reduction='mean'``): the data term averaged over all ``N·d`` residual entries, the prior
  left unscaled,

      L_dm(θ) = data_fit(θ) / (N d) + (λ/2) ‖θ − m‖²,

  a tempered likelihood, not ``L/T``. It is the objective with ``σ√(N d)`` in place of ``σ``
  (:func:`data_mean_objective`). Its gradient at the MAP of ``L`` is
  ``(1 − 1/(N d)) λ (θ* − m) ≠ 0``, so no bound on the rise of ``L`` follows.

**What α means.** Under every preset the tangent vector is ``v ~ N(0, α² Σ)`` with ``Σ`` the
Laplace covariance of the *summed* loss; the temperature changes only the metric, i.e. how
far a sample may travel along ``v``. With ``"mean"`` the metric is that of the mean loss and
the tangent Gaussian that of the sum loss, so α = 1 is the summed-loss Laplace scale, and the
samples are not a mean-loss posterior (that one would be √N times wider).
"""

from __future__ import annotations

import math

from rbmem_tutorial._checks import check_positive
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.riemannian.linearised import LinearisedObjective, linearised_objective

TEMPERATURE_PRESETS = ("sum", "mean", "data-mean")


def check_temperature(temperature) -> float | str:
    """A preset name from ``TEMPERATURE_PRESETS`` or a finite ``T > 0`` (as a float).

    Example
    -------
    >>> check_temperature(2), check_temperature("mean")
    (2.0, 'mean')
    >>> check_temperature("hot")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown temperature 'hot'; pass a positive number or one of 'sum', 'mean', ...
    """
    if isinstance(temperature, str):
        if temperature not in TEMPERATURE_PRESETS:
            names = ", ".join(map(repr, TEMPERATURE_PRESETS))
            raise ValueError(
                f"unknown temperature {temperature!r}; pass a positive number or one of {names}."
            )
        return temperature
    if isinstance(temperature, bool):
        raise TypeError(f"temperature must be a positive number or a preset, got {temperature}.")
    return check_positive("temperature", temperature)


def data_mean_objective(objective: RegressionObjective) -> RegressionObjective:
    """The objective with its data term averaged over the ``N·d`` residual entries.

    ``L_dm(θ) = data_fit(θ)/(N d) + (λ/2)‖θ − m‖²`` (the poster authors' default reduction),
    built as the same objective with ``σ√(N d)`` in place of ``σ``: ``½ Σ r²/(σ² N d)`` is the
    summed data term divided by ``N d``, and the prior is untouched.

    Example
    -------
    >>> import torch
    >>> obj = RegressionObjective(torch.nn.Linear(2, 3), torch.randn(4, 2), torch.randn(4, 3),
    ...                           0.5, 2.0)
    >>> theta = torch.randn(9, dtype=torch.float64)
    >>> prior = 0.5 * 2.0 * theta @ theta
    >>> by_hand = obj.data_fit(theta) / (4 * 3) + prior
    >>> bool(torch.isclose(data_mean_objective(obj).value(theta), by_hand))
    True
    """
    if not isinstance(objective, RegressionObjective):
        raise TypeError(
            f"the data-mean objective needs a RegressionObjective, got {type(objective).__name__}."
        )
    entries = objective.num_examples * objective.targets.shape[1]
    return RegressionObjective(
        objective.model,
        objective.inputs,
        objective.targets,
        objective.noise_std * math.sqrt(entries),
        objective.prior_precision,
        prior_mean=objective.prior_mean,
    )


def _preset_error(loss, temperature) -> TypeError:
    return TypeError(
        f"temperature={temperature!r} is a preset of a regression loss (it counts its pairs), "
        f"but the loss is a {type(loss).__name__}; pass a RegressionObjective or a number."
    )


def resolve_temperature(loss, temperature) -> tuple[object, float]:
    """``(f, T)``: the Monge metric for ``temperature`` is that of ``f/T``.

    ``f`` is ``loss`` itself for a number and for ``"sum"``/``"mean"``; for ``"data-mean"`` it
    is :func:`data_mean_objective` of the regression objective (re-linearised at the same
    point when ``loss`` is a :class:`LinearisedObjective`), with ``T = 1``.

    ``"sum"`` and ``"mean"`` need a loss that counts its pairs (``num_examples``: a
    ``RegressionObjective``, its linearisation, or a wrapper that reports it), else
    ``TypeError``; ``"data-mean"`` needs a ``RegressionObjective`` or its linearisation, else
    a one-line ``ValueError`` that says so.

    Example
    -------
    >>> import torch
    >>> obj = RegressionObjective(torch.nn.Linear(2, 1), torch.randn(6, 2), torch.randn(6, 1),
    ...                           1.0, 1.0)
    >>> resolve_temperature(obj, "mean")[1], resolve_temperature(obj, 2.5)[1]
    (6.0, 2.5)
    """
    temperature = check_temperature(temperature)
    if not isinstance(temperature, str):
        return loss, temperature
    if temperature == "data-mean":
        if isinstance(loss, LinearisedObjective):
            tempered = data_mean_objective(loss.objective)
            return linearised_objective(tempered, loss.theta_star), 1.0
        if not isinstance(loss, RegressionObjective):
            raise ValueError(
                "temperature='data-mean' averages the data term of a regression objective, but "
                f"the loss is a {type(loss).__name__}; pass a RegressionObjective (or its "
                "linearisation), or a number."
            )
        return data_mean_objective(loss), 1.0
    pairs = getattr(loss, "num_examples", None)
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise _preset_error(loss, temperature)
    return loss, float(pairs) if temperature == "mean" else 1.0
