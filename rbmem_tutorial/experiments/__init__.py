"""The studies: memorisation against quality per method and scale, and methods matched at the
same memorised fraction. Chapters 7 and 8 teach them; the book's tables are their stored runs.

Run as ``python -m rbmem_tutorial.experiments tradeoff --quick --out DIR``.

The studies write one atomically stored cell per (method, scale, seed), resume after an
interruption, shard over processes started by ``torchrun`` and merge into CSV, JSON and figures.
"""

from rbmem_tutorial.experiments.config import METHODS, TradeoffConfig
from rbmem_tutorial.experiments.tradeoff import cells, finish, profile_config, run_study

__all__ = ["METHODS", "TradeoffConfig", "cells", "finish", "profile_config", "run_study"]
