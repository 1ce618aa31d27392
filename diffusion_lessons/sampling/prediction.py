"""A model read as whatever a sampler needs, and the count of its evaluations.

Every sampler of `dl.sample` asks its model through one `Prediction`: model(x, t) predicts one
target (eps, x0, score, velocity or v) and `dl.convert` turns it into the ones the sampler's update is
written in (DDIM and DPM-Solver++ want x0_hat, DPM-Solver eps_hat, Heun and RK4 the PF-ODE velocity,
Euler–Maruyama the score). This is the only place in the subpackage that converts between targets, and
the only place that calls the model, so `nfe` counts every network evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..paths import TARGETS, Path, convert

__all__ = ["Prediction", "coefficients"]


def coefficients(path: Path, t: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) as Python floats.

    lambda = +inf where sigma = 0 (the data), -inf where alpha = 0 (rectified flow at t = 1).
    """
    a, s = float(path.alpha(t)), float(path.sigma(t))
    if a <= 0:
        return a, s, -math.inf
    return a, s, (math.log(a) - math.log(s)) if s > 0 else math.inf


class Prediction:
    """model(x, t) -> prediction of `target`, read as any target; counts the calls (`nfe`).

    pred(x, t, "x0") -> x0_hat; pred(x, t, "x0", "eps") -> (x0_hat, eps_hat) from ONE evaluation.
    t is passed to the model as a Python float (one time for the whole batch).
    """

    def __init__(self, model: Callable, path: Path, target: str):
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
        if not callable(model):
            raise TypeError(f"model must be a callable model(x, t); got {type(model).__name__}")
        self.model, self.path, self.target, self.nfe = model, path, target, 0

    def raw(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """One evaluation of the model, its output checked to have x's shape."""
        self.nfe += 1
        out = self.model(x, float(t))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"model(x, t) must return a tensor shaped like x {list(x.shape)}; "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        return out

    def __call__(self, x: torch.Tensor, t: float, *targets: str):
        out = self.raw(x, t)
        values = tuple(convert(out, self.target, dst, x, float(t), self.path) for dst in targets)
        return values[0] if len(values) == 1 else values

    def field(self, target: str) -> Callable:
        """This model as a plain field(x, t) -> prediction of `target` (each call counts)."""
        return lambda x, t: self(x, t, target)
