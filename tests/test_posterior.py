"""Exact posteriors against independent numpy references: the posterior of a linear Gaussian measurement,
the noisy likelihood score, the second-order Tweedie covariance (check GD-5a) and the score-difference
trace estimator (check GD-5b)."""
import numpy as np
import pytest
import torch
from reference import GMM2, gmm_logpdf_score, gmm_t, vp_alpha_sigma
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import diffusion_lessons as dl
from diffusion_lessons.posterior import (
    exact_likelihood_score,
    score_difference_trace,
    score_jacobian,
    tweedie_covariance,
)

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

BMIN, BMAX = 0.1, 20.0
PRIOR3 = {  # a 3-component mixture in 3-D for the measurement tests
    "pis": np.array([0.2, 0.5, 0.3]),
    "mus": np.array([[-1.0, 0.5, 0.0], [1.5, -0.5, 1.0], [0.0, 2.0, -1.0]]),
    "covs": np.array([[[1.0, 0.3, 0.1], [0.3, 0.5, 0.0], [0.1, 0.0, 0.8]],
                      [[0.4, -0.1, 0.0], [-0.1, 0.9, 0.2], [0.0, 0.2, 0.3]],
                      [[0.6, 0.0, 0.2], [0.0, 0.6, 0.0], [0.2, 0.0, 0.6]]]),
}
A3 = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
Y3 = np.array([0.7, -0.4])


def _mixture(p):
    return dl.GaussianMixture(torch.tensor(p["pis"]), torch.tensor(p["mus"]), torch.tensor(p["covs"]))


def _component_posteriors(pis, mus, covs, A, y, noise_std):
    """Posterior weights, means, covariances by Bayes' rule with explicit inverses (numpy)."""
    out_w, out_m, out_c = [], [], []
    for pi, mu, cov in zip(pis, mus, covs):
        S = A @ cov @ A.T + noise_std**2 * np.eye(len(y))
        K = cov @ A.T @ np.linalg.inv(S)
        out_w.append(np.log(pi) + multivariate_normal(A @ mu, S).logpdf(y))
        out_m.append(mu + K @ (y - A @ mu))
        out_c.append(cov - K @ A @ cov)
    w = np.exp(np.array(out_w) - logsumexp(out_w))
    return w, np.array(out_m), np.array(out_c)


@pytest.mark.parametrize("noise_std", [0.3, 0.0])
def test_posterior_of_a_linear_measurement_matches_bayes_rule(noise_std):
    post = _mixture(PRIOR3).posterior(torch.tensor(A3), torch.tensor(Y3), noise_std)
    w, m, c = _component_posteriors(PRIOR3["pis"], PRIOR3["mus"], PRIOR3["covs"], A3, Y3, noise_std)
    assert np.abs(post.weights.numpy() - w).max() < 1e-12
    assert np.abs(post.means.numpy() - m).max() < 1e-12
    assert np.abs(post.covs.numpy() - c).max() < 1e-12
    if noise_std == 0:  # the observation is then exact: A x = y for every sample (to sqrt(rounding): singular covs)
        x = post.sample(200, generator=torch.Generator().manual_seed(0))
        assert (x @ torch.tensor(A3).T - torch.tensor(Y3)).abs().max() < 1e-6


def test_posterior_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"A \[M, 3\] and y \[M\]"):
        _mixture(PRIOR3).posterior(torch.ones(2, 2), torch.ones(2), 0.1)
    with pytest.raises(ValueError, match="noise_std"):
        _mixture(PRIOR3).posterior(torch.tensor(A3), torch.tensor(Y3), -1.0)


def _log_likelihood_t(x, a, s, noise_std):
    """log p_t(y | x_t = x) for the 3-D prior: x0 | x_t is a mixture of Gaussians (component posteriors of
    x_t = a x0 + s eps) and y = A x0 + noise, so p_t(y | x) = sum_k w_k(x) N(y; A m_k(x), A P_k A^T + noise^2 I)."""
    pis, mus, covs = PRIOR3["pis"], PRIOR3["mus"], PRIOR3["covs"]
    _, _, w, _ = gmm_logpdf_score(x, *gmm_t(pis, mus, covs, a, s))
    out = []
    for n in range(len(x)):
        terms = []
        for k in range(len(pis)):
            C = a**2 * covs[k] + s**2 * np.eye(3)
            gain = a * covs[k] @ np.linalg.inv(C)
            m = mus[k] + gain @ (x[n] - a * mus[k])
            P = covs[k] - gain @ (a * covs[k])
            S = A3 @ P @ A3.T + noise_std**2 * np.eye(2)
            terms.append(np.log(w[n, k]) + multivariate_normal(A3 @ m, S).logpdf(Y3))
        out.append(logsumexp(terms))
    return np.array(out)


def test_exact_likelihood_score_is_the_gradient_of_the_noisy_likelihood():
    """grad_x log p_t(y | x_t) vs central differences (h = 1e-5) of an independent numpy log p_t(y | x)."""
    vp, noise_std, h = dl.VP(BMIN, BMAX), 0.2, 1e-5
    field = exact_likelihood_score(_mixture(PRIOR3), vp, torch.tensor(A3), torch.tensor(Y3), noise_std)
    x = np.random.default_rng(0).normal(size=(15, 3))
    for t in (0.05, 0.3, 0.7):
        a, s = vp_alpha_sigma(t, BMIN, BMAX)
        fd = np.stack([(_log_likelihood_t(x + h * e, a, s, noise_std) - _log_likelihood_t(x - h * e, a, s, noise_std))
                       / (2 * h) for e in np.eye(3)], 1)
        assert np.abs(field(torch.tensor(x), t).numpy() - fd).max() < 1e-7


