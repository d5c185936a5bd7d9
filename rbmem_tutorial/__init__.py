"""rbmem_tutorial: reducing memorisation in flow matching through Riemannian Bayesian inference.

The package follows the book, one module per idea:

- :mod:`.data`, :mod:`.nets`, :mod:`.flow_matching`, :mod:`.reference`: chapter 1, flow matching;
- :mod:`.memorisation`, :mod:`.metrics`: chapter 2, detecting memorisation and measuring quality;
- :mod:`.objective`, :mod:`.laplace`, :mod:`.posterior`, :mod:`.pipeline`: chapter 3, Laplace;
- :mod:`.riemannian` (with the fused kernel :mod:`.fast_mlp`): chapter 4, Riemannian Laplace;
- :mod:`.image_nets`, :mod:`.subsets`, :mod:`.experiments`: chapters 5 and 6, images, weight
  subsets and mini-batches, and the experiment scripts.

Reference: Gegenfurtner, Jacobsen and Arvanitidis, "Reducing Memorisation in Generative Models
via Riemannian Bayesian Inference", arXiv:2602.00199.
"""

from .data import DATASETS, TOY_DATASETS, load_dataset, load_image_file, sample_dataset
from .flow_matching import (
    EmpiricalOptimalVelocity,
    cfm_loss,
    linear_path,
    log_prob,
    sample,
    train_flow_matching,
)
from .image_nets import VelocityConvNet
from .laplace import LaplacePosterior, fit_laplace
from .memorisation import (
    MemorisationReport,
    is_memorised,
    memorisation_ratio,
    memorisation_report,
    memorised_fraction,
    nearest_two,
)
from .metrics import (
    energy_distance,
    generalisation_gap,
    held_out_log_likelihood,
    mmd2,
    precision_recall,
    quality_report,
    sliced_wasserstein,
)
from .nets import RegressionAdapter, VelocityMLP
from .objective import (
    RegressionObjective,
    flow_matching_regression_set,
    noise_std_from_residuals,
    parameters_vector,
    refine_map,
    unflatten,
)
from .pipeline import FlowPosterior, fit_flow_posterior
from .posterior import generate, velocity_uncertainty
from .reference import REFERENCE, FlowConfig, load_or_train
from .riemannian import (
    GeodesicSolveError,
    MongeMetric,
    RiemannianLaplace,
    common_drift,
    exp_map,
    geodesic_acceleration,
    linearised_objective,
)
from .subsets import (
    ParameterSubset,
    anchored,
    minibatch_objective,
    parameter_subset,
    restrict_objective,
)

__version__ = "0.1.0"

__all__ = [
    "DATASETS", "REFERENCE", "TOY_DATASETS", "EmpiricalOptimalVelocity", "FlowConfig",
    "FlowPosterior", "GeodesicSolveError", "LaplacePosterior", "MemorisationReport",
    "RegressionAdapter", "RegressionObjective", "RiemannianLaplace", "VelocityMLP",
    "cfm_loss", "energy_distance", "exp_map", "fit_flow_posterior", "fit_laplace",
    "flow_matching_regression_set", "generalisation_gap", "generate", "geodesic_acceleration",
    "held_out_log_likelihood", "is_memorised", "linear_path", "linearised_objective",
    "load_dataset", "load_or_train", "log_prob", "memorisation_ratio", "memorisation_report",
    "memorised_fraction", "mmd2", "nearest_two", "noise_std_from_residuals", "parameters_vector",
    "precision_recall", "quality_report", "refine_map", "sample", "sample_dataset",
    "sliced_wasserstein", "train_flow_matching", "unflatten", "velocity_uncertainty",
    "VelocityConvNet", "load_image_file", "ParameterSubset", "anchored", "minibatch_objective",
    "parameter_subset", "restrict_objective", "MongeMetric", "common_drift",
]
