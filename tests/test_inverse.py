"""Inverse-problem solvers against exact posteriors: replacement inpainting (checks GD-3, SDE-6) and DPS
with first- and second-order Tweedie likelihoods (check GD-4)."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.ddpm import DDPMSchedule, ancestral_sample, eps_on_chain
from diffusion_lessons.inverse import (
    dps_guidance,
    dps_sample,
    replacement_inpainting,
    replacement_inpainting_moments,
)
from diffusion_lessons.posterior import exact_likelihood_score

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

BMIN, BMAX = 0.1, 20.0
Y_OBS = 1.5


def _correlated(rho):
    return dl.Gaussian(torch.zeros(2), torch.tensor([[1.0, rho], [rho, 1.0]]))


def _replacement_moments_numpy(rho, n=1000, t_end=1e-5):
    """score_sde's get_pc_inpainter with ReverseDiffusionPredictor and no corrector, for N(0, [[1, rho], [rho, 1]])
    and x_1 = 1.5 observed, propagated as an exact Gaussian recursion: at each t_i the (identity) corrector
    and the predictor are each followed by replacement with alpha(t_i) y + sigma(t_i) xi; the predictor is
    x <- x - (sqrt(1 - beta) x - x - beta s(x)) + sqrt(beta) z, beta = discrete_betas[int(t_i (N - 1))]."""
    sigma0 = np.array([[1.0, rho], [rho, 1.0]])
    betas = np.linspace(BMIN / n, BMAX / n, n)

    def alpha_sigma(t):
        log_mean = -0.25 * t**2 * (BMAX - BMIN) - 0.5 * t * BMIN
        return np.exp(log_mean), np.sqrt(1 - np.exp(2 * log_mean))

    def replace(m, P, t):
        a, s = alpha_sigma(t)
        m = m.copy()
        m[0] = a * Y_OBS
        P = np.array([[s**2, 0.0], [0.0, P[1, 1]]])
        return m, P

    m, P = np.array([Y_OBS, 0.0]), np.diag([0.0, 1.0])
    for t in np.linspace(1.0, t_end, n):
        m, P = replace(m, P, t)
        beta = betas[int(t * (n - 1))]
        a, s = alpha_sigma(t)
        precision = np.linalg.inv(a**2 * sigma0 + s**2 * np.eye(2))
        M = (2 - np.sqrt(1 - beta)) * np.eye(2) - beta * precision
        m, P = M @ m, M @ P @ M.T + beta * np.eye(2)
        m, P = replace(m, P, t)
    return m[1], P[1, 1]


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_gd3_replacement_inpainting_exact_moments(rho):
    """Check GD-3: the package's moment recursion equals an independent numpy one to 1e-8; the hidden
    coordinate is exact only at rho = 0 (mean 0; the variance is off by the last steps' noise) and biased
    towards the prior otherwise, against the exact conditional N(1.5 rho, 1 - rho^2)."""
    vp = dl.VP(BMIN, BMAX)
    mean, cov = replacement_inpainting_moments(_correlated(rho), vp, torch.tensor([Y_OBS, 0.0]), torch.tensor([1.0, 0.0]))
    ref_mean, ref_var = _replacement_moments_numpy(rho)
    assert abs(mean[1].item() - ref_mean) < 1e-8 and abs(cov[1, 1].item() - ref_var) < 1e-8
    assert cov[0, 0].item() == 0.0 and abs(mean[0].item() - Y_OBS) < 1e-5  # observed: alpha(1e-5) y
    if rho == 0.0:
        assert abs(ref_mean) < 1e-12 and abs(ref_var - 1) < 5e-3
    else:
        assert 1.5 * rho - ref_mean > 0.3 and ref_var - (1 - rho**2) > 0.07


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_sde6_replacement_sampler_matches_its_exact_moments(rho):
    """Check SDE-6: the sampler (20 000 samples, N = 1000, exact score) has the recursion's mean and variance
    within 4.5 standard errors: exact at rho = 0, biased by more than 0.2 in the mean at rho = 0.9."""
    vp, n = dl.VP(BMIN, BMAX), 20_000
    gen = torch.Generator().manual_seed(0)
    x = replacement_inpainting(dl.exact_score(_correlated(rho), vp), vp, torch.tensor([Y_OBS, 0.0]),
                               torch.tensor([1.0, 0.0]), torch.randn(n, 2, generator=gen), generator=gen)
    ref_mean, ref_var = _replacement_moments_numpy(rho)
    hidden = x[:, 1]
    assert abs(hidden.mean().item() - ref_mean) < 4.5 * math.sqrt(ref_var / n)
    assert abs(hidden.var().item() - ref_var) < 4.5 * ref_var * math.sqrt(2 / n)
    assert torch.allclose(x[:, 0], torch.full((n,), Y_OBS * vp.alpha(1e-5).item()))
    if rho == 0.9:
        assert 1.5 * rho - hidden.mean().item() > 0.2


def test_dps_with_the_second_order_covariance_is_the_exact_likelihood_score_for_a_gaussian():
    """For a Gaussian prior p_t(y | x_t) = N(y; A x0_hat, noise^2 I + A Cov[x0 | x_t] A^T) exactly, so DPS with the
    second-order Tweedie covariance adds exactly grad log p_t(y | x_t) (from the exact posterior), and the
    first-order one does not. Also with a mask instead of the matrix."""
    vp, prior = dl.VP(BMIN, BMAX), _correlated(0.9)
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([Y_OBS])
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(1)) * 2
    score = dl.exact_score(prior, vp)
    for t in (0.05, 0.4, 0.9):
        exact = exact_likelihood_score(prior, vp, A, y, 0.05)(x, t)
        full = dps_guidance(score, vp, A, y, 0.05, target="score", second_order="full")(x, t) - score(x, t)
        masked = dps_guidance(score, vp, torch.tensor([1.0, 0.0]), torch.tensor([Y_OBS, 0.0]), 0.05, target="score",
                              second_order="full")(x, t) - score(x, t)
        first = dps_guidance(score, vp, A, y, 0.05, target="score")(x, t) - score(x, t)
        assert (full - exact).abs().max() < 1e-10 and (masked - exact).abs().max() < 1e-10
        assert (first - exact).abs().max() > 0.1 * exact.abs().max()
    eps = dl.exact_prediction(prior, vp, "eps")
    as_eps = dps_guidance(eps, vp, A, y, 0.05, target="eps", second_order="full")(x, 0.4)
    expected = -vp.sigma(0.4) * (score(x, 0.4) + exact_likelihood_score(prior, vp, A, y, 0.05)(x, 0.4))
    assert (as_eps - expected).abs().max() < 1e-10


def test_dps_full_covariance_sets_negative_eigenvalues_of_an_estimate_to_zero():
    """A Hessian estimate can make Cov[x0 | x] = sigma^2 / alpha^2 (I + sigma^2 H) indefinite; "full" then uses the
    covariance with its negative eigenvalues set to 0. Reference in numpy: the model's score is -x, so
    x0_hat = (1 - sigma^2) x / alpha and the likelihood gradient is
    (1 - sigma^2) / alpha A^T Sigma^-1 (y - A x0_hat)."""
    vp, t, var_y = dl.VP(BMIN, BMAX), 0.4, 0.05**2
    a, s = (float(v) for v in (vp.alpha(t), vp.sigma(t)))
    turn = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    covs = [turn @ np.diag(d) @ turn.T for d in ([0.5, -1.5], [-2.0, -0.5], [1.0, 2.0])]  # I + sigma^2 H
    hess = torch.tensor(np.stack([(c - np.eye(2)) / s**2 for c in covs]))
    A, y = torch.eye(2), torch.tensor([0.7, -0.4])
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.8, 0.1]])
    guided = dps_guidance(lambda z, _: -z, vp, A, y, 0.05, target="score", second_order="full",
                          hessian=lambda z, _: hess)(x, t)
    for i, c in enumerate(covs):
        evals, evecs = np.linalg.eigh(s**2 / a**2 * c)
        cov = evecs @ np.diag(np.clip(evals, 0, None)) @ evecs.T
        r = y.numpy() - (1 - s**2) * x[i].numpy() / a
        expected = -x[i].numpy() + (1 - s**2) / a * np.linalg.solve(var_y * np.eye(2) + cov, r)
        assert np.abs(guided[i].numpy() - expected).max() < 1e-10 * np.abs(expected).max()


def test_dps_with_one_measurement_per_sample_is_each_samples_exact_likelihood_score():
    """y [N, M]: every sample gets the likelihood score of its own measurement. With the second-order covariance and a
    Gaussian prior each row is exact (the exact posterior of its own y); first-order rows differ from the exact score
    but equal a one-measurement call at that row's y."""
    vp, prior = dl.VP(BMIN, BMAX), _correlated(0.9)
    A, ys = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0], [0.3], [Y_OBS]])
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4)) * 2
    score = dl.exact_score(prior, vp)
    for t in (0.05, 0.4):
        full = dps_guidance(score, vp, A, ys, 0.05, target="score", second_order="full")(x, t) - score(x, t)
        first = dps_guidance(score, vp, A, ys, 0.05, target="score")(x, t) - score(x, t)
        for i, y in enumerate(ys):
            exact = exact_likelihood_score(prior, vp, A, y, 0.05)(x[i:i + 1], t)
            alone = dps_guidance(score, vp, A, y, 0.05, target="score")(x[i:i + 1], t) - score(x[i:i + 1], t)
            assert (full[i:i + 1] - exact).abs().max() < 1e-10
            assert (first[i:i + 1] - alone).abs().max() < 1e-12
    with pytest.raises(ValueError, match="3 measurements for 4 samples"):
        dps_guidance(score, vp, A, ys, 0.05, target="score")(torch.zeros(4, 2), 0.4)
    with pytest.raises(ValueError, match=r"one per sample \[N, 1\]"):
        dps_guidance(score, vp, A, torch.ones(3, 2), 0.05, target="score")(x, 0.4)


