"""Data and trained velocity nets of a study, cached on disk.

Three sources of data: the 2-D toy sets, the 8x8 digits, and a user's image or point array
(``--data-file``, read by :func:`rbmem_tutorial.data.load_image_file`). An MLP on a built-in data
set is the book's :func:`rbmem_tutorial.reference.load_or_train` (trained on the CPU, shared with
the chapters' cache); a convolutional net, or data from a file, is trained here on the study's
device and cached under a key made of the data's bytes and every training option.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from rbmem_tutorial.cache import entry_path, save_entry, use_cached
from rbmem_tutorial.data import DataSplit, image_shape, load_dataset, load_image_file, split_images
from rbmem_tutorial.flows.image_nets import build_velocity_net
from rbmem_tutorial.flows.training import train_flow_matching
from rbmem_tutorial.reference import load_or_train


class StudyFlow(NamedTuple):
    """A trained velocity net (on the CPU, eval mode) with its training and held-out data."""

    model: torch.nn.Module
    train: torch.Tensor
    test: torch.Tensor
    seconds: float


def study_images(config) -> torch.Tensor | None:
    """The user's images ``[N, C, H, W]`` in [-1, 1] when ``config.data_file`` is set."""
    return None if config.data_file is None else load_image_file(config.data_file)


def study_image_shape(config, images: torch.Tensor | None = None) -> tuple[int, ...] | None:
    """``(C, H, W)`` of the study's images, or ``None`` for vector data (the toy sets, and a
    data file of points, read as ``N x 1 x 1 x d``)."""
    if config.data_file is None:
        return image_shape(config.dataset)
    images = study_images(config) if images is None else images
    shape = tuple(images.shape[1:])
    return None if shape[:2] == (1, 1) else shape


def study_data(config, images: torch.Tensor | None = None) -> DataSplit:
    """Training set and held-out set of the study (CPU, float32, rows flattened)."""
    if config.data_file is None:
        return load_dataset(config.dataset, config.n_train, config.held_out_size(), 0)
    images = study_images(config) if images is None else images
    return split_images(images, config.n_train, config.held_out_size(len(images)), 0)


def study_net(config, dim: int, images: torch.Tensor | None = None,
              seed: int | None = None) -> torch.nn.Module:
    """The study's untrained velocity net on data rows of size ``dim`` (``config.net`` with
    ``config.net_widths``)."""
    return build_velocity_net(config.net, dim, hidden=config.net_widths,
                              image_shape=study_image_shape(config, images), seed=seed)


def trained_flow(config, train_seed: int, steps: int, progress: bool = False) -> StudyFlow:
    """The velocity net of one training seed after ``steps`` Adam steps (cached)."""
    if config.net == "mlp" and config.data_file is None:
        flow = config.flow_config(train_seed, steps)
        trained = load_or_train(flow, progress=progress)
        return StudyFlow(trained.model, trained.train, trained.test, trained.train_seconds)
    images = study_images(config)
    train, test = study_data(config, images)
    path = entry_path("study-flow", {
        "net": config.net, "widths": list(config.net_widths), "steps": steps,
        "batch_size": config.batch_size, "lr": config.lr, "seed": train_seed, "train": train,
        "device": config.device.split(":")[0]})
    cached = use_cached(path, ("state_dict", "seconds"),
                        lambda record: _load(study_net(config, train.shape[1], images,
                                                       seed=train_seed), record))
    if cached is not None:
        return StudyFlow(cached[0].eval(), train, test, cached[1])
    model = study_net(config, train.shape[1], images, seed=train_seed)
    device = torch.device(config.device)
    model.to(device)
    start = time.perf_counter()
    train_flow_matching(model, train.to(device), steps, config.batch_size, config.lr, train_seed,
                        progress=progress)
    seconds = time.perf_counter() - start
    model.cpu()
    summary = {"net": config.net, "widths": list(config.net_widths), "steps": steps,
               "seed": train_seed, "n_train": len(train)}
    save_entry({"state_dict": model.state_dict(), "seconds": seconds, "config": summary}, path)
    return StudyFlow(model.eval(), train, test, seconds)


def _load(model: torch.nn.Module, record: dict) -> tuple[torch.nn.Module, float]:
    """``model`` with a cache entry's weights, and the entry's training time."""
    model.load_state_dict(record["state_dict"])
    return model, float(record["seconds"])
