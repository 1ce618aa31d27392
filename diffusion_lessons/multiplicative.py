"""Samplers for geometric-Brownian-motion diffusion (Shetty, Prasath & Seelamantula 2025, "Dale meets Langevin").

The forward process is GBM, dX = m X dt + s X dW (`processes.GBM`); in Y = log X it is additive noise. Both
samplers below take the Stein score grad_x log p_tau(x) (what the authors' network outputs) and read it
through the Hyvarinen score h = x * grad_x log p, for which grad_y log q(y) = h + 1 (check DL-2). Time is
the authors' index: N steps of size delta from tau = (N - 1)/N down to 0, the score queried at tau_k = k / N:

* Dale–Langevin (`dale_langevin`, the code's adls_sampler): Euler–Maruyama of the reverse SDE in log space,
  exponentiated,
      X <- X exp(delta s^2 h - delta (m - 3 s^2 / 2) + a sqrt(delta) s Z),
  i.e. Y <- Y + delta s^2 grad_y log q - delta (m - s^2 / 2) + a sqrt(delta) s Z. A product of X with a
  positive factor: X stays positive whatever the step (check DL-3).
* unconstrained multiplicative (`multiplicative_langevin`, the code's aums_sampler): Euler–Maruyama of the
  ambient reverse SDE dX = X [m - 2 s^2 - s^2 h] dt + s X dW_bar,
      X <- X (1 + 2 delta s^2 - delta m + delta s^2 h + a sqrt(delta) s Z),
  whose factor is Gaussian and can be negative: X can change sign.

a is the authors' noise scale (1 by default; their schedule anneals it), `inner_steps` their L (several
updates at one noise level). For log-normal data the log-space sampler is an exact linear recursion on the
mean and variance of log X (`dale_langevin_log_moments`, check BG-3).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .processes import GBM

__all__ = [
    "MultiplicativeResult",
    "authors_schedule",
    "dale_langevin",
    "dale_langevin_log_moments",
    "multiplicative_langevin",
]


@dataclasses.dataclass(frozen=True)
class MultiplicativeResult:
    """x [N, ...] after the last step, nfe (score evaluations), and sign_changes: the fraction of coordinates
    that were ever negative along the way (always 0 for the Dale–Langevin sampler)."""

    x: torch.Tensor
    nfe: int
    sign_changes: float


def authors_schedule(index: int) -> tuple[float, int, float]:
    """(delta, inner steps L, anneal factor) at index k of the authors' N = 1000 sampler (get_delta_factor_per_step):
    k > 100: (1e-3, 1, 1); 51..100: (5e-4, 2, 0.9995); 26..50: (6e-4, 3, 0.9993); k <= 25: (5e-4, 3, 0.999)."""
    if index > 100:
        return 1e-3, 1, 1.0
    if index > 50:
        return 5e-4, 2, 0.9995
    if index > 25:
        return 6e-4, 3, 0.9993
    return 5e-4, 3, 0.999


def _run(update, score, process: GBM, x_T, n_steps, delta, inner_steps, anneal, anneal_factor, schedule, generator):
    if not isinstance(process, GBM):
        raise TypeError(f"these samplers run geometric Brownian motion (dl.GBM()); got {type(process).__name__}")
    if int(n_steps) < 1 or int(inner_steps) < 1:
        raise ValueError(f"n_steps and inner_steps must be positive integers; got {n_steps}, {inner_steps}")
    if not bool((x_T > 0).all()):
        raise ValueError("x_T must be positive: GBM lives on (0, inf) (start e.g. from a log-normal)")
    n, x, nfe, a = int(n_steps), x_T, 0, float(anneal)
    ever_negative = torch.zeros_like(x_T, dtype=torch.bool)
    s2, m = process.sigma**2, process.mu
    for k in range(n - 1, -1, -1):
        d, inner, factor = schedule(k) if schedule is not None else (1.0 / n if delta is None else delta,
                                                                     inner_steps, anneal_factor)
        tau = k / n
        for _ in range(int(inner)):
            h = x * score(x, tau)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = update(x, h, z, d, s2, m, a * math.sqrt(d * s2))
            nfe += 1
            ever_negative |= x <= 0
        a *= factor
    return MultiplicativeResult(x, nfe, ever_negative.double().mean().item())


def _dale(x, h, z, d, s2, m, noise):
    return x * torch.exp(d * s2 * h - d * (m - 1.5 * s2) + noise * z)


def _unconstrained(x, h, z, d, s2, m, noise):
    return x * (1 + 2 * d * s2 - d * m + d * s2 * h + noise * z)


def dale_langevin(score, process: GBM, x_T: torch.Tensor, n_steps: int = 1000, delta: float | None = None,
                  inner_steps: int = 1, anneal: float = 1.0, anneal_factor: float = 1.0, schedule=None,
                  generator=None) -> MultiplicativeResult:
    """The Dale–Langevin sampler (log-space Euler–Maruyama, exponentiated): see the module docstring.

    score(x, tau) = grad_x log p_tau(x) (tau a float); x_T [N, ...] > 0 at tau = (n_steps - 1) / n_steps.
    delta: the step (default 1 / n_steps, the step of the time grid); schedule(k) -> (delta, L, factor)
    overrides delta, inner_steps and anneal_factor per index (e.g. `authors_schedule` with n_steps = 1000).
    """
    return _run(_dale, score, process, x_T, n_steps, delta, inner_steps, anneal, anneal_factor, schedule, generator)


def multiplicative_langevin(score, process: GBM, x_T: torch.Tensor, n_steps: int = 1000, delta: float | None = None,
                            inner_steps: int = 1, anneal: float = 1.0, anneal_factor: float = 1.0, schedule=None,
                            generator=None) -> MultiplicativeResult:
    """The unconstrained multiplicative sampler (ambient Euler–Maruyama); arguments as `dale_langevin`."""
    return _run(_unconstrained, score, process, x_T, n_steps, delta, inner_steps, anneal, anneal_factor, schedule,
                generator)


def dale_langevin_log_moments(log_mean: float, log_var: float, process: GBM, n_steps: int,
                              delta: float | None = None) -> tuple[float, float]:
    """Mean and variance of log X after `dale_langevin` (a = 1, L = 1) with the exact score, for log-normal data
    log X0 ~ N(log_mean, log_var), started at the exact law at tau = (n_steps - 1) / n_steps.

    In Y = log X - (m - s^2/2) tau the exact score is -(Y - log_mean) / V_k, V_k = log_var + s^2 k / n, so each
    step is affine: Y <- (1 - delta s^2 / V_k) (Y - log_mean) + log_mean + sqrt(delta) s Z (the drifts cancel
    to the same shift in both variables), hence

        mean_{k-1} - log_mean = c_k (mean_k - log_mean),   var_{k-1} = c_k^2 var_k + delta s^2,
        c_k = 1 - delta s^2 / V_k.

    Returned for log X itself. The loop runs k = n - 1, ..., 0 as the authors' does, so its last step starts
    at tau = 0: for m != s^2 / 2 the mean ends a drift -delta (m - s^2/2) past the data's.
    """
    n = int(n_steps)
    d, s2 = (1.0 / n if delta is None else float(delta)), process.sigma**2
    shift = process.log_drift
    mean = log_mean + shift * (n - 1) / n  # law at tau = (n - 1) / n, in log X
    var = log_var + s2 * (n - 1) / n
    for k in range(n - 1, -1, -1):
        c = 1 - d * s2 / (log_var + s2 * k / n)
        centre = log_mean + shift * k / n  # the mean of log X_tau at tau_k
        mean = c * (mean - centre) + centre - d * shift
        var = c**2 * var + d * s2
    return mean, var
