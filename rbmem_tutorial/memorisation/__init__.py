"""Memorisation and sample quality: the nearest/second-nearest ratio test and the measures against
held-out data. Chapter 2 (detecting memorisation) teaches both.

- :mod:`.ratio` — the ratio test d₁/d₂ with exact distances for near-copies;
- :mod:`.report` — :class:`MemorisationReport`, what chapter 2's figures read;
- :mod:`.distances` — MMD², the energy distance and the sliced Wasserstein distance;
- :mod:`.coverage` — k-NN precision and recall, the outlier rate, the generalisation gap;
- :mod:`.quality` — the held-out log-likelihood and :class:`QualityReport`.
"""

from rbmem_tutorial.memorisation.coverage import (
    GeneralisationGap,
    PrecisionRecall,
    generalisation_gap,
    outlier_rate,
    precision_recall,
)
from rbmem_tutorial.memorisation.distances import (
    default_bandwidths,
    energy_distance,
    median_heuristic,
    mmd2,
    sliced_wasserstein,
)
from rbmem_tutorial.memorisation.quality import (
    QualityReport,
    held_out_log_likelihood,
    quality_report,
)
from rbmem_tutorial.memorisation.ratio import (
    LOOSE_C,
    RATIO_THRESHOLD,
    NearestTwo,
    is_memorised,
    memorisation_ratio,
    memorised_fraction,
    nearest_two,
)
from rbmem_tutorial.memorisation.report import MemorisationReport, memorisation_report

__all__ = [
    "LOOSE_C", "RATIO_THRESHOLD", "GeneralisationGap", "MemorisationReport", "NearestTwo",
    "PrecisionRecall", "QualityReport", "default_bandwidths", "energy_distance",
    "generalisation_gap", "held_out_log_likelihood", "is_memorised", "median_heuristic",
    "memorisation_ratio", "memorisation_report", "memorised_fraction", "mmd2", "nearest_two",
    "outlier_rate", "precision_recall", "quality_report", "sliced_wasserstein",
]
