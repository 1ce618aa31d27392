"""Paths: schedule constants, SDE coefficients and target conversions against independent references."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from reference import GMM2, gmm_posterior_mean, vp_alpha_sigma



pytestmark = pytest.mark.usefixtures("float64_default")  # see conftest.py

ALL_PATHS = [dl.VP(), dl.SubVP(), dl.VE(), dl.RectifiedFlow(), dl.Cosine()]
TIMES = torch.tensor([0.05, 0.2, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)


def test_sde9_schedule_constants():
    """SDE-9: alpha_1, sigma_1^2, B(1) of VP and sigma_1^2 of sub-VP, against quadrature of beta."""
    vp = dl.VP()
    a_ref, s_ref = vp_alpha_sigma(1.0)
    B_ref = 0.1 + 0.5 * (20.0 - 0.1)  # int_0^1 beta(s) ds for a linear beta, by hand
    assert abs(float(vp.B(1.0)) - B_ref) < 1e-10
    assert abs(float(vp.alpha(1.0)) - a_ref) < 1e-10
    assert abs(float(vp.sigma(1.0)) ** 2 - s_ref**2) < 1e-10
    assert abs(float(dl.SubVP().sigma(1.0)) ** 2 - (1 - np.exp(-B_ref)) ** 2) < 1e-10
    # discrete DDPM schedule: prod(1 - beta_i) vs e^{-B(1)}; log(1 - b) = -b - b^2/2 - b^3/3 - ...
    betas = np.linspace(1e-4, 0.02, 1000)
    assert abs(betas.sum() - B_ref) < 1e-10
    abar = np.prod(1 - betas)
    assert abar < float(torch.exp(-vp.B(1.0)))
    assert abs(np.log(abar) + B_ref + (betas**2).sum() / 2) < (betas**3).sum() / 2


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_derivatives_match_finite_differences(path):
    h = 1e-6
    for t in TIMES.tolist():
        fd_a = (path.alpha(t + h) - path.alpha(t - h)) / (2 * h)
        fd_s = (path.sigma(t + h) - path.sigma(t - h)) / (2 * h)
        scale = 1 + abs(float(fd_s))
        assert abs(float(path.dalpha(t) - fd_a)) < 1e-6 * scale
        assert abs(float(path.dsigma(t) - fd_s)) < 1e-6 * scale


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_sde_coefficients_reproduce_the_kernel(path):
    """f = (log alpha)' and g^2 = (sigma^2)' - 2 f sigma^2, from finite differences of alpha and sigma."""
    h = 1e-6
    for t in TIMES.tolist():
        f_fd = (math.log(path.alpha(t + h)) - math.log(path.alpha(t - h))) / (2 * h)
        var_fd = (float(path.sigma(t + h)) ** 2 - float(path.sigma(t - h)) ** 2) / (2 * h)
        g2_ref = var_fd - 2 * f_fd * float(path.sigma(t)) ** 2
        assert abs(float(path.f(t)) - f_fd) < 1e-6 * (1 + abs(f_fd))
        assert abs(float(path.g2(t)) - g2_ref) < 1e-5 * (1 + abs(g2_ref))


def test_closed_form_coefficients_of_song_et_al():
    """VP: f = -beta/2, g^2 = beta; sub-VP: g^2 = beta(1 - e^{-2B}); VE: g^2(0.5) = 2 s(t)^2 log(smax/smin)."""
    t = 0.37
    beta = 0.1 + t * 19.9
    B = 0.1 * t + 0.5 * 19.9 * t**2
    assert abs(float(dl.VP().f(t)) + beta / 2) < 1e-12
    assert abs(float(dl.VP().g2(t)) - beta) < 1e-12
    assert abs(float(dl.SubVP().g2(t)) - beta * (1 - math.exp(-2 * B))) < 1e-12
    s = 0.01 * (50 / 0.01) ** 0.5
    assert abs(float(dl.VE().g2(0.5)) - 2 * s**2 * math.log(5000)) < 1e-9


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_log_snr(path):
    t = TIMES
    ref = torch.log(path.alpha(t) ** 2 / path.sigma(t) ** 2)
    assert torch.allclose(path.log_snr(t), ref, rtol=1e-12, atol=1e-12)


def test_sample_moments_match_kernel():
    g = torch.Generator().manual_seed(0)
    path = dl.VP()
    x0 = torch.full((200_000, 1), 2.0)
    xt, eps = path.sample(x0, 0.3, generator=g)
    assert torch.equal(xt, path.alpha(0.3) * x0 + path.sigma(0.3) * eps)
    a_ref, s_ref = vp_alpha_sigma(0.3)
    se_mean = s_ref / math.sqrt(x0.shape[0])
    assert abs(xt.mean().item() - 2 * a_ref) < 5 * se_mean
    assert abs(xt.var().item() / s_ref**2 - 1) < 5 * math.sqrt(2 / x0.shape[0])


def test_sample_with_per_point_times():
    x0 = torch.randn(5, 3, 4)
    t = torch.linspace(0.1, 0.9, 5)
    eps = torch.randn_like(x0)
    xt, _ = dl.VP().sample(x0, t, eps=eps)
    for i in range(5):
        ref = dl.VP().alpha(t[i]) * x0[i] + dl.VP().sigma(t[i]) * eps[i]
        assert torch.allclose(xt[i], ref, atol=1e-14)


CONVERSION_CASES = [(dl.VP(), 0.3), (dl.RectifiedFlow(), 0.4), (dl.VE(), 0.7), (dl.SubVP(), 0.5), (dl.Cosine(), 0.6)]


def _exact_targets(path, t, x):
    """x0, eps, score, velocity at (x, t) for GMM2, from the numpy reference (component-wise posterior)."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    x0 = gmm_posterior_mean(x, GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s)
    eps = (x - a * x0) / s
    score = -eps / s
    vel = float(path.dalpha(t)) * x0 + float(path.dsigma(t)) * eps
    return {k: torch.from_numpy(v) for k, v in dict(x0=x0, eps=eps, score=score, velocity=vel).items()}


