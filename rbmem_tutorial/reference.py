"""The book's running example: one configuration, trained once and cached on disk.

Chapters 1-5 share the velocity net described by ``REFERENCE``. ``load_or_train`` trains it on
first use and stores the result under a file name derived from a hash of the full
configuration, the version of the flow entries' computation and the package version
(:func:`rbmem_tutorial.cache.entry_path`), so changing any setting, or how a net is trained,
trains a new model instead of loading a stale one. The cache lives in the folder
named by the environment variable ``RBMEM_CACHE`` (default ``~/.cache/rbmem_tutorial``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rbmem_tutorial._checks import check_choice, check_positive, check_positive_int
from rbmem_tutorial.cache import entry_path, save_atomic, save_entry, use_cached
from rbmem_tutorial.data import DATASETS, dataset_dim, load_dataset
from rbmem_tutorial.flows.nets import ACTIVATIONS, VelocityMLP
from rbmem_tutorial.flows.training import train_flow_matching
from rbmem_tutorial.saving import read_saved, rebuilt, with_checksum

_KIND, _FORMAT = "rbmem_tutorial.TrainedFlow", 1


@dataclass(frozen=True)
class FlowConfig:
    """Everything that determines a trained flow-matching model.

    Attributes
    ----------
    dataset : str
        Name for :func:`rbmem_tutorial.data.load_dataset`.
    n_train, n_test : int
        Sizes of the training and held-out sets.
    hidden : tuple of int
        Hidden widths of the :class:`rbmem_tutorial.flows.nets.VelocityMLP`.
    activation : str
        ``"silu"`` or ``"tanh"``.
    time_features : int
        Fourier frequencies of t fed to the net.
    steps, batch_size : int
        Adam steps and batch size (batches are drawn with replacement).
    lr : float
        Adam learning rate.
    schedule : str
        ``"constant"`` or ``"cosine"``.
    seed : int
        Seed of the parameter initialisation and of the training draws.
    data_seed : int
        Seed of the training and test sets.

    Example
    -------
    >>> FlowConfig(n_train=8, hidden=(8,), steps=5).n_train
    8
    >>> FlowConfig(schedule="linear")
    Traceback (most recent call last):
    ...
    ValueError: unknown schedule 'linear'; choose one of 'constant', 'cosine'.

    Notes
    -----
    **Choosing** ``REFERENCE`` (a record of the runs that chose it). The running example must
    memorise clearly, train within about 45 s on one CPU thread (the chapter runs in 2 minutes
    on a cold cache), and stay small, because later chapters run Laplace and geodesics whose
    cost grows with ``n_train``.
    Measured on a 2-core CPU with ``torch.set_num_threads(1)`` (shared, heavily loaded, so
    times are upper bounds), 2,000 dopri5 samples (rtol = atol = 1e-5), memorised when the
    float64 nearest/second-nearest training distance ratio d1/d2 < 1/3 (in brackets: < 0.577),
    against 2,000-4,000 fresh true samples scored the same way:

    ============================  ======  =============  =============  ======
    moons x scale, n, steps, lr   data    MAP memorised  true samples   time
    ============================  ======  =============  =============  ======
    x1, n=12, 10k, 2e-3           seed 0  0.45 (0.66)    0.36 (0.63)    42 s
    x1, n=16, 15k, 2e-3           seed 0  0.35 (0.61)    0.28 (0.64)    68 s
    x1, n=8, 10k, 2e-3            seed 0  0.73 (0.87)    0.42           34 s
    x2, n=12, 10k, 5e-3           seed 0  0.67 (0.81)    0.36 (0.63)    45 s
    x2, n=16, 10k, 5e-3           seed 0  0.51 (0.72)    0.28 (0.64)    47 s
    x2, n=20, 10k, 2e-3           seed 0  0.32 (0.56)    0.20 (0.47)    18 s
    x3, n=16, 15k, 2e-3           seed 0  0.64 (0.83)    0.28 (0.64)    43 s
    x3, n=16, 10k, 5e-3           seed 0  0.63 (0.80)    0.28 (0.63)    45 s
    x3, n=16, 10k, 5e-3           seed 1  0.43 (0.64)    0.19 (0.46)    34 s
    x3, n=20, 10k, 5e-3           seed 0  0.42 (0.66)    0.20 (0.47)    27 s
    ============================  ======  =============  =============  ======

    A cosine learning-rate schedule memorised less (x2, n=12, 10k: 0.45). The true-sample
    baseline stays high for tiny sets because the moons are nearly one-dimensional: a true
    sample lying between two sparse training points passes the ratio test about a third of the
    time. ``REFERENCE`` is the x3, n=16, 10k-step, lr 5e-3 row (the moons scale 3 is built into
    :func:`rbmem_tutorial.data.load_dataset`): MAP 0.63 memorised against 0.28 for true
    samples, trained in 45 s under that load (10k steps of this net took 17-18 s when the
    machine was quiet).
    """

    dataset: str = "moons"
    n_train: int = 16
    n_test: int = 2000
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "silu"
    time_features: int = 0
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 2e-3
    schedule: str = "constant"
    seed: int = 0
    data_seed: int = 0

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_positive_int("n_train", self.n_train)
        check_positive_int("n_test", self.n_test)
        if not isinstance(self.hidden, tuple):
            raise TypeError(f"hidden must be a tuple of ints, got {self.hidden!r}.")
        for width in self.hidden:
            check_positive_int("hidden width", width)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_positive_int("time_features", self.time_features, minimum=0)
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_choice("schedule", self.schedule, ("constant", "cosine"))
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("data_seed", self.data_seed, minimum=0)


REFERENCE = FlowConfig(
    dataset="moons", n_train=16, n_test=2000, hidden=(64, 64), activation="silu",
    time_features=0, steps=10_000, batch_size=256, lr=5e-3, schedule="constant", seed=0,
    data_seed=0,
)
"""The book's running example (chapters 1-5); see :class:`FlowConfig` for why."""


