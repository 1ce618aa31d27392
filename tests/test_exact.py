"""Exact mixture quantities (checks TK-1..TK-4) against finite differences and numpy references."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from reference import GMM2, gmm_logpdf_score, gmm_posterior_mean, gmm_t



pytestmark = pytest.mark.usefixtures("float64_default")  # see conftest.py


@pytest.fixture
def gm():
    return dl.gmm2()


def _points(n=50, seed=0, scale=2.0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 2)) * scale)


def test_regression_values_of_math_0_5(gm):
    """VP, t = 0.3, GMM2 at x = (0.5, 0.5): log p_t, score, Hessian, x0_hat, eps_hat to 1e-9."""
    path, t = dl.VP(), 0.3
    x = torch.tensor([[0.5, 0.5]])
    assert abs(float(path.alpha(t)) - 0.6295500003) < 1e-9
    assert abs(float(path.sigma(t)) - 0.7769599713) < 1e-9
    assert abs(dl.exact_log_prob(gm, path)(x, t).item() - (-2.341592639)) < 1e-9
    score = dl.exact_score(gm, path)(x, t)[0]
    assert torch.allclose(score, torch.tensor([0.8233243627, 0.0777653274]), atol=1e-9)
    hess = dl.exact_score_jacobian(gm, path)(x, t)[0]
    ref = torch.tensor([[-0.5897239886, 0.1661342740], [0.1661342740, -1.0076282877]])
    assert torch.allclose(hess, ref, atol=1e-9)
    x0 = dl.exact_denoiser(gm, path)(x, t)[0]
    assert torch.allclose(x0, torch.tensor([1.5836924477, 0.8687861899]), atol=1e-9)
    eps = dl.exact_prediction(gm, path, "eps")(x, t)[0]
    assert torch.allclose(eps, torch.tensor([-0.6396900732, -0.0604205466]), atol=1e-9)
    w = torch.softmax(gm._parts(x, path.alpha(t), path.sigma(t))[0], 1)[0]
    assert torch.allclose(w, torch.tensor([0.0883988198, 0.9116011802]), atol=1e-9)


def test_against_numpy_reference_with_explicit_inverses(gm):
    path = dl.SubVP()
    x = _points(100, seed=3)
    for t in (0.05, 0.4, 0.95):
        a, s = float(path.alpha(t)), float(path.sigma(t))
        logp, score, _, _ = gmm_logpdf_score(x.numpy(), *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s))
        assert np.allclose(dl.exact_log_prob(gm, path)(x, t).numpy(), logp, atol=1e-12)
        assert np.allclose(dl.exact_score(gm, path)(x, t).numpy(), score, atol=1e-11)


def test_tk1_score_is_gradient_of_log_density(gm):
    """TK-1: central differences (h = 1e-5) of log p_t vs the closed-form score; assert < 1e-7."""
    path, t, h = dl.VP(), 0.2, 1e-5
    x = _points()
    logp = dl.exact_log_prob(gm, path)
    fd = torch.stack([(logp(x + h * e, t) - logp(x - h * e, t)) / (2 * h) for e in torch.eye(2)], 1)
    assert (fd - dl.exact_score(gm, path)(x, t)).abs().max() < 1e-7


def test_tk2_hessian_is_jacobian_of_score_and_symmetric(gm):
    """TK-2: finite differences of the score vs the closed-form Hessian; its asymmetry ratio < 1e-12."""
    path, t, h = dl.VP(), 0.2, 1e-5
    x = _points()
    score = dl.exact_score(gm, path)
    fd = torch.stack([(score(x + h * e, t) - score(x - h * e, t)) / (2 * h) for e in torch.eye(2)], 2)
    J = dl.exact_score_jacobian(gm, path)(x, t)
    assert (fd - J).abs().max() < 1e-7
    asym = torch.linalg.matrix_norm(J - J.transpose(1, 2)) / torch.linalg.matrix_norm(J)
    assert asym.max() < 1e-12


def test_tk3_tweedie_matches_componentwise_posterior_mean(gm):
    """TK-3: (x + sigma^2 s) / alpha equals the component-wise posterior mean; eps_hat = -sigma s."""
    path, t = dl.VP(), 0.3
    x = _points()
    a, s = float(path.alpha(t)), float(path.sigma(t))
    ref = torch.from_numpy(gmm_posterior_mean(x.numpy(), GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s))
    score = dl.exact_score(gm, path)(x, t)
    assert ((x + s**2 * score) / a - ref).abs().max() < 1e-12
    assert (dl.exact_denoiser(gm, path)(x, t) - ref).abs().max() < 1e-12


def test_tk4_classifier_gradient(gm):
    """TK-4: grad log w_k(x, t) = s_k - s, by finite differences of the log responsibilities."""
    path, t, h = dl.VP(), 0.3, 1e-5
    x = _points()
    a, s = path.alpha(t), path.sigma(t)

    def log_w(y):
        return torch.log_softmax(gm._parts(y, a, s)[0], 1)

    fd = torch.stack([(log_w(x + h * e) - log_w(x - h * e)) / (2 * h) for e in torch.eye(2)], 2)  # [N, K, D]
    _, sk, _, _ = gm._parts(x, a, s)
    score = dl.exact_score(gm, path)(x, t)
    assert (fd - (sk - score[:, None, :])).abs().max() < 1e-7


def test_per_point_times_equal_one_time_at_a_time(gm):
    path = dl.VE()
    x = _points(6)
    t = torch.linspace(0.1, 0.9, 6)
    batched = dl.exact_score(gm, path)(x, t)
    for i in range(6):
        assert torch.allclose(batched[i], dl.exact_score(gm, path)(x[i : i + 1], t[i].item())[0], atol=1e-13)


def test_noised_is_the_law_of_x_t(gm):
    path, t = dl.VP(), 0.4
    x = _points(20)
    noised = gm.noised(path, t)
    assert isinstance(noised, dl.GaussianMixture)
    assert torch.allclose(noised.log_prob(x), dl.exact_log_prob(gm, path)(x, t), atol=1e-12)
    g = dl.gauss2()
    assert isinstance(g.noised(path, t), dl.Gaussian)


def test_sampling_moments(gm):
    """Global mean (0.8, 0.7), covariance [[3.65, 0.9], [0.9, 1.0]], mass left of x1 = 0 about 0.30."""
    n = 200_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gm.mean(), torch.tensor([0.8, 0.7]), atol=1e-14)
    assert torch.allclose(gm.covariance(), torch.tensor([[3.65, 0.9], [0.9, 1.0]]), atol=1e-13)
    se = (torch.diag(gm.covariance()) / n).sqrt()
    assert ((x.mean(0) - gm.mean()).abs() < 5 * se).all()
    assert torch.allclose(torch.cov(x.T), gm.covariance(), atol=0.05)
    left = (x[:, 0] < 0).double().mean().item()
    assert abs(left - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n) + 1e-3  # component 2 leaks ~1e-5 mass


def test_gaussian_and_gauss2_fixture():
    g = dl.gauss2()
    ref = torch.tensor([[3.0625, 1.6238], [1.6238, 1.1875]])
    assert torch.allclose(g.cov, ref, atol=1e-4)
    x = _points(10)
    # single Gaussian score -C^{-1}(x - alpha mu) written out with a dense solve
    path, t = dl.VP(), 0.5
    a, s = path.alpha(t), path.sigma(t)
    C = a**2 * g.cov + s**2 * torch.eye(2)
    ref_score = -torch.linalg.solve(C, (x - a * g.mean_vector).T).T
    assert torch.allclose(dl.exact_score(g, path)(x, t), ref_score, atol=1e-12)


def test_zero_variance_directions():
    """Data on a line: the score of p_t exists for t > 0 and matches a dense solve."""
    g = dl.Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    path, t = dl.VP(), 0.3
    x = _points(5)
    a, s = path.alpha(t), path.sigma(t)
    C = a**2 * g.cov + s**2 * torch.eye(2)
    assert torch.allclose(dl.exact_score(g, path)(x, t), -torch.linalg.solve(C, x.T).T, atol=1e-12)
    x0 = dl.exact_denoiser(g, path)(x, t)
    assert x0[:, 1].abs().max() < 1e-14  # the denoiser never leaves the data's line


def test_float32_and_errors(gm):
    x = torch.randn(7, 2, dtype=torch.float32)
    out = dl.exact_score(gm, dl.VP())(x, 0.5)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        dl.exact_score(gm, dl.VP())(torch.randn(7, 3), 0.5)
    with pytest.raises(ValueError, match="covs must have shape"):
        dl.GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="unknown dataset 'moon'"):
        dl.toy_data("moon", 10)


@pytest.mark.parametrize("name", dl.TOY_DATASETS)
def test_toy_sets(name):
    x = dl.toy_data(name, 1000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.abs().max() < 6 and x.std() > 0.3
    again = dl.toy_data(name, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


@pytest.mark.parametrize("name", list(dl.MANIFOLD_DATASETS))
def test_manifold_sets_have_their_intrinsic_dimension(name):
    ambient, intrinsic = dl.MANIFOLD_DATASETS[name]
    x = dl.manifold_data(name, 2000, generator=torch.Generator().manual_seed(0)).double()
    assert x.shape == (2000, ambient)
    # local PCA around one point: `intrinsic` directions carry the variance of a small neighbourhood
    centre = x[0]
    near = x[(x - centre).norm(dim=1).argsort()[:40]]
    sv = torch.linalg.svdvals(near - near.mean(0))
    assert (sv[intrinsic:] < 0.15 * sv[intrinsic - 1]).all()
