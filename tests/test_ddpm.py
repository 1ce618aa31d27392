"""The discrete variational view (diffusion_lessons.ddpm): checks PR-2, PR-3 and SDE-2.

References are written here in float64 numpy/scipy from the definitions (a joint Gaussian and its
conditional, the KL between Gaussians, quadrature), never from the package's own formulas.
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import diffusion_lessons as dl
from diffusion_lessons.ddpm import (DDPMSchedule, ancestral_sample, chain_times, ddim_sigma, ddim_step,
                                    ddpm_elbo_weights, eps_on_chain, gaussian_elbo_terms, linear_betas,
                                    reverse_mean, vdm_diffusion_term)
from reference import vp_alpha_sigma

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py



def _np_alpha_bar(n=1000, start=1e-4, end=0.02):
    """abar_0..abar_N of DDPM's linear schedule, abar_0 = 1."""
    return np.concatenate([[1.0], np.cumprod(1 - np.linspace(start, end, n))])


def _conditional_of_chain(i, abar):
    """q(x_{i-1} | x_i, x_0) per coordinate by Gaussian conditioning of the joint of (x_{i-1}, x_i) given x_0.

    x_{i-1} = sqrt(abar_{i-1}) x0 + sqrt(1 - abar_{i-1}) e1 and x_i = sqrt(alpha_i) x_{i-1} + sqrt(beta_i) e2:
    mean m = (sqrt(abar_{i-1}), sqrt(abar_i)) x0, covariance S; conditional mean
    m_1 + S_12 / S_22 (x_i - m_2) and variance S_11 - S_12^2 / S_22. Returns (c_x0, c_xt, variance).
    """
    alpha = abar[i] / abar[i - 1]
    beta = 1 - alpha
    v_prev = 1 - abar[i - 1]
    S = np.array([[v_prev, math.sqrt(alpha) * v_prev],
                  [math.sqrt(alpha) * v_prev, alpha * v_prev + beta]])
    m = np.array([math.sqrt(abar[i - 1]), math.sqrt(abar[i])])  # per unit of x0
    gain = np.linalg.solve(S[1:, 1:], S[1:, :1])[0, 0]  # S_22^{-1} S_21
    return m[0] - gain * m[1], gain, S[0, 0] - S[0, 1] * gain


# -- the schedule ---------------------------------------------------------------------------------

def test_linear_schedule_and_alpha_bar():
    """abar_i = prod (1 - beta_j); sum beta = B(1) = 10.05; abar_1000 = 4.04e-5 vs e^{-B(1)} = 4.32e-5 (SDE-9)."""
    sched = DDPMSchedule.linear()
    assert sched.n_steps == 1000 and sched.alpha_bar.shape == (1001,)
    assert np.allclose(sched.alpha_bar.numpy(), _np_alpha_bar(), rtol=1e-13, atol=0)
    assert abs(float(sched.betas.sum()) - 10.05) < 1e-12
    assert abs(float(sched.alpha_bar[-1]) - 4.04e-5) < 0.01e-5
    assert torch.equal(linear_betas(), sched.betas)


# -- PR-2: the posterior q(x_{t-1} | x_t, x0) and DDIM with eta = 1 --------------------------------

@pytest.mark.parametrize("i", [2, 500, 501, 1000])
def test_pr2_posterior_is_gaussian_conditioning(i):
    """PR-2: the coefficients of tilde mu_i and tilde beta_i equal the conditional of the joint Gaussian, to 1e-12."""
    sched = DDPMSchedule.linear()
    c_x0, c_xt, var = _conditional_of_chain(i, _np_alpha_bar())
    got_x0, got_xt = (float(c) for c in sched.posterior_coefficients(i))
    assert abs(got_x0 - c_x0) < 1e-12 and abs(got_xt - c_xt) < 1e-12
    assert abs(float(sched.posterior_variance(i)) - var) < 1e-12


def test_pr2_values_of_math_md():
    """Check PR-2's reference numbers ("t = 500") are for the 0-based array index 500, i.e. DDPM step i = 501."""
    sched = DDPMSchedule.linear()
    c_x0, c_xt = (float(c) for c in sched.posterior_coefficients(501))
    assert abs(c_xt - 0.9941043507567258) < 1e-12
    assert abs(c_x0 - 0.0030580570756296) < 1e-12
    assert abs(float(sched.posterior_variance(501)) - 0.0100513357789) < 1e-12


