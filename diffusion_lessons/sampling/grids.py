"""Time grids for samplers, and the inverse of lambda(t) = log(alpha_t / sigma_t).

Time convention: t = 0 is data, t = 1 is noise, for every path. A sampler walks a grid of n + 1
decreasing times from t_start (noise) to t_end (data); how the n steps are spread decides much of
its accuracy at a small budget:

* "uniform":   equal steps in t (Song et al. 2021: linspace(1, 1e-3, N));
* "quadratic": t = t_end + (t_start - t_end) u^2 with u uniform: denser near the data (the
               "quad" skip of DDIM, Song et al. 2021a);
* "log_snr":   equal steps in lambda = log(alpha / sigma) (Lu et al. 2022, DPM-Solver);
* "karras":    EDM's rho-schedule (Karras et al. 2022, eq. 5) in the noise level sigma~ = sigma / alpha,
               sigma~_i = (sigma~_max^(1/rho) + i / n (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho,
               i = 0..n, between sigma~(t_start) and sigma~(t_end), mapped back to t.

The last two need the path, and read the time of a noise level through `time_at_lambda`, which
inverts lambda(t) (assumed strictly decreasing in t) by bisection to float64 resolution. EDM's own
schedule appends sigma = 0 after the n + 1 levels; here that is one more time t = 0 at the end of the
grid (torch.cat([grid, grid.new_zeros(1)])), for methods that can take a last step onto sigma = 0.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..paths import Path

__all__ = ["GRID_KINDS", "time_at_lambda", "time_grid"]

GRID_KINDS = ("uniform", "quadratic", "log_snr", "karras")
_NEEDS_PATH = ("log_snr", "karras")


def as_times(t_grid) -> list[float]:
    """A 1-D tensor or sequence of times as a list of floats, checked: >= 2 points, in [0, 1], strictly monotone."""
    grid = torch.as_tensor(t_grid, dtype=torch.float64).detach().cpu()
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"t_grid must be 1-D with at least 2 times (start, ..., end); got shape {list(grid.shape)}")
    if not bool(((grid >= 0) & (grid <= 1)).all()):
        raise ValueError(f"grid times must lie in [0, 1] (t = 0 data, t = 1 noise); got {grid.tolist()[:4]}...")
    steps = grid[1:] - grid[:-1]
    if not (bool((steps < 0).all()) or bool((steps > 0).all())):
        raise ValueError("t_grid must be strictly decreasing (generation, 1 -> 0) or strictly increasing; "
                         "use dl.time_grid(n) for a standard grid")
    return grid.tolist()


def _lambda(path: Path, t: torch.Tensor) -> torch.Tensor:
    """lambda(t) = log(alpha / sigma) in float64: +inf where sigma = 0, -inf where alpha = 0."""
    return 0.5 * path.log_snr(t.to(torch.float64))


def time_at_lambda(path: Path, lam) -> torch.Tensor:
    """The time t in [0, 1] with lambda(t) = log(alpha_t / sigma_t) = lam, for lambda decreasing in t.

    lam: float or tensor of any shape -> float64 tensor of that shape. Bisection on [0, 1], 64 halvings
    (the float64 resolution of [0, 1]); a value above lambda(0) gives 0, below lambda(1) gives 1.
    """
    target = torch.as_tensor(lam, dtype=torch.float64)
    if bool(torch.isnan(target).any()):
        raise ValueError("time_at_lambda: lambda must not be NaN")
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        too_early = _lambda(path, mid) > target  # still too little noise: the time sought is later
        lo, hi = torch.where(too_early, mid, lo), torch.where(too_early, hi, mid)
    return 0.5 * (lo + hi)


def _check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 1:
        raise ValueError(f"n (the number of steps) must be a positive integer; got {n!r}")
    return int(n)


def _check_times(t_start, t_end) -> tuple[float, float]:
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a time in [0, 1] (t = 0 data, t = 1 noise); got {value!r}")
    if float(t_start) == float(t_end):
        raise ValueError(f"t_start and t_end must differ; both are {t_start}")
    return float(t_start), float(t_end)


def _finite_lambdas(path: Path | None, kind: str, t_start: float, t_end: float) -> tuple[float, float]:
    if path is None:
        raise ValueError(f'time_grid(kind="{kind}") needs the path, e.g. time_grid(50, kind="{kind}", path=dl.VP())')
    lam_start, lam_end = (float(_lambda(path, torch.tensor(t, dtype=torch.float64))) for t in (t_start, t_end))
    if not (math.isfinite(lam_start) and math.isfinite(lam_end)):
        raise ValueError(f'time_grid(kind="{kind}"): sigma / alpha must be finite and > 0 at both ends, but '
                         f"lambda = log(alpha / sigma) is {lam_start} at t_start={t_start} and {lam_end} at "
                         f"t_end={t_end}; move the ends inside (0, 1), e.g. t_end=1e-3")
    return lam_start, lam_end


def time_grid(n: int, t_start: float = 1.0, t_end: float = 1e-3, kind: str = "uniform", path: Path | None = None,
              rho: float = 7.0, dtype=torch.float64, device=None) -> torch.Tensor:
    """n + 1 times from t_start to t_end (decreasing by default: noise -> data), a 1-D tensor.

    kind: "uniform", "quadratic" (in t, no path needed), "log_snr" (equal steps in lambda = log(alpha /
    sigma)), "karras" (EDM's rho-schedule in sigma / alpha, exponent rho; Karras et al. 2022, eq. 5);
    the last two need the path and finite lambda at both ends (t_end > 0). The ends are exactly t_start
    and t_end. Whether a sampler may end where sigma = 0 (t_end = 0) is checked by dl.sample.
    """
    n = _check_count(n)
    t_start, t_end = _check_times(t_start, t_end)
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid kind {kind!r}; valid kinds: {', '.join(GRID_KINDS)}")
    u = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)  # 1 at t_start, 0 at t_end
    if kind == "uniform":
        t = t_end + (t_start - t_end) * u
    elif kind == "quadratic":
        t = t_end + (t_start - t_end) * u**2
    else:
        lam_start, lam_end = _finite_lambdas(path, kind, t_start, t_end)
        if kind == "log_snr":
            lam = lam_end + (lam_start - lam_end) * u
        else:
            if not (isinstance(rho, numbers.Real) and float(rho) > 0):
                raise ValueError(f"rho must be a positive number (EDM uses 7); got {rho!r}")
            s_max, s_min = math.exp(-lam_start) ** (1 / rho), math.exp(-lam_end) ** (1 / rho)
            lam = -rho * torch.log(s_min + u * (s_max - s_min))
        t = time_at_lambda(path, lam)
    t[0], t[-1] = t_start, t_end
    return t.to(dtype=dtype, device=device)
