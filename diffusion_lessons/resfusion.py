"""Resfusion (Shi et al. 2024): restoration by a diffusion that starts from the degraded input, not from noise.

Given a degraded x0_deg of a clean x0 (both in [-1, 1]) and the residual R = x0_deg - x0, the forward
process of their code (formula 20, ``resfusion_x0_to_xt``) is, on a DDPM chain abar_1 > ... > abar_T:

    x_i = sqrt(abar_i) x0 + (1 - sqrt(abar_i)) R + sqrt(1 - abar_i) eps,

i.e. u_i = x_i - R is the ordinary DDPM chain for the "data" u_0 = x0 - R = 2 x0 - x0_deg. Equivalently
x_i - (1 - sqrt(abar_i)) x0_deg = (2 sqrt(abar_i) - 1) x0 + sqrt(1 - abar_i) eps: at the *acceleration point*
sqrt(abar) = 1/2 the state carries no information about x0, x ~ N(x0_deg / 2, 3/4 I), so sampling can start
there from the degraded input alone (formula 28). The network predicts the residual noise (formula 24)

    eps_res = eps + (1 - sqrt(alpha_i)) sqrt(1 - abar_i) / beta_i R,

and the sampler (formula 33) is DDPM's ancestral step with the fixed variance tilde beta_i, which is the
DDPM step in u-coordinates. Their ``LinearProScheduler(T)`` scales DDPM's linear betas by 1000 / T and
truncates the chain at the first step with sqrt(abar) <= 1/2, replaced by exactly 1/2 when it overshoots by
more than 0.01. Read from nkicsl/Resfusion (``model/resfusion_restore.py``, ``variance_scheduler/linear_pro.py``).
With few steps the fixed-variance sampler under-disperses (check GD-6): `resfusion_moments` gives its exact
output moments for a Gaussian x0 | x0_deg.
"""
from __future__ import annotations

import math

import torch

from .ddpm import DDPMSchedule, ancestral_sample

__all__ = ["ResfusionChain", "resfusion_exact_eps", "resfusion_forward", "resfusion_moments", "resfusion_sample",
           "resfusion_target"]


class ResfusionChain:
    """The chain of ``LinearProScheduler(T)``: `schedule` (a DDPMSchedule of steps 1..T_acc, step i 1-based)
    and `acceleration_point` T_acc = 1 + argmin_i |sqrt(abar_i) - 1/2| (0-based argmin, their formula 27)."""

    def __init__(self, T: int):
        if int(T) < 2:
            raise ValueError(f"Resfusion's schedule needs T >= 2 steps; got {T}")
        scale = 1000 / int(T)
        betas = torch.linspace(scale * 1e-4, scale * 0.02, int(T), dtype=torch.float64)
        alpha_bar = torch.cumprod(1 - betas, 0)
        first = int((alpha_bar.sqrt() <= 0.5).nonzero()[0]) if bool((alpha_bar.sqrt() <= 0.5).any()) else len(betas)
        if first < len(betas) and 0.5 - alpha_bar[first].sqrt().item() > 0.01:
            # truncate at the first step below 1/2, set exactly to 1/2 (later steps are never used)
            betas = torch.cat([betas[:first], 1 - 0.25 / alpha_bar[first - 1:first]])
        chain = DDPMSchedule(betas)
        self.acceleration_point = int((chain.alpha_bar[1:].sqrt() - 0.5).abs().argmin()) + 1
        self.schedule = DDPMSchedule(chain.betas[:self.acceleration_point])
        self.T = int(T)

    def __repr__(self) -> str:
        return f"ResfusionChain(T={self.T}, acceleration_point={self.acceleration_point})"


def resfusion_forward(x0: torch.Tensor, x0_deg: torch.Tensor, schedule: DDPMSchedule, i: int, eps: torch.Tensor):
    """x_i = sqrt(abar_i) x0 + (1 - sqrt(abar_i)) (x0_deg - x0) + sqrt(1 - abar_i) eps (their formula 20)."""
    root = math.sqrt(float(schedule.alpha_bar[schedule._step(i)]))
    return root * x0 + (1 - root) * (x0_deg - x0) + math.sqrt(1 - root**2) * eps


