"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023): f(x, sigma) ~ Phi_{sigma -> sigma_min}(x).

Everything here lives on EDM's variance-exploding path x_sigma = x0 + sigma z (alpha = 1), sigma in
[sigma_min, sigma_max] = [0.002, 80], written in the course's time as t = sigma / sigma_max (t = 0 data,
t = 1 noise; this is dl.EDM(sigma_max)). The code of record is openai/consistency_models
(cm/karras_diffusion.py, cm/script_util.py).

* Parameterisation with the boundary condition f(x, sigma_min) = x built in:
      f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
      c_skip = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2),
      c_out  = (sigma - sigma_min) sigma_d / sqrt(sigma^2 + sigma_d^2),   c_in = 1 / sqrt(sigma^2 + sigma_d^2).
* Loss on the Karras grid of N points sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho:
  n ~ U{0, ..., N-2}, x_n = x0 + sigma_n z, and
      L = || f_theta(x_n, sigma_n) - f_theta-(x_{n+1}, sigma_{n+1}) ||^2      (theta- = EMA target network),
  where x_{n+1} is one Heun step of the teacher's PF-ODE dx/dsigma = (x - D(x, sigma)) / sigma from x_n
  (consistency distillation, CD) or x0 + sigma_{n+1} z (consistency training, CT: the Euler step with
  D = x0). CD: N = 40, target EMA 0.95; CT: N grows from 2 to 150 and the EMA rate with it.
* Sampling (multistep): x <- f(x, t_i), then x <- x + sqrt(t_{i+1}^2 - sigma_min^2) z, at the Karras
  grid points indexed by ts (one step: ts = (0, 39); two steps on ImageNet-64: ts = (0, 22, 39) of 40).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import pathlib
from collections.abc import Callable

import torch
from torch import nn

from ..closed_form import commitment_time
from ..nets import MODELS, build_model
from ..paths import Path, convert
from .samplers import FlowMapSample

__all__ = [
    "ConsistencyDistillation",
    "ConsistencyModel",
    "ConsistencyTraining",
    "EDMDenoiser",
    "consistency_scalings",
    "ct_schedule",
    "euler_teacher_step",
    "heun_teacher_step",
    "karras_sigma",
    "sample_consistency",
]

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA, RHO = 0.002, 80.0, 0.5, 7.0
# The source of this module joins the cache key of a run trained with its objectives: an edit retrains.
CODE_HASH = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:16]


def consistency_scalings(sigma, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
    """(c_skip, c_out, c_in) of the consistency parameterisation (module docstring): c_skip(sigma_min) = 1,
    c_out(sigma_min) = 0, so f(x, sigma_min) = x exactly. sigma: float or tensor (any shape)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64) if not isinstance(sigma, torch.Tensor) else sigma
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
    c_in = 1 / torch.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def karras_sigma(index, n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """sigma_i of the Karras grid of n points (i = 0: sigma_max, i = n - 1: sigma_min); index: number or tensor."""
    index = torch.as_tensor(index, dtype=torch.float64) if not isinstance(index, torch.Tensor) else index
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + index / (n - 1) * (lo - hi)) ** rho


def _as_sigma(t, x: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """sigma = sigma_max t, shaped to broadcast against x ([N] -> [N, 1, ...])."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t
    return sigma_max * t


class ConsistencyModel(nn.Module):
    """f(x, t) = c_skip x + c_out F(c_in x, tau): a network F(x, tau) (TimeMLP, UNet) with the boundary condition.

    t = sigma / sigma_max (the course's time on the EDM path); F gets tau = log(sigma / sigma_min) /
    log(sigma_max / sigma_min) clipped to [0, 1], an affine map of the code's c_noise = 250 log(sigma),
    rescaled to the package's time range. net: a module or its config; config rebuilds the whole model.
    """

    def __init__(self, net, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
        super().__init__()
        self.net = build_model(net) if isinstance(net, dict) else net
        if not 0 < sigma_min < sigma_max or not sigma_data > 0:
            raise ValueError(f"ConsistencyModel needs 0 < sigma_min < sigma_max and sigma_data > 0; "
                             f"got {sigma_min}, {sigma_max}, {sigma_data}")
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)
        self.config = {"class": "ConsistencyModel", "net": self.net.config, "sigma_data": self.sigma_data,
                       "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = _as_sigma(t, x, self.sigma_max)
        c_skip, c_out, c_in = consistency_scalings(sigma, self.sigma_data, self.sigma_min)
        tau = (torch.log(sigma.clamp_min(self.sigma_min) / self.sigma_min)
               / math.log(self.sigma_max / self.sigma_min)).clamp(0.0, 1.0)
        tau = tau.reshape(-1) if tau.dim() else tau
        out = self.net(c_in * x, tau) if y is None else self.net(c_in * x, tau, y)
        return c_skip * x + c_out * out


MODELS["ConsistencyModel"] = ConsistencyModel  # so that build_model(model.config) rebuilds it


# -- the teacher: any diffusion model read as an EDM denoiser ------------------------------------------
class EDMDenoiser:
    """D(x, sigma) = E[x0 | x0 + sigma z = x] from a model(x, t) predicting `target` on any `path`.

    x0 + sigma z and x_t / alpha_t = x0 + (sigma_t / alpha_t) eps are the same variable when
    sigma_t / alpha_t = sigma, so D(x, sigma) = x0_hat(alpha_t x, t) at that t (found by bisection on
    log SNR; Karras et al. 2022, eq. 4). x: [N, ...]; sigma: float or tensor [N].
    """

    def __init__(self, model: Callable, target: str, path: Path):
        self.model, self.target, self.path = model, target, path

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
        levels, where = torch.unique(sigma, return_inverse=True)  # a Karras grid has few distinct levels
        t = commitment_time(levels**2, self.path)[where]  # SNR(t) = 1 / sigma^2
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        alpha = self.path.alpha(t).to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
        t = t.to(dtype=x.dtype, device=x.device)
        x_t = alpha * x
        return convert(self.model(x_t, t), self.target, "x0", x_t, t, self.path)

    def config(self) -> dict:
        weights = getattr(self.model, "state_dict", None)
        digest = hashlib.sha256()
        if weights is not None:
            for value in weights().values():
                digest.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return {"model": getattr(self.model, "config", repr(self.model)), "weights": digest.hexdigest()[:16],
                "target": self.target, "path": self.path.config()}


def _column(sigma, x):
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))


