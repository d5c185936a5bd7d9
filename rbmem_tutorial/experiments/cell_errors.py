"""What a study says when a cell fails while computing: the cell, its scale, the error and
what to change, so that a blow-up hours into a run tells the user how to go on.

A failing cell does not stop the study: its record (:func:`failure_record`) is stored beside
the finished cells (:func:`.store.save_failure`), the other cells are computed, and at the end
:func:`failure_summary` lists every failed cell, one line each. Rerunning the same command
retries the failed cells (the cause may have been the environment, e.g. memory taken by
another job); ``--force`` deletes their records with the other cells.
"""

from __future__ import annotations

import time

#: The exceptions of a cell's computation that fail that cell only (solver blow-ups such as
#: the adaptive solver's step-size underflow, non-finite weights, out of memory).
CELL_ERRORS = (AssertionError, RuntimeError, ValueError)


def _advice(text: str) -> str:
    if "out of memory" in text:
        return "lower --n-x0 or --n-param-samples (memory per cell)"
    return ("the ODE solver blew up on these weights: lower this scale (--scales), loosen "
            "--geodesic-rtol for geodesic methods, or check that the MAP net fits (more --steps)")


def _error_text(err: BaseException) -> str:
    """``Type: text`` of ``err``, without a closing full stop (the messages add their own)."""
    return f"{type(err).__name__}: {str(err).strip().rstrip('.') or type(err).__name__}"


def cell_failure(cell, err: BaseException) -> str:
    """The message of a cell that failed with ``err``: which cell, and what to change.

    Example
    -------
    >>> from rbmem_tutorial.experiments.tradeoff import Cell
    >>> text = cell_failure(Cell("laplace", 2.0, 0, 0), AssertionError("underflow in dt 0.0"))
    >>> text[:70]
    'cell laplace__a2__train0__sample0 (method laplace, scale α=2, training'
    """
    return (f"cell {cell.key} (method {cell.method}, scale α={cell.scale:g}, training seed "
            f"{cell.train_seed}) failed: {_error_text(err)}. Fix: {_advice(str(err))}. The "
            "other cells go on; rerunning the same command retries this one.")


def failure_record(cell, err: BaseException) -> dict:
    """The stored record of cell ``cell`` failing with ``err``: its coordinates, the error,
    the fix and the full message (:func:`cell_failure`), and the time (UTC, ISO 8601).

    Example
    -------
    >>> from rbmem_tutorial.experiments.tradeoff import Cell
    >>> record = failure_record(Cell("laplace", 2.0, 0, 0), AssertionError("underflow"))
    >>> record["key"], record["error"]
    ('laplace__a2__train0__sample0', 'AssertionError: underflow')
    """
    return {"key": cell.key, "method": cell.method, "scale": cell.scale,
            "train_seed": cell.train_seed, "sample_seed": cell.sample_seed,
            "temperature": cell.temperature, "error": _error_text(err),
            "fix": _advice(str(err)), "message": cell_failure(cell, err),
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}


def failure_summary(records: list[dict], total: int, where) -> str:
    """The lines that end a study with failed cells: a heading, then one line per cell (its
    key, error and fix), from the stored ``records`` of :func:`failure_record`.

    Example
    -------
    >>> print(failure_summary([{"key": "laplace__a8__train0__sample0",
    ...                         "error": "AssertionError: underflow", "fix": "lower α"}], 20,
    ...                       "failed.json"))  # doctest: +ELLIPSIS
    error: 1 of 20 cells failed; they are not in the tables (listed in failed.json), ...
      laplace__a8__train0__sample0: AssertionError: underflow. Fix: lower α.
    """
    lines = [f"error: {len(records)} of {total} cells failed; they are not in the tables "
             f"(listed in {where}), and rerunning the same command retries them:"]
    for record in records:
        fix = f" Fix: {record['fix']}." if record.get("fix") else ""
        lines.append(f"  {record['key']}: {record.get('error', 'unknown error')}.{fix}")
    return "\n".join(lines)
