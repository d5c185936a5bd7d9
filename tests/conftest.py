"""Shared test settings: one thread (much faster for toy models on small CPUs), float64 helpers."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def generator():
    """A freshly seeded torch generator, so every test is reproducible on its own."""
    return torch.Generator().manual_seed(0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_study_in_two_processes(args, out, port):
    """Run ``python -m rbmem_tutorial.experiments ARGS --out OUT`` under torchrun with two CPU
    (gloo) processes; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(port), "-m", "rbmem_tutorial.experiments", *args,
               "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def in_private_cache(tmp_path_factory):
    """Point ``RBMEM_CACHE`` at one model cache for the test session's experiment runs, apart
    from the user's cache, and restore it afterwards (usable in fixtures of any scope)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RBMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture
def private_cache(tmp_path_factory):
    """The session's private model cache for one test (:func:`in_private_cache`)."""
    with in_private_cache(tmp_path_factory):
        yield


def results_by_key(out):
    """The rows of an experiment's ``results.json``, keyed by cell."""
    return {row["key"]: row for row in json.loads((Path(out) / "results.json").read_text())}


def book_repository_url() -> str:
    """The repository URL set once in ``_config.yml`` (launch buttons, install cells)."""
    import yaml

    config = Path(__file__).resolve().parents[1] / "_config.yml"
    return yaml.safe_load(config.read_text())["repository"]["url"]


def tiny_flow():
    """A one-step TrainedFlow on three points, to save and load."""
    from rbmem_tutorial.reference import FlowConfig, TrainedFlow, build_model

    config = FlowConfig(n_train=3, n_test=2, hidden=(4,), steps=1)
    return TrainedFlow(build_model(config), torch.zeros(3, 2), torch.ones(2, 2),
                       torch.arange(3.0), 1.5, config, from_cache=False)


def tiny_posterior():
    """A FlowPosterior of a three-unit net on three points, to save and load."""
    from rbmem_tutorial.flows import VelocityMLP
    from rbmem_tutorial.laplace import fit_flow_posterior

    torch.manual_seed(0)
    return fit_flow_posterior(VelocityMLP(2, hidden=(3,)), torch.linspace(-1, 1, 6).reshape(3, 2),
                              draws_per_point=2, use_cache=False)
