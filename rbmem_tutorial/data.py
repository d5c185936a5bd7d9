"""Training and held-out data: four 2-D toy distributions, scikit-learn's 8x8 digits, and a
user's own image array (``.npy``/``.npz``, e.g. MNIST or CIFAR already on disk).

The 2-D sets are distributions we can sample without limit, so a test set can be as large as
we like and fresh *true* samples serve as the baseline of the memorisation test (a true sample
can pass the nearest-neighbour ratio test by chance; Yoon et al. 2023, Gu et al. 2023). The
digits are a finite set of 1,797 images; train and test are disjoint subsets of it.

All samplers draw from a ``torch.Generator`` and return CPU tensors; move them with ``.to``.
Nothing is downloaded: the digits ship with scikit-learn and image files are read from disk.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rbmem_tutorial._checks import check_choice, check_positive_int

TOY_DATASETS = ("moons", "eight_gaussians", "checkerboard", "rings")
DATASETS = (*TOY_DATASETS, "digits")

MOONS_NOISE = 0.05
MOONS_SCALE = 3.0
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.15
RINGS_RADII = (0.5, 1.0, 1.5, 2.0)
RINGS_NOISE = 0.05
DIGITS_COUNT = 1797
IMAGE_SHAPES = {"digits": (1, 8, 8)}
MAX_IMAGE_CHANNELS = 4


class DataSplit(NamedTuple):
    """A training set and a held-out test set, each ``[n, d]``; unpacks as ``train, test``."""

    train: torch.Tensor
    test: torch.Tensor


def _moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles (scikit-learn's geometry), centred, scaled by ``MOONS_SCALE``.

    The angle is uniform on [0, pi] and the moon is a fair coin, so points are i.i.d.; the
    Gaussian noise has standard deviation ``MOONS_NOISE`` before scaling (as in
    ``sklearn.datasets.make_moons(noise=0.05)``). The scale spreads the moons over about
    [-4.5, 4.5] x [-2.3, 2.3], so the training points of a small set sit further apart than the
    N(0, I) noise, the regime where a trained net memorises them quickly.
    """
    angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    lower = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    upper_moon = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower_moon = torch.stack([1.0 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(lower[:, None], lower_moon, upper_moon)
    noise = MOONS_NOISE * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    centre = torch.tensor([0.5, 0.25], dtype=torch.float64)
    return MOONS_SCALE * (points + noise - centre)


def _eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """An equal mixture of eight isotropic Gaussians whose means sit evenly on a circle."""
    k = torch.randint(8, (n,), generator=generator).to(torch.float64)
    angle = k * (math.pi / 4)
    means = EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    noise = EIGHT_GAUSSIANS_STD * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return means + noise


def _checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform on the eight dark squares of a 4x4 board of unit squares covering [-2, 2]^2."""
    column = torch.randint(4, (n,), generator=generator)
    row = 2 * torch.randint(2, (n,), generator=generator) + column % 2
    corner = torch.stack([column, row], dim=1).to(torch.float64) - 2.0
    return corner + torch.rand(n, 2, generator=generator, dtype=torch.float64)


def _rings(n: int, generator: torch.Generator) -> torch.Tensor:
    """Concentric circles of radii ``RINGS_RADII`` (equal mass each) with Gaussian noise."""
    ring = torch.randint(len(RINGS_RADII), (n,), generator=generator)
    radius = torch.tensor(RINGS_RADII, dtype=torch.float64)[ring]
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    circle = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return circle + RINGS_NOISE * torch.randn(n, 2, generator=generator, dtype=torch.float64)


_SAMPLERS = {
    "moons": _moons,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
}


def sample_dataset(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n`` fresh i.i.d. samples from one of the 2-D toy distributions.

    These are *true* samples of the data distribution p_1, used as held-out data and as the
    baseline of the memorisation test.

    Parameters
    ----------
    name : str
        One of ``TOY_DATASETS``: ``"moons"`` (noise 0.05, centred, scaled by 3),
        ``"eight_gaussians"``
        (radius 2, std 0.15), ``"checkerboard"`` (dark squares of a 4x4 board on [-2, 2]^2) or
        ``"rings"`` (radii 0.5, 1, 1.5, 2, noise 0.05).
    n : int
        Number of samples (at least 1).
    generator : torch.Generator, optional
        Source of randomness; the global generator when omitted.
    dtype : torch.dtype
        Floating dtype of the result (samples are drawn in float64 and then cast).

    Returns
    -------
    torch.Tensor
        ``[n, 2]`` samples on the CPU.

    Example
    -------
    >>> x = sample_dataset("moons", 5, generator=torch.Generator().manual_seed(0))
    >>> x.shape
    torch.Size([5, 2])
    """
    check_choice("name", name, TOY_DATASETS)
    check_positive_int("n", n)
    return _SAMPLERS[name](n, generator).to(dtype)


def dataset_dim(name: str) -> int:
    """Dimension d of the samples of dataset ``name``: 64 for digits, 2 for the toy sets.

    Example
    -------
    >>> dataset_dim("digits")
    64
    """
    check_choice("name", name, DATASETS)
    return 64 if name == "digits" else 2


def _digits(n_train: int, n_test: int, seed: int) -> DataSplit:
    """Disjoint random subsets of scikit-learn's 1,797 8x8 digits, pixels scaled to [-1, 1]."""
    if n_train + n_test > DIGITS_COUNT:
        raise ValueError(
            f"digits has {DIGITS_COUNT} images, so n_train + n_test must be at most "
            f"{DIGITS_COUNT}; got {n_train} + {n_test}. Lower n_test."
        )
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data, dtype=torch.float64) / 8.0 - 1.0
    order = torch.randperm(DIGITS_COUNT, generator=torch.Generator().manual_seed(seed))
    return DataSplit(images[order[:n_train]], images[order[n_train : n_train + n_test]])


def load_dataset(
    name: str,
    n_train: int,
    n_test: int = 1000,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """Build a training set and a held-out test set.

    For the 2-D toy sets both are i.i.d. draws from the distribution (see
    :func:`sample_dataset`), made with two independent generators derived from ``seed``: the
    training set depends only on ``(seed, n_train)`` and the test set only on
    ``(seed, n_test)``. For ``"digits"`` (64-d, pixels scaled from 0..16 to [-1, 1]) train and
    test are disjoint subsets of the 1,797 images, chosen by a permutation seeded with ``seed``.

    Parameters
    ----------
    name : str
        One of ``DATASETS``.
    n_train, n_test : int
        Sizes of the two sets (at least 1 each). Small training sets (tens of points) are the
        regime where flow matching memorises.
    seed : int
        Seed of the draws.
    dtype : torch.dtype
        Floating dtype of the result.

    Returns
    -------
    DataSplit
        ``(train, test)``, CPU tensors of shape ``[n_train, d]`` and ``[n_test, d]``.

    Example
    -------
    >>> train, test = load_dataset("moons", n_train=16, n_test=500, seed=0)
    >>> tuple(train.shape), tuple(test.shape)
    ((16, 2), (500, 2))
    """
    check_choice("name", name, DATASETS)
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test)
    check_positive_int("seed", seed, minimum=0)
    if name == "digits":
        split = _digits(n_train, n_test, seed)
        return DataSplit(split.train.to(dtype), split.test.to(dtype))
    train_seed, test_seed = np.random.SeedSequence(seed).generate_state(2)
    train = _SAMPLERS[name](n_train, torch.Generator().manual_seed(int(train_seed)))
    test = _SAMPLERS[name](n_test, torch.Generator().manual_seed(int(test_seed)))
    return DataSplit(train.to(dtype), test.to(dtype))


def image_shape(name: str) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of one sample of dataset ``name`` if it holds images, else ``None``.

    Example
    -------
    >>> image_shape("digits"), image_shape("moons")
    ((1, 8, 8), None)
    """
    check_choice("name", name, DATASETS)
    return IMAGE_SHAPES.get(name)


def _read_array(path: Path) -> np.ndarray:
    try:
        return _read_numpy(path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if "pickled" in str(err) or isinstance(err, zipfile.BadZipFile):  # no NumPy header
            raise ValueError(f"{path} is not a NumPy {path.suffix} file (a text file or "
                             "another format under that name?); read it with its own reader "
                             "and store it with np.save(path, array).") from None
        if "holds the arrays" in str(err):
            raise
        raise ValueError(f"{path} cannot be read as {path.suffix} ({err}); it may be "
                         "truncated: write it again with np.save.") from None


def _read_numpy(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "images" in keys:
            return archive["images"]
        if len(keys) != 1:
            raise ValueError(
                f"{path} holds the arrays {keys}; name the image array 'images' "
                "(np.savez(path, images=array)) or store only one array."
            )
        return archive[keys[0]]


def _check_image_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind not in "uif":
        raise TypeError(f"{path} holds {array.dtype} values; store numbers (uint8 or float).")
    if array.ndim == 2:  # points N x d: one-pixel-high, one-channel images, flattened later
        array = array[:, None, None]
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(
            f"{path} holds an array of shape {array.shape}; expected N x H x W (grey images), "
            "N x C x H x W, or N x d (points)."
        )
    if array.shape[1] > MAX_IMAGE_CHANNELS:
        hint = ""
        if array.shape[-1] <= MAX_IMAGE_CHANNELS:
            hint = " It looks channels-last (N x H x W x C): use np.moveaxis(array, -1, 1)."
        raise ValueError(
            f"{path} holds an array of shape {array.shape}, read as N x C x H x W with "
            f"C = {array.shape[1]} > {MAX_IMAGE_CHANNELS} channels.{hint}"
        )
    if array.shape[0] < 2 or min(array.shape[2:]) < 1:
        raise ValueError(f"{path} holds {array.shape}; it needs at least 2 non-empty images.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).reshape(len(array), -1).any(1).sum())
        raise ValueError(
            f"{path} contains NaN or infinite values in {bad} image(s); drop or repair them."
        )
    return array


def load_image_file(path) -> torch.Tensor:
    """Read a user's image array from ``.npy`` or ``.npz`` and scale its pixels to [-1, 1].

    Accepted shapes are ``N x H x W`` (grey images, C = 1 is added) and ``N x C x H x W`` with
    C ≤ 4, and plain points ``N x d``, read as ``N x 1 x 1 x d`` (the same rows once
    flattened). An ``.npz`` must hold one array, or an array named ``images``. Scaling:

    - ``uint8`` pixels: x ↦ x / 127.5 − 1, so 0..255 maps to [-1, 1] whatever the array holds;
    - any other integer or float type: x ↦ 2 (x − min) / (max − min) − 1 with the minimum and
      maximum over the whole array (one affine map for all pixels and channels, or for all
      coordinates of points, so distance ratios are unchanged).

    Nothing is downloaded. Errors are clear for a missing file, a wrong shape, a non-numeric
    type, NaN/infinite values and a constant array.

    Parameters
    ----------
    path : str or Path
        The ``.npy`` or ``.npz`` file.

    Returns
    -------
    torch.Tensor
        ``[N, C, H, W]`` float64 images in [-1, 1], on the CPU.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "tiny.npy"
    >>> np.save(path, np.array([[[0, 255]], [[255, 0]]], dtype=np.uint8))
    >>> load_image_file(path)[:, 0, 0].tolist()
    [[-1.0, 1.0], [1.0, -1.0]]
    """
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"image file {path} must end in .npy or .npz.")
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist; check the path.")
    array = _check_image_array(_read_array(path), path)
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float64) / 127.5 - 1.0)
    values = array.astype(np.float64)
    low, high = values.min(), values.max()
    if high <= low:
        raise ValueError(f"every pixel of {path} equals {low}; the images carry no signal.")
    return torch.from_numpy(2.0 * (values - low) / (high - low) - 1.0)


def split_images(
    images: torch.Tensor,
    n_train: int,
    n_test: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """Disjoint random train and test subsets of ``images [N, C, H, W]``, flattened.

    A permutation seeded with ``seed`` picks the first ``n_train`` images for training and the
    next ``n_test`` for testing (as for the digits). Rows are ``C·H·W`` vectors in
    channel-major order, as the velocity nets of :mod:`rbmem_tutorial.flows.image_nets` expect;
    ``row.reshape(C, H, W)`` gives the image back.

    Example
    -------
    >>> train, test = split_images(torch.zeros(10, 1, 2, 2), n_train=3, n_test=5)
    >>> tuple(train.shape), tuple(test.shape)
    ((3, 4), (5, 4))
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a tensor [N, C, H, W]; read files with load_image_file.")
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test)
    check_positive_int("seed", seed, minimum=0)
    count = images.shape[0]
    if n_train + n_test > count:
        raise ValueError(
            f"the array holds {count} images, so n_train + n_test must be at most {count}; "
            f"got {n_train} + {n_test}. Lower n_test."
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    flat = images.reshape(count, -1).to(dtype)
    return DataSplit(flat[order[:n_train]], flat[order[n_train : n_train + n_test]])
