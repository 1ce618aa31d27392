"""MRS, the fast sampler for mean-reverting diffusion (Li et al. 2025; grrrute/mr-sampler, utils/sampler.py),
as what it is: DPM-Solver++ on y = x - mu.

The mean-reverting SDE is the Gaussian path y_t = alpha_t y_0 + sigma_t eps in y = x - mu
(`processes.MeanReverting`), so its PF-ODE and reverse SDE have the exponential-integrator solutions of
Lu et al. (2022b) in y. The authors write their updates in x, with an explicit mu term; in y that term
vanishes and each update is a known one, with lambda = log(alpha / sigma), h = lambda_t - lambda_s,
m0 = y0_hat(y_s, s), D1 = (m0 - m_prev) / r, r = h_prev / h:

    ODE, order 1:  y_t = (sigma_t / sigma_s) y_s - alpha_t (e^{-h} - 1) m0           (DPM-Solver++-1 = DDIM)
    ODE, order 2:  ... + alpha_t (1 + (e^{-h} - 1) / h) D1                           (DPM-Solver++(2M), 'taylor')
    SDE, order 1:  y_t = (sigma_t / sigma_s) e^{-h} y_s + alpha_t (1 - e^{-2h}) m0 + sigma_t sqrt(1 - e^{-2h}) z
    SDE, order 2:  ... + alpha_t (1 - (1 - e^{-2h}) / (2h)) D1                      (SDE-DPM-Solver++(2M), 'taylor')

(the authors' step_ode_1st/2nd and step_sde_1st/2nd with parameterization "data"; check BG-1b). Their
defaults (options/mrsampler.yml): 20 steps, ODE, order 2, a network trained to predict the noise, steps
uniform in the discrete time index from T to 0 ("linspace"), start mu + lam z. A step onto t = 0, where
sigma = 0, is first order (its limit y_0 = y0_hat).
"""
from __future__ import annotations

import math
from itertools import pairwise

import torch

from .processes import MeanReverting
from .sampling.grids import time_grid
from .sampling.methods import SampleResult, register_method, sample
from .sampling.prediction import coefficients

__all__ = ["MRS_SOLVERS", "mrs_sample"]

MRS_SOLVERS = ("ode", "sde")


def run_sde_dpmpp(pred, x, times, generator, record, order: int = 2):
    """sde-dpm++: SDE-DPM-Solver++ of order 1 or 2 (multistep, 'taylor'), data prediction, one evaluation a step:

        x_t = (sigma_t / sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) m0 + sigma_t sqrt(1 - e^{-2h}) z
              [+ alpha_t (1 - (1 - e^{-2h}) / (2h)) (m0 - m_prev) / r  at order 2, r = h_prev / h].

    Order 1 is DDIM with eta = 1. The first step is first order, and so is a step onto sigma = 0 (x_t = alpha_t m0).
    """
    if order not in (1, 2):
        raise ValueError(f"sde-dpm++: order must be 1 or 2; got {order!r}")
    previous = None  # (lambda, m0) of the last step
    for t, t_next in pairwise(times):
        _, s, lam = coefficients(pred.path, t)
        a_next, s_next, lam_next = coefficients(pred.path, t_next)
        m0 = pred(x, t, "x0")
        h = lam_next - lam
        if not math.isfinite(h):
            x = a_next * m0
        else:
            phi = -math.expm1(-2 * h)  # 1 - e^{-2h}
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = (s_next / s) * math.exp(-h) * x + a_next * phi * m0 + s_next * math.sqrt(phi) * z
            if order == 2 and previous is not None and math.isfinite(previous[0]):
                r = (lam - previous[0]) / h
                x = x + a_next * (1 - phi / (2 * h)) * (m0 - previous[1]) / r
        previous = (lam, m0)
        record(x)
    return x


register_method("sde-dpm++", run_sde_dpmpp, True, "SDE-DPM-Solver++ (order 1 = DDIM eta 1, order 2 = 2M taylor)")


def mrs_sample(model, process: MeanReverting, mu: torch.Tensor, n_steps: int = 20, order: int = 2,
               solver: str = "ode", target: str = "eps", grid=None, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, trajectory: bool = False) -> SampleResult:
    """MRS: restore from the degraded images mu [N, ...] with `model`, by DPM-Solver++ on y = x - mu.

    model(y, t) predicts `target` (eps, x0, score, ...) of the path of y = x - mu (a restoration network
    trained on that path, with mu bound in a closure). grid: decreasing times (default the authors'
    linspace: time_grid(n_steps, 1, 0)); x_T: the start (default mu + lam z). order 1 or 2, solver
    "ode" or "sde" (see the module docstring). Returns SampleResult(x [N, ...], nfe, trajectory in x).
    """
    if not isinstance(process, MeanReverting):
        raise TypeError(f"mrs_sample samples the mean-reverting process (dl.MeanReverting()); "
                         f"got {type(process).__name__}")
    if solver not in MRS_SOLVERS or order not in (1, 2):
        raise ValueError(f"MRS takes solver in {MRS_SOLVERS} and order 1 or 2; got solver={solver!r}, order={order!r}")
    grid = time_grid(n_steps, 1.0, 0.0) if grid is None else grid
    x_T = process.prior_sample(mu, generator) if x_T is None else x_T
    if solver == "ode":
        method, options = ("ddim", {}) if order == 1 else ("dpm++2m", {"variant": "taylor"})
    else:
        method, options = "sde-dpm++", {"order": order}
    out = sample(model, process.path, x_T - mu, grid, method, target, generator, trajectory, **options)
    return SampleResult(out.x + mu, out.nfe, None if out.trajectory is None else out.trajectory + mu)
