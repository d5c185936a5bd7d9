"""What a study says when a cell fails while computing: the cell, its scale, the error and
what to change, so that a blow-up hours into a run tells the user how to go on."""

from __future__ import annotations


class CellError(RuntimeError):
    """A cell failed while computing (a solver blow-up); the message names the cell, its scale
    and what to change."""


def cell_failure(cell, err: BaseException) -> str:
    """The message of a cell that failed with ``err``: which cell, and what to change.

    Example
    -------
    >>> from rbmem_tutorial.experiments.tradeoff import Cell
    >>> text = cell_failure(Cell("laplace", 2.0, 0, 0), AssertionError("underflow in dt 0.0"))
    >>> text[:70]
    'cell laplace__a2__train0__sample0 (method laplace, scale α=2, training'
    """
    text = str(err).strip() or type(err).__name__
    if "out of memory" in text:
        advice = "lower --n-x0 or --n-param-samples (memory per cell)"
    else:
        advice = ("the ODE solver blew up on these weights: lower this scale (--scales), loosen "
                  "--geodesic-rtol for geodesic methods, or check that the MAP net fits "
                  "(more --steps)")
    return (f"cell {cell.key} (method {cell.method}, scale α={cell.scale:g}, training seed "
            f"{cell.train_seed}) failed: {type(err).__name__}: {text}. Fix: {advice}. The "
            "finished cells are kept; the same command resumes.")
