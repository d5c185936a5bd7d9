"""rbmem_tutorial: reducing memorisation in flow matching through Riemannian Bayesian inference.

The tree follows the book, one sub-package per part:

- :mod:`.flows` — chapter 1, flow matching: paths and loss, training, sampling, the nets;
- :mod:`.memorisation` — chapter 2, the ratio test and sample quality against held-out data;
- :mod:`.laplace` — chapters 3 and 4, the Laplace approximation of the velocity net, from the frozen
  regression set to the posterior and generating with sampled nets (and chapter 7's calibration,
  chapter 8's weight subsets);
- :mod:`.riemannian` — chapters 5 and 6, geodesics and the Riemannian Laplace sampler (and the toy
  posteriors known in closed form);
- :mod:`.experiments` — chapters 7 and 8, the studies and their command line;
- shared by all: :mod:`.data` (data sets), :mod:`.reference` (the trained reference flow),
  :mod:`.cache` and :mod:`.cache_listing` (work kept on disk), :mod:`.saving` (files to share),
  :mod:`.widgets` (the chapters' controls).

This module only gathers the names the book uses. Reference: Gegenfurtner, Jacobsen and
Arvanitidis, "Reducing Memorisation in Generative Models via Riemannian Bayesian Inference",
arXiv:2602.00199.
"""

from rbmem_tutorial._version import __version__ as __version__  # re-exported
from rbmem_tutorial.data import (
    DATASETS,
    TOY_DATASETS,
    load_dataset,
    load_image_file,
    sample_dataset,
)
from rbmem_tutorial.flows import (
    EmpiricalOptimalVelocity,
    RegressionAdapter,
    VelocityConvNet,
    VelocityMLP,
    cfm_loss,
    linear_path,
    log_prob,
    sample,
    train_flow_matching,
)
from rbmem_tutorial.laplace import (
    Calibration,
    FlowPosterior,
    ParameterSubset,
    RefineRecord,
    anchored,
    calibrate,
    calibrate_scale,
    fit_flow_posterior,
    flow_matching_regression_set,
    generate,
    hidden_unit_sizes,
    minibatch_objective,
    noise_std_from_residuals,
    optimal_prior_precision,
    parameter_subset,
    parameters_vector,
    refine_map,
    restrict_objective,
    unflatten,
    units_in_use,
    velocity_uncertainty,
)
from rbmem_tutorial.laplace.base import LaplacePosterior
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.laplace.structures import fit_laplace
from rbmem_tutorial.memorisation import (
    MemorisationReport,
    energy_distance,
    generalisation_gap,
    held_out_log_likelihood,
    memorisation_report,
    mmd2,
    outlier_rate,
    precision_recall,
    quality_report,
    sliced_wasserstein,
)
from rbmem_tutorial.memorisation.ratio import (
    is_memorised,
    memorisation_ratio,
    memorised_fraction,
    nearest_two,
)
from rbmem_tutorial.reference import REFERENCE, FlowConfig, load_or_train
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
from rbmem_tutorial.riemannian.toys import Banana, BayesianLinearRegression, gaussian_w2

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
