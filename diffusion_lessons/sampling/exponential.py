"""Exponential integrators of the PF-ODE: DDIM, DPM-Solver-2, DPM-Solver-2M, DPM-Solver++(2M) and (3M).

In lambda = log(alpha / sigma) (increasing as t goes from noise to data), the PF-ODE has the exact
solutions (Lu et al. 2022a, eq. 3.4; Lu et al. 2022b, eq. 8), for a step s -> t and h = lambda_t - lambda_s:

    x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat(x_lambda) dlambda   (noise prediction)
    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0_hat(x_lambda) dlambda     (data prediction)

The linear part is exact; only the prediction is approximated, by a polynomial in lambda. Order 0
of either is DDIM (Song et al. 2021a):

    x_t = alpha_t x0_hat + sigma_t eps_hat
        = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_hat      (DPM-Solver++-1)
        = (alpha_t / alpha_s) x_s - sigma_t (e^{h} - 1) eps_hat       (DPM-Solver-1).

A step onto sigma = 0 has h = +inf: every method here takes the first-order step there, whose limit is
x_t = alpha_t x0_hat (the model is not evaluated at sigma = 0). A start where alpha = 0 (rectified flow
at t = 1) has lambda = -inf: the data-prediction methods take it in their stride, the noise-prediction
ones (dpm2, dpm2m) refuse it.
"""
from __future__ import annotations

import math
from itertools import pairwise

import torch

from .grids import time_at_lambda
from .prediction import coefficients

__all__ = ["ddim_noise_scale"]


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def ddim_noise_scale(eta: float, sigma_next: float, h: float) -> float:
    """c1 of a DDIM step (Song et al. 2021a, eq. 16) on any path: the std of the noise it adds,

        c1 = eta sigma_t sqrt(1 - e^{-2h}),  h = lambda_t - lambda_s,

    which on a variance-preserving path is eta sqrt((1 - abar_s / abar_t)(1 - abar_t) / (1 - abar_s)), with
    abar = alpha^2; eta = 1 and adjacent steps give the DDPM posterior variance (check PR-2).
    """
    if eta == 0 or sigma_next == 0:
        return 0.0
    return eta * sigma_next * math.sqrt(-math.expm1(-2 * h))


def run_ddim(pred, x, times, generator, record, eta: float = 0.0):
    """ddim: x_t = alpha_t x0_hat + c2 eps_hat + c1 z, c1 = ddim_noise_scale(eta), c2 = sqrt(sigma_t^2 - c1^2).

    eta = 0: deterministic, the first-order exponential integrator (= DPM-Solver-1 = DPM-Solver++-1);
    eta = 1: the DDPM ancestral step (Song et al. 2021a, eqs. 12 and 16; the ermongroup/ddim generalized_steps).
    """
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"ddim: eta must be a number >= 0 (0 deterministic, 1 DDPM); got {eta!r}")
    for t, t_next in pairwise(times):
        _, _, lam = coefficients(pred.path, t)
        a_next, s_next, lam_next = coefficients(pred.path, t_next)
        x0, eps = pred(x, t, "x0", "eps")
        c1 = ddim_noise_scale(eta, s_next, lam_next - lam)
        x = a_next * x0 + math.sqrt(max(s_next**2 - c1**2, 0.0)) * eps
        if c1 > 0:
            x = x + c1 * _noise(x, generator)
        record(x)
    return x


def _noise_prediction_start(path, t, who):
    a, s, lam = coefficients(path, t)
    if not math.isfinite(lam):
        raise ValueError(f"{who} predicts noise and needs alpha > 0 and sigma > 0 at the start of each step; "
                         f"got alpha={a}, sigma={s} at t={t}. Start below t = 1 (rectified flow) or use a "
                         "data-prediction method (ddim, dpm++2m)")
    return a, s, lam


def run_dpm2(pred, x, times, generator, record, r1: float = 0.5):
    """dpm2: singlestep DPM-Solver-2 with noise prediction (Lu et al. 2022a, Alg. 1), two evaluations a step:

        s1 = t_lambda(lambda_s + r1 h),  u = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_hat(x, s),
        x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_hat(x, s) - sigma_t / (2 r1) (e^h - 1) (eps_hat(u, s1) - eps_hat(x, s)),

    t_lambda the inverse of lambda(t) (grids.time_at_lambda).
    """
    if not 0 < r1 < 1:
        raise ValueError(f"dpm2: r1 must lie in (0, 1) (Lu et al. use 1/2); got {r1!r}")
    for t, t_next in pairwise(times):
        a, _, lam = _noise_prediction_start(pred.path, t, "dpm2")
        a_next, s_next, lam_next = coefficients(pred.path, t_next)
        if s_next == 0:  # onto the data: the first-order limit
            x = a_next * pred(x, t, "x0")
            record(x)
            continue
        h = lam_next - lam
        eps = pred(x, t, "eps")
        t_mid = float(time_at_lambda(pred.path, lam + r1 * h))
        a_mid, s_mid, _ = coefficients(pred.path, t_mid)
        u = (a_mid / a) * x - s_mid * math.expm1(r1 * h) * eps
        eps_mid = pred(u, t_mid, "eps")
        x = (a_next / a) * x - s_next * math.expm1(h) * eps - s_next / (2 * r1) * math.expm1(h) * (eps_mid - eps)
        record(x)
    return x


