"""The training losses of the three views, sharing one draw of (x0, t, eps) (Ho et al. 2020; Song et al. 2021).

Draw t ~ U(t_min, 1), eps ~ N(0, I) and x_t = alpha_t x0 + sigma_t eps. Each view regresses the
network on a *conditional* target that is known given (x0, eps):

    variational (DDPM "simple" loss)   eps
    score (denoising score matching)   grad_x log p(x_t | x0) = -(x_t - alpha_t x0) / sigma_t^2 = -eps / sigma_t
    flow (conditional flow matching)   d x_t / dt = alpha'_t x0 + sigma'_t eps
    denoising (x0-prediction)          x0

and the minimiser is the conditional mean of the target given x_t (eps_hat, the score, the velocity,
Tweedie's x0_hat). Given x_t the four targets are affine in one another, so the four losses differ
only by a weight in t: for a model f_eps and the equivalent f_score = -f_eps / sigma,

    ||f_score - score||^2 = ||f_eps - eps||^2 / sigma_t^2,
    ||f_x0 - x0||^2       = ||f_eps - eps||^2 sigma_t^2 / alpha_t^2,
    ||f_u - u||^2         = ||f_eps - eps||^2 (sigma'_t - alpha'_t sigma_t / alpha_t)^2.

Song et al.'s likelihood weighting lambda(t) = g^2(t) on the score error makes the loss the
continuous-time ELBO (up to constants): E g^2(t) ||s_hat - score||^2.
"""
from __future__ import annotations

from typing import Callable

import torch

from .paths import TARGETS, Path, convert, expand_time, from_x0_eps

__all__ = ["draw", "draw_noise", "target_value", "loss", "sigma_squared_weight"]


def draw(x0: torch.Tensor, path: Path, t_min: float = 1e-3, generator: torch.Generator | None = None,
         noise: tuple[torch.Tensor, torch.Tensor] | None = None):
    """One draw t ~ U(t_min, 1) [N], eps ~ N(0, I) like x0, x_t = alpha_t x0 + sigma_t eps. Returns (t, eps, x_t).

    t stays strictly below 1 (in x0's dtype), where the SDE coefficients of some paths (rf) blow up.
    noise: the pair (u, eps) from `draw_noise`, drawn beforehand (t = t_min + (1 - t_min) u); then
    nothing is drawn here and the result is the same as drawing with the generator draw_noise used.
    """
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1); got {t_min}")
    u, eps = draw_noise(x0, generator) if noise is None else noise
    t = (t_min + (1 - t_min) * u).clamp(max=1 - torch.finfo(x0.dtype).eps)
    x_t, eps = path.sample(x0, t, eps=eps)
    return t, eps, x_t


def draw_noise(x0: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The randomness of one loss evaluation, in the order `draw` draws it: u ~ U(0, 1) [N], eps ~ N(0, I) like x0.

    Drawing it apart lets a trainer draw the noise of a whole batch and hand each process its rows,
    or keep the random generator out of a compiled loss.
    """
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor; got {x0.dtype}: convert it with x0.float()")
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    return u, torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)


def target_value(target: str, x0: torch.Tensor, eps: torch.Tensor, t, path: Path) -> torch.Tensor:
    """The conditional regression target for x_t = alpha_t x0 + sigma_t eps (shape of x0).

    eps -> eps;  x0 -> x0;  score -> -eps / sigma_t;  velocity -> alpha'_t x0 + sigma'_t eps;
    v -> (alpha_t eps - sigma_t x0) / sqrt(alpha_t^2 + sigma_t^2) (Salimans & Ho's v on every path; see
    paths.convert).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    return from_x0_eps(x0, eps, target, expand_time(t, x0), path)


def sigma_squared_weight(path: Path) -> Callable:
    """Song et al.'s weight w(t) = sigma_t^2 on the score loss, as a ``weighting=`` for `loss` and `fit`.

    sigma_t^2 ||s_hat - (-eps / sigma_t)||^2 = ||eps_hat - eps||^2 with eps_hat = -sigma_t s_hat: the weighted score
    loss is the eps loss of the same network read through Tweedie. Returns t [N] -> sigma_t^2 [N].

    The returned function is named ``sigma_squared`` in module ``__main__``, the name fit's cache key gave the
    weight when the chapters defined it in the notebook, so the shipped weights and the model cache still match.
    """
    def sigma_squared(t):
        return path.sigma(t) ** 2

    sigma_squared.__module__, sigma_squared.__qualname__ = "__main__", "sigma_squared"
    return sigma_squared


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||^2 / D per sample: [N, ...] -> [N]."""
    return (a - b).square().flatten(1).mean(dim=1)


def loss(model: Callable, x0: torch.Tensor, path: Path, target: str = "eps",
         weighting: str | Callable | None = None, t_min: float = 1e-3,
         generator: torch.Generator | None = None, y: torch.Tensor | None = None,
         noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean regression loss of a model that predicts ``target`` directly, on one draw of (t, eps, x_t).

    L = mean_n lambda(t_n) ||model(x_t, t) - target||^2 / D, with x0 [N, ...] a data batch, D the
    number of coordinates per sample and the weight

    * ``None``: lambda = 1 (DDPM's simple loss for eps, flow matching for velocity, ...);
    * a callable ``weighting(t) -> [N]``: lambda(t) on the error of ``target``;
    * ``"likelihood"``: Song's lambda = g^2(t) on the *score* error, whatever the target:
      L = mean g^2(t) ||s_hat - (-eps / sigma_t)||^2 / D with s_hat = convert(model output, target -> score).

    y: optional labels passed on as ``model(x_t, t, y)``. noise: a pre-drawn (u, eps) from `draw_noise`.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    t, eps, x_t = draw(x0, path, t_min, generator, noise)
    pred = model(x_t, t) if y is None else model(x_t, t, y)
    if pred.shape != x0.shape:
        raise ValueError(f"the model must return a tensor like x {list(x0.shape)}; got {list(pred.shape)}")
    if weighting == "likelihood":
        score_hat = convert(pred, target, "score", x_t, t, path)
        return (path.g2(t) * _per_sample_mse(score_hat, target_value("score", x0, eps, t, path))).mean()
    error = _per_sample_mse(pred, target_value(target, x0, eps, t, path))
    if weighting is None:
        return error.mean()
    if callable(weighting):
        return (weighting(t) * error).mean()
    raise ValueError(f"unknown weighting {weighting!r}; use None, 'likelihood' or a callable lambda(t)")
