"""The package's public names: one list, every name importable, moved names still found."""

import importlib

import pytest

import rbmem_tutorial


def test_all_lists_each_public_name_once_and_every_name_resolves():
    names = rbmem_tutorial.__all__
    assert len(names) == len(set(names))
    assert [name for name in names if not hasattr(rbmem_tutorial, name)] == []


@pytest.mark.parametrize("old, new, name", [
    ("objective", "refinement", "refine_map"),
    ("objective", "refinement", "RefineRecord"),
    ("objective", "regression_set", "flow_matching_regression_set"),
    ("objective", "regression_set", "noise_std_from_residuals"),
    ("objective", "kronecker", "KroneckerFactors"),
    ("laplace", "prior_tuning", "optimal_prior_precision"),
    ("pipeline", "posterior_options", "PRIOR_MEANS"),
    ("pipeline", "posterior_options", "BASE_POINTS"),
    ("riemannian.geodesic", "riemannian.solve", "GeodesicResult"),
    ("riemannian.geodesic", "riemannian.solve", "ADAPTIVE_METHODS"),
])
def test_names_that_moved_module_are_still_importable_from_the_old_one(old, new, name):
    moved = getattr(importlib.import_module(f"rbmem_tutorial.{new}"), name)
    assert getattr(importlib.import_module(f"rbmem_tutorial.{old}"), name) is moved
