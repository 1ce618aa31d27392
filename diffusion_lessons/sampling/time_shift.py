"""The Time-Shift sampler (Li, Qu, Yao, Sun & Moens, ICLR 2024) on the discrete DDPM chain.

Exposure bias: at sampling time the state x_i is not distributed like the training inputs at step i.
Time-Shift picks, in a window of steps, the step tau whose noise variance 1 - abar_tau is closest to
the state's per-sample pixel variance v(x) (unbiased, over all its entries), and uses it instead of the
scheduled step, only while the scheduled step lies above a cutoff t_c. From the authors' code of record
(Mingxiao-Li/TS-DPM, tingyu215/TS-DPM-ADM) there are two ways to use it:

* "ddim" (pnm_solver.py / the ADM repository's ddim_sample): from grid step i to the next grid step j,
  eps_hat = eps(x_i, i) at the grid step, but the update lands on t_s,
      t_s = argmin_{tau in [j - floor(w/2), j + floor(w/2)]} (v(x_i) - (1 - abar_tau))^2   if j > t_c, else j,
      x <- sqrt(abar_{t_s}) x0_hat + sqrt(1 - abar_{t_s}) eps_hat;
  the next network call is at the grid step j again; the first step is never shifted.
* "deis" (deis_sampler.py): the network is evaluated at a shifted step,
      t_s = argmin_{tau in [i - w, i + w]} (v(x_i) - (1 - abar_tau))^2   if i > t_c, else i,
  eps_hat = eps(x_i, t_s), with the update's coefficients on the grid. (DEIS's own multistep
  coefficients are not reproduced: the update here is DDIM, DEIS's order 0.) Every call is shifted,
  the first included.

Steps are the code's 0-based indices c = 0..N-1 (abar_c = prod_{k <= c} (1 - beta_k); c = -1 is the data,
abar = 1). The model is called as model(x, t) with t = (c + 1) / N, the time of dl.DDPMPath(schedule).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..ddpm import DDPMSchedule
from ..paths import convert
from .methods import SampleResult

__all__ = ["TIME_SHIFT_VARIANTS", "exposure_bias_demo", "time_shift_grid", "time_shift_sample", "time_shift_step"]

TIME_SHIFT_VARIANTS = ("ddim", "deis")


def _abar(schedule: DDPMSchedule, c: int) -> float:
    """abar of the code's 0-based step c (c = -1: the data, 1)."""
    return float(schedule.alpha_bar[c + 1])


def time_shift_step(variance, center: int, half_width: int, cutoff: int, schedule: DDPMSchedule) -> torch.Tensor:
    """Per sample, the step tau in [center - half_width, center + half_width] (clipped to 0..N-1) minimising
    (variance - (1 - abar_tau))^2, or `center` itself when center <= cutoff. variance: float or tensor [n];
    returns a long tensor of the shape of `variance`."""
    variance = torch.as_tensor(variance, dtype=torch.float64)
    if center <= cutoff:
        return torch.full(variance.shape, int(center), dtype=torch.long)
    n = schedule.n_steps
    window = torch.arange(max(center - half_width, 0), min(center + half_width, n - 1) + 1)
    noise = 1 - schedule.alpha_bar[window + 1]
    best = torch.argmin((variance.reshape(-1, 1) - noise) ** 2, dim=1)
    return window[best].reshape(variance.shape)