@dataclass
class TrainedFlow:
    """A trained velocity net with its data.

    Attributes
    ----------
    model : VelocityMLP
        The trained net, in eval mode.
    train, test : torch.Tensor
        The training set it was fitted on and the held-out set.
    loss_history : torch.Tensor
        Loss of every training step.
    train_seconds : float
        Wall-clock time of the training run (the original run when loaded from the cache).
    config : FlowConfig
        The configuration.
    from_cache : bool
        Whether the model was loaded (from the cache or a file) instead of trained.

    Example
    -------
    >>> import tempfile, pathlib
    >>> flow = load_or_train(FlowConfig(n_train=8, n_test=10, hidden=(8,), steps=5), False)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "flow.pt"
    >>> flow.save(path)
    >>> again = TrainedFlow.load(path)
    >>> weights = [net.state_dict()["net.0.weight"] for net in (flow.model, again.model)]
    >>> again.config == flow.config, torch.equal(*weights)
    (True, True)
    """

    model: VelocityMLP
    train: torch.Tensor
    test: torch.Tensor
    loss_history: torch.Tensor
    train_seconds: float
    config: FlowConfig
    from_cache: bool

    def save(self, path) -> None:
        """Write the net's weights, its :class:`FlowConfig`, the data and the loss history to
        ``path``, readable with ``torch.load(path, weights_only=True)``."""
        config = dataclasses.asdict(self.config)
        config["hidden"] = list(config["hidden"])
        record = {"kind": _KIND, "format": _FORMAT, "config": config,
                  "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                  "train": self.train.cpu(), "test": self.test.cpu(),
                  "loss_history": self.loss_history.cpu(), "train_seconds": self.train_seconds}
        save_atomic(with_checksum(record), Path(path))

    @classmethod
    def load(cls, path) -> TrainedFlow:
        """Read a flow written by :meth:`save` (on the CPU, ``from_cache=True``); a file that
        is damaged, changed or of another kind is a one-line ``ValueError``."""
        record = read_saved(path, _KIND, _FORMAT)
        return rebuilt(path, "flow", lambda: cls._from_saved(record))

    @classmethod
    def _from_saved(cls, record: dict) -> TrainedFlow:
        config = dict(record["config"])
        config["hidden"] = tuple(config["hidden"])
        config = FlowConfig(**config)
        model = build_model(config)
        model.load_state_dict(record["state_dict"])
        return cls(model.eval(), record["train"], record["test"], record["loss_history"],
                   float(record["train_seconds"]), config, from_cache=True)