@pytest.mark.parametrize("i", [2, 500, 1000])
def test_pr2_ddim_with_eta_1_is_the_ddpm_posterior_step(i):
    """PR-2: DDIM's eta = 1 variance is tilde beta_i (< 1e-12); its mean is mu_theta, so the step is DDPM's."""
    sched = DDPMSchedule.linear()
    _, _, var = _conditional_of_chain(i, _np_alpha_bar())
    assert abs(float(ddim_sigma(sched, i, eta=1.0)) ** 2 - var) < 1e-12
    assert float(ddim_sigma(sched, i, eta=0.0)) == 0.0
    rng = np.random.default_rng(i)
    x, eps_hat = (torch.from_numpy(rng.normal(size=(64, 2))) for _ in range(2))
    stepped = ddim_step(sched, x, i, eps_hat, eta=1.0, generator=torch.Generator().manual_seed(7))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    ddpm = reverse_mean(sched, x, i, eps_hat) + math.sqrt(var) * z
    assert (stepped - ddpm).abs().max() < 1e-12


def test_reverse_mean_is_the_posterior_mean_at_the_predicted_x0():
    """mu_theta(x_i, eps_hat) = tilde mu_i(x_i, x0_hat) with x0_hat = (x_i - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i)."""
    sched, abar = DDPMSchedule.linear(), _np_alpha_bar()
    rng = np.random.default_rng(0)
    x, eps_hat = rng.normal(size=(32, 2)), rng.normal(size=(32, 2))
    for i in (1, 10, 500, 1000):
        c_x0, c_xt, _ = _conditional_of_chain(i, abar)
        x0_hat = (x - math.sqrt(1 - abar[i]) * eps_hat) / math.sqrt(abar[i])
        got = reverse_mean(sched, torch.from_numpy(x), i, torch.from_numpy(eps_hat)).numpy()
        assert np.abs(got - (c_x0 * x0_hat + c_xt * x)).max() < 1e-10


@pytest.mark.parametrize("variance", ["beta", "tilde"])
def test_elbo_weight_is_the_eps_part_of_the_kl(variance):
    """KL(q(x_{i-1}|x_i,x0) || N(mu_theta, sigma_i^2 I)) - KL at eps_hat = eps equals w_i ||eps - eps_hat||^2."""
    sched, abar = DDPMSchedule.linear(), _np_alpha_bar()
    weights = ddpm_elbo_weights(sched, variance).numpy()
    rng = np.random.default_rng(1)
    x0, eps, eps_hat = (rng.normal(size=(16, 3)) for _ in range(3))
    for i in (2, 50, 500, 1000):
        c_x0, c_xt, post_var = _conditional_of_chain(i, abar)
        rev_var = 1 - abar[i] / abar[i - 1] if variance == "beta" else post_var
        x_t = math.sqrt(abar[i]) * x0 + math.sqrt(1 - abar[i]) * eps

        def kl(e_hat):  # KL between isotropic Gaussians in D = 3 dimensions, summed over coordinates
            x0_hat = (x_t - math.sqrt(1 - abar[i]) * e_hat) / math.sqrt(abar[i])
            diff = c_x0 * x0 + c_xt * x_t - (c_x0 * x0_hat + c_xt * x_t)
            return 0.5 * (3 * (post_var / rev_var - 1 + math.log(rev_var / post_var)) + (diff**2).sum(1) / rev_var)

        expected = kl(eps_hat) - kl(eps)
        assert np.allclose(weights[i - 1] * ((eps - eps_hat) ** 2).sum(1), expected, rtol=1e-9, atol=0)
    if variance == "tilde":
        assert math.isinf(weights[0])  # tilde beta_1 = 0: step 1 is DDPM's decoder, not a KL


# -- ancestral sampling with the exact eps reproduces the data --------------------------------------

