"""Image data sets: bundled digits, procedural blobs with 3 known factors, MNIST idx files the test writes."""
import gzip
import math
import struct

import numpy as np
import pytest
import torch

from diffusion_lessons.datasets import IMAGE_DATASETS, digits, image_data, load_mnist, procedural_images


def test_digits_range_shape_labels_and_sizes():
    from sklearn.datasets import load_digits

    x, y = digits(8, return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    raw = load_digits().images
    assert np.allclose(x[:, 0].numpy(), raw / 8.0 - 1.0, atol=1e-6)  # grey levels 0..16 -> [-1, 1]
    assert torch.equal(y, torch.as_tensor(load_digits().target))
    for size in (16, 32):
        xs = digits(size)
        assert xs.shape == (1797, 1, size, size)
        assert float(xs.min()) >= -1.0 and float(xs.max()) <= 1.0
        # bilinear upsampling keeps the mean grey level of each image (to interpolation accuracy)
        assert (xs.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().max() < 0.1
    with pytest.raises(ValueError, match="8, 16, 32"):
        digits(12)


def test_procedural_images_have_three_known_factors():
    gen = torch.Generator().manual_seed(0)
    x, factors = procedural_images(500, size=16, generator=gen, return_factors=True)
    assert x.shape == (500, 1, 16, 16) and factors.shape == (500, 3)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # the brightest pixel sits at the rounded centre
    flat = x[:, 0].reshape(500, -1).argmax(1)
    rows, cols = flat // 16, flat % 16
    assert (rows - factors[:, 0]).abs().max() <= 0.5 + 1e-6 and (cols - factors[:, 1]).abs().max() <= 0.5 + 1e-6
    # regenerating from the factors alone reproduces every image: the factors are all there is
    grid = torch.arange(16.0)
    d2 = (grid[None, :, None] - factors[:, 0, None, None]) ** 2 + (grid[None, None, :] - factors[:, 1, None, None]) ** 2
    rebuilt = 2 * torch.exp(-d2 / (2 * factors[:, 2, None, None] ** 2)) - 1
    assert (rebuilt - x[:, 0]).abs().max() < 1e-5
    again = procedural_images(500, size=16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, x)
    with pytest.raises(ValueError):
        procedural_images(10, size=5)


def test_image_data_by_name():
    assert image_data("digits", n=10, size=8).shape == (10, 1, 8, 8)
    assert image_data("procedural", n=7, size=16).shape == (7, 1, 16, 16)
    with pytest.raises(ValueError) as err:
        image_data("cifar")
    assert all(name in str(err.value) for name in IMAGE_DATASETS)


def _write_idx(path, array, type_code=0x08, compress=False):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(payload)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:5], compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:5], compress=True)
    return tmp_path, images, labels


def test_load_mnist_reads_plain_and_gzipped_idx_files(mnist_dir):
    folder, images, labels = mnist_dir
    x, y = load_mnist(folder, return_labels=True)
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert np.allclose(x[:, 0].numpy(), images / 127.5 - 1.0, atol=1e-6) and np.array_equal(y.numpy(), labels)
    xt, yt = load_mnist(folder, split="test", return_labels=True)
    assert xt.shape == (5, 1, 28, 28) and np.array_equal(yt.numpy(), labels[:5])
    assert load_mnist(folder, size=16).shape == (12, 1, 16, 16)


def test_load_mnist_reads_big_endian_wider_types(tmp_path):
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4) * 1000
    _write_idx(tmp_path / "train-images-idx3-ubyte", values, type_code=0x0C)
    from diffusion_lessons.datasets import _read_idx

    assert np.array_equal(_read_idx(str(tmp_path / "train-images-idx3-ubyte")).numpy(), values)


