"""The Laplace approximation of a flow's velocity net: flow matching frozen into regression, its
curvature, the posterior structures, and generating with sampled nets. Chapters 3 and 4 teach it.

In the order the chapter builds it, each module importing only those above it:

- :mod:`.params` — the flat parameter vector θ of a network;
- :mod:`.kronecker`, :mod:`.objective` — the loss L(θ), its GGN and its KFAC factors;
- :mod:`.regression_set` — the frozen draws and the noise σ; :mod:`.refinement` — θ_SGD → θ*;
- :mod:`.prior_tuning` — λ by the Laplace evidence;
- :mod:`.base`, :mod:`.structures` — the posterior N(θ*, (H + λI)⁻¹) and its four structures;
- :mod:`.hidden_units` — the hidden units a prior switches off;
- :mod:`.fast_mlp` — the fused MLP kernel of L, ∇L and Hv (chapter 5's geodesics use it);
- :mod:`.subsets` — weight subsets and mini-batches (chapter 8);
- :mod:`.sampled_nets` — generating with sampled nets;
- :mod:`.options`, :mod:`.fitted`, :mod:`.pipeline` — trained flow → posterior;
- :mod:`.calibration` — methods compared at the same memorised fraction (chapter 7).
"""

from rbmem_tutorial.laplace.base import LaplacePosterior
from rbmem_tutorial.laplace.calibration import Calibration, calibrate, calibrate_scale
from rbmem_tutorial.laplace.hidden_units import hidden_unit_sizes, units_in_use
from rbmem_tutorial.laplace.kronecker import KroneckerFactors, kronecker_factors
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.laplace.options import BASE_POINTS, PRIOR_MEANS
from rbmem_tutorial.laplace.params import parameters_vector, unflatten
from rbmem_tutorial.laplace.pipeline import FlowPosterior, fit_flow_posterior
from rbmem_tutorial.laplace.prior_tuning import TUNINGS, optimal_prior_precision, refine_and_tune
from rbmem_tutorial.laplace.refinement import RefineRecord, refine_map
from rbmem_tutorial.laplace.regression_set import (
    flow_matching_regression_set,
    noise_std_from_residuals,
)
from rbmem_tutorial.laplace.sampled_nets import (
    VelocityUncertainty,
    generate,
    velocity_uncertainty,
)
from rbmem_tutorial.laplace.structures import (
    STRUCTURES,
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    LastLayerLaplace,
    fit_laplace,
)
from rbmem_tutorial.laplace.subsets import (
    SUBSET_PRESETS,
    AnchoredObjective,
    ParameterSubset,
    anchored,
    minibatch_objective,
    parameter_subset,
    restrict_objective,
)

__all__ = [
    "BASE_POINTS", "PRIOR_MEANS", "STRUCTURES", "SUBSET_PRESETS", "TUNINGS", "AnchoredObjective",
    "Calibration", "DiagLaplace", "FlowPosterior", "FullLaplace", "KronLaplace",
    "KroneckerFactors", "LaplacePosterior", "LastLayerLaplace", "ParameterSubset",
    "RefineRecord", "RegressionObjective", "VelocityUncertainty", "anchored", "calibrate",
    "calibrate_scale", "fit_flow_posterior", "fit_laplace", "flow_matching_regression_set",
    "generate", "hidden_unit_sizes", "kronecker_factors", "minibatch_objective",
    "noise_std_from_residuals", "optimal_prior_precision", "parameter_subset",
    "parameters_vector", "refine_and_tune", "refine_map", "restrict_objective", "unflatten",
    "units_in_use", "velocity_uncertainty",
]