def time_shift_grid(steps: int, schedule: DDPMSchedule) -> list[int]:
    """The uniform skip of DDIM / PNDM in 0-based steps, from noise to data: range(0, N, N // steps) reversed."""
    if not isinstance(steps, int) or not 1 <= steps <= schedule.n_steps:
        raise ValueError(f"steps must be an integer in 1..{schedule.n_steps}; got {steps!r}")
    return list(range(0, schedule.n_steps, schedule.n_steps // steps))[::-1]


def _pixel_variance(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).var(dim=1).to(torch.float64)  # unbiased, as torch.var in the code


def _per_sample(values: list[float], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))


def time_shift_sample(model: Callable, schedule: DDPMSchedule, x_T: torch.Tensor, grid: list[int], window: int = 40,
                      cutoff: int = 300, variant: str = "ddim", target: str = "eps", shift: bool = True,
                      trajectory: bool = False) -> SampleResult:
    """Deterministic DDIM along `grid` (0-based steps, decreasing, e.g. time_shift_grid(10, schedule)), then
    onto the data, with the Time-Shift rule of `variant` ("ddim" or "deis"; see the module). shift=False is
    plain DDIM on the same grid. model(x, t) predicts `target`, t = (c + 1) / N (a tensor [N] when the "deis" rule
    gives the samples different steps). One model call a step. Returns SampleResult."""
    from ..ddpm import DDPMPath

    if variant not in TIME_SHIFT_VARIANTS:
        raise ValueError(f"unknown Time-Shift variant {variant!r}; valid variants: {', '.join(TIME_SHIFT_VARIANTS)}")
    if list(grid) != sorted(set(grid), reverse=True) or grid[-1] < 0 or grid[0] >= schedule.n_steps:
        raise ValueError(f"grid must be strictly decreasing steps in 0..{schedule.n_steps - 1}; got {grid}")
    path, n, nfe = DDPMPath(schedule), schedule.n_steps, 0
    x, states = x_T, [x_T]
    for k, (i, j) in enumerate(zip(grid, [*grid[1:], -1])):
        v = _pixel_variance(x)
        steps_in = [i] * len(x)
        if shift and variant == "deis":  # the DEIS code shifts every call, the first included
            steps_in = time_shift_step(v, i, window, cutoff, schedule).tolist()
        times = {(c + 1) / n for c in steps_in}
        t = times.pop() if len(times) == 1 else torch.tensor([(c + 1) / n for c in steps_in], dtype=x.dtype)
        eps = convert(model(x, t), target, "eps", x, t, path)
        nfe += 1
        a_in = _per_sample([math.sqrt(_abar(schedule, c)) for c in steps_in], x)
        s_in = _per_sample([math.sqrt(1 - _abar(schedule, c)) for c in steps_in], x)
        x0 = (x - s_in * eps) / a_in
        steps_out = [j] * len(x)
        if shift and variant == "ddim" and k > 0 and j >= 0:
            steps_out = time_shift_step(v, j, window // 2, cutoff, schedule).tolist()
        a_out = _per_sample([math.sqrt(_abar(schedule, c)) for c in steps_out], x)
        s_out = _per_sample([math.sqrt(1 - _abar(schedule, c)) for c in steps_out], x)
        x = a_out * x0 + s_out * eps
        if trajectory:
            states.append(x)
    return SampleResult(x, nfe, torch.stack(states) if trajectory else None)


def exposure_bias_demo(delta: float, data_variance: float, dim: int = 3072, n: int = 64, steps: int = 10,
                       window: int = 40, cutoff: int = 300, seed: int = 0) -> dict:
    """A report-only demonstration of exposure bias (check FS-4b): data N(0, v0 I) in `dim` dimensions, the exact
    noise prediction mis-scaled by (1 + delta), DDIM on time_shift_grid(steps) from the exact marginal at the
    first step, with and without the "ddim" Time-Shift rule. Returns the final pixel variance / v0 of both."""
    schedule = DDPMSchedule.linear()
    grid = time_shift_grid(steps, schedule)
    g = torch.Generator().manual_seed(seed)
    ab0 = _abar(schedule, grid[0])
    x_T = math.sqrt(ab0 * data_variance + 1 - ab0) * torch.randn(n, dim, generator=g, dtype=torch.float64)

    def model(x, t):  # (1 + delta) E[eps | x] for N(0, v0) data: sqrt(1 - abar) x / (abar v0 + 1 - abar)
        step = torch.round(torch.as_tensor(t, dtype=torch.float64) * schedule.n_steps).long()
        ab = schedule.alpha_bar[step].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (1 + delta) * torch.sqrt(1 - ab) * x / (ab * data_variance + 1 - ab)

    out = {}
    for name, shift in (("ddim", False), ("time_shift", True)):
        x = time_shift_sample(model, schedule, x_T, grid, window, cutoff, "ddim", shift=shift).x
        out[name] = float(_pixel_variance(x).mean()) / data_variance
    return out
