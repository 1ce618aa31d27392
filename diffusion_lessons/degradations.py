"""Degraded images paired with clean ones, for restoration, and the best a linear map can do with them.

A degradation here is blur, then additive Gaussian noise, then a mask that replaces a random square by a
constant (a hole to inpaint):

    mu = M (K * x + noise_std z) + (1 - M) fill,   K a Gaussian blur of width blur_std pixels.

`DegradedDigits` draws fresh degradations of scikit-learn's digits at every call (a `fit`-ready data
sampler, with a `config` for the cache key); `degraded_digits` gives a fixed set. `LinearRestoration`
is the no-learning baseline a restoration model must beat: the affine map x_hat = A mu + b that
minimises the mean squared error on the training pairs (the linear MMSE estimator, or Wiener filter).
Images are float tensors [N, 1, H, W] in [-1, 1].
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .datasets import digits

__all__ = [
    "Degradation",
    "DegradedDigits",
    "LinearRestoration",
    "box_masks",
    "degrade",
    "degraded_digits",
    "gaussian_blur",
    "rmse",
]


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Blur images [N, C, H, W] with a normalised Gaussian kernel of width std pixels (reflecting edges)."""
    if std <= 0:
        return x
    radius = max(1, math.ceil(3 * std))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (grid / std) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def box_masks(n: int, size: int, box: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    """Masks [n, 1, size, size]: 1 everywhere but a box x box square at a uniformly random place (0 there)."""
    mask = torch.ones(n, 1, size, size, dtype=dtype)
    if box <= 0:
        return mask
    if box > size:
        raise ValueError(f"the mask box ({box} pixels) must fit in the image ({size} pixels)")
    corners = torch.randint(0, size - box + 1, (n, 2), generator=generator)
    rows = torch.arange(size)[None, :, None]
    cols = torch.arange(size)[None, None, :]
    r, c = corners[:, 0, None, None], corners[:, 1, None, None]
    inside = (rows >= r) & (rows < r + box) & (cols >= c) & (cols < c + box)
    mask[:, 0][inside] = 0
    return mask


@dataclasses.dataclass(frozen=True)
class Degradation:
    """Blur of width blur_std pixels, then noise of std noise_std, then a hole box x box pixels filled with fill."""

    blur_std: float = 1.0
    noise_std: float = 0.2
    box: int = 6
    fill: float = 0.0

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """mu = M (K * x + noise_std z) + (1 - M) fill for images x [N, 1, H, W] (square)."""
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"degrade expects square images [N, C, H, H]; got {list(x.shape)}")
        mask = box_masks(x.shape[0], x.shape[-1], self.box, generator, x.dtype).to(x.device)  # drawn first
        out = gaussian_blur(x, self.blur_std)
        out = out + self.noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return mask * out + (1 - mask) * self.fill


def degrade(x: torch.Tensor, blur_std: float = 1.0, noise_std: float = 0.2, box: int = 6, fill: float = 0.0,
            generator=None) -> torch.Tensor:
    """Degraded copies of images x [N, 1, H, W]: see `Degradation`."""
    return Degradation(blur_std, noise_std, box, fill)(x, generator)


def _split(size: int, split: str) -> torch.Tensor:
    """The digits of one split: a fixed permutation, 297 held out for "test", the other 1500 for "train"."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, test")
    images = digits(size)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm[297:]] if split == "train" else images[perm[:297]]


class DegradedDigits:
    """Fresh (clean, degraded) pairs of digits at every call: data(n, generator) -> [n, 2, size, size],
    channel 0 clean, channel 1 degraded. Drawn from the "train" split (1500 digits) unless split="test".

    Drawing the degradation anew each time gives a restoration model unlimited pairs from few images.
    """

    def __init__(self, degradation: Degradation = Degradation(), size: int = 16, split: str = "train"):
        self.degradation, self.size, self.split = degradation, int(size), split
        self.images = _split(self.size, split)

    def __call__(self, n: int, generator=None) -> torch.Tensor:
        rows = torch.randint(len(self.images), (int(n),), generator=generator)
        clean = self.images[rows]
        return torch.cat([clean, self.degradation(clean, generator)], dim=1)

    def config(self) -> dict:
        return {"degradation": dataclasses.asdict(self.degradation), "size": self.size, "split": self.split}


def degraded_digits(split: str = "test", size: int = 16, degradation: Degradation = Degradation(), seed: int = 0):
    """Every digit of a split once, with one degradation each: (clean, degraded), both [N, 1, size, size]."""
    clean = _split(size, split)
    return clean, degradation(clean, torch.Generator().manual_seed(seed))


def rmse(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error per image, [N] (in the units of the images: [-1, 1] has range 2)."""
    return (x - reference).flatten(1).square().mean(1).sqrt()


class LinearRestoration:
    """The best affine restoration x_hat = A mu + b in mean squared error (the linear MMSE estimator):

        A = Cov(x, mu) (Cov(mu) + ridge I)^{-1},   b = E x - A E mu,

    with the moments of the training pairs (x, mu) [N, ...]. No learning beyond two moments: the
    baseline a restoration model has to beat. Fitted in float64.
    """

    def __init__(self, clean: torch.Tensor, degraded: torch.Tensor, ridge: float = 1e-4):
        if clean.shape != degraded.shape:
            raise ValueError(f"clean and degraded must have the same shape; got {list(clean.shape)}, "
                             f"{list(degraded.shape)}")
        x, m = clean.flatten(1).double(), degraded.flatten(1).double()
        mx, mm = x.mean(0), m.mean(0)
        xc, mc = x - mx, m - mm
        cov_mm = mc.T @ mc / len(m) + ridge * torch.eye(m.shape[1], dtype=m.dtype)
        cov_xm = xc.T @ mc / len(m)
        self.A = torch.linalg.solve(cov_mm, cov_xm.T).T
        self.b = mx - self.A @ mm
        self.shape = clean.shape[1:]

    def __call__(self, degraded: torch.Tensor) -> torch.Tensor:
        out = degraded.flatten(1).double() @ self.A.T + self.b
        return out.reshape(-1, *self.shape).to(degraded.dtype)