def _assert_moments_within_mc(x, mean, cov, n_se=4.5):
    """Sample mean and covariance within n_se standard errors, the errors estimated from the samples."""
    n = x.shape[0]
    xc = x - x.mean(0)
    se_mean = xc.std(0) / math.sqrt(n)
    assert ((x.mean(0) - mean).abs() < n_se * se_mean).all(), (x.mean(0), mean, se_mean)
    prods = xc[:, :, None] * xc[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((torch.cov(x.T) - cov).abs() < n_se * se_cov).all(), (torch.cov(x.T), cov, se_cov)


@pytest.mark.parametrize("variance", ["beta", "tilde"])
def test_ancestral_sampling_with_exact_eps_reproduces_gmm2(variance):
    """GMM2, exact eps at t = i / N, N = 1000, 5000 samples: mean (0.8, 0.7), cov [[3.65, .9], [.9, 1]],
    mass left of x1 = 0 equal to 0.30, all within 4.5 Monte-Carlo standard errors."""
    sched, gm = DDPMSchedule.linear(), dl.gmm2()
    eps_model = eps_on_chain(dl.exact_prediction(gm, dl.VP(), "eps"), sched)
    g = torch.Generator().manual_seed(0)
    x = ancestral_sample(eps_model, sched, torch.randn(5000, 2, generator=g, dtype=F64), generator=g,
                         variance=variance)
    _assert_moments_within_mc(x, torch.tensor([0.8, 0.7], dtype=F64), torch.tensor([[3.65, 0.9], [0.9, 1.0]], dtype=F64))
    left = (x[:, 0] < 0).double().mean().item()
    assert abs(left - 0.30) < 4.5 * math.sqrt(0.3 * 0.7 / 5000)


def test_ancestral_sampling_with_exact_eps_reproduces_a_gaussian():
    """GAUSS2 (rotated, anisotropic), exact eps: mean (1, -1) and covariance [[3.0625, 1.6238], [1.6238, 1.1875]]."""
    sched, g2 = DDPMSchedule.linear(), dl.gauss2()
    eps_model = eps_on_chain(dl.exact_prediction(g2, dl.VP(), "eps"), sched)
    g = torch.Generator().manual_seed(1)
    x, traj = ancestral_sample(eps_model, sched, torch.randn(5000, 2, generator=g, dtype=F64), generator=g,
                               return_trajectory=True)
    assert traj.shape == (1001, 5000, 2) and torch.equal(traj[-1], x)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    R = np.array([[c, -s], [s, c]])
    cov = torch.from_numpy(R @ np.diag([4.0, 0.25]) @ R.T)
    _assert_moments_within_mc(x, torch.tensor([1.0, -1.0], dtype=F64), cov)


def test_eps_on_chain_converts_other_targets():
    """A score model read on the chain gives the exact eps at the chain's time t_i (conversion through the path)."""
    sched, gm, path = DDPMSchedule.linear(100), dl.gmm2(), dl.VP()
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(20, 2)) * 2)
    from_score = eps_on_chain(dl.exact_score(gm, path), sched, path, target="score")
    times = chain_times(sched, path)
    for i in (1, 37, 100):
        assert torch.allclose(from_score(x, i), dl.exact_prediction(gm, path, "eps")(x, float(times[i])), atol=1e-12)


# -- step i of the chain is the time where the path has its SNR, not i / N -------------------------

def test_chain_times_invert_the_vp_noise_level():
    """t_i solves B(t_i) = -log abar_i on VP(0.1, 20) (the quadratic, solved here in numpy); t_1 is 8 %
    below 1 / N, where VP's sigma^2(1 / N) = 1.0995e-4 is 10 % above the chain's beta_1 = 1e-4."""
    abar = _np_alpha_bar()
    b = -np.log(abar[1:])
    t_ref = (-0.1 + np.sqrt(0.01 + 2 * 19.9 * b)) / 19.9  # beta_min t + (beta_max - beta_min) t^2 / 2 = b
    got = chain_times(DDPMSchedule.linear(), dl.VP()).numpy()
    inside = t_ref <= 1  # the last steps are noisier than VP at t = 1: read at t = 1
    assert got[0] == 0 and inside.sum() == 996
    assert np.abs(got[1:][inside] - t_ref[inside]).max() < 1e-13
    assert np.all(got[1:][~inside] == 1.0)
    assert abs(got[1] * 1000 - 0.9165) < 1e-4