def resfusion_target(x0: torch.Tensor, x0_deg: torch.Tensor, schedule: DDPMSchedule, i: int, eps: torch.Tensor):
    """The residual noise eps_res = eps + (1 - sqrt(alpha_i)) sqrt(1 - abar_i) / beta_i (x0_deg - x0) (formula 24)."""
    i = schedule._step(i)
    beta, ab = float(schedule.betas[i - 1]), float(schedule.alpha_bar[i])
    return eps + (1 - math.sqrt(1 - beta)) * math.sqrt(1 - ab) / beta * (x0_deg - x0)


def resfusion_sample(eps_res_model, x0_deg: torch.Tensor, chain: ResfusionChain, generator=None) -> torch.Tensor:
    """Resfusion's sampler: x_{T_acc} = sqrt(abar) x0_deg + sqrt(1 - abar) z (formula 28), then for i = T_acc..1

        x_{i-1} = (x_i - beta_i / sqrt(1 - abar_i) eps_res_hat(x_i, i)) / sqrt(alpha_i) + sqrt(tilde beta_i) z

    (formula 33, no noise at i = 1): DDPM's ancestral step with the posterior variance. eps_res_model(x, i)
    predicts the residual noise at step i (the degraded input is the model's to remember).
    """
    schedule = chain.schedule
    ab = float(schedule.alpha_bar[-1])
    z = torch.randn(x0_deg.shape, generator=generator, dtype=x0_deg.dtype, device=x0_deg.device)
    x_start = math.sqrt(ab) * x0_deg + math.sqrt(1 - ab) * z
    return ancestral_sample(eps_res_model, schedule, x_start, generator=generator, variance="tilde")


def resfusion_exact_eps(mean: float, var: float, x0_deg: float, schedule: DDPMSchedule):
    """eps_res_hat(x, i) = E[eps_res | x_i = x] when x0 | x0_deg ~ N(mean, var) per coordinate: the exact
    residual-noise predictor. With c_i = 2 sqrt(abar_i) - 1, b_i = (1 - sqrt(abar_i)) x0_deg, s_i^2 = 1 - abar_i,
    x_i = c_i x0 + b_i + s_i eps is Gaussian and Gaussian regression gives E[eps | x] and E[x0 | x]."""

    def eps_res(x, i):
        root = math.sqrt(float(schedule.alpha_bar[i]))
        c, b, s2 = 2 * root - 1, (1 - root) * x0_deg, 1 - root**2
        innovation = (x - c * mean - b) / (c**2 * var + s2)
        e_eps, e_x0 = math.sqrt(s2) * innovation, mean + c * var * innovation
        beta = float(schedule.betas[i - 1])
        return e_eps + (1 - math.sqrt(1 - beta)) * math.sqrt(s2) / beta * (x0_deg - e_x0)

    return eps_res


def resfusion_moments(mean: float, var: float, x0_deg: float, chain: ResfusionChain) -> tuple[float, float]:
    """Exact (mean, variance) of `resfusion_sample`'s output with `resfusion_exact_eps` (x0 | x0_deg ~ N(mean, var)).

    The exact predictor is affine in x, so each step is x <- k x + l + sqrt(tilde beta) z: the recursion
    m <- k m + l, v <- k^2 v + tilde beta, from the start N(sqrt(abar) x0_deg, 1 - abar), is exact (float64).
    """
    schedule = chain.schedule
    eps_res = resfusion_exact_eps(mean, var, x0_deg, schedule)
    ab = float(schedule.alpha_bar[-1])
    m, v = math.sqrt(ab) * x0_deg, 1 - ab
    for i in range(schedule.n_steps, 0, -1):
        beta, abar = float(schedule.betas[i - 1]), float(schedule.alpha_bar[i])
        slope_eps = eps_res(1.0, i) - eps_res(0.0, i)  # eps_res is affine: eps_res(x) = slope x + eps_res(0)
        k = (1 - beta / math.sqrt(1 - abar) * slope_eps) / math.sqrt(1 - beta)
        l_ = -beta / math.sqrt(1 - abar) * eps_res(0.0, i) / math.sqrt(1 - beta)
        m, v = k * m + l_, k**2 * v + (float(schedule.posterior_variance(i)) if i > 1 else 0.0)
    return m, v
