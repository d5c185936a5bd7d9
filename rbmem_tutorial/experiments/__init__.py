"""Experiment scripts: ``python -m rbmem_tutorial.experiments tradeoff --quick --out DIR``.

The studies write one atomically stored cell per (method, scale, seed), resume after an
interruption, shard over processes started by ``torchrun`` and merge into CSV, JSON and figures.
"""

from rbmem_tutorial.experiments.tradeoff import (
    METHODS,
    TradeoffConfig,
    cells,
    finish,
    profile_config,
    run_study,
)

__all__ = ["METHODS", "TradeoffConfig", "cells", "finish", "profile_config", "run_study"]
