"""A loud warning when the MAP net of a study does not fit its data.

Memorisation numbers only mean something for a sampler that produces data-like samples: a net
whose samples are noise memorises nothing and every method "wins". The check compares the
MAP cell's k-NN precision (Kynkäänniemi et al. 2019: the fraction of generated points inside
the k-NN balls of the held-out set) with the same precision of as many true samples, the
value a perfect sampler reaches at this sample size. When the MAP's precision is below
:data:`MIN_PRECISION_FRACTION` of it, most of the samples that a perfect sampler would put on
the data lie off it, and every row of that training seed carries the warning in
``map_warning`` (empty otherwise) and the log prints it.
"""

from __future__ import annotations

#: Below this fraction of the true samples' precision, the MAP counts as not fitting the data.
MIN_PRECISION_FRACTION = 0.5


def map_quality_warning(row: dict) -> str:
    """The warning for a ``map`` cell's row, or ``""`` when its precision is adequate.

    Example
    -------
    >>> map_quality_warning({"method": "map", "train_seed": 0, "precision": 0.9,
    ...                      "baseline_precision": 0.95})
    ''
    >>> map_quality_warning({"method": "map", "train_seed": 0, "precision": 0.02,
    ...                      "baseline_precision": 0.95})[:40]
    'the MAP net of training seed 0 does not '
    """
    floor = row["baseline_precision"]
    if floor <= 0 or row["precision"] >= MIN_PRECISION_FRACTION * floor:
        return ""
    return (f"the MAP net of training seed {row['train_seed']} does not fit the data: its k-NN "
            f"precision is {row['precision']:.2f} against {floor:.2f} for true samples (below "
            f"{MIN_PRECISION_FRACTION:g} of it), so its samples are mostly off the data and the "
            "memorisation numbers of this seed mean little. Train longer (--steps), use a wider "
            "net (--hidden or --channels) or check the data (--data-file).")


def annotate(rows: list[dict]) -> list[str]:
    """Add ``map_warning`` to every row, from the ``map`` cell of the same training and
    sampling seed; returns the distinct warnings."""
    warnings = {(row["train_seed"], row["sample_seed"]): map_quality_warning(row)
                for row in rows if row["method"] == "map"}
    for row in rows:
        row["map_warning"] = warnings.get((row["train_seed"], row["sample_seed"]), "")
    return sorted({text for text in warnings.values() if text})
