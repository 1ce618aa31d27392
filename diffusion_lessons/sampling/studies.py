"""Measuring samplers against exact answers (the tools of the fast-samplers chapter).

* `GaussianOracle`: data N(mu, diag(lam)) on any path: the exact x0-prediction and the closed-form
  PF-ODE flow (Wang & Vastola 2023), the oracle every order of accuracy is measured against;
* `errors_per_nfe` and `order_slope`: RMS error against an oracle as the step count grows, and the
  slope of log error against log NFE (-p for a method of order p);
* `affine_map`: a deterministic sampler on data whose prediction is affine is an affine map
  x_T -> A x_T + B; two runs read off A and B, hence the exact terminal mean and variance;
* `frechet_per_nfe`: classifier Fréchet distance of a trained image model's samples, per method and NFE;
* `plot_error_vs_nfe`: the log-log picture.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..paths import Path
from .methods import sample

__all__ = ["GaussianOracle", "affine_map", "errors_per_nfe", "frechet_per_nfe", "order_slope", "plot_error_vs_nfe"]


class GaussianOracle:
    """Data N(mu, diag(lam)) under `path`: x0(x, t) = mu + alpha lam / (alpha^2 lam + sigma^2) (x - alpha mu), and the
    flow x_t = alpha_t mu + sqrt((sigma_t^2 + alpha_t^2 lam) / (sigma_T^2 + alpha_T^2 lam)) (x_T - alpha_T mu)."""

    def __init__(self, mu, lam, path: Path):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.lam = torch.as_tensor(lam, dtype=torch.float64)
        self.path = path

    def _coef(self, t):
        return float(self.path.alpha(t)), float(self.path.sigma(t))

    def x0(self, x: torch.Tensor, t) -> torch.Tensor:
        a, s = self._coef(t)
        return self.mu + a * self.lam / (a**2 * self.lam + s**2) * (x - a * self.mu)

    def flow(self, x_T: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        (a0, s0), (a1, s1) = self._coef(t_from), self._coef(t_to)
        gain = torch.sqrt((s1**2 + a1**2 * self.lam) / (s0**2 + a0**2 * self.lam))
        return a1 * self.mu + gain * (x_T - a0 * self.mu)


def errors_per_nfe(model: Callable, path: Path, x_T: torch.Tensor, exact: torch.Tensor, method: str, grids,
                   target: str = "x0", **options) -> tuple[list[int], list[float]]:
    """(NFE, RMS error over every coordinate) of dl.sample(method) on each grid of `grids` against `exact`."""
    nfes, errors = [], []
    for grid in grids:
        out = sample(model, path, x_T, grid, method, target=target, **options)
        nfes.append(out.nfe)
        errors.append(float((out.x - exact).square().mean().sqrt()))
    return nfes, errors


def order_slope(nfes, errors, last: int = 3) -> float:
    """Least-squares slope of log(error) against log(NFE) over the `last` points (-p for order p)."""
    x = torch.log(torch.tensor(nfes[-last:], dtype=torch.float64))
    y = torch.log(torch.tensor(errors[-last:], dtype=torch.float64))
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def affine_map(run: Callable[[torch.Tensor], torch.Tensor], dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [dim, dim], B [dim]) of a sampler that is affine, run(x_T [n, dim]) = x_T A^T + B, read off from dim + 1
    runs (the origin and the unit vectors)."""
    probes = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)])
    out = run(probes)
    return (out[1:] - out[0]).T, out[0]


def frechet_per_nfe(model: Callable, path: Path, shape, methods, nfes, n: int, classifier, reference: torch.Tensor,
                    target: str = "eps", seed: int = 0, batch: int = 500, clip: float = 1.0,
                    keep: int = 16) -> tuple[dict, dict]:
    """({(method, nfe): classifier Fréchet distance}, {(method, nfe): the first `keep` images}) of n images per method
    and NFE (log-SNR grid from t = 1 to 1e-3, x0-prediction clipped to [-clip, clip] at every evaluation, as
    pixel-space samplers do), the same x_T for all. A method's step count is NFE // (evaluations a step)."""
    from ..metrics import classifier_frechet_distance
    from ..paths import convert
    from .grids import time_grid

    weights = next(model.parameters())

    def clipped(x, t):
        return convert(model(x, t), target, "x0", x, t, path).clamp(-clip, clip)

    g = torch.Generator().manual_seed(seed)
    x_T = float(path.sigma(1.0)) * torch.randn(n, *shape, generator=g, dtype=weights.dtype)
    out, kept = {}, {}
    for method in methods:
        per_step = {"heun": 2, "rk4": 4, "dpm2": 2, "edm": 2}.get(method, 1)
        for nfe in nfes:
            steps = max(nfe // per_step, 3 if method == "evodiff" else 1)
            grid = time_grid(steps, 1.0, 1e-3, kind="log_snr", path=path)
            options = {"denoise_to_zero": False} if method == "evodiff" else {}
            with torch.no_grad():
                images = torch.cat([sample(clipped, path, x.to(weights.device), grid, method, target="x0",
                                           **options).x.cpu() for x in x_T.split(batch)])
            out[(method, nfe)] = classifier_frechet_distance(images.clamp(-clip, clip), reference, classifier)
            kept[(method, nfe)] = images[:keep].clamp(-clip, clip)
    return out, kept


def plot_error_vs_nfe(ax, curves: dict, title: str = "", reference_orders=(1, 2)):
    """Log-log error against NFE, one line per entry {label: (nfes, errors)}, with dashed reference slopes."""
    for label, (nfes, errors) in curves.items():
        ax.loglog(nfes, errors, "o-", ms=3, label=label)
    all_nfe = [v for nfes, _ in curves.values() for v in nfes]
    all_err = [e for _, errors in curves.values() for e in errors]
    lo, hi = min(all_nfe), max(all_nfe)
    top = max(all_err)
    for p in reference_orders:
        ax.loglog([lo, hi], [top, top * (lo / hi) ** p], "k--", lw=0.7, alpha=0.6)
        ax.annotate(f"slope -{p}", (hi, top * (lo / hi) ** p), fontsize=8, alpha=0.7)
    ax.set(xlabel="NFE (model evaluations)", ylabel="RMS error vs closed form", title=title)
    ax.legend(fontsize=8)
    return ax

