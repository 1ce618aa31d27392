"""Noise-conditional classifiers (trained against the exact noisy classifier of GMM2) and the sums-of-sines
series (their exact Gaussian law against Monte Carlo)."""
import math

import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.classifiers import (
    ImageTimeClassifier,
    TimeClassifier,
    classifier_accuracy,
    train_noisy_classifier,
)
from diffusion_lessons.inverse import selection_matrix
from diffusion_lessons.posterior import exact_classifier
from diffusion_lessons.timeseries import SineSeries, plot_forecast


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_noisy_classifier_approaches_the_exact_responsibilities():
    """Cross-entropy on fresh noisy GMM2 points at t = 0.1, 0.3, 0.6: the trained TimeClassifier is within
    0.03 nats of the exact classifier w_k(x, t) (the minimum of the expected cross-entropy), and far below
    the label-blind log 2 - entropy baseline (predicting the prior 0.3 / 0.7)."""
    vp, mixture = dl.VP(), dl.gmm2()
    x, y = mixture.sample(20_000, generator=torch.Generator().manual_seed(0), return_labels=True)
    clf = train_noisy_classifier(TimeClassifier(2, 2, hidden=64), x.float(), y, vp, steps=1500, batch_size=256,
                                 lr=3e-3)
    exact = exact_classifier(mixture, vp)
    x_test, y_test = mixture.sample(20_000, generator=torch.Generator().manual_seed(1), return_labels=True)
    prior = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    for t in (0.1, 0.3, 0.6):
        x_t, _ = vp.sample(x_test, t, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            trained = torch.nn.functional.cross_entropy(clf(x_t.float(), t), y_test).item()
        best = torch.nn.functional.nll_loss(exact(x_t, t), y_test).item()
        assert trained - best < 0.03, (t, trained, best)
        assert best < prior
    assert classifier_accuracy(clf, x_test.float(), y_test, vp, 0.1) > 0.95


def test_the_classifier_cache_returns_the_same_weights():
    vp = dl.VP()
    x = torch.randn(64, 1, 8, 8)
    y = torch.arange(64) % 3
    first = train_noisy_classifier(ImageTimeClassifier(1, 3, base=8), x, y, vp, steps=3, batch_size=8)
    again = train_noisy_classifier(ImageTimeClassifier(1, 3, base=8), x, y, vp, steps=3, batch_size=8)
    other = train_noisy_classifier(ImageTimeClassifier(1, 3, base=8), x, y, vp, steps=4, batch_size=8)
    for a, b, c in zip(first.parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))
    with pytest.raises(ValueError, match="TimeClassifier or an ImageTimeClassifier"):
        train_noisy_classifier(dl.TimeMLP(2), x, y, vp, steps=1)
    with pytest.raises(ValueError, match="integers of shape"):
        train_noisy_classifier(ImageTimeClassifier(1, 3, base=8), x, y.float(), vp, steps=1)


def test_sine_series_have_their_exact_gaussian_law():
    """Monte Carlo covariance of 100 000 series vs K (each entry within 5 standard errors of a covariance,
    sqrt((K_ij^2 + K_ii K_jj) / n)), zero mean within 5 standard errors."""
    series = SineSeries(length=12, periods=(8.0, 3.0), amplitudes=(1.0, 0.4), noise_std=0.3)
    n = 100_000
    x = series.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    K = series.law().cov
    se = ((K**2 + K.diagonal()[:, None] * K.diagonal()[None, :]) / n).sqrt()
    assert ((torch.cov(x.T) - K).abs() < 5 * se).all()
    assert (x.mean(0).abs() < 5 * (K.diagonal() / n).sqrt()).all()
    tau = torch.arange(12, dtype=torch.float64)
    expected = (torch.cos(2 * math.pi * (tau[:, None] - tau[None]) / 8) + 0.16 * torch.cos(
        2 * math.pi * (tau[:, None] - tau[None]) / 3) + 0.09 * torch.eye(12, dtype=torch.float64))
    assert (K - expected.double()).abs().max() < 1e-12


def test_selection_matrix_and_forecast_plot():
    A = selection_matrix(5, [0, 3])
    assert torch.equal(A @ torch.arange(5.0).double(), torch.tensor([0.0, 3.0]).double())
    assert torch.equal(selection_matrix(5, torch.tensor([1.0, 0, 0, 1, 0])), A)
    with pytest.raises(ValueError, match="indices in 0..4"):
        selection_matrix(5, [7])
    series = SineSeries(length=16)
    x = series.sample(50, generator=torch.Generator().manual_seed(1))
    for observed in (10, [0, 1, 2, 12, 13, 14, 15]):  # a forecast, an imputation
        ax = plot_forecast(x[0], observed, {"samples": x}, exact_mean=x.mean(0), exact_sd=x.std(0))
        assert ax.get_legend() is not None and len(ax.lines[-1].get_xdata()) == 16 - (observed if observed == 10 else 7)
    with pytest.raises(ValueError, match="as many amplitudes as periods"):
        SineSeries(periods=(4.0, 2.0), amplitudes=(1.0,))
