"""Tables of the matched study: its curves, its matched points, and the declared comparisons.

**Primary comparisons** (declared in each study's README before the sweep ran): at each level
(moons: memorised 0.45, 0.30, the replicate's true-sample floor; digits: the levels of
:mod:`.digits_matched`), the Euclidean ``laplace`` and the
``riemannian-mean`` posterior against ``early-stop``, and ``riemannian-mean`` against
``laplace``; on the **energy distance** to held-out data (lower is better). Paired over the
replicates where both methods reached the level, as a Student-t mean difference, with
p-values adjusted over the whole family by Holm's step-down method and intervals at the
Bonferroni level 1 − 0.05/m (simultaneous for the family).
Everything else (other methods, other metrics) is secondary: unadjusted 95% intervals.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from rbmem_tutorial.experiments import store
from rbmem_tutorial.experiments.matched import t_interval

PRIMARY_METRIC = "energy"
PRIMARY = [("laplace", "early-stop"), ("riemannian-mean", "early-stop"),
           ("riemannian-mean", "laplace")]
LEVELS = ("0.45", "0.3", "floor")
LOWER_IS_BETTER = {"mmd2": True, "energy": True, "outliers": True, "precision": False,
                   "recall": False}


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sorted ascending, the i-th smallest (i = 1..m) becomes max_{j ≤ i} min(1, (m − j + 1) p₍ⱼ₎).

    Example
    -------
    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.maximum.accumulate(adjusted)
    out = np.empty(m)
    out[order] = adjusted
    return [round(float(x), 12) for x in out]


def paired(differences, confidence: float = 0.95) -> dict:
    """Mean of paired differences, its two-sided Student-t interval
    (:func:`.matched.t_interval`) and p-value (H₀: mean 0).

    Example
    -------
    >>> r = paired([1.0, 2.0, 3.0])
    >>> r["mean"], r["n"], round(r["lo"], 4), round(r["hi"], 4)
    (2.0, 3, -0.4841, 4.4841)
    """
    d = np.asarray(differences, dtype=float)
    out = t_interval(d, confidence)
    if out["n"] < 2:
        return {**out, "p": None}
    se = d.std(ddof=1) / math.sqrt(len(d))
    out["p"] = 1.0 if se == 0 else float(2 * stats.t.sf(abs(d.mean()) / se, len(d) - 1))
    return out


def matched_rows(rows: list[dict]) -> list[dict]:
    """One flat row per (replicate, method, level), from the cells' rows."""
    return [{"replicate": row["replicate"], "method": row["method"], "floor": row["floor"],
             **point} for row in rows for point in row["matched"]]


def curve_rows(rows: list[dict]) -> list[dict]:
    """One flat row per (replicate, method, knob) visited by the calibration."""
    return [{"replicate": row["replicate"], "method": row["method"], **point}
            for row in rows for point in row["curve"]]


def _values(flat: list[dict], method: str, level: str, metric: str) -> dict[int, float]:
    return {r["replicate"]: r[metric] for r in flat
            if r["method"] == method and r["level"] == level and r["reached"]}


def compare(flat: list[dict], a: str, b: str, level: str, metric: str,
            confidence: float = 0.95) -> dict:
    """Paired a − b on ``metric`` at ``level`` over replicates where both reached it."""
    va, vb = _values(flat, a, level, metric), _values(flat, b, level, metric)
    both = sorted(set(va) & set(vb))
    result = paired([va[r] - vb[r] for r in both], confidence)
    return {"a": a, "b": b, "level": level, "metric": metric, **result,
            "replicates": both}


def primary(flat: list[dict], levels=LEVELS) -> list[dict]:
    """The declared primary family, Holm-adjusted, with Bonferroni intervals."""
    family = [(a, b, level) for level in levels for a, b in PRIMARY]
    m = len(family)
    results = [compare(flat, a, b, level, PRIMARY_METRIC, 1 - 0.05 / m)
               for a, b, level in family]
    tested = [i for i, r in enumerate(results) if r["p"] is not None]
    adjusted = holm([results[i]["p"] for i in tested]) if tested else []
    for i, p in zip(tested, adjusted, strict=True):
        results[i]["p_holm"] = p
        results[i]["significant"] = p < 0.05
    return results


def secondary(flat: list[dict], levels=LEVELS) -> list[dict]:
    """Every method against early stopping and against the Euclidean Laplace, every metric."""
    methods = sorted({r["method"] for r in flat})
    out = []
    for level in levels:
        for b in ("early-stop", "laplace"):
            for a in methods:
                if a == b:
                    continue
                for metric in ("energy", "mmd2", "precision", "recall", "outliers", "mem",
                               "mem_loose"):
                    out.append(compare(flat, a, b, level, metric))
    return out


def summary(flat: list[dict], levels=LEVELS) -> list[dict]:
    """Per method and level: replicates that reached it, mean achieved fraction and metrics."""
    out = []
    for level in levels:
        for method in sorted({r["method"] for r in flat}):
            mine = [r for r in flat if r["method"] == method and r["level"] == level]
            hit = [r for r in mine if r["reached"] or r["method"] == "map"]
            entry = {"method": method, "level": level, "replicates": len(mine),
                     "reached": sum(bool(r["reached"]) for r in mine)}
            for metric in ("achieved", "knob", "mem", "mem_loose", "energy", "mmd2",
                           "precision", "recall", "outliers"):
                values = [r[metric] for r in hit if r.get(metric) is not None]
                entry[metric] = float(np.mean(values)) if values else None
            out.append(entry)
    return out


def study_levels(out) -> tuple[str, ...]:
    """The level labels of the study saved in ``out`` (its ``config.json``), as the matched
    rows name them; the moons study's :data:`LEVELS` when the folder has no configuration."""
    path = Path(out) / "config.json"
    if not path.exists():
        return LEVELS
    return tuple(str(level) for level in json.loads(path.read_text())["levels"])


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v
                          for k, v in row.items()} for row in rows)


def write_tables(out) -> dict:
    """``matched.csv``, ``curves.csv`` and ``comparisons.json`` from the finished cells."""
    out = Path(out)
    rows = store.collect(out, dims=3)
    flat = matched_rows(rows)
    levels = study_levels(out)
    tables = {"summary": summary(flat, levels), "primary": primary(flat, levels),
              "secondary": secondary(flat, levels),
              "failed": [r["key"] for r in rows if r["status"] != "done"]}
    _write_csv(out / "matched.csv", flat)
    _write_csv(out / "curves.csv", curve_rows(rows))
    store.write_json(out / "comparisons.json", tables)
    return tables
