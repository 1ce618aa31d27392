"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024): one network for every step size, taught by itself.

A shortcut model s(x, t, d) is the average velocity over a step of size d, so that x - d s(x, t, d)
is x moved from t to t - d (the course's time: t = 0 data, t = 1 noise; the paper's runs the other way,
t' = 1 - t, with velocity x_data - x_noise = -u). The exact map satisfies the self-consistency

    s(x, t, 2d) = [s(x, t, d) + s(x', t - d, d)] / 2,     x' = x - d s(x, t, d),

because two half steps of the exact flow map are one full step (the semigroup property). The code
of record (kvfrans/shortcut-models, targets_shortcut.py: get_targets) trains it on a batch split in two:

* B / bootstrap_every samples get self-consistency targets: levels d = 2^-k, k = 0 .. log2(T) - 1
  (equal shares, the remainder at d = 1), t on the d-grid {d, 2d, ..., 1}; the target for s(x_t, t, d) is
  clip((u1 + u2) / 2, -4, 4) with u1 = s(x_t, t, d/2), u2 = s(clip(x_t - d/2 u1, -4, 4), t - d/2, d/2),
  both from the EMA network (bootstrap_ema), without gradient;
* the rest get flow-matching targets u = alpha'_t x0 + sigma'_t eps, attached to the smallest level
  d = 1/T (T = denoise_timesteps = 128), with t on the 1/T-grid.

The network here is a two-time model(x, t, r) with r = t - d (nets.FlowMapMLP / FlowMapUNet), read as
the average velocity (flow_maps.AverageVelocityMap); n-step sampling: sample_flow_map on linspace(1, 0, n + 1).
"""
from __future__ import annotations

import hashlib
import math
import pathlib

import torch

from ..paths import Path, RectifiedFlow

__all__ = ["ShortcutObjective", "self_consistency_target"]

CODE_HASH = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:16]  # joins the cache key


def self_consistency_target(net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, clip: float = 4.0) -> torch.Tensor:
    """clip((u1 + u2) / 2) for the step t -> r (d = t - r), from two half steps of `net` (module docstring).

    net: model(x, t, r) read as an average velocity; x: [N, ...]; t, r: tensors [N]. No gradient.
    """
    mid = (t + r) / 2
    half = (t - mid).reshape(-1, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        u1 = net(x, t, mid)
        u2 = net((x - half * u1).clamp(-clip, clip), mid, r)
    return ((u1 + u2) / 2).clamp(-clip, clip)


class ShortcutObjective:
    """fit's objective for shortcut models: fit(FlowMapMLP(dim), data, path, objective=ShortcutObjective()).

    path: the interpolation (rectified flow in the paper; the code's x_t uses 1 - (1 - 1e-5) t' for the
    noise, a 1e-5 floor left out here). denoise_timesteps T (a power of 2), bootstrap_every, use_ema
    and clip as in the code of record.
    """

    def __init__(self, path: Path | None = None, denoise_timesteps: int = 128, bootstrap_every: int = 8,
                 use_ema: bool = True, clip: float = 4.0):
        levels = math.log2(denoise_timesteps) if denoise_timesteps > 0 else -1
        if levels < 1 or levels != int(levels) or int(bootstrap_every) < 1:
            raise ValueError(f"ShortcutObjective needs denoise_timesteps a power of 2 (>= 2) and bootstrap_every >= 1; "
                             f"got {denoise_timesteps}, {bootstrap_every}")
        self.path = RectifiedFlow() if path is None else path
        self.levels, self.bootstrap_every = int(levels), int(bootstrap_every)
        self.use_ema, self.clip = bool(use_ema), float(clip)

    def draw(self, x0: torch.Tensor, generator, step: int, steps: int):
        """(t [B], r [B], eps like x0, bootstrap [B] bool): the first B // bootstrap_every rows bootstrap."""
        b, kw = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
        n_boot = b // self.bootstrap_every
        k = torch.arange(self.levels - 1, -1, -1, device=x0.device).repeat_interleave(n_boot // self.levels)
        k = torch.cat([k, k.new_zeros(n_boot - len(k))])  # the remainder at d = 1
        k = torch.cat([k, torch.full((b - n_boot,), self.levels, device=x0.device)])  # flow matching: d = 1/T
        sections = 2.0 ** k.to(x0.dtype)
        i = torch.floor(torch.rand(b, generator=generator, **kw) * sections)  # t' = i / 2^k, the paper's time
        t = 1 - i / sections
        eps = torch.randn(x0.shape, generator=generator, **kw)
        return t, t - 1 / sections, eps, torch.arange(b, device=x0.device) < n_boot

    def loss(self, model, ema, x0: torch.Tensor, t, r, eps, bootstrap) -> torch.Tensor:
        """mean_n ||model(x_t, t, r) - target||^2 / D with the targets of the module docstring."""
        tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
        x_t = self.path.alpha(tt) * x0 + self.path.sigma(tt) * eps
        target = self.path.dalpha(tt) * x0 + self.path.dsigma(tt) * eps
        if bool(bootstrap.any()):
            teacher = ema if self.use_ema else model
            target = target.clone()
            target[bootstrap] = self_consistency_target(teacher, x_t[bootstrap], t[bootstrap], r[bootstrap], self.clip)
        return (model(x_t, t, r) - target).square().flatten(1).mean(1).mean()

    def ema_decay(self, step, steps):
        return None  # fit's EMA (0.999 with warm-up), the code's target_update_rate

    def config(self) -> dict:
        return {"method": "shortcut", "path": self.path.config(), "denoise_timesteps": 2**self.levels,
                "bootstrap_every": self.bootstrap_every, "use_ema": self.use_ema, "clip": self.clip,
                "code": CODE_HASH}
