"""Tests of rbmem_tutorial.data: shapes, determinism, the geometry of each toy set, digits."""

import math

import pytest
import torch

from rbmem_tutorial.data import (
    DATASETS,
    DIGITS_COUNT,
    EIGHT_GAUSSIANS_RADIUS,
    MOONS_NOISE,
    MOONS_SCALE,
    RINGS_RADII,
    TOY_DATASETS,
    dataset_dim,
    load_dataset,
    sample_dataset,
)


@pytest.mark.parametrize("name", DATASETS)
def test_load_dataset_shapes_dtype_and_determinism(name):
    train, test = load_dataset(name, n_train=12, n_test=30, seed=3, dtype=torch.float64)
    assert train.shape == (12, dataset_dim(name)) and test.shape == (30, dataset_dim(name))
    assert train.dtype == test.dtype == torch.float64
    assert torch.isfinite(train).all() and torch.isfinite(test).all()
    again = load_dataset(name, n_train=12, n_test=30, seed=3, dtype=torch.float64)
    assert torch.equal(train, again.train) and torch.equal(test, again.test)
    other = load_dataset(name, n_train=12, n_test=30, seed=4, dtype=torch.float64)
    assert not torch.equal(train, other.train)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_train_set_does_not_depend_on_test_size(name):
    small = load_dataset(name, n_train=10, n_test=5, seed=0)
    large = load_dataset(name, n_train=10, n_test=5000, seed=0)
    assert torch.equal(small.train, large.train)
    assert torch.cdist(small.train, large.test).min() > 0


def test_moons_geometry():
    x = sample_dataset("moons", 20_000, generator=torch.Generator().manual_seed(0)).double()
    x = x / MOONS_SCALE  # back to scikit-learn's units, centred
    upper = torch.linalg.norm(x + torch.tensor([0.5, 0.25]), dim=1)  # circle around (0, 0)
    lower = torch.linalg.norm(x - torch.tensor([0.5, 0.25]), dim=1)  # circle around (1, 0.5)
    distance_to_arc = torch.minimum((upper - 1).abs(), (lower - 1).abs())
    assert distance_to_arc.mean() < 2 * MOONS_NOISE
    assert x.mean(dim=0).abs().max() < 0.03  # centred


def test_eight_gaussians_modes():
    x = sample_dataset("eight_gaussians", 16_000, generator=torch.Generator().manual_seed(0))
    angle = torch.atan2(x[:, 1], x[:, 0])
    mode = torch.round(angle / (math.pi / 4)).remainder(8)
    counts = torch.bincount(mode.long(), minlength=8).double()
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.02
    radius = torch.linalg.norm(x, dim=1)
    assert (radius.mean() - EIGHT_GAUSSIANS_RADIUS).abs() < 0.05


def test_checkerboard_only_dark_squares():
    x = sample_dataset("checkerboard", 10_000, generator=torch.Generator().manual_seed(0))
    assert x.min() >= -2 and x.max() <= 2
    cells = torch.floor(x + 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).double()
    assert (counts[counts > 0] / 10_000 - 1 / 8).abs().max() < 0.02
    assert int((counts > 0).sum()) == 8


def test_rings_radii():
    x = sample_dataset("rings", 8000, generator=torch.Generator().manual_seed(0)).double()
    radius = torch.linalg.norm(x, dim=1)
    gap = (radius[:, None] - torch.tensor(RINGS_RADII, dtype=torch.float64)).abs().min(dim=1)
    assert gap.values.mean() < 0.06
    counts = torch.bincount(gap.indices, minlength=len(RINGS_RADII)).double() / 8000
    assert (counts - 1 / len(RINGS_RADII)).abs().max() < 0.03


def test_sample_dataset_follows_its_generator():
    a = sample_dataset("rings", 50, generator=torch.Generator().manual_seed(1))
    b = sample_dataset("rings", 50, generator=torch.Generator().manual_seed(1))
    c = sample_dataset("rings", 50, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_digits_are_disjoint_scaled_images():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", n_train=40, n_test=DIGITS_COUNT - 40, seed=0)
    assert train.min() >= -1 and train.max() <= 1
    everything = torch.cat([train, test]).double()
    images = torch.as_tensor(load_digits().data) / 8 - 1
    # train and test together hold every image exactly once (the same multiset of rows as the
    # scikit-learn array), so they are disjoint subsets
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, images.tolist()))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(name="spirals", n_train=4), ValueError, "unknown name"),
        (dict(name="moons", n_train=0), ValueError, "n_train"),
        (dict(name="moons", n_train=4, n_test=0), ValueError, "n_test"),
        (dict(name="moons", n_train=4.0), TypeError, "n_train"),
        (dict(name="moons", n_train=4, seed=-1), ValueError, "seed"),
        (dict(name="digits", n_train=1000, n_test=1000), ValueError, "1797"),
    ],
)
def test_load_dataset_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset(**kwargs)


