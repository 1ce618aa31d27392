"""Bad input to the public API fails at once with a ValueError that says what was expected.

Each check here fails if the validation it names is removed: without it the call either returns
garbage silently or fails deep inside torch with a message about some internal tensor.
"""
import math

import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.training import fit


# -- schedules that would make alpha or sigma invalid are refused at construction --------------------

@pytest.mark.parametrize("make, message", [
    (lambda: dl.VP(beta_min=5.0, beta_max=1.0), r"VP needs finite 0 <= beta_min <= beta_max .* beta_min=5.0, "
                                                r"beta_max=1.0"),
    (lambda: dl.VP(beta_min=-0.1, beta_max=20.0), r"VP needs finite 0 <= beta_min .* beta_min=-0.1"),
    (lambda: dl.VP(beta_min=0.0, beta_max=0.0), r"beta_max > 0"),
    (lambda: dl.VP(beta_min=0.1, beta_max=math.inf), r"VP needs finite .* beta_max=inf"),
    (lambda: dl.VP(beta_min=math.nan, beta_max=1.0), r"VP needs finite .* beta_min=nan"),
    (lambda: dl.SubVP(beta_min=2.0, beta_max=1.0), r"SubVP needs finite 0 <= beta_min <= beta_max"),
    (lambda: dl.VE(sigma_min=1.0, sigma_max=1.0), r"VE needs finite 0 < sigma_min < sigma_max .* sigma_min=1.0, "
                                                  r"sigma_max=1.0"),
    (lambda: dl.VE(sigma_min=5.0, sigma_max=1.0), r"VE needs finite 0 < sigma_min < sigma_max"),
    (lambda: dl.VE(sigma_min=0.0, sigma_max=1.0), r"VE needs finite 0 < sigma_min"),
    (lambda: dl.VE(sigma_min=0.01, sigma_max=math.inf), r"VE needs finite .* sigma_max=inf"),
    (lambda: dl.make_path({"name": "ve", "sigma_min": 2.0, "sigma_max": 1.0}), r"VE needs finite"),
])
def test_invalid_schedules_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- times outside [0, 1] are refused before anything is computed ----------------------------------

@pytest.mark.parametrize("t", [-0.1, 1.5, math.nan, torch.tensor([0.2, 1.01]), torch.tensor([-1e-3, 0.5])])
@pytest.mark.parametrize("path", [dl.VP(), dl.SubVP(), dl.VE(), dl.RectifiedFlow(), dl.Cosine()], ids=lambda p: p.name)
def test_times_outside_the_unit_interval_raise(path, t):
    x = torch.zeros(2, 3)
    for call in (path.alpha, path.sigma, path.dalpha, path.dsigma, path.f, path.g2):
        with pytest.raises(ValueError, match=r"time must lie in \[0, 1\] \(t = 0 data, t = 1 noise\); got"):
            call(t)
    with pytest.raises(ValueError, match=r"time must lie in \[0, 1\]"):
        path.sample(x, t)
    with pytest.raises(ValueError, match=r"time must lie in \[0, 1\]"):
        dl.convert(x, "eps", "x0", x, t, path)


# -- shapes and dtypes -------------------------------------------------------------------------------

def test_convert_names_the_shapes_it_expects():
    path, x = dl.VP(), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"value and x must have the same shape; got \[4, 3\] and \[4, 2\]"):
        dl.convert(torch.randn(4, 3), "eps", "score", x, 0.5, path)
    with pytest.raises(ValueError, match=r"t must be a float or a tensor of shape \[N\] = \[4\] .*; got shape \[3\]"):
        dl.convert(x, "eps", "score", x, torch.rand(3), path)
    with pytest.raises(ValueError, match=r"shape \[N\] = \[4\] .*; got shape \[4, 1\]"):
        dl.convert(x, "eps", "score", x, torch.rand(4, 1), path)
    with pytest.raises(ValueError, match=r"value must be a floating-point tensor .* got torch.int64"):
        dl.convert(torch.ones(4, 2, dtype=torch.long), "eps", "score", x, 0.5, path)
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor .* got torch.int64"):
        dl.convert(x, "eps", "score", torch.ones(4, 2, dtype=torch.long), 0.5, path)


def test_path_sample_names_the_shapes_it_expects():
    x0 = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"eps must have x0's shape \[5, 2\]; got \[5, 3\]"):
        dl.VP().sample(x0, 0.3, eps=torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"tensor of shape \[N\] = \[5\]"):
        dl.VP().sample(x0, torch.rand(2))
    with pytest.raises(ValueError, match=r"floating-point tensor .* torch.int32"):
        dl.VP().sample(torch.ones(5, 2, dtype=torch.int32), 0.3)