@pytest.mark.parametrize("path,t", CONVERSION_CASES, ids=lambda c: getattr(c, "name", str(c)))
def test_pr1_conversions_are_exact(path, t):
    """PR-1 / TK-3: every conversion maps the exact predictor of one target to the exact predictor of another."""
    x = np.random.default_rng(1).normal(size=(50, 2)) * 2
    exact = _exact_targets(path, t, x)
    xt = torch.from_numpy(x)
    for src in exact:
        for dst in exact:
            got = dl.convert(exact[src], src, dst, xt, t, path)
            assert torch.allclose(got, exact[dst], rtol=1e-10, atol=1e-10), (src, dst)


@pytest.mark.parametrize("path,t", CONVERSION_CASES[:2], ids=lambda c: getattr(c, "name", str(c)))
def test_pr1_velocity_equals_pf_ode_drift(path, t):
    """u = alpha' x0 + sigma' eps equals f x - g^2/2 score (check PR-1)."""
    x = np.random.default_rng(2).normal(size=(50, 2))
    exact = _exact_targets(path, t, x)
    drift = path.f(t) * torch.from_numpy(x) - 0.5 * path.g2(t) * exact["score"]
    assert torch.allclose(drift, exact["velocity"], rtol=1e-12, atol=1e-12)


def test_v_prediction_round_trip():
    path, t = dl.VP(), torch.tensor([0.3, 0.6])
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    v = dl.convert(eps, "eps", "v", x, t, path)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    x0 = (x - s * eps) / a
    assert torch.allclose(v, a * eps - s * x0, atol=1e-13)
    assert torch.allclose(dl.convert(v, "v", "eps", x, t, path), eps, atol=1e-13)


def test_float32_and_bad_input():
    x = torch.randn(4, 2, dtype=torch.float32)
    out = dl.convert(x, "eps", "score", x, 0.5, dl.VP())
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown target 'noise'"):
        dl.convert(x, "noise", "eps", x, 0.5, dl.VP())
    with pytest.raises(ValueError, match=r"time must lie in \[0, 1\]"):
        dl.VP().alpha(1.5)
    with pytest.raises(ValueError, match="shape"):
        dl.VP().sample(x, torch.rand(3))
    with pytest.raises(ValueError, match="unknown path 'vpp'"):
        dl.make_path("vpp")
    assert isinstance(dl.make_path(dl.VE(sigma_max=10).config()), dl.VE)


def test_ve_sigma_is_exact_near_zero_in_float32():
    """sigma(t)^2 = s_min^2 ((s_max/s_min)^(2t) - 1): subtracting two nearly equal squares loses every digit
    near t = 0 in float32 (and went negative: NaN). Reference: the plain definition s(t)^2 - s_min^2 in
    Python's float64, where the cancellation costs about 1e-10 relative at t = 1e-7."""
    ve = dl.VE(sigma_min=0.01, sigma_max=50.0)
    times = [0.0, 1e-7, 1e-5, 1e-3, 0.1, 0.5, 1.0]
    got = ve.sigma(torch.tensor(times, dtype=torch.float32))
    assert torch.isfinite(got).all() and got[0] == 0
    for t, g in zip(times[1:], got[1:].tolist()):
        ref = math.sqrt((0.01 * 5000.0**t) ** 2 - 0.01**2)
        assert abs(g - ref) <= 1e-5 * ref, (t, g, ref)
