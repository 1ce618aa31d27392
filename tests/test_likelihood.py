"""PF-ODE likelihood, divergence and bits/dim (Song et al. 2021, App. D.2; checks SDE-4, SDE-5, SDE-8).

References are independent of the package: numpy/scipy densities (tests/reference.py, with alpha_t
and sigma_t by quadrature), closed-form Jacobians, dense autograd Jacobians and hand arithmetic.
"""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import diffusion_lessons as dl
from diffusion_lessons.likelihood import (LIKELIHOOD_METHODS, LikelihoodResult, bits_per_dim, divergence,
                                          draw_probes, log_likelihood)
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.solvers import pf_velocity
from reference import GMM2, gmm_logpdf_score, gmm_t, vp_alpha_sigma

EPS = 1e-3
# x = (3.02, -0.28) is check SDE-4's worst case for the standard-normal prior; mu_1 + 0.3 is SDE-5's point
POINTS = torch.tensor([[3.02, -0.28], [-2.0, 0.0], [2.0, 1.0], [0.5, 0.5], [-1.7, 0.3], [0.0, -1.5]],
                      dtype=torch.float64)


def gmm2_log_density(x: torch.Tensor, t: float) -> np.ndarray:
    """log p_t(x) of GMM2 under VP by numpy (explicit inverses; alpha, sigma from quadrature of beta)."""
    a, s = vp_alpha_sigma(t)
    return gmm_logpdf_score(x.numpy(), *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s))[0]


pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")  # see conftest.py



@pytest.fixture(scope="module")
def gm():
    return dl.gmm2()


@pytest.fixture(scope="module")
def path():
    return dl.VP()


def test_sde4_pf_ode_likelihood_equals_the_analytic_density(gm, path):
    """SDE-4: exact divergence, rtol 1e-8 / atol 1e-10; prior = exact p_1: log p_eps to < 1e-5;
    the same solve with the standard-normal prior (alpha_1 != 0, so only approximately right): < 2e-2."""
    out = log_likelihood(dl.exact_score(gm, path), path, POINTS, eps=EPS, prior=gm.noised(path, 1.0),
                         rtol=1e-8, atol=1e-10, return_details=True)
    assert isinstance(out, LikelihoodResult) and out.nfe > 0
    ref = gmm2_log_density(POINTS, EPS)
    assert np.abs(out.log_prob.numpy() - ref).max() < 1e-5
    assert torch.allclose(out.log_prob, out.prior_log_prob + out.delta_log_prob, atol=1e-14)
    x1 = out.x_1.numpy()
    assert np.allclose(out.prior_log_prob.numpy(), gmm2_log_density(out.x_1, 1.0), atol=1e-12)
    # the answer is p_eps, not p_0: they differ by ~4e-4 at eps = 1e-3 (check SDE-4)
    assert np.abs(out.log_prob.numpy() - gmm2_log_density(POINTS, 0.0)).max() > 1e-4
    # Song et al.'s prior N(0, I), and the package default N(0, sigma_1^2 I), in place of p_1
    sigma1 = vp_alpha_sigma(1.0)[1]
    for cov in (np.eye(2), sigma1**2 * np.eye(2)):
        err = np.abs(out.delta_log_prob.numpy() + multivariate_normal(np.zeros(2), cov).logpdf(x1) - ref)
        assert 1e-3 < err.max() < 2e-2  # visible at these tolerances, yet small


def test_default_prior_is_isotropic_gaussian_with_sigma_1(gm, path):
    """prior=None means N(0, sigma_1^2 I), checked against scipy at the solve's end point x(1)."""
    out = log_likelihood(dl.exact_score(gm, path), path, POINTS[:3], return_details=True)
    sigma1 = vp_alpha_sigma(1.0)[1]
    expect = multivariate_normal(np.zeros(2), sigma1**2 * np.eye(2)).logpdf(out.x_1.numpy())
    assert np.allclose(out.prior_log_prob.numpy(), expect, atol=1e-12)
    assert np.abs(out.log_prob.numpy() - gmm2_log_density(POINTS[:3], EPS)).max() < 2e-2


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_sde5_hutchinson_is_unbiased(gm, path, probe):
    """SDE-5: K separate solves at x = mu_1 + 0.3, one fixed probe each: |mean - exact| < 4 sd / sqrt(K)."""
    K = 200
    x = torch.tensor([[-1.7, 0.3]]).repeat(K, 1)  # each row gets its own probe
    est = log_likelihood(dl.exact_score(gm, path), path, x, eps=EPS, prior=gm.noised(path, 1.0),
                         exact_divergence=False, rtol=1e-6, atol=1e-6, probe=probe,
                         generator=torch.Generator().manual_seed(0))
    exact = gmm2_log_density(x[:1], EPS)[0]
    sd = est.std().item()
    assert abs(est.mean().item() - exact) < 4 * sd / math.sqrt(K)
    if probe == "rademacher":  # per-probe s.d. about 0.95; in 2-D z^T J z takes only two values
        assert abs(sd - 0.95) < 0.1
        assert len(torch.unique(est.round(decimals=4))) <= 4
    else:  # Gaussian probes: larger variance (2 ||J_s||_F^2 against 2 sum_{i != j} J_s,ij^2)
        assert sd > 1.2


