"""Image data sets that need no download: scikit-learn's bundled digits, a procedural image set with a
known number of factors, and a reader for MNIST-format files already on disk.

Every loader returns float32 tensors [N, 1, size, size] scaled to [-1, 1] (the range the paths and
networks of the course assume), and labels as int64 tensors [N] on request.
"""
from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["digits", "digit_levels", "dequantise", "procedural_images", "PROCEDURAL_FAMILIES", "load_mnist", "image_data",
           "IMAGE_DATASETS", "DIGIT_SIZES"]

DIGIT_SIZES = (8, 16, 32)


def _check_size(size, valid, who):
    if size not in valid:
        raise ValueError(f"{who}: unknown size {size!r}; valid sizes: {', '.join(map(str, valid))}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N, 1, h, w] images to size x size (identity when already that size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)


def digits(size: int = 8, return_labels: bool = False, dtype=torch.float32):
    """The 1 797 handwritten digits bundled with scikit-learn (8 x 8, grey levels 0..16), in [-1, 1].

    size: 8 (the original pixels), 16 or 32 (bilinear upsampling). Returns x [1797, 1, size, size],
    and labels [1797] (int64, 0..9) when return_labels.
    """
    _check_size(size, DIGIT_SIZES, "digits")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> -1..1
    x = _resize(x, size).to(dtype)
    if return_labels:
        return x, torch.as_tensor(bunch.target, dtype=torch.int64)
    return x


def digit_levels() -> torch.Tensor:
    """The 8 x 8 digits as their integer grey levels 0..16 (17 levels), flattened: int64 [1797, 64]."""
    return torch.round((digits(size=8).flatten(1) + 1) * 8).long()


def dequantise(levels_k: torch.Tensor, levels: int, copies: int = 1, seed: int = 0, low: float = -1.0,
               width: float = 2.0) -> torch.Tensor:
    """Uniform dequantisation (Theis et al. 2016): x = low + (k + u) width / levels, u ~ U[0, 1) per entry.

    levels_k: integer levels in 0..levels-1, [N, ...]; each level k fills its bin of width width / levels
    in [low, low + width). copies: the data repeated that many times, each copy with its own u (drawn
    from a generator seeded with `seed`). Returns float32 [copies * N, ...].
    """
    k = torch.as_tensor(levels_k)
    if k.is_floating_point() or bool((k < 0).any()) or bool((k >= levels).any()):
        raise ValueError(f"dequantise needs integer levels in 0..{levels - 1}; got {k.dtype}, "
                         f"range [{k.min().item()}, {k.max().item()}]")
    if int(copies) < 1:
        raise ValueError(f"copies must be a positive integer; got {copies}")
    k = k.repeat(int(copies), *([1] * (k.dim() - 1)))
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(seed))
    return low + (k + u) * width / levels


PROCEDURAL_FAMILIES = ("blob", "ring", "square", "bar")


def _family_images(family: str, grid: torch.Tensor, centre: torch.Tensor, u: torch.Tensor, size: int):
    """Images [n, size, size] in [-1, 1] of one family, and its third factor [n] (in pixels or radians).

    blob:   2 exp(-d^2 / (2 w^2)) - 1, width w in [size/16, size/8];
    ring:   2 exp(-(d - rho)^2 / (2 tau^2)) - 1, radius rho in [size/8, size/4], tau = size/24;
    square: 2 sigmoid((h - max(|i - r|, |j - c|)) / s) - 1, half-side h in [size/8, size/5], s = size/64;
    bar:    2 exp(-d_seg^2 / (2 tau^2)) - 1, a segment of half-length size/5 at angle theta in [0, pi).
    d is the distance to the centre (r, c); d_seg the distance to the segment.
    """
    di = grid[None, :, None] - centre[:, 0, None, None]  # row offsets [n, size, 1]
    dj = grid[None, None, :] - centre[:, 1, None, None]  # column offsets [n, 1, size]
    if family == "blob":
        factor = size / 16 + u * (size / 16)
        return 2 * torch.exp(-(di**2 + dj**2) / (2 * factor[:, None, None] ** 2)) - 1, factor
    if family == "ring":
        factor, tau = size / 8 + u * (size / 8), size / 24
        d = (di**2 + dj**2).sqrt()
        return 2 * torch.exp(-((d - factor[:, None, None]) ** 2) / (2 * tau**2)) - 1, factor
    if family == "square":
        factor, soft = size / 8 + u * (size / 5 - size / 8), size / 64
        return 2 * torch.sigmoid((factor[:, None, None] - torch.maximum(di.abs(), dj.abs())) / soft) - 1, factor
    if family == "bar":
        factor, tau, half = u * math.pi, size / 24, size / 5
        along = di * torch.sin(factor)[:, None, None] + dj * torch.cos(factor)[:, None, None]
        across = -di * torch.cos(factor)[:, None, None] + dj * torch.sin(factor)[:, None, None]
        beyond = (along.abs() - half).clamp_min(0)
        return 2 * torch.exp(-(across**2 + beyond**2) / (2 * tau**2)) - 1, factor
    raise ValueError(f"unknown procedural family {family!r}; valid families: {', '.join(PROCEDURAL_FAMILIES)}")


