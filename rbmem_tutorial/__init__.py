"""rbmem_tutorial: reducing memorisation in flow matching through Riemannian Bayesian inference.

The package follows the book, one module per idea:

- :mod:`.data`, :mod:`.nets`, :mod:`.flow_matching`, :mod:`.reference`: chapter 1, flow matching;
- :mod:`.memorisation`, :mod:`.metrics`: chapter 2, detecting memorisation and measuring quality;
  :mod:`.calibration`: chapter 5, matching methods at the same memorised fraction;
- chapter 3, Laplace: :mod:`.regression_set` (flow matching frozen into regression),
  :mod:`.objective` (the loss L(θ) and its curvature; :mod:`.kronecker` for KFAC),
  :mod:`.refinement` (θ_SGD → θ*), :mod:`.laplace`, :mod:`.prior_tuning` (λ by the evidence),
  :mod:`.hidden_units`, :mod:`.posterior` (generating with sampled nets) and
  :mod:`.pipeline` (trained flow → posterior; options in :mod:`.posterior_options`);
- :mod:`.riemannian` (with the fused kernel :mod:`.fast_mlp`) and :mod:`.toys` (posteriors
  known in closed form): chapter 4, Riemannian Laplace;
- :mod:`.image_nets`, :mod:`.subsets`, :mod:`.experiments`: chapters 5 and 6, images, weight
  subsets and mini-batches, and the experiment scripts;
- :mod:`.cache` (trained models and posteriors on disk) and :mod:`.saving` (files to share).

Reference: Gegenfurtner, Jacobsen and Arvanitidis, "Reducing Memorisation in Generative Models
via Riemannian Bayesian Inference", arXiv:2602.00199.
"""

from rbmem_tutorial._version import __version__ as __version__  # re-exported
from rbmem_tutorial.calibration import Calibration, calibrate, calibrate_scale
from rbmem_tutorial.coverage import generalisation_gap, outlier_rate, precision_recall
from rbmem_tutorial.data import (
    DATASETS,
    TOY_DATASETS,
    load_dataset,
    load_image_file,
    sample_dataset,
)
from rbmem_tutorial.flow_matching import log_prob, sample
from rbmem_tutorial.hidden_units import hidden_unit_sizes, units_in_use
from rbmem_tutorial.image_nets import VelocityConvNet
from rbmem_tutorial.laplace import LaplacePosterior, fit_laplace
from rbmem_tutorial.memorisation import (
    is_memorised,
    memorisation_ratio,
    memorised_fraction,
    nearest_two,
)
from rbmem_tutorial.metrics import energy_distance, mmd2, sliced_wasserstein
from rbmem_tutorial.nets import RegressionAdapter, VelocityMLP
from rbmem_tutorial.objective import RegressionObjective, parameters_vector, unflatten
from rbmem_tutorial.optimal import EmpiricalOptimalVelocity
from rbmem_tutorial.paths import cfm_loss, linear_path
from rbmem_tutorial.pipeline import FlowPosterior, fit_flow_posterior
from rbmem_tutorial.posterior import generate, velocity_uncertainty
from rbmem_tutorial.prior_tuning import optimal_prior_precision
from rbmem_tutorial.quality import held_out_log_likelihood, quality_report
from rbmem_tutorial.reference import REFERENCE, FlowConfig, load_or_train
from rbmem_tutorial.refinement import RefineRecord, refine_map
from rbmem_tutorial.regression_set import flow_matching_regression_set, noise_std_from_residuals
from rbmem_tutorial.report import MemorisationReport, memorisation_report
from rbmem_tutorial.riemannian import (
    TEMPERATURE_PRESETS,
    FisherMetric,
    GeodesicResult,
    GeodesicSolveError,
    MongeMetric,
    RiemannianLaplace,
    common_drift,
    data_mean_objective,
    exp_map,
    geodesic_acceleration,
    linearised_objective,
)
from rbmem_tutorial.subsets import (
    ParameterSubset,
    anchored,
    minibatch_objective,
    parameter_subset,
    restrict_objective,
)
from rbmem_tutorial.toys import Banana, BayesianLinearRegression, gaussian_w2
from rbmem_tutorial.training import train_flow_matching

__all__ = [
    "Banana", "BayesianLinearRegression", "Calibration", "DATASETS", "EmpiricalOptimalVelocity",
    "FisherMetric", "FlowConfig", "FlowPosterior", "GeodesicResult", "GeodesicSolveError",
    "LaplacePosterior", "MemorisationReport", "MongeMetric", "ParameterSubset", "REFERENCE",
    "RefineRecord", "RegressionAdapter", "RegressionObjective", "RiemannianLaplace",
    "TEMPERATURE_PRESETS", "TOY_DATASETS", "VelocityConvNet", "VelocityMLP", "anchored",
    "calibrate", "calibrate_scale", "cfm_loss", "common_drift", "data_mean_objective",
    "energy_distance", "exp_map", "fit_flow_posterior", "fit_laplace",
    "flow_matching_regression_set", "gaussian_w2", "generalisation_gap", "generate",
    "geodesic_acceleration", "held_out_log_likelihood", "hidden_unit_sizes", "is_memorised",
    "linear_path", "linearised_objective", "load_dataset", "load_image_file", "load_or_train",
    "log_prob", "memorisation_ratio", "memorisation_report", "memorised_fraction",
    "minibatch_objective", "mmd2", "nearest_two", "noise_std_from_residuals",
    "optimal_prior_precision", "outlier_rate", "parameter_subset", "parameters_vector",
    "precision_recall", "quality_report", "refine_map", "restrict_objective", "sample",
    "sample_dataset", "sliced_wasserstein", "train_flow_matching", "unflatten", "units_in_use",
    "velocity_uncertainty",
]
