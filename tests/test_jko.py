"""One JKO step in 1-D (jko.jko_step): against the closed-form minimising movement of a Gaussian, and
first-order convergence to the exact Ornstein-Uhlenbeck flow (Jordan, Kinderlehrer & Otto 1998)."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusion_lessons.jko import jko_step


def gaussian_points(mean, std, n):
    return torch.from_numpy(mean + std * norm.ppf((np.arange(n) + 0.5) / n))


def test_one_step_from_a_gaussian_is_the_closed_form_minimiser():
    """For V = x^2/2 and p_k = N(m, s^2) the step is N(m / (1 + tau), s'^2), (1 + tau) s'^2 - s s' - tau = 0."""
    m0, s0, tau, n = 1.0, 2.0, 0.1, 2000
    y = jko_step(gaussian_points(m0, s0, n), tau)
    m1 = m0 / (1 + tau)
    s1 = (s0 + math.sqrt(s0**2 + 4 * tau * (1 + tau))) / (2 * (1 + tau))
    w2 = ((y - gaussian_points(m1, s1, n)) ** 2).mean().sqrt().item()
    assert abs(y.mean().item() - m1) < 1e-9 and w2 < 1e-3


def test_steps_converge_to_the_ornstein_uhlenbeck_flow_at_first_order():
    """dX = -X ds + sqrt(2) dW from N(m, s^2): N(m e^-s, 1 + (s^2 - 1) e^-2s) at time s; halving tau halves the error."""
    m0, s0, horizon, n = 1.5, 0.5, 0.5, 1000
    exact = gaussian_points(m0 * math.exp(-horizon), math.sqrt(1 + (s0**2 - 1) * math.exp(-2 * horizon)), n)
    errors = []
    for steps in (10, 20, 40):
        y = gaussian_points(m0, s0, n)
        for _ in range(steps):
            y = jko_step(y, horizon / steps)
        errors.append(((y - exact) ** 2).mean().sqrt().item())
    ratios = [a / b for a, b in itertools.pairwise(errors)]
    assert all(1.7 < r < 2.3 for r in ratios), (errors, ratios)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        jko_step(torch.tensor([0.0, 2.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match="tau > 0"):
        jko_step(torch.tensor([0.0, 1.0, 2.0]), 0.0)
