"""Resfusion's schedule, forward process, residual noise and sampler against independent numpy references
(check GD-6)."""
import math

import numpy as np
import pytest
import torch

from diffusion_lessons.ddpm import reverse_mean
from diffusion_lessons.resfusion import (
    ResfusionChain,
    resfusion_exact_eps,
    resfusion_forward,
    resfusion_moments,
    resfusion_sample,
    resfusion_target,
)

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


def _linear_pro_numpy(T):
    """LinearProScheduler(T) re-implemented: betas, abar and T_acc (binary search for the first sqrt(abar) <= 1/2)."""
    scale = 1000 / T
    beta = np.linspace(scale * 1e-4, scale * 0.02, T)
    alpha = 1 - beta
    abar = np.cumprod(alpha)
    with np.errstate(invalid="ignore"):  # betas above 1 late in the chain make abar negative (never used)
        root = np.sqrt(abar)
    lo, hi = 0, T - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if root[mid] <= 0.5:
            hi = mid - 1
        else:
            lo = mid + 1
    if lo < T and 0.5 - root[lo] > 0.01:
        abar = np.append(abar[:lo], 0.25)
        alpha = np.append(alpha[:lo], 0.25 / abar[lo - 1])
        beta = 1 - alpha
    with np.errstate(invalid="ignore"):
        t_acc = int(np.nanargmin(np.abs(np.sqrt(abar) - 0.5))) + 1
    return beta[:t_acc], abar[:t_acc], t_acc


@pytest.mark.parametrize("T", [12, 20, 273])
def test_gd6a_linear_pro_schedule_and_acceleration_point(T):
    """Check GD-6 (a): the truncated schedule and T_acc equal an independent re-implementation to 1e-12;
    for T = 12 the chain stops at exactly sqrt(abar) = 1/2."""
    chain = ResfusionChain(T)
    beta, abar, t_acc = _linear_pro_numpy(T)
    assert chain.acceleration_point == t_acc == chain.schedule.n_steps
    assert np.abs(chain.schedule.betas.numpy() - beta).max() < 1e-12
    assert np.abs(chain.schedule.alpha_bar[1:].numpy() - abar).max() < 1e-12
    if T == 12:
        assert abs(math.sqrt(float(chain.schedule.alpha_bar[-1])) - 0.5) < 1e-12


def test_gd6b_the_state_at_the_acceleration_point_forgets_the_clean_image():
    """Check GD-6 (b): at sqrt(abar) = 1/2 the forward mean is x0_deg / 2 whatever x0 (1e-14), and the variance 3/4."""
    chain = ResfusionChain(12)
    i = chain.acceleration_point
    x0 = torch.linspace(-1, 1, 9)
    x0_deg = torch.linspace(0.7, -0.3, 9)
    mean = resfusion_forward(x0, x0_deg, chain.schedule, i, torch.zeros(9))
    assert (mean - x0_deg / 2).abs().max() < 1e-14
    assert abs(1 - float(chain.schedule.alpha_bar[i]) - 0.75) < 1e-12


def test_gd6c_formula_33_with_the_residual_noise_is_the_ddpm_step_in_u_coordinates():
    """Check GD-6 (c): with the true eps_res, formula 33's mean equals R + the DDPM posterior mean of u_{i-1}
    given u_i = x_i - R and u_0 = x0 - R (numpy, Ho et al. eq. 7), to 1e-12."""
    schedule = ResfusionChain(12).schedule
    gen = torch.Generator().manual_seed(0)
    x0, x0_deg, eps = (torch.randn(50, generator=gen) for _ in range(3))
    for i in range(2, schedule.n_steps + 1):
        x_i = resfusion_forward(x0, x0_deg, schedule, i, eps)
        step = reverse_mean(schedule, x_i, i, resfusion_target(x0, x0_deg, schedule, i, eps))
        beta = schedule.betas.numpy()
        ab = np.concatenate([[1.0], np.cumprod(1 - beta)])
        R = (x0_deg - x0).numpy()
        u_i, u_0 = x_i.numpy() - R, x0.numpy() - R
        coef0 = np.sqrt(ab[i - 1]) * beta[i - 1] / (1 - ab[i])
        coef1 = np.sqrt(1 - beta[i - 1]) * (1 - ab[i - 1]) / (1 - ab[i])
        assert np.abs(step.numpy() - (R + coef0 * u_0 + coef1 * u_i)).max() < 1e-12


def _sampler_moments_numpy(mean, var, x0_deg, T=12):
    """Output moments of formula 33 with the exact predictor, by carrying x as an affine function
    x = c + sum_j a_j z_j of the independent standard normal draws (start and every step)."""
    beta, abar, t_acc = _linear_pro_numpy(T)
    ab = np.concatenate([[1.0], abar])
    const, coeffs = np.sqrt(ab[t_acc]) * x0_deg, [np.sqrt(1 - ab[t_acc])]
    for i in range(t_acc, 0, -1):
        root, s2 = np.sqrt(ab[i]), 1 - ab[i]
        c, b = 2 * root - 1, (1 - root) * x0_deg
        var_x, cov_eps, cov_x0 = c**2 * var + s2, np.sqrt(s2), c * var  # joint moments of (x_i, eps, x0)
        gain_eps, gain_x0 = cov_eps / var_x, cov_x0 / var_x
        mean_x = c * mean + b
        shift = (1 - np.sqrt(1 - beta[i - 1])) * np.sqrt(s2) / beta[i - 1]
        slope = gain_eps - shift * gain_x0  # eps_res_hat(x) = slope (x - mean_x) + shift (x0_deg - mean)
        offset = -slope * mean_x + shift * (x0_deg - mean)
        k = (1 - beta[i - 1] / np.sqrt(s2) * slope) / np.sqrt(1 - beta[i - 1])
        const = k * const - beta[i - 1] / np.sqrt(s2) * offset / np.sqrt(1 - beta[i - 1])
        coeffs = [k * a for a in coeffs]
        if i > 1:
            coeffs.append(np.sqrt((1 - ab[i - 1]) / (1 - ab[i]) * beta[i - 1]))
    return const, float(np.sum(np.square(coeffs)))


@pytest.mark.parametrize("var", [0.0, 0.05, 0.2])
def test_gd6d_few_steps_with_fixed_variances_under_disperse(var):
    """Check GD-6 (d): T = 12 (5 steps), x0 | x0_deg ~ N(0.3, v), x0_deg = 0.8, exact eps_res: the package's
    moment recursion equals an independent numpy computation (1e-10); the mean is exact and the variance falls
    short of v for v > 0; the sampler itself agrees within 4.5 standard errors (100 000 samples)."""
    chain = ResfusionChain(12)
    mean, variance = resfusion_moments(0.3, var, 0.8, chain)
    ref_mean, ref_var = _sampler_moments_numpy(0.3, var, 0.8)
    assert abs(mean - ref_mean) < 1e-10 and abs(variance - ref_var) < 1e-10
    assert abs(mean - 0.3) < 1e-12
    if var == 0:
        assert variance < 1e-12
    else:
        assert variance < 0.4 * var
        n = 100_000
        x = resfusion_sample(resfusion_exact_eps(0.3, var, 0.8, chain.schedule), torch.full((n, 1), 0.8), chain,
                             generator=torch.Generator().manual_seed(1))
        assert abs(x.mean().item() - mean) < 4.5 * math.sqrt(variance / n)
        assert abs(x.var().item() - variance) < 4.5 * variance * math.sqrt(2 / n)


def test_resfusion_chain_rejects_a_single_step():
    with pytest.raises(ValueError, match="T >= 2"):
        ResfusionChain(1)
