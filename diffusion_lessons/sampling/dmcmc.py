"""Denoising MCMC (Kim & Ye, 2022): Denoising Langevin Gibbs (DLG) on the pair (x, sigma), then an ODE solve.

The chain lives on the product of data space and a grid of noise levels sigma_0 > ... > sigma_{K-1}
(the code of record, 1202kbs/DMCMC: sigma_k = 0.01 (sigma_max / 0.01)^{t_k}, t_k = linspace(1, 1e-3, K)).
Its target is the joint law p(x, k) = p_{sigma_k}(x) / K: the data noised at level sigma_k, k uniform. A sweep

    x <- x + eta/2 score(x, sigma_k) + sqrt(eta) z          (Langevin, fixed step eta, not scaled by sigma^2)
    k <- argmax_k p(k | x)   (the code's MAP step)   or   k ~ p(k | x)   (a Gibbs step)

uses a noise-level classifier p(k | x), trained with cross-entropy on x = x0 + sigma_k z, k ~ U{0..K-1}
(it then models p(k | x) proportional to p_{sigma_k}(x)). Per sample the state with the smallest sigma
of the last sweeps is kept and solved to the data from its own sigma by EDM's Heun (Karras et al. 2022),
then denoised with Tweedie's formula. Paths here have alpha = 1 (dl.VE, dl.EDM): sigma is the path's sigma.

Exact facts the chapter checks (check FS-5): the Langevin step alone on N(0, c) has stationary variance
c / (1 - eta / (4 c)) (`langevin_stationary_variance`), and "keep the smallest sigma" is a biased selection
even when both conditionals are exact.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from ..paths import Path, convert
from .grids import time_at_lambda, time_grid
from .methods import sample

__all__ = [
    "LEVEL_UPDATES",
    "ChainResult",
    "NoiseLevelClassifier",
    "denoising_mcmc",
    "langevin_move",
    "langevin_stationary_variance",
    "noise_level_chain",
    "noise_levels",
    "train_noise_classifier",
]

LEVEL_UPDATES = ("map", "sample", "fixed")


def noise_levels(n: int = 1000, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-3) -> torch.Tensor:
    """sigma_k = sigma_min (sigma_max / sigma_min)^{t_k}, t_k = linspace(1, t_min, n): decreasing, float64 [n]."""
    if not (isinstance(n, int) and n >= 2 and 0 < sigma_min < sigma_max):
        raise ValueError(f"noise_levels needs an integer n >= 2 and 0 < sigma_min < sigma_max; got {n}, {sigma_min}, "
                         f"{sigma_max}")
    t = torch.linspace(1.0, t_min, n, dtype=torch.float64)
    return sigma_min * (sigma_max / sigma_min) ** t


def langevin_stationary_variance(c: float, step: float) -> float:
    """Stationary variance of x <- x + step/2 (-x / c) + sqrt(step) z, i.e. unadjusted Langevin on N(0, c):
    v = (1 - step / (2c))^2 v + step  =>  v = c / (1 - step / (4c))   (requires step < 4c)."""
    if not 0 < step < 4 * c:
        raise ValueError(f"the Langevin recursion is stable for 0 < step < 4 c; got step={step}, c={c}")
    return c / (1 - step / (4 * c))


class NoiseLevelClassifier(nn.Module):
    """p(k | x) for vectors x [N, dim]: an MLP to K logits (images are flattened)."""

    def __init__(self, dim: int, levels: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        layers, width = [], dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def train_noise_classifier(classifier: nn.Module, data: torch.Tensor, sigmas: torch.Tensor, steps: int = 2000,
                           batch_size: int = 512, lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Cross-entropy on x = x0 + sigma_k z, x0 from `data` [M, ...], k ~ U{0..K-1}, z ~ N(0, I) (Adam, cosine decay).
    Trains `classifier` in place; returns the loss of every step (log K is the loss of knowing nothing)."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(classifier.parameters()).dtype
    data, sig = data.to(dtype), sigmas.to(dtype)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (batch_size,), generator=g)]
        k = torch.randint(len(sig), (batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=dtype)
        x = x0 + sig[k].reshape(-1, *([1] * (x0.dim() - 1))) * noise
        loss = nn.functional.cross_entropy(classifier(x), k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def _level_times(path: Path, sigmas: torch.Tensor) -> torch.Tensor:
    if abs(float(path.alpha(0.5)) - 1) > 1e-12:
        raise ValueError(f"Denoising MCMC runs on a path with alpha = 1 (dl.VE, dl.EDM); got {type(path).__name__}")
    return time_at_lambda(path, -torch.log(sigmas))


def langevin_move(model: Callable, path: Path, sigmas: torch.Tensor, step_size: float, target: str = "score",
                  counter: list | None = None) -> Callable:
    """move(x, k, generator): one Langevin step x + eta/2 score(x, sigma_k) + sqrt(eta) z per sample, the score read
    from model(x, t) at the time t_k of sigma_k on `path` (t a tensor [N]); counter[0] counts model calls."""
    times = _level_times(path, sigmas)

    def move(x, k, generator):
        t = times[k].to(x.dtype)
        score = convert(model(x, t), target, "score", x, t, path)
        if counter is not None:
            counter[0] += 1
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x + 0.5 * step_size * score + math.sqrt(step_size) * z

    return move


@dataclasses.dataclass
class ChainResult:
    """The chain after its sweeps: x, k [N]; the per-sample state with the smallest sigma seen (x_best, k_best);
    the level of every sweep, levels [sweeps, N]; and x_steps [sweeps, N, ...] when kept."""

    x: torch.Tensor
    k: torch.Tensor
    x_best: torch.Tensor
    k_best: torch.Tensor
    levels: torch.Tensor
    x_steps: torch.Tensor | None = None


def noise_level_chain(x: torch.Tensor, k: torch.Tensor, move: Callable, level_logits: Callable, sweeps: int,
                      update: str = "map", generator=None, keep_steps: bool = False) -> ChainResult:
    """`sweeps` times: x <- move(x, k, generator), then k <- argmax of level_logits(x) ("map", the code's), a draw
    from its softmax ("sample", a Gibbs step) or unchanged ("fixed"). Levels are indices into a decreasing sigma
    grid, so the smallest sigma is the largest k; the kept state pairs x_j with the level k_j chosen after it."""
    if update not in LEVEL_UPDATES:
        raise ValueError(f"unknown level update {update!r}; valid updates: {', '.join(LEVEL_UPDATES)}")
    x_best, k_best, levels, steps = x.clone(), torch.full_like(k, -1), [], []
    for _ in range(sweeps):
        x = move(x, k, generator)
        if update == "map":
            k = level_logits(x).argmax(1)
        elif update == "sample":
            k = torch.multinomial(torch.softmax(level_logits(x).double(), 1), 1, generator=generator).squeeze(1)
        better = k > k_best
        x_best[better], k_best = x[better], torch.where(better, k, k_best)
        levels.append(k)
        if keep_steps:
            steps.append(x)
    return ChainResult(x, k, x_best, k_best, torch.stack(levels), torch.stack(steps) if keep_steps else None)


def denoising_mcmc(model: Callable, path: Path, x: torch.Tensor, sigmas: torch.Tensor, classifier: Callable,
                   sweeps: int = 10, step_size: float = 0.8, target: str = "score", ode_steps: int = 20,
                   sigma_end: float = 0.01, update: str = "map", generator=None, **edm_options):
    """Denoising Langevin Gibbs from x (with k = argmax p(k | x)), `sweeps` Langevin-Gibbs sweeps, then per sample
    EDM's Heun sampler (dl.sample "edm", Karras grid of ode_steps from its kept sigma to sigma_end; edm_options such
    as churn go to it) and Tweedie's x0_hat at sigma_end. Returns (x0 [N, ...], nfe, chain: ChainResult); nfe counts
    model calls, those of the solves on the groups of samples that share a level included."""
    calls = [0]
    move = langevin_move(model, path, sigmas, step_size, target, calls)
    weights = next(iter(classifier.parameters()), None) if isinstance(classifier, nn.Module) else None

    def level_logits(z):  # a float32 classifier on float64 states, and back
        return classifier(z if weights is None else z.to(weights.dtype)).to(z.dtype)

    with torch.no_grad():
        chain = noise_level_chain(x, level_logits(x).argmax(1), move, level_logits, sweeps, update, generator)
    out, nfe = torch.empty_like(x), calls[0]
    t_end = float(time_at_lambda(path, -math.log(sigma_end)))
    for level in torch.unique(chain.k_best):
        rows = chain.k_best == level
        t_start = float(_level_times(path, sigmas[level].reshape(1)))
        if t_start <= t_end:  # already at the end level: only denoise
            x_end, used = chain.x_best[rows], 0
        else:
            grid = time_grid(ode_steps, t_start, t_end, kind="karras", path=path)
            result = sample(model, path, chain.x_best[rows], grid, "edm", target=target, generator=generator,
                            **edm_options)
            x_end, used = result.x, result.nfe
        out[rows] = convert(model(x_end, t_end), target, "x0", x_end, t_end, path)
        nfe += used + 1
    return out, nfe, chain

