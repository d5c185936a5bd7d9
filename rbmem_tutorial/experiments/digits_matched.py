"""The matched study on the 8x8 digits (chapter 8): chapter 7's design, on images.

The same replicates, methods, calibration and statistics as the moons study
(:mod:`.matched_study`, :mod:`.matched_stats`), with what images change:

- **Data and net.** Replicate ``r`` trains on its own ``n_train`` digits (data seed ``r``);
  the held-out digits are split in two, one half to score quality, the other half as the
  true-sample baseline. The velocity net is the SiLU MLP of the ``cpu-digits`` profile
  (:data:`.tradeoff.PROFILES`), trained with Adam at a constant learning rate, checkpoints
  kept along the run (early stopping's curve; the ensemble's members stop at the same step).
- **Levels at both thresholds used on images.** On 64-d digits no true sample passes
  d₁/d₂ < 1/3, so the floor there is 0, a level no calibration can aim at; the levels are a
  memorised fraction at 1/3, one at 0.577 (``"loose:<x>"``), and the true-sample floor at 0.577
  (``"loose-floor"``), see :func:`.matched_study.level_target`.
- **Geodesics** of the Monge metric at T = mean and T = sum, and of the Fisher metric, at the
  profile's tolerance (``geodesic_rtol``), each out to its own largest scale.

Example
-------
>>> config = DigitsMatchedConfig(replicates=(0,))
>>> config.base_flow().dataset, config.base_flow().n_train, config.step_grid()[-1]
('digits', 20, 8000)
>>> config.geodesic("riemannian-mean")[1:]
('mean', 64.0, 'bosh3', 0.0001)
"""

from __future__ import annotations

from dataclasses import dataclass

from rbmem_tutorial.data import DIGITS_COUNT
from rbmem_tutorial.experiments.matched_study import MatchedConfig
from rbmem_tutorial.experiments.replicates import Replicate, replicate, step_grid
from rbmem_tutorial.experiments.tradeoff import PROFILES
from rbmem_tutorial.reference import FlowConfig

CPU_DIGITS = PROFILES["cpu-digits"]

DIGITS_METHODS = ("map", "early-stop", "ensemble", "isotropic", "laplace", "riemannian-mean",
                  "riemannian-sum", "riemannian-fisher")
TEMPERATURE_OF = {"riemannian-mean": ("monge", CPU_DIGITS["temperatures"][0]),
                  "riemannian-sum": ("monge", "sum"), "riemannian-fisher": ("fisher", 1.0)}


@dataclass(frozen=True)
class DigitsMatchedConfig(MatchedConfig):
    """The digits study's design (saved beside its results; the fields of
    :class:`.matched_study.MatchedConfig` plus the data, net, posterior and geodesic settings).

    ``top_scales`` are the largest posterior scales of the geodesic methods, in the order of
    ``TEMPERATURE_OF``; ``geodesic_rtol`` (= atol) is the bosh3 tolerance of the geodesics
    (the profile's), ``sum_rtol`` that of the summed loss's, whose end points miss by 14% at
    1e-4 on this net (α = 4, against dopri5 at 1e-8) and by 0.3% at 1e-5.
    """

    replicates: tuple[int, ...] = tuple(range(5))
    methods: tuple[str, ...] = DIGITS_METHODS[:-1]
    costly_methods: tuple[str, ...] = ("riemannian-sum", "riemannian-fisher")
    costly_replicates: tuple[int, ...] = (0, 1)
    weight_samples: int = 32
    points: int = 1024
    members: int = 4
    levels: tuple = (0.1, "loose:0.3", "loose-floor")
    tolerance: float = 0.02
    sample_rtol: float = 1e-5
    n_train: int = CPU_DIGITS["n_train"]
    hidden: tuple[int, ...] = CPU_DIGITS["hidden"]
    steps: int = CPU_DIGITS["steps"]
    batch_size: int = CPU_DIGITS["batch_size"]
    lr: float = CPU_DIGITS["lr"]
    draws_per_point: int = CPU_DIGITS["draws_per_point"]
    refine_iterations: int = CPU_DIGITS["refine_iterations"]
    newton_steps: int = CPU_DIGITS["newton_steps"]
    geodesic_rtol: float = CPU_DIGITS["geodesic_rtol"]
    sum_rtol: float = 1e-5
    top_scales: tuple[float, ...] = (64.0, 4.0, 3.0)
    geodesic_path_points: int = 65

    def __post_init__(self):
        super().__post_init__()
        unknown = sorted(set(self.methods) - set(DIGITS_METHODS))
        if unknown:
            raise ValueError(f"methods {unknown} are not part of the digits study; choose from "
                             f"{', '.join(DIGITS_METHODS)}.")
        if not 1 <= self.n_train <= DIGITS_COUNT - 4:
            raise ValueError(f"n_train must be between 1 and {DIGITS_COUNT - 4}, got "
                             f"{self.n_train}.")
        for name in ("geodesic_rtol", "sum_rtol"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}.")

    def base_flow(self) -> FlowConfig:
        return FlowConfig(dataset="digits", n_train=self.n_train,
                          n_test=DIGITS_COUNT - self.n_train, hidden=tuple(self.hidden),
                          steps=self.steps, batch_size=self.batch_size, lr=self.lr)

    def step_grid(self) -> tuple[int, ...]:
        return step_grid(self.steps, fine_until=2000)

    def geodesic(self, method: str) -> tuple:
        metric, temperature = TEMPERATURE_OF[method]
        top = self.top_scales[list(TEMPERATURE_OF).index(method)]
        rtol = self.sum_rtol if temperature == "sum" else self.geodesic_rtol
        return metric, temperature, top, "bosh3", rtol

    def path_points(self) -> int:
        return self.geodesic_path_points

    def score_paths(self) -> bool:
        return True

    def posterior_options(self) -> dict:
        return {"draws_per_point": self.draws_per_point,
                "refine_iterations": self.refine_iterations, "newton_steps": self.newton_steps}

    def build_replicate(self, index: int) -> Replicate:
        return replicate(index, members=self.members, points=self.points,
                         base=self.base_flow(), steps=self.step_grid(),
                         posterior_options=self.posterior_options())

