"""Restoration with a mean-reverting diffusion: train a network that sees the degraded image, sample with MRS.

Training happens on the Gaussian path of y = x - mu (`processes.MeanReverting`): a batch holds the clean
image x0 and its degraded copy mu stacked as channels, y0 = x0 - mu is noised along the path, and the
network, shown y_t, t and mu, regresses the noise (the IR-SDE's and MRS's "noise" fit target):

    L = E_{t, eps} || net(y_t, t, cond=mu) - eps ||^2,   y_t = alpha_t (x0 - mu) + sigma_t eps,  t ~ U(t_min, 1).

`ConditionalDenoising` is this loss as a `fit` objective. `restore` samples the trained network from
the degraded images, by MRS (`mrs.mrs_sample`) or by Euler–Maruyama on the reverse SDE, the IR-SDE's own
sampler, and returns the restored images in x.
"""
from __future__ import annotations

import torch

from .objectives import draw_noise
from .processes import Process

__all__ = ["RESTORE_SAMPLERS", "ConditionalDenoising", "restore"]

RESTORE_SAMPLERS = ("mrs", "em")


class ConditionalDenoising:
    """The conditional noise-prediction loss above, as an objective for fit(..., objective=...).

    Batches are [N, channels + cond channels, ...]: the first `channels` channels are x0, the rest the
    condition (mu). process: a Process with a shift change of variables (MeanReverting, OUVE).
    """

    def __init__(self, process: Process, channels: int = 1, t_min: float = 1e-3):
        if not 0 <= t_min < 1 or int(channels) < 1:
            raise ValueError(f"ConditionalDenoising needs channels >= 1 and t_min in [0, 1); got {channels}, {t_min}")
        self.process, self.channels, self.t_min = process, int(channels), float(t_min)

    def config(self) -> dict:
        return {"process": self.process.config(), "channels": self.channels, "t_min": self.t_min}

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, cond) from a batch [N, channels + cond channels, ...]."""
        if batch.dim() < 2 or batch.shape[1] <= self.channels:
            raise ValueError(f"a conditional batch stacks x0 ({self.channels} channels) and the condition along "
                             f"dim 1; got shape {list(batch.shape)}")
        return batch[:, : self.channels], batch[:, self.channels:]

    def draw(self, batch: torch.Tensor, generator, step: int, steps: int):
        """u ~ U(0, 1) [N] and eps like x0: the randomness of one step."""
        return draw_noise(self.split(batch)[0], generator)

    def loss(self, model, ema, batch: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x0, cond = self.split(batch)
        t = (self.t_min + (1 - self.t_min) * u).clamp(max=1 - torch.finfo(x0.dtype).eps)
        y_t, _ = self.process.path.sample(self.process.to_path(x0, 0.0, cond), t, eps=eps)
        return (model(y_t, t, cond=cond) - eps).square().mean()

    def ema_decay(self, step: int, steps: int):
        return None  # fit's own EMA rate


def restore(net, process: Process, mu: torch.Tensor, sampler: str = "mrs", n_steps: int = 20, order: int = 2,
            solver: str = "ode", generator: torch.Generator | None = None, batch: int = 512) :
    """Restored images [N, ...] from degraded ones mu [N, ...] with a network net(y, t, cond=mu) predicting eps.

    sampler "mrs": MRS with n_steps steps (order, solver as `mrs_sample`); "em": Euler–Maruyama on the reverse
    SDE of y with n_steps uniform steps from t = 1 to 0 (no noise on the last). Both start at mu + lam z.
    Runs in batches under torch.no_grad(); nfe counts network evaluations per image.
    """
    from .mrs import mrs_sample  # (until the sampling package lands)
    from .sampling.grids import time_grid
    from .sampling.methods import SampleResult, sample

    if sampler not in RESTORE_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(RESTORE_SAMPLERS)}")
    dtype = next(net.parameters()).dtype
    out, nfe = [], 0
    for m in mu.split(batch):
        m = m.to(dtype)

        def field(y, t, m=m):
            return net(y, t, cond=m)

        with torch.no_grad():
            if sampler == "mrs":
                result = mrs_sample(field, process, m, n_steps, order, solver, generator=generator)
            else:
                y_T = process.prior_sample(m, generator) - m
                result = sample(field, process.path, y_T, time_grid(n_steps, 1.0, 0.0), "em", "eps", generator)
                result = SampleResult(result.x + m, result.nfe)
        out.append(result.x)
        nfe = result.nfe
    return SampleResult(torch.cat(out), nfe)