def test_sde8_gaussian_data_has_zero_drift_and_exact_likelihood(path):
    """SDE-8: data N(0, I) under VP is stationary, so the PF-ODE drift vanishes and log p = log N(x; 0, I)."""
    g = dl.Gaussian(torch.zeros(2), torch.eye(2))
    score = dl.exact_score(g, path)
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    v = pf_velocity(score, path)
    # algebraically -beta/2 x + beta/2 x = 0; in floating point alpha^2 + sigma^2 = 1 up to ~1e-16,
    # times beta/2 <= 10 and |x| <= 4: the bound 1e-14 holds per unit of |x|
    for t in torch.linspace(0, 1, 21).tolist():
        drift = v(x, t).norm(dim=1)
        assert (drift < 1e-14 * x.norm(dim=1).clamp_min(1.0)).all()
        assert drift.mean() < 1e-14
    ref = multivariate_normal(np.zeros(2)).logpdf(x[:8].numpy())
    for exact in (True, False):
        out = log_likelihood(score, path, x[:8], prior=g.noised(path, 1.0), exact_divergence=exact,
                             generator=torch.Generator().manual_seed(1), return_details=True)
        assert np.abs(out.log_prob.numpy() - ref).max() < 1e-12
        assert (out.x_1 - x[:8]).abs().max() < 1e-12


def test_bits_per_dim_by_hand():
    """bpd = -log p / (D ln 2) + log2(levels / w), computed here with plain arithmetic."""
    # log p = -100 nats over D = 64: 100 / 64 nats = 1.5625 nats = 1.5625 * 1.4426950408889634 bits
    assert bits_per_dim(-100.0, 64) == pytest.approx(1.5625 * 1.4426950408889634 + 7.0, abs=1e-12)
    assert bits_per_dim(-100.0, 64, data_range_width=1.0) == pytest.approx(1.5625 * 1.4426950408889634 + 8.0,
                                                                            abs=1e-12)
    # 17 grey levels (the 8x8 digits) in [-1, 1]: offset log2(17 / 2) = log2(8.5) = 3.0874628412503395
    assert bits_per_dim(0.0, 64, levels=17) == pytest.approx(3.0874628412503395, abs=1e-12)
    # a uniform density on [-1, 1]^D, p = 2^-D, is exactly log2(levels) bits per dimension
    D = 64
    assert bits_per_dim(-D * math.log(2.0), D, levels=256) == pytest.approx(8.0, abs=1e-12)
    lp = torch.tensor([-100.0, -50.0], dtype=torch.float32)
    out = bits_per_dim(lp, 64)
    assert out.dtype == torch.float32 and out.shape == (2,)
    with pytest.raises(ValueError, match="D"):
        bits_per_dim(lp, 0)
    with pytest.raises(ValueError, match="data_range_width"):
        bits_per_dim(lp, 64, data_range_width=0.0)
    with pytest.raises(ValueError, match="levels"):
        bits_per_dim(lp, 64, levels=1)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_divergence_is_trace_of_the_closed_form_hessian(gm, path, t):
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(50, 2)) * 2.0)
    div = divergence(dl.exact_score(gm, path), x, t)
    trace = torch.diagonal(dl.exact_score_jacobian(gm, path)(x, t), dim1=1, dim2=2).sum(1)
    assert (div - trace).abs().max() < 1e-11 * trace.abs().max()


def test_hutchinson_variance_matches_the_formulas():
    """Per-probe variance 2 sum_{i!=j} J_s,ij^2 (Rademacher), 2 ||J_s||_F^2 (Gaussian) for a linear field."""
    D, K = 5, 4000
    A = torch.from_numpy(np.random.default_rng(2).normal(size=(D, D)))
    Js = 0.5 * (A + A.T)
    x = torch.zeros(K, D)  # K copies of one point: each row its own probe
    field = lambda y, t: y @ A.T  # noqa: E731  (Jacobian A)
    for probe, var in (("rademacher", 2 * (Js.square().sum() - Js.diagonal().square().sum())),
                       ("gaussian", 2 * Js.square().sum())):
        est = divergence(field, x, 0.5, exact=False, probe=probe, generator=torch.Generator().manual_seed(3))
        assert abs(est.mean() - A.trace()) < 4 * math.sqrt(var / K)
        assert abs(est.var() / var - 1) < 0.15
    many = divergence(field, x[:1], 0.5, exact=False, n_probes=K, generator=torch.Generator().manual_seed(4))
    assert many.shape == (1,) and abs(many[0] - A.trace()) < 4 * math.sqrt(var / K)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divergence_of_networks_and_images(dtype):
    """nn.Modules under torch.no_grad(), image-shaped x; reference: trace of the dense autograd Jacobian."""
    torch.manual_seed(0)
    mlp = TimeMLP(dim=3, hidden=16, depth=2).to(dtype).eval()
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).to(dtype)
    image_field = lambda y, t: torch.tanh(conv(y)) * (1 + t)  # noqa: E731
    for field, shape in ((mlp, (4, 3)), (image_field, (3, 1, 4, 4))):
        x = torch.randn(*shape, dtype=dtype)
        with torch.no_grad():
            div = divergence(field, x, 0.4)
        ref = []
        for xi in x:
            J = torch.autograd.functional.jacobian(lambda y: field(y[None], 0.4)[0], xi)
            ref.append(J.reshape(xi.numel(), xi.numel()).trace())
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert div.dtype == dtype and torch.allclose(div, torch.stack(ref).detach(), atol=tol, rtol=tol)


