"""Tests for the rbmem_tutorial.riemannian package: its public names and every module's examples."""

import doctest

import pytest

import rbmem_tutorial
from rbmem_tutorial import riemannian
from rbmem_tutorial.riemannian import (
    conv_jet,
    diagnostics,
    fisher_mlp,
    generic,
    geodesic,
    linearised,
    monge,
    sampler,
    temperature,
    tolerances,
)


@pytest.mark.parametrize(
    "module",
    [conv_jet, diagnostics, fisher_mlp, generic, geodesic, linearised, monge, sampler,
     temperature, tolerances],
)
def test_docstring_examples_run(module):
    assert doctest.testmod(module, raise_on_error=True).attempted > 0


def test_public_names_are_exported():
    for name in riemannian.__all__:
        assert getattr(riemannian, name) is not None
    for name in ("exp_map", "geodesic_acceleration", "RiemannianLaplace", "GeodesicSolveError",
                 "linearised_objective", "MongeMetric", "common_drift"):
        assert getattr(rbmem_tutorial, name) is getattr(riemannian, name)
