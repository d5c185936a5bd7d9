"""Shared test settings: one thread (much faster for toy models on small CPUs), float64 helpers."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def generator():
    """A freshly seeded torch generator, so every test is reproducible on its own."""
    return torch.Generator().manual_seed(0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
