"""The trade-off study's geodesic methods: their options, their samples and their diagnostics.

Methods (:mod:`.tradeoff` lists them all):

- ``riemannian``: Exp_θ0(v) along geodesics of the Monge metric of L/T (the loss graph's
  metric; :mod:`rbmem_tutorial.riemannian.temperature`), for every temperature T of the study;
- ``riemannian-linearised``: the same on the loss of the net linearised at θ0;
- ``riemannian-fisher``: Exp_θ0(v) of the pull-back (Fisher/GGN) metric (RLA-F, Yu et al.
  2024); a constant factor of that metric leaves its geodesics unchanged, so it has no
  temperature;
- ``drift-control``: the control of a non-stationary base point (:mod:`.drift`): one network
  moved by gradient flow on L from θ0 until its loss equals the mean loss of the
  ``riemannian`` cell at the same scale, temperature and seeds. It is "tempered" only in that it
  pairs with each temperature's Riemannian cell; the flow itself does not depend on T (scaling
  L rescales the flow's time, not its path).
- ``drift-control-centre``: the same flow, stopped at the loss of the ensemble's *centre*
  L(θ̄), θ̄ the mean of the Riemannian cell's weight samples. The ensemble's mean loss mixes
  the shared descent (which lowers L) with the spread around it (which raises L, since L
  curves upwards), so the first control can stop long before the ensemble's common drift
  does; L(θ̄) removes most of the spread's share and targets the drift alone.
- ``ensemble-centre``: the Riemannian cell's mean weights θ̄ themselves, as one network: its
  common drift without its spread (not a gradient flow; θ̄ need not lie on a low-loss path).

**Temperatures** are numbers T > 0 or the presets ``"sum"`` (T = 1), ``"mean"`` (T = number of
regression pairs) and ``"data-mean"`` (the poster authors' default metric: the data term
averaged over all residual entries, prior unscaled). Cells of the tempered methods are expanded
over the study's temperatures; their key carries ``__T<temperature>`` after the scale, except
for ``"sum"``, the metric of every study before temperatures existed, so stored cell keys stay
valid.

**Diagnostics** in every row (``None`` where they do not apply): ``grad_norm_start``
(‖∇L(θ0)‖), ``travel_mean`` (mean of ‖c(1) − θ0‖/‖v‖), ``loss_rise_mean`` (mean of
L(c(1)) − L(θ0)), ``bound_mean`` (mean of the metric's bound on that rise,
:attr:`~rbmem_tutorial.riemannian.GeodesicResult.bound`; ``None`` where the metric has none),
and for the drift control ``drift_target``, ``drift_time`` (gradient-flow
time t*) and ``drift_reached``. The common drift of a cell's samples is computed for every
cell with several weight samples (:mod:`.tradeoff`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from rbmem_tutorial.experiments.drift import gradient_flow_to_loss
from rbmem_tutorial.riemannian import GeodesicSolveError, exp_map
from rbmem_tutorial.riemannian.temperature import check_temperature

GEODESIC = ("riemannian", "riemannian-linearised", "riemannian-fisher")
DRIFT_CONTROLS = ("drift-control", "drift-control-centre")
TEMPERED = ("riemannian", "riemannian-linearised", *DRIFT_CONTROLS, "ensemble-centre")
PRESETS_NEEDING_ALL_PAIRS = ("mean", "data-mean")


def empty_diagnostics() -> dict:
    """The diagnostic columns of a row, before a method fills the ones it has."""
    return {"nfe_geodesic_mean": None, "n_failed": 0, "grad_norm_start": None,
            "travel_mean": None, "loss_rise_mean": None, "bound_mean": None,
            "drift_target": None, "drift_time": None, "drift_reached": None}


def parse_temperature(text: str) -> float | str:
    """A command-line temperature: a number (``16``, ``1e3``) or a preset name.

    >>> parse_temperature("16"), parse_temperature("data-mean")
    (16.0, 'data-mean')
    """
    try:
        return float(text)
    except ValueError:
        return text


def temperature_text(temperature: float | str) -> str:
    """The temperature as cell keys and tables write it (``%g`` for numbers)."""
    return temperature if isinstance(temperature, str) else f"{temperature:g}"


def temperature_key(method: str, temperature: float | str | None) -> str:
    """The key suffix of a cell: ``__T<T>`` for a tempered method at T other than ``"sum"``.

    >>> temperature_key("riemannian", "mean"), temperature_key("riemannian", "sum")
    ('__Tmean', '')
    >>> temperature_key("laplace", 16.0)
    ''
    """
    if method not in TEMPERED or temperature in (None, "sum"):
        return ""
    return f"__T{temperature_text(temperature)}"


def check_temperatures(temperatures, *, methods, geodesic_batch) -> tuple:
    """Check the study's temperatures before any work; returns them normalised.

    Each is a positive number or a preset; no two may share a key (``1`` is ``"sum"``). The
    presets that count regression pairs, and the Fisher metric, need geodesics on all pairs
    (no ``geodesic_batch``).
    """
    if not temperatures:
        raise ValueError("temperatures is empty; pass at least one, e.g. --temperature sum.")
    values = tuple(check_temperature(t) for t in temperatures)
    texts = ["sum" if t == 1.0 else temperature_text(t) for t in values]
    repeated = sorted({text for text in texts if texts.count(text) > 1})
    if repeated:
        same = " (1 and 'sum' are the same temperature)" if "sum" in repeated else ""
        raise ValueError(f"temperatures {list(temperatures)} repeat {', '.join(repeated)}{same}; "
                         "pass distinct temperatures.")
    if geodesic_batch is not None:
        needs_all = [t for t in values if t in PRESETS_NEEDING_ALL_PAIRS and
                     set(methods) & set(TEMPERED)]
        if needs_all or "riemannian-fisher" in methods:
            what = f"temperature {needs_all[0]!r}" if needs_all else "riemannian-fisher"
            raise ValueError(f"{what} needs geodesics on all frozen pairs; drop "
                             "--geodesic-batch, or use a numeric temperature and the Monge "
                             "metric.")
    return values


def geodesic_samples(loss, theta0: torch.Tensor, v: torch.Tensor, *, metric: str,
                     temperature, rtol: float | None, max_num_steps: int, key: str,
                     batched: bool = False):
    """End points ``[S', D]`` of the geodesics from ``theta0`` with velocities ``v`` [S, D], and
    the row's diagnostics (:func:`empty_diagnostics`).

    Solved one at a time, each with its own steps, or with ``batched`` as one batch, which takes
    the steps of its stiffest member and one evaluation per step for all rows (on a GPU, where
    a small net's evaluation costs its kernel launches, the batch costs about one row's time);
    at ``rtol = atol`` (None: the metric's
    :func:`~rbmem_tutorial.riemannian.default_tolerance`). A geodesic that hits
    ``max_num_steps`` is dropped and counted in ``n_failed`` (a batch that does is solved again
    one at a time); if all fail, :class:`GeodesicSolveError`.
    """
    info = empty_diagnostics()
    solved = []
    if batched:
        with contextlib.suppress(GeodesicSolveError):  # at the step limit: row by row below
            solved = [exp_map(loss, theta0, v, metric=metric, temperature=temperature,
                              rtol=rtol, atol=rtol, max_num_steps=max_num_steps)]
    if not solved:
        for row in v:
            try:
                solved.append(exp_map(loss, theta0, row, metric=metric, temperature=temperature,
                                      rtol=rtol, atol=rtol, max_num_steps=max_num_steps))
            except GeodesicSolveError:
                info["n_failed"] += 1
    if not solved:
        raise GeodesicSolveError(f"every geodesic of cell {key} hit max_num_steps; use a "
                                 "smaller scale, a larger prior precision or looser tolerances.")

    def per_row(name: str) -> np.ndarray | None:
        """The rows' values of a diagnostic (None when the metric has none)."""
        values = [getattr(out, name) for out in solved]
        if values[0] is None:
            return None
        return np.concatenate([np.atleast_1d(torch.as_tensor(x, dtype=torch.float64).cpu()
                                             .numpy()) for x in values])

    rise, bound = per_row("loss_rise"), per_row("bound")
    info.update(grad_norm_start=float(per_row("grad_norm_start")[-1]),
                nfe_geodesic_mean=float(np.mean(per_row("nfe"))),
                travel_mean=float(np.mean(per_row("travel"))),
                loss_rise_mean=None if rise is None else float(np.mean(rise)),
                bound_mean=None if bound is None else float(np.mean(bound)))
    return torch.cat([out.endpoints.reshape(-1, theta0.numel()) for out in solved]), info


def drift_control_sample(loss, theta0: torch.Tensor, target: float, *, max_num_steps: int):
    """The drift control's single network ``[1, D]`` and its diagnostics: gradient flow on
    ``loss`` from ``theta0`` to the loss ``target`` (:func:`.drift.gradient_flow_to_loss` at
    its default tolerances, which its notes explain)."""
    out = gradient_flow_to_loss(loss, theta0, target, max_num_steps=max_num_steps)
    info = empty_diagnostics()
    info.update(grad_norm_start=float(loss.grad(theta0).norm()), drift_target=target,
                drift_time=out.time, drift_reached=out.reached)
    return out.theta[None], info
