"""Matched-memorisation comparison: each method's sample quality at the same memorised fraction.

A posterior scale α means different things for different methods, so comparing them at equal α
says little. Instead, for each method (and, for the tempered geodesic methods, each
temperature) and each training seed, walk along the method's curve of memorised fraction
m(α) against α and read off its MMD², k-NN precision and recall where m reaches a *level*:
0.45, 0.30 and the true-sample floor (the fraction of true samples the same test flags, per
seed). Between the two bracketing scales α_i < α_{i+1} with m_i > level ≥ m_{i+1}, every
metric q is interpolated linearly in m::

    w = (m_i − level) / (m_i − m_{i+1}),    q(level) = (1 − w) q_i + w q_{i+1}.

**Curves that are not monotone.** m(α) should fall as α grows, but sampling noise (or a real
rebound) can make it rise again. The level is read at its *first* crossing (the smallest α
that reaches it), and the entry says how many times the curve crossed it and whether the curve
was monotone, so a reader can see when a number rests on a wiggle. A level that a curve never
reaches within its scales is "not reached": nothing is extrapolated. A level above the curve's
first point counts as reached at that point only when the point sits exactly on it; otherwise it
is "not reached" too (the curve starts below it). Every scaled curve starts at the study's
``map`` cell, which holds the posterior's base point θ0 (the refined θ* or θ_SGD,
``FlowPosterior.theta_map``): as α → 0 every posterior, and the drift controls, collapse to θ0,
so a level between the base point's fraction and the first scale's is bracketed.

**Intervals.** Over training seeds, the mean with a two-sided 95% Student-t interval,
mean ± t_{0.975, n−1} s/√n (s the sample standard deviation over the n seeds that reached the
level); and, seed by seed, the *paired* difference method − Euclidean Laplace (``laplace``) at
the same level, with its own t-interval over the seeds where both reached it. Several sampling
seeds of one training seed are averaged first (the unit of replication is the training seed).

Run it on a study folder: ``python -m rbmem_tutorial.experiments.matched RUN_DIR`` writes
``matched.json`` and ``matched.md`` there.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from rbmem_tutorial.experiments.geodesic_cells import TEMPERED

LEVELS = (0.45, 0.30, "floor")
METRICS = ("mmd2", "precision", "recall")
REFERENCE_METHOD = "laplace"
SINGLE = ("map", "early-stop")  # one weight vector each: a point, not a curve


@dataclass(frozen=True)
class Crossing:
    """Where one curve reaches one memorisation level (``None`` values: not reached)."""

    level: float
    scale: float | None
    values: dict | None
    crossings: int
    monotone: bool

    @property
    def reached(self) -> bool:
        return self.values is not None


def curve_label(row_or_cell) -> str:
    """The curve a result row (or a :class:`~.tradeoff.Cell`) belongs to: its method, with
    ``T=<temperature>`` when it has a temperature. Rows carry the temperature of every tempered
    method (rows of studies from before temperatures have none); a cell of a tempered method
    that leaves it unset has the default ``"sum"``.

    >>> curve_label({"method": "riemannian", "temperature": "mean"})
    'riemannian T=mean'
    >>> curve_label({"method": "laplace", "temperature": None})
    'laplace'
    """
    if isinstance(row_or_cell, dict):
        method, temperature = row_or_cell["method"], row_or_cell.get("temperature")
    else:
        method, temperature = row_or_cell.method, row_or_cell.temperature
        if temperature is None and method in TEMPERED:
            temperature = "sum"
    return method if temperature is None else f"{method} T={temperature}"


def _mean_rows(rows: list[dict]) -> dict:
    """Average the metrics of rows that share method, scale and training seed."""
    out = dict(rows[0])
    for name in ("mem_strict", "true_mem_strict", *METRICS):
        out[name] = float(np.mean([r[name] for r in rows]))
    return out


def curves(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Each (curve, training seed)'s points sorted by scale, sampling seeds averaged.

    The ``map`` row of a seed (the base point) is prepended at α = 0 to every scaled curve.
    """
    cells = defaultdict(list)
    for row in rows:
        cells[(curve_label(row), row["train_seed"], float(row["scale"]))].append(row)
    points = defaultdict(list)
    for (group, seed, _), same in cells.items():
        points[(group, seed)].append(_mean_rows(same))
    result = {}
    for (group, seed), pts in points.items():
        pts = sorted(pts, key=lambda r: r["scale"])
        anchor = points.get(("map", seed))
        if group not in SINGLE and pts[0]["scale"] > 0 and anchor:
            pts = [{**anchor[0], "scale": 0.0}, *pts]
        result[(group, seed)] = pts
    return result


