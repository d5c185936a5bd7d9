"""The package's public names: one list per package, every name importable, moved names still
found where the book imports them."""

import importlib

import pytest

PACKAGES = ["", ".flows", ".memorisation", ".laplace", ".riemannian", ".experiments"]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_each_public_name_once_and_every_name_resolves(package):
    module = importlib.import_module(f"rbmem_tutorial{package}")
    names = module.__all__
    assert len(names) == len(set(names))
    assert [name for name in names if not hasattr(module, name)] == []


@pytest.mark.parametrize("package, new, name", [
    ("laplace", "laplace.refinement", "refine_map"),
    ("laplace", "laplace.refinement", "RefineRecord"),
    ("laplace", "laplace.regression_set", "flow_matching_regression_set"),
    ("laplace", "laplace.regression_set", "noise_std_from_residuals"),
    ("laplace", "laplace.kronecker", "KroneckerFactors"),
    ("laplace", "laplace.prior_tuning", "optimal_prior_precision"),
    ("laplace", "laplace.options", "PRIOR_MEANS"),
    ("laplace", "laplace.options", "BASE_POINTS"),
    ("riemannian.geodesic", "riemannian.solve", "GeodesicResult"),
    ("riemannian.geodesic", "riemannian.solve", "ADAPTIVE_METHODS"),
])
def test_names_that_moved_module_are_still_importable_from_their_package(package, new, name):
    moved = getattr(importlib.import_module(f"rbmem_tutorial.{new}"), name)
    assert getattr(importlib.import_module(f"rbmem_tutorial.{package}"), name) is moved