@pytest.mark.parametrize("path", [dl.VP(), dl.SubVP(), dl.RectifiedFlow(), dl.Cosine()], ids=lambda p: p.name)
def test_eps_on_chain_gives_the_chains_exact_noise_prediction(path):
    """Data N(0, 0.7) in 1-D: the chain's own E[eps | x_i] = sqrt(1 - abar_i) x / (abar_i 0.7 + 1 - abar_i)
    (Gaussian conditioning, numpy), for every step i inside the path's SNR range, from the path's exact
    eps read by eps_on_chain. Reading step i at t = i / N (the old eps_on_chain) was 4.9 % off at i = 1 on VP."""
    s2, abar = 0.7, _np_alpha_bar()
    data = dl.Gaussian(torch.zeros(1, dtype=F64), torch.full((1, 1), s2, dtype=F64))
    eps_model = eps_on_chain(dl.exact_prediction(data, path, "eps"), DDPMSchedule.linear(), path)
    x = torch.linspace(-3, 3, 12, dtype=F64)[:, None]  # no zero: relative errors
    snr_1 = float(path.snr(1.0)) if float(path.alpha(1.0)) > 0 else 0.0
    worst = 0.0
    for i in range(1, 1001):
        if abar[i] / (1 - abar[i]) < snr_1:
            continue
        expected = math.sqrt(1 - abar[i]) * x.numpy() / (abar[i] * s2 + 1 - abar[i])
        worst = max(worst, float(np.abs(eps_model(x, i).numpy() / expected - 1).max()))
    assert worst < 1e-9


def test_schedule_errors_speak():
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        DDPMSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="1..N = 1..1000"):
        DDPMSchedule.linear().posterior_variance(0)
    with pytest.raises(ValueError, match="unknown reverse variance"):
        ddpm_elbo_weights(DDPMSchedule.linear(10), "small")
    with pytest.raises(ValueError, match="0 <= j < i"):
        ddim_sigma(DDPMSchedule.linear(10), 3, 5)


# -- PR-3: the continuous-time ELBO is tight for Gaussian data ------------------------------------

S2 = 0.7  # check PR-3: x0 ~ N(0, 0.7) in one dimension