def crossing(points: list[dict], level: float) -> Crossing:
    """The metrics where the memorised fraction of ``points`` (sorted by scale) first falls to
    ``level``, interpolated linearly in the fraction (see the module notes)."""
    mem = [p["mem_strict"] for p in points]
    monotone = all(b <= a for a, b in zip(mem[:-1], mem[1:], strict=True))
    # a crossing: the curve goes from above the level to at or below it
    hits = [i for i in range(len(mem) - 1) if mem[i] > level >= mem[i + 1]]
    if mem[0] == level:
        hits = [-1, *hits]
    if not hits:
        return Crossing(level, None, None, 0, monotone)
    first = hits[0]
    if first == -1:
        return Crossing(level, points[0]["scale"], {m: points[0][m] for m in METRICS},
                        len(hits), monotone)
    a, b = points[first], points[first + 1]
    w = (a["mem_strict"] - level) / (a["mem_strict"] - b["mem_strict"])
    values = {m: (1 - w) * a[m] + w * b[m] for m in METRICS}
    scale = (1 - w) * a["scale"] + w * b["scale"]
    return Crossing(level, scale, values, len(hits), monotone)


def t_interval(values, confidence: float = 0.95) -> dict:
    """Mean and two-sided Student-t interval of ``values`` at ``confidence`` (``n`` ≥ 2 for an
    interval)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "lo": None, "hi": None}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half}


def _level_value(level, points: list[dict]) -> float:
    return float(np.mean([p["true_mem_strict"] for p in points])) if level == "floor" else level


def matched_table(rows: list[dict], levels=LEVELS, reference: str = REFERENCE_METHOD, *,
                  shared_noise: bool = False) -> list[dict]:
    """The matched-memorisation table of a study's rows.

    The trade-off study pushes the same x₀ through every weight sample of a posterior cell
    (rows with ``n_param_samples`` > 1): a set of near-copies whose recall measures the spread
    between a few nets, not coverage. Such rows make a paired *diagnostic*, never a table that
    compares methods, so they are refused unless ``shared_noise=True`` says that the table is
    a diagnostic; compare methods with the matched study
    (:mod:`rbmem_tutorial.experiments.matched_study`), where every point has its own (θ, x₀).

    Returns one entry per (curve, level): ``curve``, ``level`` (0.45, 0.3 or ``"floor"``),
    ``n_seeds`` (seeds with that curve), ``reached`` (seeds that reached the level), per metric
    the mean and t-interval over those seeds (``mmd2`` → ``{"n", "mean", "lo", "hi"}``), the
    same for the scale α at the crossing, the paired difference against ``reference``
    (``diff_mmd2`` ...), ``non_monotone`` (seeds whose curve rises somewhere) and
    ``multiple_crossings`` (seeds whose curve crosses the level more than once), and the
    per-seed crossings under ``seeds``.

    Example
    -------
    >>> rows = [dict(method=m, scale=a, train_seed=s, mem_strict=mem, true_mem_strict=0.2,
    ...              mmd2=q, precision=q, recall=q)
    ...         for s in (0, 1)
    ...         for m, pts in (("laplace", ((1, 0.6, 1.0), (2, 0.2, 2.0))),
    ...                        ("riemannian", ((1, 0.6, 1.0), (2, 0.4, 1.0))))
    ...         for a, mem, q in pts]
    >>> table = {(e["curve"], e["level"]): e for e in matched_table(rows)}
    >>> table["laplace", 0.45]["mmd2"]["mean"]  # a quarter of the way from 0.6 to 0.2
    1.375
    >>> table["riemannian", 0.3]["reached"]
    0
    """
    shared = sorted({r["method"] for r in rows if r.get("n_param_samples", 1) > 1})
    if shared and not shared_noise:
        raise ValueError(f"rows of {', '.join(shared)} share x0 between weight samples (a "
                         "paired diagnostic): pass shared_noise=True to tabulate them as one, "
                         "or compare methods with the matched study (one (θ, x0) per point).")
    grouped = curves(rows)
    by_curve = defaultdict(dict)
    for (group, seed), points in grouped.items():
        by_curve[group][seed] = points
    table = []
    for group in sorted(by_curve):
        if group in SINGLE:
            continue
        for level in levels:
            found = {seed: crossing(pts, _level_value(level, pts))
                     for seed, pts in sorted(by_curve[group].items())}
            hit = {seed: c for seed, c in found.items() if c.reached}
            entry = {"curve": group, "level": level, "n_seeds": len(found), "reached": len(hit),
                     "scale": t_interval([c.scale for c in hit.values()]),
                     "non_monotone": sum(not c.monotone for c in found.values()),
                     "multiple_crossings": sum(c.crossings > 1 for c in found.values())}
            for metric in METRICS:
                entry[metric] = t_interval([c.values[metric] for c in hit.values()])
            ref = by_curve.get(reference, {})
            for metric in METRICS:
                diffs = []
                for seed, c in hit.items():
                    if seed in ref:
                        other = crossing(ref[seed], _level_value(level, ref[seed]))
                        if other.reached:
                            diffs.append(c.values[metric] - other.values[metric])
                entry[f"diff_{metric}"] = t_interval(diffs) if group != reference else None
            entry["seeds"] = {str(seed): asdict(c) for seed, c in found.items()}
            table.append(entry)
    return table


def points_table(rows: list[dict]) -> list[dict]:
    """The single-network methods (``map``, ``early-stop``) as points: per method the mean and
    t-interval over training seeds of the memorised fraction and of each metric."""
    table = []
    for method in SINGLE:
        pts = [p[0] for (group, _), p in sorted(curves(rows).items()) if group == method]
        if pts:
            table.append({"method": method, "n_seeds": len(pts),
                          **{m: t_interval([p[m] for p in pts])
                             for m in ("mem_strict", "true_mem_strict", *METRICS)}})
    return table


def _cell(stat: dict | None, digits: int) -> str:
    if stat is None:
        return ""
    if stat["n"] == 0:
        return "not reached"
    if stat["lo"] is None:
        return f"{stat['mean']:.{digits}f} (n=1)"
    return f"{stat['mean']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def markdown(table: list[dict], points: list[dict] = ()) -> str:
    """The tables as Markdown: mean [95% t-interval] over training seeds; k/n seeds reached."""
    lines = []
    if points:
        lines += ["| method | seeds | memorised | true-sample floor | MMD² | precision | recall |",
                  "|" + "---|" * 7]
        lines += [f"| {p['method']} | {p['n_seeds']} | {_cell(p['mem_strict'], 3)} | "
                  f"{_cell(p['true_mem_strict'], 3)} | {_cell(p['mmd2'], 4)} | "
                  f"{_cell(p['precision'], 3)} | {_cell(p['recall'], 3)} |" for p in points]
        lines.append("")
    lines += ["| curve | level | seeds reached | α | MMD² | precision | recall | "
             "ΔMMD² vs laplace | Δprecision | Δrecall | non-monotone |",
             "|" + "---|" * 11]
    for e in table:
        level = "floor" if e["level"] == "floor" else f"{e['level']:.2f}"
        lines.append(
            f"| {e['curve']} | {level} | {e['reached']}/{e['n_seeds']} | "
            f"{_cell(e['scale'], 2)} | {_cell(e['mmd2'], 4)} | {_cell(e['precision'], 3)} | "
            f"{_cell(e['recall'], 3)} | {_cell(e['diff_mmd2'], 4)} | "
            f"{_cell(e['diff_precision'], 3)} | {_cell(e['diff_recall'], 3)} | "
            f"{e['non_monotone']} |")
    return "\n".join(lines) + "\n"


DIAGNOSTIC_NOTE = ("Paired diagnostic: the posterior cells share x0 between their weight "
                   "samples, so this table does not compare methods (recall measures the "
                   "spread between a few nets); the matched study does.")


def main(argv: list[str] | None = None) -> int:
    """``python -m rbmem_tutorial.experiments.matched RUN_DIR``: write matched.json/.md."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "results.json").exists():
        print("usage: python -m rbmem_tutorial.experiments.matched RUN_DIR (a folder with "
              "results.json; run the merge step first)", file=sys.stderr)
        return 2
    out = Path(args[0])
    rows = json.loads((out / "results.json").read_text())
    table, points = matched_table(rows, shared_noise=True), points_table(rows)
    (out / "matched.json").write_text(json.dumps({"curves": table, "points": points},
                                                 indent=1) + "\n")
    text = (f"{DIAGNOSTIC_NOTE}\n\n" if any(r.get("n_param_samples", 1) > 1 for r in rows)
            else "") + markdown(table, points)
    (out / "matched.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