def test_gd4_dps_first_order_is_biased_second_order_is_exact():
    """Check GD-4: prior N(0, [[1, .9], [.9, 1]]), y = x_1 + n = 1.5, noise 0.05; DDPM (N = 1000, linear betas)
    ancestral sampling, 8000 samples. With the second-order (exact) likelihood the hidden coordinate's mean is
    the exact posterior mean within 4 standard errors; with the first-order Tweedie likelihood and with the
    authors' code form (zeta = 0.5 on the norm) it is biased by more than 0.1."""
    vp, prior, n = dl.VP(BMIN, BMAX), _correlated(0.9), 8000
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([Y_OBS])
    post = prior.posterior(A, y, 0.05)
    mean2, var2 = post.mean()[1].item(), post.covariance()[1, 1].item()
    eps, schedule = dl.exact_prediction(prior, vp, "eps"), DDPMSchedule.linear()
    hidden = {}
    for name in ("full", None):
        field = dps_guidance(eps, vp, A, y, 0.05, second_order=name, hessian=dl.exact_score_jacobian(prior, vp))
        gen = torch.Generator().manual_seed(2)
        x = ancestral_sample(eps_on_chain(field, schedule), schedule, torch.randn(n, 2, generator=gen), generator=gen)
        hidden[name] = x[:, 1]
    gen = torch.Generator().manual_seed(2)
    hidden["code"] = dps_sample(eps, schedule, A, y, 0.5, torch.randn(n, 2, generator=gen), vp, generator=gen)[:, 1]
    se = math.sqrt(var2 / n)
    assert abs(hidden["full"].mean().item() - mean2) < 4 * se
    assert abs(hidden["full"].var().item() - var2) < 4.5 * var2 * math.sqrt(2 / n)
    assert hidden[None].mean().item() - mean2 > 0.1 and hidden["code"].mean().item() - mean2 > 0.1