def test_exact_score_names_the_shapes_it_expects():
    score = dl.exact_score(dl.gmm2(), dl.VP())
    with pytest.raises(ValueError, match=r"exact_score expects x of shape \[N, 2\]; got \[5, 3\]"):
        score(torch.randn(5, 3, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"exact_score expects x of shape \[N, 2\]; got \[10\]"):
        score(torch.randn(10, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"exact_score: t must be a float or a tensor \[N\] = \[5\]; got \[3\]"):
        score(torch.randn(5, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"exact_score: t must be .* \[N\] = \[6\]; got \[3, 2\]"):
        score(torch.randn(6, 2, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"floating-point tensor .* torch.int64"):
        score(torch.ones(5, 2, dtype=torch.long), 0.5)


def test_networks_name_the_shape_and_dtype_they_expect():
    with pytest.raises(ValueError, match=r"TimeMLP\(dim=2\) has torch.float32 weights but x is torch.float64: "
                                         r"pass x.to\(torch.float32\) or convert the model"):
        dl.TimeMLP(2)(torch.randn(3, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"EnergyNet\(dim=2\) has torch.float32 weights but x is torch.float64"):
        dl.EnergyNet(2)(torch.randn(3, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"UNet.* has torch.float32 weights but x is torch.float64"):
        dl.UNet(channels=1, base=8, mults=(1,))(torch.randn(2, 1, 8, 8, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"TimeMLP\(dim=2\) has torch.float32 weights but x is torch.int64"):
        dl.TimeMLP(2)(torch.ones(3, 2, dtype=torch.long), 0.5)
    assert dl.TimeMLP(2).double()(torch.randn(3, 2, dtype=torch.float64), 0.5).dtype == torch.float64


def test_fit_names_the_data_shape_it_expects(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    small = dict(steps=2, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"TimeMLP\(dim=2\) expects x of shape \[N, 2\]; got \[N, 3\]"):
        fit(dl.TimeMLP(2, hidden=8), torch.randn(50, 3), dl.VP(), **small)
    with pytest.raises(ValueError, match=r"data must be a tensor \[N, \.\.\.\] with N >= 1 .*; got shape \[50\]"):
        fit(dl.TimeMLP(2, hidden=8), torch.randn(50), dl.VP(), **small)
    with pytest.raises(ValueError, match=r"UNet.* expects x of shape \[N, 1, H, W\] .*; got \[8, 1, 6, 6\]"):
        fit(dl.UNet(channels=1, base=8, mults=(1, 2)), torch.randn(20, 1, 6, 6), dl.VP(), **small)
    assert list(tmp_path.iterdir()) == []  # nothing was written


# -- Gaussian mixtures: finite parameters, K >= 1, PSD covariances, weights >= 0 ----------------------

EYE2 = [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("weights, means, covs, message", [
    ([1.0], [[math.nan, 0.0]], [EYE2], r"means must be finite; got NaN or infinite entries in means"),
    ([1.0], [[0.0, 0.0]], [[[math.inf, 0.0], [0.0, 1.0]]], r"covs must be finite"),
    ([math.nan], [[0.0, 0.0]], [EYE2], r"weights must be finite"),
    ([math.inf, 1.0], [[0.0, 0.0], [1.0, 1.0]], [EYE2, EYE2], r"weights must be finite"),
    ([], torch.zeros(0, 2), torch.zeros(0, 2, 2), r"means must have shape \[K, D\] with K >= 1 components .* got \[0, 2\]"),
    ([1.0], torch.zeros(1, 0), torch.zeros(1, 0, 0), r"D >= 1 dimensions; got \[1, 0\]"),
    ([-1.0, 2.0], [[0.0, 0.0], [1.0, 1.0]], [EYE2, EYE2], r"weights must be >= 0 with a positive sum; got \[-1.0, 2.0\]"),
    ([0.0, 0.0], [[0.0, 0.0], [1.0, 1.0]], [EYE2, EYE2], r"weights must be >= 0 with a positive sum"),
    ([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]], r"covs must be positive semi-definite; the smallest eigenvalue is -1"),
    ([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], r"covs must be symmetric"),
    (["a"], [[0.0, 0.0]], [EYE2], r"weights must be a tensor \(or nested list\) of numbers"),
    ([1.0], [[0.0, 0.0]], [[[1.0 + 0j, 0.0], [0.0, 1.0]]], r"covs must be a tensor \(or nested list\) of numbers"),
    ([1.0], torch.zeros(1, 2, dtype=torch.complex128), [EYE2], r"means must hold real numbers; got torch.complex128"),
])
def test_a_mixture_with_bad_parameters_is_refused_naming_them(weights, means, covs, message):
    """Before: NaN means and infinite covariances were accepted (samples NaN / inf), NaN weights failed later
    with 'probability entry < 0', K = 0 failed inside torch."""
    with pytest.raises(ValueError, match=message):
        dl.GaussianMixture(weights, means, covs)


def test_a_mixture_accepts_zero_weights_and_point_masses():
    """A zero weight drops its component; a zero covariance is a point mass (chapters 6 and 8 use them)."""
    mixture = dl.GaussianMixture([0.0, 1.0], [[5.0, 5.0], [0.0, 0.0]], torch.zeros(2, 2, 2, dtype=torch.float64))
    assert torch.equal(mixture.sample(20, generator=torch.Generator().manual_seed(0)), torch.zeros(20, 2,
                                                                                                   dtype=torch.float64))
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    # the noised law at t is N(0, sigma_t^2 I): score -x / sigma^2
    torch.testing.assert_close(dl.exact_score(mixture, dl.VE())(x, 0.5), -x / dl.VE().sigma(0.5) ** 2)


@pytest.mark.parametrize("n", [0, -1, 1.5, "3", None, math.nan, True])
def test_mixture_sample_needs_a_whole_positive_count(n):
    with pytest.raises(ValueError, match=r"n must be a whole number >= 1; got"):
        dl.gmm2().sample(n)


def test_mixture_sample_takes_a_whole_float_count():
    assert dl.gmm2().sample(3.0).shape == (3, 2)


# -- make_path names the keyword or key that is wrong ------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: dl.make_path("vp", gamma=3.0), r"unknown parameter 'gamma' for path 'vp'; valid parameters: beta_min, "
                                            r"beta_max"),
    (lambda: dl.make_path({"name": "ve", "sigma": 3.0}), r"unknown parameter 'sigma' for path 've'; valid parameters: "
                                                         r"sigma_min, sigma_max"),
    (lambda: dl.make_path("rf", beta_min=0.1), r"unknown parameter 'beta_min' for path 'rf'; it takes no parameters"),
    (lambda: dl.make_path({"beta_min": 0.1, "beta_max": 20.0}), r"a path config needs a 'name' key \(one of vp, "
                                                                r".*\), as Path.config\(\) writes it; got keys \['beta_max', 'beta_min'\]"),
    (lambda: dl.make_path({"name": "vp", "beta_min": "low"}), r"bad parameters .* for path 'vp': they must be numbers"),
    (lambda: dl.make_path(3), r"a path is a name \(vp, .*\), a Path.config\(\) dict or a Path; got 3"),
])
def test_make_path_names_the_bad_keyword(make, message):
    """Before: TypeError from VP.__init__, KeyError 'name'."""
    with pytest.raises(ValueError, match=message):
        make()


# -- fit validates every setting before any work --------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"steps": 1.5}, r"steps must be a whole number >= 1; got 1.5"),
    ({"steps": "20"}, r"steps must be a whole number >= 1; got '20'"),
    ({"batch_size": 0}, r"batch_size must be a whole number >= 1; got 0"),
    ({"log_every": 2.5}, r"log_every must be a whole number >= 1; got 2.5"),
    ({"seed": 2**70}, r"seed must be a whole number from 0 to 2\*\*62; got 1180591620717411303424"),
    ({"seed": -1}, r"seed must be a whole number from 0 to 2\*\*62; got -1"),
    ({"ema_decay": 5}, r"ema_decay must be a number in \[0, 1\] .*; got 5"),
    ({"ema_decay": -1}, r"ema_decay must be a number in \[0, 1\] .*; got -1"),
    ({"ema_decay": math.nan}, r"ema_decay must be a number in \[0, 1\] .*; got nan"),
    ({"t_min": 1.0}, r"t_min must be a number in \[0, 1\) .*; got 1.0"),
    ({"t_min": math.nan}, r"t_min must be a number in \[0, 1\) .*; got nan"),
    ({"lr": math.inf}, r"lr must be a finite number > 0, e.g. lr=1e-3; got inf"),
    ({"checkpoint_every": -5}, r"checkpoint_every must be None \(automatic\), 0 \(no resume checkpoints\) or a whole "
                               r"number of steps >= 1; got -5"),
])
def test_fit_refuses_bad_settings_before_any_work(tmp_path, monkeypatch, change, message):
    """Before: seed 2**70 overflowed inside torch, steps 1.5 ran 1 step, ema_decay 5 or NaN trained (NaN EMA
    weights were cached), a negative checkpoint_every meant 'never'."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=message):
        fit(dl.TimeMLP(2, hidden=8), torch.randn(50, 2), dl.VP(), **{"steps": 2, "batch_size": 8, "progress": False,
                                                                      **change})
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_fit_refuses_data_with_nan():
    data = torch.randn(50, 2)
    data[17, 1] = math.nan
    data[30, 0] = math.inf
    with pytest.raises(ValueError, match=r"data holds NaN or infinite values \(2 of 50 samples, the first at index 17"):
        fit(dl.TimeMLP(2, hidden=8), data, dl.VP(), steps=2, batch_size=8, progress=False, cache=False)


def test_fit_accepts_whole_float_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    result = fit(dl.TimeMLP(2, hidden=8), torch.randn(50, 2), dl.VP(), steps=3.0, batch_size=8, progress=False)
    assert result.history["step"][-1] == 3 and result.config["steps"] == 3