def euler_teacher_step(denoiser: Callable, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x + (sigma_next - sigma) d, d = (x - D(x, sigma)) / sigma: Euler on dx/dsigma = (x - D) / sigma."""
    s, s_next = _column(sigma, x), _column(sigma_next, x)
    return x + (s_next - s) * (x - denoiser(x, sigma)) / s


def heun_teacher_step(denoiser: Callable, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Heun's step of dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Alg. 1), sigma_next > 0."""
    s, s_next = _column(sigma, x), _column(sigma_next, x)
    d = (x - denoiser(x, sigma)) / s
    x_euler = x + (s_next - s) * d
    d_next = (x_euler - denoiser(x_euler, sigma_next)) / s_next
    return x + (s_next - s) * (d + d_next) / 2


# -- the two objectives ---------------------------------------------------------------------------------
class _ConsistencyLoss:
    """Shared by CD and CT: draw (sigma_n, sigma_{n+1}, z) on the Karras grid, compare f_theta with the target network."""

    def __init__(self, sigma_min: float, sigma_max: float, rho: float):
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def scales(self, step: int, steps: int) -> int:
        raise NotImplementedError

    def draw(self, x0: torch.Tensor, generator, step: int, steps: int):
        n_scales = self.scales(step, steps)
        n = torch.randint(0, n_scales - 1, (x0.shape[0],), generator=generator, device=x0.device).to(torch.float64)
        sigma = karras_sigma(n, n_scales, self.sigma_min, self.sigma_max, self.rho).to(x0.dtype)
        sigma_next = karras_sigma(n + 1, n_scales, self.sigma_min, self.sigma_max, self.rho).to(x0.dtype)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return sigma, sigma_next, z

    def next_point(self, x0, x, sigma, sigma_next, z) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, ema, x0: torch.Tensor, sigma, sigma_next, z) -> torch.Tensor:
        """mean_n ||f_theta(x_n, sigma_n) - sg(f_ema(x_{n+1}, sigma_{n+1}))||^2 / D (l2, uniform weights)."""
        x = x0 + _column(sigma, x0) * z
        online = model(x, sigma / self.sigma_max)
        with torch.no_grad():
            x_next = self.next_point(x0, x, sigma, sigma_next, z)
            target = ema(x_next, sigma_next / self.sigma_max)
        return (online - target).square().flatten(1).mean(1).mean()

    def _config(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho, "code": CODE_HASH}


