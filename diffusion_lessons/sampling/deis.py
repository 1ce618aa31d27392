"""tAB-DEIS (Zhang & Chen 2023): the exponential integrator of the PF-ODE, multistep in the noise prediction.

With kappa = sigma / alpha (the book's sigma~, EDM's noise level), the PF-ODE of any path with alpha > 0 is
d(x / alpha) = eps_hat dkappa, so a step s -> t is exactly

    x_t / alpha_t = x_s / alpha_s + int_{kappa_s}^{kappa_t} eps_hat(x_tau, tau) dkappa(tau) .

The linear part is exact; tAB-DEIS of order k replaces eps_hat along the step by the polynomial *in t* through
the last k evaluations (t_j, eps_j) (Adams–Bashforth; fewer points on the first k - 1 steps) and integrates it
exactly against dkappa:

    x_t / alpha_t = x_s / alpha_s + sum_j C_j eps_j,    C_j = int_{kappa_s}^{kappa_t} L_j(tau(kappa)) dkappa,

with L_j the Lagrange basis polynomials of the nodes t_j. The C_j are computed by Gauss–Legendre quadrature in
kappa (tau(kappa) is smooth, also onto sigma = 0, kappa = 0). Order 1 is DDIM; 1 NFE a step. On GMM2 with the
exact score, orders 5-7 on a power grid in t are the first pairs of this package to reach the accuracy of
1000-step Euler within 20 NFE (bench/RESULTS.md).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .exponential import _noise_prediction_start
from .grids import time_at_lambda

__all__ = ["deis_coefficients"]

_GAUSS = np.polynomial.legendre.leggauss(24)  # nodes and weights on [-1, 1]
MAX_ORDER = 8


def deis_coefficients(path, nodes, t: float, t_next: float) -> list[float]:
    """C_j = int_{kappa(t)}^{kappa(t_next)} L_j(tau(kappa)) dkappa for the Lagrange basis L_j of `nodes` (times).

    kappa = sigma / alpha; tau(kappa) is the time with lambda = -log kappa (``time_at_lambda``). Their sum is
    kappa(t_next) - kappa(t): the step of DDIM.
    """
    taus, weights = _quadrature(path, [t, t_next])
    return _basis_integrals(nodes, taus[0], weights[0])


def _quadrature(path, times) -> tuple[np.ndarray, np.ndarray]:
    """For every step of `times`: the Gauss–Legendre nodes in kappa as times tau [S, Q], and their weights [S, Q]
    (one bisection for the whole grid)."""
    kappa = np.array([float(path.sigma(t)) / float(path.alpha(t)) for t in times])
    x, w = _GAUSS
    k_a, k_b = kappa[:-1, None], kappa[1:, None]
    kappas = 0.5 * (k_b - k_a) * x + 0.5 * (k_b + k_a)  # interior points: kappa > 0 even onto sigma = 0
    return time_at_lambda(path, torch.from_numpy(-np.log(kappas))).numpy(), 0.5 * (k_b - k_a) * w


def _basis_integrals(nodes, taus: np.ndarray, weights: np.ndarray) -> list[float]:
    coeffs = []
    for j, t_j in enumerate(nodes):
        basis = np.ones_like(taus)
        for m, t_m in enumerate(nodes):
            if m != j:
                basis *= (taus - t_m) / (t_j - t_m)
        coeffs.append(float((weights * basis).sum()))
    return coeffs


def run_deis(pred, x, times, generator, record, order: int = 3):
    """deis: tAB-DEIS of `order` k (1-8): x_t = alpha_t (x_s / alpha_s + sum_j C_j eps_j), the last k eps."""
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"deis: order must be a whole number from 1 to {MAX_ORDER}; got {order!r}")
    for t in times[:-1]:
        _noise_prediction_start(pred.path, t, "deis")
    alphas = [float(pred.path.alpha(t)) for t in times]
    taus, weights = _quadrature(pred.path, times)
    history: list[tuple[float, torch.Tensor]] = []
    for i, t in enumerate(times[:-1]):
        history = [*history, (t, pred(x, t, "eps"))][-order:]
        coeffs = _basis_integrals([t_j for t_j, _ in history], taus[i], weights[i])
        step = sum(c * eps for c, (_, eps) in zip(coeffs, history))
        x = alphas[i + 1] * (x / alphas[i] + step)
        record(x)
    return x