def test_dps_bad_input():
    vp = dl.VP()
    eps = dl.exact_prediction(_correlated(0.5), vp, "eps")
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="noise_std > 0"):
        dps_guidance(eps, vp, torch.tensor([[1.0, 0.0]]), torch.tensor([1.0]), 0.0)(x, 0.5)
    with pytest.raises(ValueError, match="mask shaped like one sample"):
        dps_guidance(eps, vp, torch.ones(3, 3), torch.ones(3), 0.1)(x, 0.5)
    with pytest.raises(ValueError, match="needs probes"):
        dps_guidance(eps, vp, torch.tensor([[1.0, 0.0]]), torch.tensor([1.0]), 0.1, second_order="trace")(x, 0.5)
    with pytest.raises(ValueError, match="unknown second_order"):
        dps_guidance(eps, vp, torch.tensor([[1.0, 0.0]]), torch.tensor([1.0]), 0.1, second_order="second")
    with pytest.raises(TypeError, match="VP path"):
        replacement_inpainting(eps, dl.RectifiedFlow(), torch.zeros(2), torch.tensor([1.0, 0.0]), x, target="eps")


def test_dps_trace_covariance_is_exact_for_an_isotropic_gaussian_prior():
    """For N(mu, v I) the posterior covariance of x0 given x_t is c I, so the isotropic ("trace") second-order
    likelihood is exact: with the D probes sqrt(D) e_j the trace of d x0_hat / dx is exact (x0_hat is affine)."""
    vp, prior = dl.VP(BMIN, BMAX), dl.Gaussian(torch.tensor([0.5, -1.0]), 0.7 * torch.eye(2))
    A, y = torch.tensor([[1.0, 0.0]]), torch.tensor([Y_OBS])
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(3)) * 2
    score = dl.exact_score(prior, vp)
    probes = math.sqrt(2) * torch.eye(2)
    for t in (0.1, 0.5, 0.9):
        exact = exact_likelihood_score(prior, vp, A, y, 0.05)(x, t)
        trace = dps_guidance(score, vp, A, y, 0.05, target="score", second_order="trace", probes=probes,
                             probe_size=0.1)(x, t) - score(x, t)
        assert (trace - exact).abs().max() < 1e-8 * max(1.0, exact.abs().max().item())
