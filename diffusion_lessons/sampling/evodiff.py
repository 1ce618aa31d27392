"""EVODiff (Li, Chen & Zeng, NeurIPS 2025): a second-order multistep sampler with variance-driven gates.

Written from the authors' code of record (ShiguiLi/EVODiff, `code_demo/edm_cifar10/samplers/evodiff.py`,
`EVODiff_edm.sample`, order 2), which works in EDM's variables: x~ = x / alpha, kappa = sigma~ = sigma / alpha,
data prediction m = x0_hat. Here it runs on any path through those variables (as `edm` does). A step
s -> t has h = 1/kappa_t - 1/kappa_s (= e^{lambda_t} - e^{lambda_s}) and the DDIM / DPM-Solver++-1 part

    x_E = (kappa_t / kappa_s) x~ + kappa_t h m0.

An order-2 step t_{-1} -> t_0 -> t (m1 = m(t_{-1}), m0 = m(t_0)) with proj(a, b) = clip(<a, b> / <b, b>, -2, 2),
the inner product per sample and per channel:

    r_log = log(kappa_{-1} / kappa_0) / log(kappa_0 / kappa_t),  w = (1 - ((kappa_t + kappa_end) / (kappa_start + kappa_end))^2) / 2,
    b = sqrt((kappa_t / kappa_0) / (kappa_0 / kappa_{-1})),   r1 = (1 - w) b + w proj(m0, m1),  D1 = m0 - r1 m1,
    r_i = clip(sigmoid(|r1| / 4) r_log, r_log / 4, 3 r_log / 2),  probe x_p = x_E + kappa_t h D1 / (2 r_i),
    m_t = m(x_p, t)  (the step's one evaluation, kept as the next m0),
    r2 = (1 - w) b + w proj(m_t, m0),  D2 = m_t - r2 m0,  B- = D1 / (r_log h),  B+ = r_log D2 / h,
    eta = sigmoid(|proj(B+ + B-, B+ - B-)| / 2) / 2,  B = -eta D1 / r_log + (1 - eta) r_log D2,
    P = x_p - x_E - kappa_t h B / (2 r_i),  zeta* = proj(P, D1) / (h kappa_t),
    zeta = sigmoid(|zeta*| - 1/2)  (<= 20 steps; the code's "consistency" gate above 20),
    x~_t = x_E + kappa_t h B / (2 zeta).

The final step (lower_order_final) is the code's order-1 step, which is NOT DDIM:
x~_t = (1 - sqrt(kappa_t kappa_s)) x_E + kappa_t h (m0 - r_f m1) / 2, r_f = 1 - sqrt(kappa_t / kappa_s) / 2
(kappa_t / kappa_s < 1/2) or 1 - sqrt(kappa_t / kappa_s - 1/2). It depends on the units of kappa (EDM's sigma).
The gates are the code's constants (sigmoid, temperature 1/4, shift 1/2, the clips).

One change to the authors' arithmetic: proj(a, b) = 0 where <b, b> = 0 (they divide 0 by 0 when D1 = 0,
e.g. for a point mass, and return NaN).
"""
from __future__ import annotations

import math

import torch

from .prediction import coefficients