def run_dpm2m(pred, x, times, generator, record):
    """dpm2m: multistep DPM-Solver-2M with noise prediction (the baseline of Lu et al. 2022b), r = h_prev / h:

        x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) [m0 + (m0 - m1) / (2 r)],  m = eps_hat (first step: m1 absent).
    """
    history = []  # (lambda, eps_hat) of the previous step
    for t, t_next in pairwise(times):
        a, _, lam = _noise_prediction_start(pred.path, t, "dpm2m")
        a_next, s_next, lam_next = coefficients(pred.path, t_next)
        x0, eps = pred(x, t, "x0", "eps")
        if s_next == 0:
            x = a_next * x0
        else:
            h, d = lam_next - lam, eps
            if history:
                r = (lam - history[0]) / h
                d = eps + (eps - history[1]) / (2 * r)
            x = (a_next / a) * x - s_next * math.expm1(h) * d
        history = [lam, eps]
        record(x)
    return x


def _multistep_data(pred, x, times, record, order: int, variant: str, lower_order_final: bool):
    """DPM-Solver++ multistep of `order` (Lu et al. 2022b, Alg. 2; the dpm-solver repository's
    multistep_dpm_solver_{second,third}_update): the previous steps' x0_hat give finite differences in lambda."""
    lams, preds = [], []  # lambdas and x0_hat of the evaluations so far
    n = len(times) - 1
    for i, (t, t_next) in enumerate(pairwise(times)):
        _, s, lam = coefficients(pred.path, t)
        a_next, s_next, lam_next = coefficients(pred.path, t_next)
        m0 = pred(x, t, "x0")
        lams, preds = (lams + [lam])[-3:], (preds + [m0])[-3:]
        h = lam_next - lam
        k = _usable_order(lams, h, order)
        if lower_order_final and n < 10:
            k = min(k, n - i)
        phi1 = math.expm1(-h)  # e^{-h} - 1; -1 onto the data
        x = (s_next / s) * x - a_next * phi1 * m0
        if k >= 2:
            r0 = (lams[-1] - lams[-2]) / h
            d1_0 = (m0 - preds[-2]) / r0
            if k == 2:
                coef = phi1 / h + 1 if variant == "taylor" and order == 2 else -0.5 * phi1
                x = x + a_next * coef * d1_0
            else:
                r1 = (lams[-2] - lams[-3]) / h
                d1_1 = (preds[-2] - preds[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h + 1
                phi3 = phi2 / h - 0.5
                x = x + a_next * phi2 * d1 - (2 if variant == "taylor" else 1) * a_next * phi3 * d2
        record(x)
    return x


def _usable_order(lams: list[float], h: float, order: int) -> int:
    """The highest order <= `order` whose differences are finite: every lambda in the window and h finite."""
    if not math.isfinite(h):
        return 1
    k = 1
    while k < min(order, len(lams)) and all(math.isfinite(v) for v in lams[-(k + 1):]):
        k += 1
    return k


DPM_VARIANTS = ("dpmsolver", "taylor")


def run_dpmpp_2m(pred, x, times, generator, record, variant: str = "dpmsolver", lower_order_final: bool = False):
    """dpm++2m: DPM-Solver++(2M), data prediction, one evaluation a step (Lu et al. 2022b, Alg. 2), r = h_prev / h,
    phi1 = e^{-h} - 1, D1 = (m0 - m1) / r, m = x0_hat:

        variant "dpmsolver":  x_t = (sigma_t / sigma_s) x - alpha_t phi1 m0 - alpha_t phi1 D1 / 2
        variant "taylor":     x_t = (sigma_t / sigma_s) x - alpha_t phi1 m0 + alpha_t (phi1 / h + 1) D1.

    The first step is first order. lower_order_final: with fewer than 10 steps the last step is first order
    too (the repository's default for its `sample`).
    """
    if variant not in DPM_VARIANTS:
        raise ValueError(f"dpm++2m: unknown variant {variant!r}; valid variants: {', '.join(DPM_VARIANTS)}")
    return _multistep_data(pred, x, times, record, 2, variant, lower_order_final)


DPM3_VARIANTS = ("taylor", "repository")


def run_dpmpp_3m(pred, x, times, generator, record, variant: str = "taylor", lower_order_final: bool = False):
    """dpm++3m: DPM-Solver++(3M), multistep in lambda, after a first-order and a second-order ("dpmsolver") start.
    With r0 = h0 / h, r1 = h1 / h, D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) ~ h x0_hat',  D2 = (D1_0 - D1_1) / (r0 + r1) ~ h^2 x0_hat'' / 2,
    phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2 (so that int_0^h e^{u-h} u^2/2 du = -h^2 phi3):

        variant "taylor":      x_t = (sigma_t / sigma_s) x - alpha_t phi1 m0 + alpha_t phi2 D1 - 2 alpha_t phi3 D2
        variant "repository":  the same with - alpha_t phi3 D2, as in the dpm-solver repository's
                               multistep_dpm_solver_third_update (and diffusers').

    "taylor" integrates a quadratic x0_hat(lambda) exactly and is third order; "repository" halves the
    second-derivative term and is second order (see the tests).
    """
    if variant not in DPM3_VARIANTS:
        raise ValueError(f"dpm++3m: unknown variant {variant!r}; valid variants: {', '.join(DPM3_VARIANTS)}")
    return _multistep_data(pred, x, times, record, 3, variant, lower_order_final)