def _gauss_hermite_mean(fn, var, n=80):
    """E fn(X) for X ~ N(0, var) by Gauss-Hermite quadrature (exact for polynomials of degree < 2n)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return float((weights * fn(math.sqrt(var) * nodes)).sum() / weights.sum())


@pytest.mark.parametrize("k", [2, 4, 6])
def test_pr3_terms_against_independent_quadrature(k):
    """Each term for SNR in [10^-k, 10^k] against a quadrature of its definition (rel. 1e-9)."""
    snr_min, snr_max = 10.0**-k, 10.0**k
    terms = gaussian_elbo_terms(S2, snr_min, snr_max)
    post_var = lambda snr: 1 / (1 / S2 + snr)  # noqa: E731  Var(x0 | z) for z = alpha x0 + sigma eps
    diffusion = 0.5 * quad(lambda u: post_var(math.exp(u)) * math.exp(u), math.log(snr_min), math.log(snr_max),
                           epsabs=1e-13, epsrel=1e-13, limit=200)[0]
    # decoder N(x0; z / alpha, sigma^2 / alpha^2): z / alpha - x0 = eps / sqrt(SNR), averaged over eps
    decoder = _gauss_hermite_mean(lambda e: 0.5 * math.log(2 * math.pi / snr_max) + 0.5 * e**2, 1.0)
    a2, v2 = snr_min / (1 + snr_min), 1 / (1 + snr_min)
    prior = _gauss_hermite_mean(lambda x0: 0.5 * (a2 * x0**2 + v2 - 1 - math.log(v2)), S2)
    for name, ref in (("diffusion", diffusion), ("decoder", decoder), ("prior", prior)):
        assert abs(terms[name] - ref) < 1e-9 * max(1.0, abs(ref)), (name, terms[name], ref)
    entropy = 0.5 * math.log(2 * math.pi * math.e * S2)
    assert abs(terms["entropy"] - entropy) < 1e-12
    assert terms["bound"] >= entropy  # the ELBO is a bound: -ELBO >= -E log p = entropy


def test_pr3_bound_is_tight():
    """PR-3: bound 1.247696, 1.240672, 1.240602 at SNR in [1e-2, 1e2], [1e-4, 1e4], [1e-6, 1e6]; gap < 1e-6 at the last."""
    expected = {2: 1.247696, 4: 1.240672, 6: 1.240602}
    gaps = []
    for k, value in expected.items():
        terms = gaussian_elbo_terms(S2, 10.0**-k, 10.0**k)
        assert abs(terms["bound"] - value) < 1e-6 and abs(terms["entropy"] - 1.240601) < 1e-6
        gaps.append(terms["gap"])
    assert 0 < gaps[2] < 1e-6 and gaps[0] > gaps[1] > gaps[2]


def test_pr3_quadrature_over_song_vp_equals_closed_form():
    """PR-3: 1/2 int mse dSNR over Song's VP on t in [1e-3, 1] by quadrature in t = closed form = 4.3794409."""
    path = dl.VP()

    def mse(t):  # exact-denoiser MSE Var(x0 | x_t), alpha and sigma from reference.vp_alpha_sigma
        a, s = vp_alpha_sigma(t)
        return 1 / (1 / S2 + a**2 / s**2)

    snr = lambda t: (lambda a, s: a**2 / s**2)(*vp_alpha_sigma(t))  # noqa: E731
    closed = 0.5 * math.log((1 / S2 + snr(1e-3)) / (1 / S2 + snr(1.0)))
    value = vdm_diffusion_term(mse, path, 1e-3, 1.0)
    assert abs(value - closed) < 1e-9
    assert abs(value - 4.3794409) < 1e-7
    terms = gaussian_elbo_terms(S2, snr(1.0), snr(1e-3))
    assert abs(terms["diffusion"] - value) < 1e-9
    # a fixed Gauss-Legendre rule in log t (for an mse estimated from samples): 48 calls, error ~1e-6
    calls = []
    fixed = vdm_diffusion_term(lambda t: calls.append(t) or mse(t), path, 1e-3, 1.0, order=48)
    assert len(calls) == 48 and abs(fixed - closed) < 1e-5


# -- SDE-2: denoising score matching is minimised by the exact score ------------------------------

def test_sde2_dsm_optimality():
    """SDE-2: GMM2, VP t = 0.2, common random numbers. L(s) = E||s(x_t) + z / sigma_t||^2 is smallest at the
    exact score, and L(s* + Delta) - L(s*) = E||Delta||^2 within 10 %, since E[z / sigma | x_t] = -s*(x_t).
    min L = E||z||^2 / sigma^2 - E||s*||^2 (about 2.947 with 4e5 samples)."""
    gm, path, t, n = dl.gmm2(), dl.VP(), 0.2, 1_000_000
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(n, generator=g)
    x_t, z = path.sample(x0, t, generator=g)
    sigma = float(path.sigma(t))
    best = dl.exact_score(gm, path)(x_t, t)
    target = -z / sigma

    def dsm(s):
        return float(((s - target) ** 2).sum(1).mean())

    at_best = dsm(best)
    assert abs(at_best - 2.947) < 0.01
    identity = float((z**2).sum(1).mean()) / sigma**2 - float((best**2).sum(1).mean())
    assert abs(identity - at_best) < 0.01
    for delta in (0.05 * best, 0.2 * best, torch.full_like(best, 0.05), torch.full_like(best, 0.2)):
        increase = dsm(best + delta) - at_best
        assert increase > 0
        assert abs(increase / float((delta**2).sum(1).mean()) - 1) < 0.10


def test_ddim_step_and_reverse_mean_take_their_arguments_in_one_order():
    """(schedule, x_t, i, eps_hat) for both; the old order (eps_hat first) is refused, not silently misread."""
    import inspect
    assert list(inspect.signature(ddim_step).parameters)[:4] == list(inspect.signature(reverse_mean).parameters)
    sched, x = DDPMSchedule.linear(), torch.zeros(3, 2, dtype=F64)
    with pytest.raises(TypeError, match="DDPMSchedule first"):
        ddim_step(x, x, sched, 10)
