"""Stochastic samplers: the reverse SDE by Euler–Maruyama, Langevin correctors, and the forward SDE.

The reverse-time SDE of a path (Anderson 1982; Song et al. 2021, eq. 6), time running from 1 down to 0,

    dx = [f(t) x - (1 + zeta^2) / 2 g(t)^2 score(x, t)] dt + zeta g(t) dw_bar,

has the marginals p_t of the data's path for every zeta >= 0 (zeta = 1: the reverse SDE; zeta = 0: the
PF-ODE). Euler–Maruyama ("em") integrates it; predictor–corrector ("pc", Song et al. 2021, Alg. 2/3) adds
Langevin steps at each grid time (Alg. 4/5). Steps h = t_next - t are signed (negative when generating).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch

from ..paths import Path, expand_time, field_time
from .grids import as_times

__all__ = ["SDE_METHODS", "euler_maruyama_step", "langevin", "reverse_drift", "sample_sde", "simulate_forward_sde"]

Field = Callable[[torch.Tensor, object], torch.Tensor]
SDE_METHODS = ("em", "pc")


def reverse_drift(score: Field, path: Path, zeta: float = 1.0) -> Field:
    """Drift of the reverse-time family dx = [f x - (1 + zeta^2)/2 g^2 score] dt + zeta g dw_bar.

    zeta = 1: the reverse SDE; zeta = 0: the PF-ODE velocity. All zeta give the same marginals p_t.
    """

    def drift(x, t):
        t = field_time(t, x)
        tt = expand_time(t, x)
        return path.f(tt) * x - 0.5 * (1 + zeta**2) * path.g2(tt) * score(x, t)

    return drift


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def euler_maruyama_step(drift: Field, g2: Callable, x, t: float, t_next: float, generator=None, noise=True):
    """Euler–Maruyama for dx = b(x, t) dt + g(t) dw over h = t_next - t (either sign):

        x_next = x + h b(x, t) + sqrt(g(t)^2 |h|) z,   z ~ N(0, I).

    g2 is the squared diffusion coefficient as a function of t. With noise=False the step returns
    its mean x + h b(x, t) (the "denoised" last step of a sampler).
    """
    h = t_next - t
    mean = x + h * drift(x, t)
    if not noise:
        return mean
    return mean + math.sqrt(float(g2(t)) * abs(h)) * _noise_like(x, generator)


def langevin(score: Field, x, t: float, steps: int = 1, step_size=None, snr: float = 0.16, alpha: float = 1.0,
             generator=None):
    """Langevin MCMC at a fixed time t (Song et al. 2021, Alg. 4/5), `steps` times:

        x <- x + delta * score(x, t) + sqrt(2 delta) eps,   eps ~ N(0, I).

    delta = step_size when given; otherwise Song's signal-to-noise rule
    delta = 2 alpha (snr ||eps|| / ||score||)^2, with norms the batch means of per-sample norms, where
    `alpha` is the signal the forward step keeps (1 - beta_i in chapter 2's notation; Song et al. call it alpha_i).
    """
    for _ in range(steps):
        s = score(x, t)
        eps = _noise_like(x, generator)
        if step_size is None:
            eps_norm = eps.flatten(1).norm(dim=1).mean()
            s_norm = s.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
            delta = 2 * alpha * (snr * eps_norm / s_norm) ** 2
        else:
            delta = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
        x = x + delta * s + torch.sqrt(2 * delta) * eps
    return x


def _reverse_sde(score: Field, path: Path, x, times, generator, record, corrector_steps: int, snr: float,
                 denoise: bool, zeta: float):
    drift = reverse_drift(score, path, zeta)
    g2 = lambda t: zeta**2 * path.g2(t)
    for i, (t, t_next) in enumerate(pairwise(times)):
        if corrector_steps:
            alpha_i = float(path.alpha(t) / path.alpha(t_next)) ** 2
            x = langevin(score, x, t, corrector_steps, snr=snr, alpha=alpha_i, generator=generator)
        last = i == len(times) - 2
        x = euler_maruyama_step(drift, g2, x, t, t_next, generator, noise=not (denoise and last))
        record(x)
    return x


def run_em(pred, x, times, generator, record, zeta: float = 1.0, denoise: bool = True):
    """em: Euler–Maruyama on the reverse SDE family (zeta = 1 the reverse SDE, zeta = 0 Euler on the PF-ODE),
    one evaluation a step; denoise=True: no noise on the last step (it returns its mean, as Song et al.'s code)."""
    return _reverse_sde(pred.field("score"), pred.path, x, times, generator, record, 0, 0.0, denoise, zeta)


def run_pc(pred, x, times, generator, record, snr: float = 0.16, corrector_steps: int = 1, zeta: float = 1.0,
           denoise: bool = True):
    """pc: predictor–corrector (Song et al. 2021, Alg. 2/3): at each t_i, `corrector_steps` Langevin steps with
    target signal-to-noise ratio `snr`, then the Euler–Maruyama step t_i -> t_{i+1}; corrector_steps + 1
    evaluations a step. Song's alpha_i (1 for VE, 1 - beta_i for VP) is (alpha_{t_i} / alpha_{t_{i+1}})^2,
    which is 1 - beta_i for DDPM (abar_i / abar_{i-1}) and 1 for VE."""
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 1:
        raise ValueError(f"pc: corrector_steps must be a positive integer; got {corrector_steps!r} (0 is method='em')")
    return _reverse_sde(pred.field("score"), pred.path, x, times, generator, record, corrector_steps, snr, denoise,
                        zeta)


def sample_sde(score: Field, path: Path, x_T: torch.Tensor, t_grid, method: str = "em", generator=None,
               snr: float = 0.16, corrector_steps: int = 1, return_trajectory: bool = False, denoise: bool = True,
               zeta: float = 1.0):
    """The reverse SDE from noise to data along t_grid, for a score field: dl.sample(score, path, x_T, t_grid,
    method, target="score", ...) ("em" or "pc"; see run_em, run_pc).

    Returns x [N, ...] at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]) when return_trajectory.
    """
    from .methods import sample

    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE method {method!r}; valid methods: {', '.join(SDE_METHODS)}")
    options = {"zeta": zeta, "denoise": denoise}
    if method == "pc":
        options.update(snr=snr, corrector_steps=corrector_steps)
    out = sample(score, path, x_T, t_grid, method=method, target="score", generator=generator,
                 trajectory=return_trajectory, **options)
    return (out.x, out.trajectory) if return_trajectory else out.x


def simulate_forward_sde(path: Path, x0: torch.Tensor, t_grid, generator=None, return_trajectory: bool = False):
    """Euler–Maruyama for the forward SDE dx = f(t) x dt + g(t) dw along an increasing t_grid.

    Its law at time t should match the kernel N(alpha_t x0, sigma_t^2 I) up to O(dt) (check SDE-1).
    Returns x [N, ...] at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]).
    """
    times = as_times(t_grid)
    if times[-1] < times[0]:
        raise ValueError("simulate_forward_sde runs data -> noise: t_grid must increase, e.g. torch.linspace(0, t, n)")
    drift = lambda x, t: path.f(expand_time(t, x)) * x
    x, trajectory = x0, [x0]
    for t, t_next in pairwise(times):
        x = euler_maruyama_step(drift, path.g2, x, t, t_next, generator)
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x