def test_sample_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown name"):
        sample_dataset("digits", 5)
    with pytest.raises(ValueError, match="n must be at least 1"):
        sample_dataset("moons", 0)


def test_docstring_examples_run():
    import doctest

    from rbmem_tutorial import data

    assert doctest.testmod(data).failed == 0


# -- a user's own image array ---------------------------------------------------------------

from rbmem_tutorial.data import image_shape, load_image_file, split_images  # noqa: E402


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_uint8_images_map_0_255_to_minus_one_one(tmp_path, suffix):
    import numpy as np

    array = np.random.default_rng(0).integers(0, 256, size=(6, 5, 7), dtype=np.uint8)
    array[0, 0, 0], array[0, 0, 1] = 0, 255
    path = tmp_path / f"images{suffix}"
    (np.save if suffix == ".npy" else np.savez)(path, array)
    images = load_image_file(path)
    assert images.shape == (6, 1, 5, 7) and images.dtype == torch.float64
    expected = torch.from_numpy(array).double()[:, None] / 127.5 - 1
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-15)


def test_float_images_use_global_min_max_and_keep_channels(tmp_path):
    import numpy as np

    array = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 3, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "x.npz", labels=np.arange(4), images=array)
    images = load_image_file(tmp_path / "x.npz")
    assert images.shape == (4, 3, 2, 2)
    assert images.min() == -1 and images.max() == 1
    # one affine map for all pixels: ordering and ratios of differences are kept
    flat, source = images.flatten(), torch.from_numpy(array).double().flatten()
    torch.testing.assert_close((flat - flat[0]) / (flat[1] - flat[0]),
                               (source - source[0]) / (source[1] - source[0]))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda np: np.zeros(5), ValueError, "expected N x H x W"),
        (lambda np: np.zeros((5, 1, 2, 3, 4)), ValueError, "expected N x H x W"),
        (lambda np: np.zeros((5, 8, 8, 3)), ValueError, "channels-last"),
        (lambda np: np.where(np.eye(4)[None].repeat(3, 0) > 0, np.nan, 1.0), ValueError, "NaN"),
        (lambda np: np.ones((3, 4, 4)), ValueError, "carry no signal"),
        (lambda np: np.zeros((1, 4, 4)), ValueError, "at least 2"),
        (lambda np: np.array([[["a"]], [["b"]]]), TypeError, "store numbers"),
    ],
)
def test_bad_image_files_are_clear_errors(tmp_path, make, error, message):
    import numpy as np

    path = tmp_path / "bad.npy"
    np.save(path, make(np))
    with pytest.raises(error, match=message):
        load_image_file(path)


def test_missing_file_wrong_suffix_and_ambiguous_npz(tmp_path):
    import numpy as np

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_file(tmp_path / "absent.npy")
    with pytest.raises(ValueError, match=".npy or .npz"):
        load_image_file(tmp_path / "images.png")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2, 2)), b=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="name the image array 'images'"):
        load_image_file(tmp_path / "two.npz")


def test_split_images_is_disjoint_flat_and_seeded():
    images = torch.arange(10 * 2 * 2 * 2, dtype=torch.float64).reshape(10, 2, 2, 2)
    train, test = split_images(images, 4, 6, seed=1, dtype=torch.float64)
    assert train.shape == (4, 8) and test.shape == (6, 8)
    rows = {tuple(r.tolist()) for r in torch.cat([train, test])}
    assert rows == {tuple(r.tolist()) for r in images.reshape(10, -1)}  # a permutation
    assert torch.equal(train[0].reshape(2, 2, 2), images[int(train[0, 0]) // 8])
    assert torch.equal(split_images(images, 4, 6, seed=1, dtype=torch.float64).train, train)
    with pytest.raises(ValueError, match="at most 10"):
        split_images(images, 5, 6)
    assert image_shape("digits") == (1, 8, 8) and image_shape("rings") is None
