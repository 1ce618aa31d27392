"""Short synthetic time series with an exact law: random sums of sines, for forecasting by guidance.

A series of `length` points tau = 0, 1, ..., length - 1 is

    x_tau = sum_j (a_j sin(2 pi tau / P_j) + b_j cos(2 pi tau / P_j)) + noise_std e_tau,

with independent a_j, b_j ~ N(0, amplitude_j^2) (a random amplitude and phase per period P_j) and white
noise e. The series is then exactly Gaussian, N(0, K) with

    K[tau, tau'] = sum_j amplitude_j^2 cos(2 pi (tau - tau') / P_j) + noise_std^2 [tau = tau'],

so a forecast from the first `context` points has an exact answer, the Gaussian conditional
``SineSeries.law().posterior(A, y, 0)`` with A the rows of the identity that select the context. This is
the test bed of self-guided forecasting (TSDiff, Kollovieh et al. 2023): an unconditional model of whole
series, guided at sampling time towards the observed part.
"""
from __future__ import annotations

import math

import torch

from .distributions import Gaussian

__all__ = ["SineSeries", "plot_forecast"]


class SineSeries:
    """Random sums of sines: `sample(n)` draws series [n, length]; `law()` is their exact Gaussian law."""

    def __init__(self, length: int = 32, periods=(16.0, 6.0), amplitudes=(1.0, 0.5), noise_std: float = 0.1):
        periods, amplitudes = tuple(float(p) for p in periods), tuple(float(a) for a in amplitudes)
        if int(length) < 2 or len(periods) != len(amplitudes) or not periods:
            raise ValueError(f"SineSeries needs length >= 2 and as many amplitudes as periods; got length={length}, "
                             f"{len(periods)} periods, {len(amplitudes)} amplitudes")
        if min(periods) <= 0 or min(amplitudes) < 0 or noise_std < 0:
            raise ValueError("periods must be positive, amplitudes and noise_std non-negative")
        self.length, self.periods, self.amplitudes, self.noise_std = int(length), periods, amplitudes, float(noise_std)

    def config(self) -> dict:
        """A JSON-friendly fingerprint (used in model-cache keys)."""
        return {"length": self.length, "periods": list(self.periods), "amplitudes": list(self.amplitudes),
                "noise_std": self.noise_std}

    def __repr__(self) -> str:
        return f"SineSeries(length={self.length}, periods={self.periods}, amplitudes={self.amplitudes}, " \
               f"noise_std={self.noise_std})"

    def _waves(self, dtype) -> torch.Tensor:
        """[2J, length]: sin and cos of 2 pi tau / P_j, scaled by amplitude_j."""
        tau = torch.arange(self.length, dtype=dtype)
        rows = []
        for period, amplitude in zip(self.periods, self.amplitudes):
            phase = 2 * math.pi * tau / period
            rows += [amplitude * torch.sin(phase), amplitude * torch.cos(phase)]
        return torch.stack(rows)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """n series [n, length]: the sum of sines with standard normal coefficients, plus white noise."""
        waves = self._waves(torch.float64)
        coefficients = torch.randn(int(n), waves.shape[0], generator=generator, dtype=torch.float64)
        noise = torch.randn(int(n), self.length, generator=generator, dtype=torch.float64)
        return (coefficients @ waves + self.noise_std * noise).to(dtype)

    def law(self, dtype=torch.float64) -> Gaussian:
        """The exact law N(0, K) of `sample` (float64 by default)."""
        waves = self._waves(torch.float64)
        cov = waves.T @ waves + self.noise_std**2 * torch.eye(self.length, dtype=torch.float64)
        return Gaussian(torch.zeros(self.length, dtype=torch.float64), cov).to(dtype)


def plot_forecast(series: torch.Tensor, observed, samples: dict, exact_mean=None, exact_sd=None, ax=None,
                  title: str | None = None):
    """One series [length] with bands over its hidden points: `observed` is the number of leading points seen
    (a forecast) or their indices (an imputation); samples maps a label to sampled series [n, length], drawn as
    their mean and a +-2 standard deviation band; exact_mean / exact_sd [length] (the exact conditional), when
    given, as a dashed line and a grey band."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.2))[1]
    tau = torch.arange(len(series))
    seen = torch.zeros(len(series), dtype=torch.bool)
    seen[torch.arange(observed) if isinstance(observed, int) else torch.as_tensor(list(observed))] = True
    hidden = tau[~seen]
    if exact_mean is not None:
        lo, hi = exact_mean - 2 * exact_sd, exact_mean + 2 * exact_sd
        ax.fill_between(tau, lo.where(~seen, exact_mean), hi.where(~seen, exact_mean), color="0.85",
                        label="exact conditional, +-2 sd")
        ax.plot(hidden, exact_mean[~seen], "k--", lw=1)
    for (label, x), color in zip(samples.items(), ("C0", "C1", "C2", "C3")):
        mean, sd = x.mean(0), x.std(0)
        ax.plot(hidden, mean[~seen], ".-", color=color, lw=1.2, ms=3, label=label)
        ax.fill_between(tau, (mean - 2 * sd).where(~seen, mean), (mean + 2 * sd).where(~seen, mean), color=color,
                        alpha=0.2)
    ax.plot(tau[seen], series[seen], "k.", ms=4, label="observed")
    ax.plot(hidden, series[~seen], "kx", ms=4, label="truth (hidden)")
    ax.set(xlabel="time step", title=title)
    ax.legend(fontsize=7, ncol=2)
    return ax