def cache_path(config: FlowConfig) -> Path:
    """Cache file of ``config``: a SHA-256 of the configuration, the version of the flow
    entries' computation and the package version (:func:`rbmem_tutorial.cache.entry_path`).

    Example
    -------
    >>> cache_path(REFERENCE).name.startswith("flow-moons-"), cache_path(REFERENCE).suffix
    (True, '.pt')
    """
    return entry_path("flow", {"config": dataclasses.asdict(config)}, config.dataset)


def build_model(config: FlowConfig) -> VelocityMLP:
    """The untrained net of ``config``, initialised from ``config.seed``.

    The global random state is left as it was.

    Example
    -------
    >>> config = FlowConfig(hidden=(8,))
    >>> net = build_model(config)
    >>> all(torch.equal(a, b) for a, b in zip(net.parameters(), build_model(config).parameters()))
    True
    """
    dim = dataset_dim(config.dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return VelocityMLP(dim, config.hidden, config.activation, config.time_features)


def load_or_train(config: FlowConfig = REFERENCE, progress: bool = True) -> TrainedFlow:
    """Load the trained model of ``config`` from the cache, or train and cache it.

    Training runs on the CPU with :func:`rbmem_tutorial.flows.training.train_flow_matching`;
    call ``torch.set_num_threads(1)`` first for toy-sized nets on small CPUs.

    Parameters
    ----------
    config : FlowConfig
        What to train; the book's running example by default.
    progress : bool
        Show a progress bar while training.

    Returns
    -------
    TrainedFlow
        Model (eval mode), data, loss history and training time.

    Example
    -------
    >>> tiny = FlowConfig(n_train=8, n_test=10, hidden=(8,), steps=5)
    >>> result = load_or_train(tiny, progress=False)
    >>> result.model.training, tuple(result.train.shape)
    (False, (8, 2))
    """
    if not isinstance(config, FlowConfig):
        raise TypeError(f"config must be a FlowConfig, got {type(config).__name__}.")
    train, test = load_dataset(config.dataset, config.n_train, config.n_test, config.data_seed)
    path = cache_path(config)
    cached = use_cached(path, ("state_dict", "loss_history", "train_seconds"),
                        lambda record: _from_record(config, record))
    if cached is not None:
        model, history, seconds = cached
        return TrainedFlow(model.eval(), train, test, history, seconds, config, from_cache=True)
    model = build_model(config)
    start = time.perf_counter()
    history = train_flow_matching(
        model, train, config.steps, config.batch_size, config.lr, config.seed,
        schedule=config.schedule, progress=progress,
    )
    seconds = time.perf_counter() - start
    cache_trained(config, model, history, seconds)
    return TrainedFlow(model.eval(), train, test, history, seconds, config, from_cache=False)


def cache_trained(config: FlowConfig, model: VelocityMLP, history: torch.Tensor,
                  seconds: float) -> None:
    """Store a net trained as ``config`` says under :func:`cache_path`, where
    :func:`load_or_train` finds it (also for a run that kept checkpoints on the way)."""
    record = {"state_dict": model.state_dict(), "loss_history": history, "train_seconds": seconds}
    save_entry(record, cache_path(config))


def _from_record(config: FlowConfig, record: dict) -> tuple[VelocityMLP, torch.Tensor, float]:
    """The net of ``config`` with a cache entry's weights, its loss history and time."""
    model = build_model(config)
    model.load_state_dict(record["state_dict"])
    return model, torch.as_tensor(record["loss_history"]), float(record["train_seconds"])