def procedural_images(n: int, size: int = 16, generator: torch.Generator | None = None,
                      return_factors: bool = False, dtype=torch.float32, families=("blob",),
                      return_labels: bool = False):
    """n procedural images on a dark background in [-1, 1], each with exactly 3 factors of variation.

    The default family, "blob", is one Gaussian blob:

        image(i, j) = 2 exp(-((i - r)^2 + (j - c)^2) / (2 w^2)) - 1,

    with the centre (r, c) uniform in [size/4, 3 size/4]^2 (2 factors) and the width w uniform in
    [size/16, size/8] pixels (1 factor): a 3-dimensional manifold in R^(size^2), useful whenever a
    chapter needs image data of known intrinsic dimension. size: any integer >= 8.

    families: any of PROCEDURAL_FAMILIES ("blob", "ring", "square", "bar"; see _family_images); with
    more than one, each image's family is drawn uniformly and is its label (the index in `families`),
    which gives a classifier something to learn (metrics.train_procedural_classifier). The draws for
    the default ("blob",) are those of the blob-only set, so its images do not depend on this option.
    Returns x [n, 1, size, size]; then the factors [n, 3] = (r, c, third factor) when return_factors;
    then the labels [n] (int64) when return_labels.
    """
    if int(n) <= 0:
        raise ValueError(f"n must be positive; got {n}")
    if int(size) != size or size < 8:
        raise ValueError(f"procedural_images: size must be an integer >= 8; got {size!r}")
    families = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in families if f not in PROCEDURAL_FAMILIES]
    if not families or unknown:
        raise ValueError(f"unknown procedural families {unknown or families!r}; valid families: "
                         f"{', '.join(PROCEDURAL_FAMILIES)}")
    u = torch.rand(int(n), 3, generator=generator, dtype=torch.float64)
    labels = (torch.randint(len(families), (int(n),), generator=generator) if len(families) > 1
              else torch.zeros(int(n), dtype=torch.int64))
    centre = size / 4 + u[:, :2] * (size / 2)
    grid = torch.arange(size, dtype=torch.float64)
    x = torch.empty(int(n), 1, size, size, dtype=dtype)
    factor = torch.empty(int(n), dtype=torch.float64)
    for k, family in enumerate(families):
        rows = (labels == k).nonzero().squeeze(1)
        for chunk in rows.split(8192):  # bounded memory for large sets, same numbers
            images, factor[chunk] = _family_images(family, grid, centre[chunk], u[chunk, 2], size)
            x[chunk, 0] = images.to(dtype)
    out = (x,)
    if return_factors:
        out += (torch.cat([centre, factor[:, None]], 1).to(dtype),)
    if return_labels:
        out += (labels,)
    return out[0] if len(out) == 1 else out


# -- MNIST-format (idx) files on disk ------------------------------------------------------------------
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # big-endian
MNIST_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}


def _find(directory: str, stem: str) -> str:
    candidates = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for name in candidates:
        file = os.path.join(directory, name)
        if os.path.isfile(file):
            return file
    raise FileNotFoundError(
        f"MNIST file {stem!r} (or {stem}.gz) not found in {directory!r}. Put the four idx files of MNIST "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
        "gzipped or not) in that folder; this package never downloads them."
    )


def _read_idx(file: str) -> torch.Tensor:
    """Parse an idx file: 2 zero bytes, a type byte, the number of dimensions, big-endian int32 sizes, data."""
    opener = gzip.open if file.endswith(".gz") else open
    try:
        with opener(file, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {file!r} ({err}); the file is corrupt or not gzip despite its name") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{file!r} is not an idx file: its first bytes {raw[:4].hex()} are not a valid magic number")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{file!r} is truncated: its header is incomplete")
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + dtype.itemsize * math.prod(shape)
    if len(raw) != expected:
        raise ValueError(f"{file!r} is corrupt: its header announces shape {list(shape)} ({expected} bytes) "
                         f"but the file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="))).reshape(shape)


def load_mnist(directory: str, split: str = "train", size: int | None = None, return_labels: bool = False,
               dtype=torch.float32):
    """Read MNIST-format idx files from `directory` (never downloads).

    split: "train" (train-images-idx3-ubyte, train-labels-idx1-ubyte) or "test" (t10k-...); files may
    be gzipped (.gz). Grey levels 0..255 become [-1, 1]; size: resize (bilinear) to size x size.
    Returns x [N, 1, H, W] and labels [N] (int64) when return_labels. A missing file raises
    FileNotFoundError naming the files expected; a corrupt one raises ValueError saying what is wrong.
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; valid splits: {', '.join(MNIST_SPLITS)}")
    directory = os.path.expanduser(str(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"MNIST directory {directory!r} does not exist")
    prefix = MNIST_SPLITS[split]
    images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(f"MNIST images must be a uint8 array [N, H, W]; got {images.dtype} {list(images.shape)}")
    x = images.to(torch.float32)[:, None] / 127.5 - 1.0
    if size is not None:
        x = _resize(x, int(size))
    x = x.to(dtype)
    if not return_labels:
        return x
    labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"MNIST labels have shape {list(labels.shape)} but there are {x.shape[0]} images")
    return x, labels.to(torch.int64)


# -- by name -------------------------------------------------------------------------------------------
IMAGE_DATASETS = ("digits", "procedural")


def image_data(name: str, n: int | None = None, size: int = 16, generator: torch.Generator | None = None):
    """Images by name: "digits" (all 1 797, or the first n) or "procedural" (n, default 2 000)."""
    if name == "digits":
        x = digits(size)
        return x if n is None else x[: int(n)]
    if name == "procedural":
        return procedural_images(2000 if n is None else int(n), size=size, generator=generator)
    raise ValueError(f"unknown image dataset {name!r}; valid image datasets: {', '.join(IMAGE_DATASETS)}")