def test_float32_and_other_targets(gm, path):
    """float32 stays float32 and is close to float64; an eps-predictor passed with target="eps" gives the same density."""
    x = POINTS[:3]
    ref = gmm2_log_density(x, EPS)
    gm32 = gm.to(torch.float32)
    lp32 = log_likelihood(dl.exact_score(gm32, path), path, x.float(), prior=gm32.noised(path, 1.0))
    assert lp32.dtype == torch.float32 and np.abs(lp32.double().numpy() - ref).max() < 2e-3
    eps_field = dl.exact_prediction(gm, path, "eps")
    lp = log_likelihood(eps_field, path, x, prior=gm.noised(path, 1.0), target="eps", rtol=1e-6, atol=1e-8)
    assert np.abs(lp.numpy() - ref).max() < 1e-4


def test_other_path_subvp(path):
    """A second path with a different sigma_t: sub-VP, GAUSS2, exact prior, against scipy's Gaussian density."""
    sub, g = dl.SubVP(), dl.gauss2()
    x = torch.tensor([[1.0, -1.0], [3.0, 0.5], [-1.0, -2.0]])
    lp = log_likelihood(dl.exact_score(g, sub), sub, x, eps=0.01, prior=g.noised(sub, 1.0), rtol=1e-6, atol=1e-8)
    a, s = float(sub.alpha(0.01)), float(sub.sigma(0.01))
    cov = a**2 * g.cov.numpy() + s**2 * np.eye(2)
    ref = multivariate_normal(a * g.mean_vector.numpy(), cov).logpdf(x.numpy())
    assert np.abs(lp.numpy() - ref).max() < 1e-4


def test_errors(gm, path):
    score = dl.exact_score(gm, path)
    x = POINTS[:2]
    with pytest.raises(ValueError, match="unknown method 'rk45'.*dopri5"):
        log_likelihood(score, path, x, method="rk45")
    with pytest.raises(ValueError, match=r"\[N, \.\.\.\]"):
        log_likelihood(score, path, torch.zeros(2))
    with pytest.raises(ValueError, match=r"t_min must lie in \(0, 1\)"):
        log_likelihood(score, path, x, t_min=0.0)
    with pytest.raises(ValueError, match="eps must lie in"):  # the old name of t_min
        log_likelihood(score, path, x, eps=0.0)
    with pytest.raises(ValueError, match="give the start time once"):
        log_likelihood(score, path, x, t_min=0.01, eps=0.02)
    with pytest.raises(ValueError, match="unknown probe 'normal'"):
        log_likelihood(score, path, x, exact_divergence=False, probe="normal")
    with pytest.raises(ValueError, match="unknown target"):
        log_likelihood(score, path, x, target="noise")
    with pytest.raises(TypeError, match="log_prob"):
        log_likelihood(score, path, x, prior=object())
    with pytest.raises(TypeError, match="Path"):
        log_likelihood(score, "vp", x)
    with pytest.raises(ValueError, match="shaped like x"):
        divergence(lambda y, t: y[:, :1], x, 0.5)
    with pytest.raises(RuntimeError, match="does not depend on x"):
        divergence(lambda y, t: y.detach() * 2, x, 0.5)
    with pytest.raises(ValueError, match="probes must have shape"):
        divergence(score, x, 0.5, exact=False, probes=torch.ones(3, 2))
    with pytest.raises(ValueError, match="n_probes"):
        draw_probes(x, n_probes=0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        divergence(score, x, 0.5)
    assert "dopri5" in LIKELIHOOD_METHODS


def test_start_time_has_one_meaning(gm, path):
    """t_min is the start time; eps, its old name, gives the same solve (eps is the noise everywhere else)."""
    score, x = dl.exact_score(gm, path), POINTS[:3]
    by_name = log_likelihood(field=score, path=path, x=x, t_min=0.01, prior=gm.noised(path, 1.0))
    by_old_name = log_likelihood(score, path, x, eps=0.01, prior=gm.noised(path, 1.0))
    assert torch.equal(by_name, by_old_name)