__all__ = ["projection_coefficient"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> per sample and per channel: [N, C, ...] -> [N, C, 1, ...]; vectors [N, D] -> [N, 1]."""
    if a.dim() <= 2:
        return (a * b).flatten(1).sum(1, keepdim=True)
    return (a * b).flatten(2).sum(2).reshape(a.shape[0], a.shape[1], *([1] * (a.dim() - 2)))


def projection_coefficient(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """clip(<a, b> / <b, b>, -2, 2) per sample and channel, 0 where <b, b> = 0 (the authors' code gives NaN there)."""
    bb = _dot(b, b)
    safe = torch.where(bb > 0, bb, torch.ones_like(bb))
    return torch.where(bb > 0, _dot(a, b) / safe, torch.zeros_like(bb)).clamp(-2.0, 2.0)


def _levels(path, times):
    """(alpha_t, kappa_t = sigma_t / alpha_t) for every grid time; kappa must be finite and > 0."""
    out = []
    for t in times:
        a, s, _ = coefficients(path, t)
        if not (a > 0 and s > 0):
            raise ValueError(f"evodiff steps in sigma / alpha and needs alpha > 0 and sigma > 0 at every grid time; "
                             f"got alpha={a}, sigma={s} at t={t} (use denoise_to_zero=True to end on the data)")
        out.append((a, s / a))
    return out


def _final_order_one(x_tilde, m0, m1, kappa_s, kappa_t, h):
    ratio = kappa_t / kappa_s
    x_euler = ratio * x_tilde + kappa_t * h * m0
    r_final = 1 - 0.5 * math.sqrt(ratio) if ratio < 0.5 else 1 - 0.5 * math.sqrt(ratio - 0.5)
    return (1 - math.sqrt(kappa_t * kappa_s)) * x_euler + 0.5 * kappa_t * h * (m0 - r_final * m1)


def _second_order(x_tilde, m0, m1, kappas, weight, evaluate, many_steps):
    """One order-2 step; kappas = (kappa_{-1}, kappa_0, kappa_t). Returns (x~_t, m_t)."""
    k_prev, k_s, k_t = kappas
    h = 1 / k_t - 1 / k_s
    x_euler = (k_t / k_s) * x_tilde + k_t * h * m0
    r_log = math.log(k_prev / k_s) / math.log(k_s / k_t)
    base = math.sqrt((k_t / k_s) / (k_s / k_prev))
    r1 = (1 - weight) * base + weight * projection_coefficient(m0, m1)
    d1 = m0 - r1 * m1
    r_i = torch.clamp(torch.sigmoid(0.25 * r1.abs()) * r_log, min=0.25 * r_log, max=1.5 * r_log)
    x_probe = x_euler + 0.5 * k_t * h / r_i * d1
    m_t = evaluate(x_probe)
    r2 = (1 - weight) * base + weight * projection_coefficient(m_t, m0)
    d2 = m_t - r2 * m0
    b_minus, b_plus = d1 / (r_log * h), r_log * d2 / h
    eta = 0.5 * torch.sigmoid((0.5 * projection_coefficient(b_plus + b_minus, b_plus - b_minus)).abs())
    b_theta = -eta / r_log * d1 + r_log * (1 - eta) * d2
    p1 = x_probe - x_euler - 0.5 * k_t * h / r_i * b_theta
    zeta_shift = (projection_coefficient(p1, d1) / (h * k_t)).abs() - 0.5
    if many_steps:  # the code's gate above 20 steps
        slope = projection_coefficient(m0, (m0 - m1) / h)
        zeta = torch.sigmoid(-zeta_shift * torch.sigmoid(slope * (2 - (k_t / k_s) ** 2)))
    else:
        zeta = torch.sigmoid(zeta_shift)
    return x_euler + 0.5 * k_t * h / zeta * b_theta, m_t


def run_evodiff(pred, x, times, generator, record, denoise_to_zero: bool = False, lower_order_final: bool = True):
    """evodiff: EVODiff order 2 on the grid (the authors use 9 log-SNR steps and denoise_to_zero: NFE 10).

    NFE = len(grid) - 1 (one evaluation at the start, one per step after the first but the last), plus one
    with denoise_to_zero (x <- x0_hat(x, t_end), a final step onto the data).
    """
    path = pred.path
    levels = _levels(path, times)
    n = len(times) - 1
    if n < 2:
        raise ValueError(f"evodiff is a two-step method and needs a grid of at least 3 times; got {len(times)}")
    k_start, k_end = levels[0][1], levels[-1][1]

    def x0_at(x_tilde, i):
        return pred(levels[i][0] * x_tilde, times[i], "x0")

    x_tilde = x / levels[0][0]
    history = [x0_at(x_tilde, 0)]
    h = 1 / levels[1][1] - 1 / k_start
    x_tilde = (levels[1][1] / k_start) * x_tilde + levels[1][1] * h * history[0]  # first step: DDIM
    record(levels[1][0] * x_tilde)
    history.append(x0_at(x_tilde, 1))
    for i in range(2, n + 1):
        k_prev, k_s, k_t = levels[i - 2][1], levels[i - 1][1], levels[i][1]
        m1, m0 = history[-2], history[-1]
        if lower_order_final and i == n:
            x_tilde = _final_order_one(x_tilde, m0, m1, k_s, k_t, 1 / k_t - 1 / k_s)
        else:
            weight = 0.5 * (1 - ((k_t + k_end) / (k_start + k_end)) ** 2)
            x_tilde, m_t = _second_order(x_tilde, m0, m1, (k_prev, k_s, k_t), weight,
                                         lambda z, i=i: x0_at(z, i), n > 20)
            history = [m0, m_t]
        record(levels[i][0] * x_tilde)
    x = levels[-1][0] * x_tilde
    return pred(x, times[-1], "x0") if denoise_to_zero else x
