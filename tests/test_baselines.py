"""No-learning baselines, metrics helpers and as_field, against independent numpy references."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import baselines, metrics

pytestmark = pytest.mark.usefixtures("float64_default")


def _mixture_moments_numpy(gm):
    w, mu, cov = (a.double().numpy() for a in (gm.weights, gm.means, gm.covs))
    m = (w[:, None] * mu).sum(0)
    second = sum(wk * (ck + np.outer(mk, mk)) for wk, mk, ck in zip(w, mu, cov))
    return m, second - np.outer(m, m)


def test_moment_matched_gaussian_of_a_mixture_has_its_exact_moments():
    gm = dl.gmm2()
    g = baselines.moment_matched_gaussian(gm)
    m, c = _mixture_moments_numpy(gm)
    assert np.abs(g.mean_vector.numpy() - m).max() < 1e-12
    assert np.abs(g.cov.numpy() - c).max() < 1e-12


def test_moment_matched_gaussian_of_samples_uses_their_sample_moments():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    g = baselines.moment_matched_gaussian(x)
    xn = x.numpy()
    assert np.abs(g.mean_vector.numpy() - xn.mean(0)).max() < 1e-12
    assert np.abs(g.cov.numpy() - np.cov(xn.T)).max() < 1e-12
    with pytest.raises(ValueError, match="at least 2 samples"):
        baselines.moment_matched_gaussian(x[:1])
    with pytest.raises(ValueError, match="mean\\(\\) and covariance\\(\\)"):
        baselines.moment_matched_gaussian("moons")


@pytest.mark.parametrize("t", [0.05, 0.3, 0.8])
def test_linear_field_is_the_least_squares_affine_predictor_of_eps(t):
    """Population least squares: eps_hat(x) = Cov(eps, x) Cov(x)^-1 (x - E x), with x = a x0 + s eps."""
    gm, path = dl.gmm2(), dl.VP()
    a, s = float(path.alpha(t)), float(path.sigma(t))
    m, c = _mixture_moments_numpy(gm)
    cov_x = a**2 * c + s**2 * np.eye(2)
    x = np.random.default_rng(1).normal(size=(50, 2)) * 2
    expected = (s * np.linalg.solve(cov_x, (x - a * m).T)).T
    got = baselines.linear_field(gm, path, "eps")(torch.tensor(x), t).numpy()
    assert np.abs(got - expected).max() < 1e-12


def test_the_linear_field_beats_any_other_affine_predictor_in_mean_squared_error():
    gm, path, t = dl.gmm2(), dl.VP(), 0.3
    gen = torch.Generator().manual_seed(2)
    x0 = gm.sample(20000, generator=gen)
    x_t, eps = path.sample(x0, t, generator=gen)
    best = baselines.linear_field(gm, path, "eps")(x_t, t)
    mse_best = (best - eps).pow(2).sum(1).mean()
    for scale in (0.9, 1.1):
        assert (scale * best - eps).pow(2).sum(1).mean() > mse_best
    exact = dl.exact_prediction(gm, path, "eps")(x_t, t)
    assert (exact - eps).pow(2).sum(1).mean() < mse_best  # the mixture's exact field does better: it is not affine


def test_beats_baseline_asserts_and_reports(capsys):
    assert baselines.beats_baseline("sw2", 0.1, 0.5, 2) == pytest.approx(5.0)
    assert "5x lower" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="does not beat"):
        baselines.beats_baseline("sw2", 0.3, 0.5, 2)
    assert baselines.beats_baseline("accuracy", 0.9, 0.1, 5, higher_is_better=True) == pytest.approx(9.0)
    with pytest.raises(AssertionError):
        baselines.beats_baseline("accuracy", 0.3, 0.1, 5, higher_is_better=True)
    with pytest.raises(ValueError, match="finite"):
        baselines.beats_baseline("x", math.nan, 1.0, 2)


def test_sliced_w2_baseline_of_gaussian_data_is_at_the_noise_floor_and_of_a_mixture_above_it():
    g = dl.Gaussian(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    ref = g.sample(2000, generator=torch.Generator().manual_seed(3))
    floor = metrics.sliced_w2_floor(lambda n, gen: g.sample(n, generator=gen), 2000)
    base = baselines.sliced_w2_baseline(g, ref, generator=torch.Generator().manual_seed(4))
    assert base < 3 * floor
    gm = dl.gmm2()
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(3))
    floor = metrics.sliced_w2_floor(lambda n, gen: gm.sample(n, generator=gen), 2000)
    assert baselines.sliced_w2_baseline(gm, ref, generator=torch.Generator().manual_seed(4)) > 5 * floor


def test_sliced_w2_floor_shrinks_like_one_over_root_n():
    draw = lambda n, gen: torch.randn(n, 2, generator=gen)  # noqa: E731
    small, large = metrics.sliced_w2_floor(draw, 500, pairs=8), metrics.sliced_w2_floor(draw, 8000, pairs=8)
    assert 0 < large < small
    assert 2.0 < small / large < 8.0  # n grows 16x: sqrt gives 4 (sorting noise adds a little)
    with pytest.raises(ValueError, match="pairs"):
        metrics.sliced_w2_floor(draw, 10, pairs=0)


@pytest.mark.parametrize("dist", ["gaussian", "mixture"])
def test_moment_standard_errors_match_the_spread_over_repeated_experiments(dist):
    d = (dl.Gaussian(torch.tensor([0.0, 1.0]), torch.tensor([[2.0, 0.6], [0.6, 0.5]])) if dist == "gaussian"
         else dl.gmm2())
    n, reps = 40, 4000
    se = metrics.moment_standard_errors(d, n, draws=400_000)
    x = d.sample(n * reps, generator=torch.Generator().manual_seed(7)).reshape(reps, n, 2).numpy()
    means = x.mean(1)
    covs = np.stack([np.cov(r.T) for r in x])
    # the spread of 4000 replicates is known to ~1.2 % (sd of a sample sd); allow 6 %, plus O(1/n) for the covariance
    assert np.abs(means.std(0) / se["mean"].numpy() - 1).max() < 0.06
    assert np.abs(covs.std(0) / se["cov"].numpy() - 1).max() < 0.08


def test_relative_field_error_has_known_values():
    gm, path, t = dl.gmm2(), dl.VP(), 0.4
    x = gm.noised(path, t).sample(1000, generator=torch.Generator().manual_seed(1))
    score = dl.exact_score(gm, path)
    assert metrics.relative_field_error(score, score, x, t) == 0.0
    assert metrics.relative_field_error(lambda y, s: 3 * score(y, s), score, x, t) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="zero"):
        metrics.relative_field_error(score, lambda y, s: 0 * y, x, t)


class _Float32Eps(torch.nn.Module):
    """The exact eps-predictor of GMM2 behind a float32 parameter, as a stand-in for a trained network."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones((), dtype=torch.float32))
        self.exact = dl.exact_prediction(dl.gmm2(dtype=torch.float32), dl.VP(), "eps")

    def forward(self, x, t):
        assert x.dtype == torch.float32
        return self.weight * self.exact(x, t)


def test_as_field_runs_the_network_in_its_dtype_and_converts_in_float64():
    path, t = dl.VP(), 0.3
    field = dl.as_field(_Float32Eps(), "eps", "score", path)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    got = field(x, t)
    assert got.dtype == torch.float64
    exact = dl.exact_score(dl.gmm2(), path)(x, t)
    assert (got - exact).abs().max() < 1e-4 * exact.abs().max()  # float32 network, float64 conversion
    x.requires_grad_(True)
    field(x, t).sum().backward()  # a graph by default (Jacobians of the field)
    assert x.grad is not None
    plain = x.detach()
    assert dl.as_field(_Float32Eps(), "eps", "velocity", path)(plain, t).requires_grad  # through the weights
    assert not dl.as_field(_Float32Eps(), "eps", "velocity", path, no_grad=True)(plain, t).requires_grad
    with pytest.raises(ValueError, match="unknown target"):
        dl.as_field(_Float32Eps(), "noise", "score", path)


def test_glue_returns_the_value_and_checks_the_name():
    assert dl.glue("ratio_1", torch.tensor(2.5)) == 2.5
    with pytest.raises(ValueError, match="glue name"):
        dl.glue("bad name", 1.0)