def test_load_mnist_errors_speak_to_the_reader(mnist_dir, tmp_path):
    folder, images, labels = mnist_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(empty)
    with pytest.raises(ValueError, match="valid splits"):
        load_mnist(folder, split="validation")
    # truncated data
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (folder / "train-images-idx3-ubyte").read_bytes()
    (bad / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="corrupt"):
        load_mnist(bad)
    # wrong magic number
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(ValueError, match="magic"):
        load_mnist(bad)
    # a file named .gz that is not gzip
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "train-images-idx3-ubyte.gz").write_bytes(raw)
    with pytest.raises(ValueError, match="gzip"):
        load_mnist(gz)
    # labels that do not match the images
    _write_idx(bad / "train-images-idx3-ubyte", images)
    _write_idx(bad / "train-labels-idx1-ubyte", labels[:3])
    with pytest.raises(ValueError, match="labels"):
        load_mnist(bad, return_labels=True)


def test_procedural_families_are_labelled_and_leave_the_blob_set_unchanged():
    from diffusion_lessons.datasets import PROCEDURAL_FAMILIES

    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    blobs, factors = procedural_images(300, size=16, generator=gen(), return_factors=True)
    # the default family is the blob set, draw for draw, with labels 0 on request
    same, same_factors, labels = procedural_images(300, size=16, generator=gen(), return_factors=True,
                                                   return_labels=True, families=("blob",))
    assert torch.equal(same, blobs) and torch.equal(same_factors, factors) and not labels.any()
    assert torch.equal(procedural_images(300, size=16, generator=gen(), families="blob"), blobs)
    # four families: each image's label is its family; images stay in [-1, 1]
    x, f, y = procedural_images(400, size=32, generator=gen(), families=PROCEDURAL_FAMILIES,
                                return_factors=True, return_labels=True)
    assert x.shape == (400, 1, 32, 32) and f.shape == (400, 3) and y.dtype == torch.int64
    assert sorted(y.unique().tolist()) == [0, 1, 2, 3] and min(torch.bincount(y).tolist()) > 60
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    bright = (x > 0).flatten(1).sum(1).double()  # pixels above mid-grey, per family
    area = {fam: bright[y == k].mean().item() for k, fam in enumerate(PROCEDURAL_FAMILIES)}
    assert min(area["square"], area["ring"]) > max(area["bar"], area["blob"]), area
    # a ring is dark at its centre, a square bright there
    centre = x[torch.arange(400), 0, f[:, 0].round().long(), f[:, 1].round().long()]
    assert (centre[y == 1] < 0).all() and (centre[y == 2] > 0.9).all()
    again = procedural_images(400, size=32, generator=gen(), families=PROCEDURAL_FAMILIES)
    assert torch.equal(again, x)
    with pytest.raises(ValueError, match="valid families: blob, ring, square, bar"):
        procedural_images(10, families=("blob", "star"))


def test_dequantise_fills_each_level_bin_uniformly():
    """x = low + (k + u) w / L: each value lies in its level's bin (so the level is recovered by flooring),
    the offsets u are uniform on [0, 1) (mean 1/2, variance 1/12 within 5 standard errors), copies differ."""
    from diffusion_lessons.datasets import dequantise, digit_levels

    k = digit_levels()
    assert k.shape == (1797, 64) and int(k.min()) == 0 and int(k.max()) == 16
    x = dequantise(k, 17, copies=2, seed=3)
    assert x.shape == (2 * 1797, 64) and x.dtype == torch.float32
    u = (x.double() + 1) * 17 / 2 - k.repeat(2, 1).double()  # the offsets, in [0, 1)
    assert bool((u >= -1e-5).all()) and bool((u < 1 + 1e-5).all())
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)  # Var of (u - 1/2)^2 is 1/180
    assert not torch.equal(x[:1797], x[1797:])
    with pytest.raises(ValueError, match="integer levels in 0..16"):
        dequantise(k.float(), 17)
    with pytest.raises(ValueError, match="integer levels in 0..16"):
        dequantise(k + 1, 17)
