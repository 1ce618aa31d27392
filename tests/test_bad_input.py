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
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor .* got torch.int64"):
        dl.convert(torch.ones(4, 2, dtype=torch.long), "eps", "score", torch.ones(4, 2, dtype=torch.long), 0.5, path)


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
