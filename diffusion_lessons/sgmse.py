"""SGMSE's predictor–corrector sampler for the OUVE process (Richter et al. 2023; sp-uhh/sgmse, enhancement.py).

The defaults of the authors' enhancement script: N = 30 times linspace(1, t_eps, N) with t_eps = 0.03, at each
time one annealed-Langevin corrector step (NCSN's ALD) then one reverse-diffusion predictor step, the last
predictor step going from t_eps to 0, and the final *mean* returned (no noise on the last step):

    corrector (ALD):   e = 2 (snr sigma_t)^2,  x <- x + e s(x, t) + sqrt(2 e) z          (snr = 0.5)
    predictor:         x <- x - theta (y - x) dt + g(t)^2 dt s(x, t) + g(t) sqrt(dt) z   (dt > 0 the step size)

with sigma_t the marginal std of the process and s the score of p_t(x | y). It starts from SGMSE's prior
y + sigma_1 z, whose mean y differs from the true mean y + alpha_1 (x0 - y) of x_1: the prior mismatch,
which the corrector's Langevin steps, pulling towards p_t at every t, largely undo (check BG-2).
"""
from __future__ import annotations

import dataclasses
import math
from itertools import pairwise

import torch

from .processes import OUVE

__all__ = ["PCResult", "sgmse_pc"]


@dataclasses.dataclass(frozen=True)
class PCResult:
    """x [N, ...] at t = 0 (the predictor's mean) and nfe (score evaluations)."""

    x: torch.Tensor
    nfe: int


def sgmse_pc(score, process: OUVE, y: torch.Tensor, n_steps: int = 30, t_eps: float = 0.03, snr: float = 0.5,
             corrector_steps: int = 1, generator=None, x_T: torch.Tensor | None = None) -> PCResult:
    """SGMSE's PC sampler: score(x, t) = grad_x log p_t(x | y) (t a float), y [N, ...] the noisy recordings.

    x_T: the start (default `process.prior_sample(y)`, SGMSE's y + sigma_1 z). NFE = n_steps (corrector_steps + 1).
    """
    if not isinstance(process, OUVE):
        raise TypeError(f"sgmse_pc samples the OUVE process (dl.OUVE()); got {type(process).__name__}")
    if int(n_steps) < 1 or not 0 < t_eps < 1 or snr <= 0 or int(corrector_steps) < 0:
        raise ValueError(f"sgmse_pc needs n_steps >= 1, 0 < t_eps < 1, snr > 0 and corrector_steps >= 0; got "
                         f"{n_steps}, {t_eps}, {snr}, {corrector_steps}")
    path = process.path
    x = process.prior_sample(y, generator) if x_T is None else x_T
    times = torch.linspace(1.0, t_eps, int(n_steps), dtype=torch.float64).tolist()
    steps = [a - b for a, b in pairwise(times)] + [t_eps]
    nfe, x_mean = 0, x
    for t, dt in zip(times, steps):
        e = 2 * (snr * float(path.sigma(t))) ** 2
        for _ in range(int(corrector_steps)):
            x = x + e * score(x, t) + math.sqrt(2 * e) * _noise(x, generator)
            nfe += 1
        g2 = float(path.g2(t))
        x_mean = x - process.path.theta * (y - x) * dt + g2 * dt * score(x, t)
        x = x_mean + math.sqrt(g2 * dt) * _noise(x, generator)
        nfe += 1
    return PCResult(x_mean, nfe)


def _noise(x, generator):
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
