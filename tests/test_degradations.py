"""Degraded digits, the linear restoration baseline, the synthetic signals and the conditional loss,
against references written here (numpy least squares, sample moments, the loss by hand)."""
import math

import numpy as np
import pytest
import torch

from diffusion_lessons.degradations import (
    Degradation,
    DegradedDigits,
    LinearRestoration,
    box_masks,
    degrade,
    degraded_digits,
    gaussian_blur,
    rmse,
)
from diffusion_lessons.nets import UNet, build_model
from diffusion_lessons.processes import MeanReverting
from diffusion_lessons.restoration import ConditionalDenoising
from diffusion_lessons.signals import HarmonicSignals, add_noise, snr_db, spectrogram

pytestmark = pytest.mark.usefixtures("one_thread")


def test_blur_keeps_constants_and_sums_and_matches_a_dense_convolution():
    x = torch.full((2, 1, 16, 16), 0.3, dtype=torch.float64)
    assert (gaussian_blur(x, 1.0) - 0.3).abs().max() < 1e-14
    img = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    img[0, 0, 8, 7] = 1.0  # far from the edges: the blur is the normalised kernel itself
    out = gaussian_blur(img, 1.0)[0, 0].numpy()
    k = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    k /= k.sum()
    assert np.abs(out[5:12, 4:11] - np.outer(k, k)).max() < 1e-14 and abs(out.sum() - 1) < 1e-12


def test_masks_and_degradation():
    masks = box_masks(500, 16, 6, torch.Generator().manual_seed(0))
    assert bool(((1 - masks).flatten(1).sum(1) == 36).all())  # every hole is a whole 6 x 6 square
    x = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mu = degrade(x, blur_std=0.0, noise_std=0.0, box=6, fill=0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mu, masks * x + (1 - masks) * 0.25)
    noisy = degrade(x, blur_std=0.0, noise_std=0.2, box=0, generator=torch.Generator().manual_seed(2))
    assert abs((noisy - x).std().item() - 0.2) < 0.002
    with pytest.raises(ValueError, match="square"):
        degrade(torch.zeros(2, 1, 8, 6))


def test_degraded_digit_pairs():
    data = DegradedDigits(Degradation(), size=16)
    batch = data(64, torch.Generator().manual_seed(0))
    assert batch.shape == (64, 2, 16, 16) and data.config()["degradation"]["box"] == 6
    clean, mu = degraded_digits("test")
    assert clean.shape == mu.shape == (297, 1, 16, 16)
    train, _ = degraded_digits("train")
    assert len(train) == 1500 and not any(bool((train == c).all(dim=(1, 2, 3)).any()) for c in clean[:20])


def test_linear_restoration_is_least_squares():
    """The baseline is the affine least-squares fit of x on mu: numpy lstsq on [mu, 1] (ridge 0)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, 4, 4, generator=gen, dtype=torch.float64)
    mu = gaussian_blur(x, 0.8) + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    lin = LinearRestoration(x, mu, ridge=0.0)
    design = np.concatenate([mu.flatten(1).numpy(), np.ones((400, 1))], 1)
    coef, *_ = np.linalg.lstsq(design, x.flatten(1).numpy(), rcond=None)
    assert np.abs(lin(mu).flatten(1).numpy() - design @ coef).max() < 1e-9
    assert rmse(lin(mu), x).mean() < rmse(mu, x).mean()


def test_harmonic_signals_law_posterior_and_spectrogram():
    """The law's covariance against 4e4 samples (5 s.e. per entry, largest gap); the posterior against the
    Gaussian conditioning formula by explicit inverse; SNR and spectrogram shapes."""
    sig = HarmonicSignals(length=64, rate=2000.0, pitches=(100.0, 150.0), harmonics=3)
    law = sig.law()
    x = sig.sample(40_000, torch.Generator().manual_seed(0))
    emp = x.T @ x / len(x)
    cov = law.cov
    se = torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / len(x))
    assert float(((emp - cov).abs() / (se + 1e-12)).max()) < 5.5
    assert torch.linalg.matrix_rank(cov).item() == 2 * 2 * 3
    y = add_noise(x[:5], 0.3, torch.Generator().manual_seed(1))
    mean, post = sig.posterior(y, 0.3)
    c, s2 = cov.numpy(), 0.09
    gain = c @ np.linalg.inv(c + s2 * np.eye(64))
    assert np.abs(mean.numpy() - y.numpy() @ gain.T).max() < 1e-10
    assert np.abs(post.numpy() - (c - gain @ c)).max() < 1e-10
    assert snr_db(mean, x[:5]).mean() > snr_db(y, x[:5]).mean()
    assert spectrogram(x[:3], n_fft=32, hop=8).shape == (3, 17, 9)
    with pytest.raises(ValueError, match="Nyquist"):
        HarmonicSignals(rate=1000.0, pitches=(200.0,), harmonics=5)


def test_conditional_loss_by_hand_and_conditional_unet():
    """ConditionalDenoising: ||net(y_t, t, cond=mu) - eps||^2 with y_t = alpha (x0 - mu) + sigma eps,
    t = t_min + (1 - t_min) u."""
    process = MeanReverting(lam=0.4)
    objective = ConditionalDenoising(process, t_min=1e-3)
    net = UNet(1, base=8, mults=(1, 2), cond_channels=1).double()
    assert build_model(net.config).inp.in_channels == 2 and "cond_channels" not in UNet(1, base=8).config
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(6, 2, 8, 8, generator=gen, dtype=torch.float64)
    u, eps = objective.draw(batch, gen, 1, 10)
    t = 1e-3 + (1 - 1e-3) * u
    a = torch.exp(-process.path.theta_bar(t)).reshape(-1, 1, 1, 1)
    y_t = a * (batch[:, :1] - batch[:, 1:]) + 0.4 * torch.sqrt(1 - a**2) * eps
    expected = (net(y_t, t, cond=batch[:, 1:]) - eps).square().mean()
    assert abs(objective.loss(net, None, batch, u, eps).item() - expected.item()) < 1e-12
    with pytest.raises(ValueError, match="cond"):
        net(y_t, t)
    with pytest.raises(ValueError, match="stacks"):
        objective.split(batch[:, :1])
    assert math.isfinite(objective.loss(net, None, batch, u, eps).item())