def _posterior_covariance_numpy(x, a, s):
    """Cov[x0 | x_t = x] for GMM2, component by component: sum_k w_k (P_k + m_k m_k^T) - m m^T."""
    pis, mus, covs = GMM2["pis"], GMM2["mus"], GMM2["covs"]
    _, _, w, _ = gmm_logpdf_score(x, *gmm_t(pis, mus, covs, a, s))
    out = np.zeros((len(x), 2, 2))
    mean = np.zeros((len(x), 2))
    for k in range(2):
        C = a**2 * covs[k] + s**2 * np.eye(2)
        gain = a * covs[k] @ np.linalg.inv(C)
        m = mus[k] + (x - a * mus[k]) @ gain.T
        P = covs[k] - gain @ (a * covs[k])
        out += w[:, k, None, None] * (P[None] + m[:, :, None] * m[:, None, :])
        mean += w[:, k, None] * m
    return out - mean[:, :, None] * mean[:, None, :]


def test_gd5a_second_order_tweedie_is_the_posterior_covariance():
    """Check GD-5 (a): sigma^2 / alpha^2 (I + sigma^2 grad^2 log p_t) vs the exact GMM2 posterior covariance
    (numpy, component by component), VP t = 0.3, 100 points: 1e-10; the autograd Jacobian of the exact
    score gives the same covariance."""
    vp, t = dl.VP(BMIN, BMAX), 0.3
    a, s = vp_alpha_sigma(t, BMIN, BMAX)
    x = np.random.default_rng(1).normal(size=(100, 2)) * 2 + np.array([0.5, 0.5])
    expected = _posterior_covariance_numpy(x, a, s)
    mixture = dl.gmm2()
    exact = tweedie_covariance(dl.exact_score_jacobian(mixture, vp), vp)(torch.tensor(x), t).numpy()
    autograd = tweedie_covariance(score_jacobian(dl.exact_score(mixture, vp)), vp)(torch.tensor(x), t).numpy()
    assert np.abs(exact - expected).max() < 1e-10
    assert np.abs(autograd - expected).max() < 1e-10


def _gauss_hermite_probes(n):
    """Nodes [n^2, 2] and weights [n^2] of the product Gauss-Hermite rule for E over eps ~ N(0, I_2)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    weights = weights / weights.sum()
    grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    return grid, np.outer(weights, weights).reshape(-1)


def test_gd5b_score_difference_trace_bias_depends_on_the_probe_size():
    """Check GD-5 (b): E_eps[eps . (s(x + c eps) - s(x))] / c at x = (0.5, 0.5), GMM2, VP t = 0.3, with the
    package and with an independent numpy score, both on a 60 x 60 Gauss-Hermite rule: equal to 1e-6 for
    c = 1, 0.3, 0.1, 0.01. The bias against tr H is not monotone in c (c = 0.3 is worse than c = 1) and
    only c = 0.01 is within 1e-3; for a Gaussian p_t the estimate is exact for every c."""
    vp, t = dl.VP(BMIN, BMAX), 0.3
    a, s = vp_alpha_sigma(t, BMIN, BMAX)
    params = gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s)
    x0 = np.array([[0.5, 0.5]])
    nodes, weights = _gauss_hermite_probes(60)
    h = 1e-5
    hess = np.stack([(gmm_logpdf_score(x0 + h * e, *params)[1] - gmm_logpdf_score(x0 - h * e, *params)[1]) / (2 * h)
                     for e in np.eye(2)], 1)[0]
    trace = np.trace(hess)
    score = dl.exact_score(dl.gmm2(), vp)
    bias = {}
    for c in (1.0, 0.3, 0.1, 0.01):
        moved = gmm_logpdf_score(x0 + c * nodes, *params)[1] - gmm_logpdf_score(x0, *params)[1]
        reference = float(weights @ (moved * nodes).sum(1)) / c
        got = score_difference_trace(score, torch.tensor(x0), t, c, torch.tensor(nodes), torch.tensor(weights)).item()
        assert abs(got - reference) < 1e-6, (c, got, reference)
        bias[c] = abs(got - trace)
    assert bias[0.3] > bias[1.0] > bias[0.1] > bias[0.01] and bias[0.01] < 1e-3 < bias[0.1]
    gauss = dl.gauss2()
    exact_trace = dl.exact_score_jacobian(gauss, vp)(torch.tensor(x0), t)[0].trace().item()
    for c in (1.0, 0.3, 0.01):
        got = score_difference_trace(dl.exact_score(gauss, vp), torch.tensor(x0), t, c, torch.tensor(nodes),
                                     torch.tensor(weights)).item()
        assert abs(got - exact_trace) < 1e-9, (c, got, exact_trace)


def test_score_difference_trace_with_random_probes_is_unbiased_within_its_standard_error():
    """Monte Carlo over 20 000 standard normal probes at c = 0.01 (bias < 1e-3): within 4.5 standard errors."""
    vp, t = dl.VP(BMIN, BMAX), 0.3
    score = dl.exact_score(dl.gmm2(), vp)
    x = torch.tensor([[0.5, 0.5]])
    probes = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(3))
    per_probe = torch.stack([score_difference_trace(score, x, t, 0.01, p[None]) for p in probes[:2000]])
    mean = score_difference_trace(score, x, t, 0.01, probes).item()
    trace = dl.exact_score_jacobian(dl.gmm2(), vp)(x, t)[0].trace().item()
    se = per_probe.std().item() / 20_000**0.5
    assert abs(mean - trace) < 4.5 * se + 1e-3, (mean, trace, se)
    with pytest.raises(ValueError, match="probe size"):
        score_difference_trace(score, x, t, 0.0, probes)
