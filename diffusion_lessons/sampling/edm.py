"""EDM (Karras, Aittala, Aila, Laine 2022): the stochastic Heun sampler (Alg. 2) and the preconditioning.

EDM writes a Gaussian path x_t = alpha_t x0 + sigma_t eps through the scaled state x~ = x / alpha and the
noise level sigma~ = sigma / alpha (= e^{-lambda}). In these variables the PF-ODE of every path is

    dx~ / dsigma~ = (x~ - D(x~; sigma~)) / sigma~,    D(x~; sigma~) = x0_hat(alpha_t x~, t),

so one sampler serves every path of the package: it steps in sigma~ and reads the model at the time t
whose sigma~(t) is the level it needs (`grids.time_at_lambda`). On `dl.EDM()` (alpha = 1, sigma = 80 t)
this is NVlabs/edm's `generate.py: edm_sampler` line for line.
"""
from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from ..paths import Path, expand_time
from .grids import time_at_lambda
from .prediction import coefficients

__all__ = ["EDMPreconditioned", "edm_scalings"]


def _noise_level(path: Path, t: float) -> tuple[float, float]:
    """(alpha_t, sigma~_t = sigma_t / alpha_t); refuses alpha = 0, where sigma~ is infinite."""
    a, s, _ = coefficients(path, t)
    if not a > 0:
        raise ValueError(f"edm steps in sigma / alpha and needs alpha > 0; got alpha={a} at t={t}. "
                         "Start the grid below t = 1 (e.g. t_start=0.99 on rectified flow)")
    return a, s / a


def run_edm(pred, x, times, generator, record, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
            s_noise: float = 1.0):
    """edm: Karras et al. (2022), Alg. 2, for N = len(grid) - 1 steps, sigma~_i = sigma~(t_i):

        gamma_i = min(churn / N, sqrt(2) - 1) if s_tmin <= sigma~_i <= s_tmax else 0,
        sigma^ = (1 + gamma_i) sigma~_i,  x^ = x~_i + sqrt(sigma^^2 - sigma~_i^2) s_noise z,
        d = (x^ - D(x^; sigma^)) / sigma^,  x~_{i+1} = x^ + (sigma~_{i+1} - sigma^) d,
        if sigma~_{i+1} > 0:  d' = (x~_{i+1} - D(x~_{i+1}; sigma~_{i+1})) / sigma~_{i+1},
                              x~_{i+1} = x^ + (sigma~_{i+1} - sigma^) (d + d') / 2.

    churn = 0 is the deterministic Heun sampler (Alg. 1). sigma^ is capped at sigma~(1), the largest
    noise level the path has (EDM's S_tmax = inf would churn above its sigma_max at the first step).
    """
    path = pred.path
    for name, value in (("churn", churn), ("s_noise", s_noise)):
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"edm: {name} must be a number >= 0; got {value!r}")
    gamma_max = min(churn / (len(times) - 1), math.sqrt(2) - 1)
    top = coefficients(path, 1.0)
    top = top[1] / top[0] if top[0] > 0 else math.inf

    def denoise(x_tilde, t):
        a = float(path.alpha(t))
        return pred(a * x_tilde, t, "x0")

    for t, t_next in pairwise(times):
        a, level = _noise_level(path, t)
        a_next, s_next, _ = coefficients(path, t_next)
        level_next = s_next / a_next
        x_tilde, t_hat, level_hat = x / a, t, level
        gamma = gamma_max if s_tmin <= level <= s_tmax else 0.0
        if gamma > 0 and level < top:
            t_hat = float(time_at_lambda(path, -math.log(min(level * (1 + gamma), top))))
            level_hat = _noise_level(path, t_hat)[1]
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_tilde = x_tilde + math.sqrt(max(level_hat**2 - level**2, 0.0)) * s_noise * noise
        d = (x_tilde - denoise(x_tilde, t_hat)) / level_hat
        x_next = x_tilde + (level_next - level_hat) * d
        if level_next > 0:
            d_prime = (x_next - denoise(x_next, t_next)) / level_next
            x_next = x_tilde + (level_next - level_hat) * 0.5 * (d + d_prime)
        x = a_next * x_next
        record(x)
    return x


# -- preconditioning -----------------------------------------------------------------------------------
def edm_scalings(sigma, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022), Table 1, at noise level sigma (float or tensor):

        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),   c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
        c_in = 1 / sqrt(sigma^2 + sigma_data^2),            c_noise = ln(sigma) / 4.

    For data of variance sigma_data^2, c_in (x0 + sigma n) and the target (x0 - c_skip (x0 + sigma n)) / c_out
    of the network have unit variance at every sigma (check EDM-1).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64) if not isinstance(sigma, torch.Tensor) else sigma
    if not (sigma_data > 0) or bool((sigma <= 0).any()):
        raise ValueError(f"edm_scalings needs sigma > 0 and sigma_data > 0; got sigma_data={sigma_data}")
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), 0.25 * torch.log(sigma)


class EDMPreconditioned(nn.Module):
    """A network F wrapped as EDM's denoiser, a model(x, t) that predicts x0 on any path:

        x0_hat(x, t) = D(x~; sigma~) = c_skip x~ + c_out F(c_in x~, tau),   x~ = x / alpha_t, sigma~ = sigma_t / alpha_t,

    with the scalings of `edm_scalings` at sigma~. tau, the network's time input, is t itself
    (noise_input="t": the package's nets embed times in [0, 1]) or c_noise = ln(sigma~)/4 (noise_input="c_noise",
    Karras et al.'s choice, for a network that takes any real number). Train it with target="x0".
    """

    def __init__(self, net: nn.Module, path: Path, sigma_data: float = 0.5, noise_input: str = "t"):
        super().__init__()
        if noise_input not in ("t", "c_noise"):
            raise ValueError(f"noise_input must be 't' or 'c_noise'; got {noise_input!r}")
        self.net, self.path, self.sigma_data, self.noise_input = net, path, float(sigma_data), noise_input

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        tt = expand_time(t, x)
        a, s = self.path.alpha(tt), self.path.sigma(tt)
        c_skip, c_out, c_in, c_noise = edm_scalings(s / a, self.sigma_data)
        x_tilde = x / a
        tau = t if self.noise_input == "t" else c_noise.reshape(-1) if c_noise.dim() else float(c_noise)
        return c_skip * x_tilde + c_out * self.net(c_in * x_tilde, tau)