class ConsistencyDistillation(_ConsistencyLoss):
    """CD: x_{n+1} = one Heun step of the teacher from sigma_n to sigma_{n+1}; N fixed (40), target EMA fixed (0.95).

    teacher: a denoiser D(x, sigma) (EDMDenoiser(model, target, path) for a trained diffusion model,
    or an exact one); its config(), when it has one, joins the cache key. Use with
    fit(ConsistencyModel(net), data, path, objective=ConsistencyDistillation(teacher)).
    """

    def __init__(self, teacher: Callable, n_scales: int = 40, target_ema: float = 0.95, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, rho: float = RHO):
        super().__init__(sigma_min, sigma_max, rho)
        if int(n_scales) < 2 or not 0 <= target_ema < 1:
            raise ValueError(f"ConsistencyDistillation needs n_scales >= 2 and 0 <= target_ema < 1; "
                             f"got {n_scales}, {target_ema}")
        self.teacher, self.n_scales, self.target_ema = teacher, int(n_scales), float(target_ema)

    def scales(self, step, steps):
        return self.n_scales

    def next_point(self, x0, x, sigma, sigma_next, z):
        return heun_teacher_step(self.teacher, x, sigma, sigma_next)

    def ema_decay(self, step, steps):
        return self.target_ema

    def config(self):
        teacher = self.teacher.config() if callable(getattr(self.teacher, "config", None)) else repr(self.teacher)
        return {"method": "consistency distillation", "n_scales": self.n_scales, "target_ema": self.target_ema,
                "teacher": teacher, **self._config()}


def ct_schedule(step: int, steps: int, start_scales: int = 2, end_scales: int = 150,
                start_ema: float = 0.95) -> tuple[float, int]:
    """(target EMA rate mu(k), grid size N(k)) of consistency training at step k of K (cm/script_util.py):

        N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 (at least 2),
        mu(k) = exp(s0 log(mu0) / (N(k) - 1)).
    """
    inner = math.ceil(math.sqrt(step / steps * ((end_scales + 1) ** 2 - start_scales**2) + start_scales**2) - 1)
    inner = max(inner, 1)
    return math.exp(start_scales * math.log(start_ema) / inner), inner + 1


class ConsistencyTraining(_ConsistencyLoss):
    """CT: x_{n+1} = x0 + sigma_{n+1} z (no teacher); N(k) and the target EMA mu(k) grow as in `ct_schedule`."""

    def __init__(self, start_scales: int = 2, end_scales: int = 150, start_ema: float = 0.95,
                 sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
        super().__init__(sigma_min, sigma_max, rho)
        if not 2 <= int(start_scales) <= int(end_scales) or not 0 < start_ema < 1:
            raise ValueError(f"ConsistencyTraining needs 2 <= start_scales <= end_scales and 0 < start_ema < 1; "
                             f"got {start_scales}, {end_scales}, {start_ema}")
        self.start_scales, self.end_scales, self.start_ema = int(start_scales), int(end_scales), float(start_ema)

    def _schedule(self, step, steps):
        return ct_schedule(step, steps, self.start_scales, self.end_scales, self.start_ema)

    def scales(self, step, steps):
        return self._schedule(step, steps)[1]

    def next_point(self, x0, x, sigma, sigma_next, z):
        return x0 + _column(sigma_next, x0) * z

    def ema_decay(self, step, steps):
        return self._schedule(step, steps)[0]

    def config(self):
        return {"method": "consistency training", "start_scales": self.start_scales, "end_scales": self.end_scales,
                "start_ema": self.start_ema, **self._config()}


# -- the multistep sampler ------------------------------------------------------------------------------
def sample_consistency(model: Callable, x_T: torch.Tensor, ts=(0, 39), steps: int = 40, sigma_min: float = SIGMA_MIN,
                       sigma_max: float = SIGMA_MAX, rho: float = RHO, generator: torch.Generator | None = None,
                       trajectory: bool = False) -> FlowMapSample:
    """Consistency sampling (stochastic_iterative_sampler of the code of record): NFE = len(ts) - 1.

    model(x, t): f at t = sigma / sigma_max; x_T: [N, ...] ~ N(0, sigma_max^2 I); ts: increasing indices
    into the Karras grid of `steps` points, from 0 (sigma_max). For i < len(ts) - 1: x0 = f(x, sigma_{ts_i}),
    then x = x0 + sqrt(sigma_{ts_{i+1}}^2 - sigma_min^2) z, which adds nothing when ts ends at steps - 1
    (sigma_min). One step: ts = (0, steps - 1); two (ImageNet-64 CD): ts = (0, 22, 39) with steps = 40.
    """
    ts = [int(i) for i in ts]
    if len(ts) < 2 or ts[0] != 0 or any(b <= a for a, b in itertools.pairwise(ts)) or ts[-1] > steps - 1:
        raise ValueError(f"ts must hold at least 2 increasing indices into the grid of {steps} points, from 0, "
                         f"e.g. (0, {steps - 1}) for one step or (0, 22, 39) for two; got {ts}")
    sigmas = [float(karras_sigma(i, steps, sigma_min, sigma_max, rho)) for i in ts]
    x, states = x_T, [x_T]
    with torch.no_grad():
        for sigma, nxt in itertools.pairwise(sigmas):
            x0 = model(x, sigma / sigma_max)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x0 + math.sqrt(max(min(nxt, sigma_max) ** 2 - sigma_min**2, 0.0)) * z
            if trajectory:
                states.append(x)
    return FlowMapSample(x, len(ts) - 1, torch.stack(states) if trajectory else None)
