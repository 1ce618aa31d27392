"""One step of the JKO scheme, in one dimension (Jordan, Kinderlehrer & Otto 1998).

The Wasserstein-2 gradient flow of the free energy F[p] = int V p + int p log p (for V(x) = x^2 / 2 this is
KL(p || N(0, 1)) up to a constant, the energy of chapter 9) is the limit, as the step tau -> 0, of the
minimising movement

    p_{k+1} = argmin_p  F[p] + W2(p, p_k)^2 / (2 tau).

In one dimension a law of n equal masses is its sorted points y_1 < ... < y_n (its quantiles); the W2^2
between two such laws is the mean squared distance between matching points, and the density between two
neighbours is (1 / (n - 1)) / (y_{i+1} - y_i). The step then minimises

    J(y) = (1/n) sum_i V(y_i) - (1/(n-1)) sum_i log(y_{i+1} - y_i) + (1 / (2 tau n)) sum_i (y_i - x_i)^2,

a strictly convex function of y (for convex V) whose Hessian is tridiagonal: Newton's method, with steps
halved until every gap stays positive and J decreases, solves it to round-off in a few iterations.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import solve_banded

__all__ = ["jko_step"]


def _objective(y, x, tau, potential, c):
    return potential(y).mean() - c * np.log(np.diff(y)).sum() + ((y - x) ** 2).sum() / (2 * tau * len(y))


def jko_step(x: torch.Tensor, tau: float, potential: Callable = lambda y: 0.5 * y**2,
             grad: Callable = lambda y: y, hess: Callable = np.ones_like, max_iter: int = 100,
             tol: float = 1e-13) -> torch.Tensor:
    """One JKO step of size tau > 0 from the law of the sorted points x [n] (n >= 3) for the free energy
    int V p + int p log p; V (numpy, vectorised) with its first and second derivatives grad and hess
    (default V = x^2 / 2, the Ornstein-Uhlenbeck flow towards N(0, 1)). Returns the new points [n], sorted,
    float64. ValueError for unsorted or repeated points, or tau <= 0."""
    y0 = np.asarray(torch.as_tensor(x, dtype=torch.float64).cpu(), dtype=np.float64)
    if y0.ndim != 1 or len(y0) < 3 or not np.all(np.diff(y0) > 0):
        raise ValueError("jko_step needs at least 3 strictly increasing points x [n] (sort them first)")
    if not tau > 0:
        raise ValueError(f"jko_step needs a step tau > 0; got {tau}")
    n, c = len(y0), 1.0 / (len(y0) - 1)
    y = y0.copy()
    for _ in range(max_iter):
        gap = np.diff(y)
        inv, inv2 = np.r_[1 / gap, 0.0], np.r_[1 / gap**2, 0.0]
        prev, prev2 = np.r_[0.0, 1 / gap], np.r_[0.0, 1 / gap**2]
        g = grad(y) / n + c * (inv - prev) + (y - y0) / (tau * n)
        bands = np.zeros((3, n))
        bands[1] = hess(y) / n + c * (inv2 + prev2) + 1 / (tau * n)
        bands[0, 1:] = bands[2, :-1] = -c / gap**2
        step = -solve_banded((1, 1), bands, g)
        size, before = 1.0, _objective(y, y0, tau, potential, c)
        while size > 1e-12:
            trial = y + size * step
            if np.all(np.diff(trial) > 0) and _objective(trial, y0, tau, potential, c) <= before + 1e-15 * abs(before):
                break
            size /= 2
        y = trial
        if np.abs(size * step).max() < tol * (1 + np.abs(y).max()):
            break
    return torch.from_numpy(y)
