"""Short synthetic 1-D signals with additive noise: a stand-in for speech enhancement that needs no download.

A signal is a sequence of "voiced syllables": syllable j has a smooth envelope e_j(n) (a Hann window over
its part of the signal) and a pitch f_j, and sounds its first K harmonics with random amplitudes,

    x(n) = sum_j e_j(n) sum_{k=1..K} [a_jk cos(2 pi k f_j n / rate) + b_jk sin(2 pi k f_j n / rate)],
    a_jk, b_jk ~ N(0, (amplitude / k)^2) independent.

x is linear in Gaussian amplitudes, so its law is an exact Gaussian N(0, C) of rank 2 J K: the score of
every noised law, and the posterior of x given a noisy recording y = x + noise_std z (the Wiener filter),
are known in closed form. That is what makes SGMSE's prior mismatch measurable on these signals.
"""
from __future__ import annotations

import math

import torch

from .distributions import Gaussian

__all__ = ["HarmonicSignals", "add_noise", "plot_spectrograms", "snr_db", "spectrogram"]


class HarmonicSignals:
    """Random harmonic signals of `length` samples at `rate` Hz (see the module docstring): one syllable per
    pitch in `pitches` (Hz), each over an equal, overlapping share of the signal, `harmonics` harmonics each."""

    def __init__(self, length: int = 512, rate: float = 8000.0, pitches=(180.0, 240.0, 150.0), harmonics: int = 5,
                 amplitude: float = 0.5):
        if int(length) < 16 or rate <= 0 or int(harmonics) < 1 or not pitches or amplitude <= 0:
            raise ValueError(f"HarmonicSignals needs length >= 16, rate > 0, harmonics >= 1, pitches and "
                             f"amplitude > 0; got {length}, {rate}, {harmonics}, {pitches}, {amplitude}")
        if max(pitches) * harmonics >= rate / 2:
            raise ValueError(f"the top harmonic {max(pitches) * harmonics} Hz must stay below the Nyquist "
                             f"frequency {rate / 2} Hz: fewer harmonics or a higher rate")
        self.length, self.rate, self.pitches = int(length), float(rate), tuple(float(p) for p in pitches)
        self.harmonics, self.amplitude = int(harmonics), float(amplitude)
        n = torch.arange(self.length, dtype=torch.float64)
        rows, stds = [], []
        for j, pitch in enumerate(self.pitches):
            envelope = self._envelope(n, j)
            for k in range(1, self.harmonics + 1):
                phase = 2 * math.pi * k * pitch * n / self.rate
                rows += [envelope * torch.cos(phase), envelope * torch.sin(phase)]
                stds += [self.amplitude / k] * 2
        self.basis = torch.stack(rows)  # [2 J K, length]
        self.stds = torch.tensor(stds, dtype=torch.float64)

    def _envelope(self, n: torch.Tensor, j: int) -> torch.Tensor:
        """A Hann window over syllable j's span: J spans of width 2 L / (J + 1), each starting half a span later."""
        width = 2 * self.length / (len(self.pitches) + 1)
        start = j * width / 2
        u = ((n - start) / width).clamp(0, 1)
        return torch.sin(math.pi * u) ** 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n signals [n, length] (float64)."""
        amplitudes = torch.randn(int(n), len(self.stds), generator=generator, dtype=torch.float64) * self.stds
        return amplitudes @ self.basis

    def law(self) -> Gaussian:
        """The exact law N(0, C) of the signals, C = B^T diag(std^2) B (rank 2 J K)."""
        cov = self.basis.T @ (self.stds[:, None] ** 2 * self.basis)
        return Gaussian(torch.zeros(self.length, dtype=torch.float64), 0.5 * (cov + cov.T))

    def posterior(self, y: torch.Tensor, noise_std: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Law of x given y = x + noise_std z: mean W y [N, length] and covariance C - W C, W = C (C + s^2 I)^{-1}
        (the Wiener filter; the same covariance for every y)."""
        cov = self.law().cov
        gain = torch.linalg.solve(cov + noise_std**2 * torch.eye(self.length, dtype=cov.dtype), cov).T
        post = cov - gain @ cov
        return y.double() @ gain.T, 0.5 * (post + post.T)

    def config(self) -> dict:
        return {"length": self.length, "rate": self.rate, "pitches": list(self.pitches),
                "harmonics": self.harmonics, "amplitude": self.amplitude}


def add_noise(x: torch.Tensor, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """y = x + noise_std z, z ~ N(0, I): the noisy recording."""
    return x + noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def snr_db(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of an estimate, 10 log10(|x|^2 / |estimate - x|^2) per signal [N] (dB)."""
    return 10 * torch.log10(clean.square().sum(-1) / (estimate - clean).square().sum(-1))


def spectrogram(x: torch.Tensor, n_fft: int = 128, hop: int = 16) -> torch.Tensor:
    """Magnitude spectrogram in dB, 20 log10(|STFT| + 1e-6), Hann window: [N, n_fft / 2 + 1, frames]."""
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    stft = torch.stft(x, n_fft, hop_length=hop, window=window, return_complex=True, center=True)
    return 20 * torch.log10(stft.abs() + 1e-6)


def plot_spectrograms(signals: dict, rate: float, n_fft: int = 128, hop: int = 16, floor_db: float = -60.0):
    """One spectrogram per named signal [length] (a dict name -> 1-D tensor), side by side, on one colour scale
    (dB, clipped floor_db below the loudest). Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import style

    specs = {name: spectrogram(x.reshape(1, -1).double(), n_fft, hop)[0] for name, x in signals.items()}
    top = max(float(s.max()) for s in specs.values())
    length = next(iter(signals.values())).numel()
    with style():
        fig, axes = plt.subplots(1, len(specs), figsize=(3.2 * len(specs), 2.8), sharey=True, squeeze=False)
        for ax, (name, s) in zip(axes[0], specs.items()):
            image = ax.imshow(s.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=top + floor_db, vmax=top,
                              extent=(0, 1000 * length / rate, 0, rate / 2))
            ax.set(title=name, xlabel="time (ms)")
        axes[0, 0].set_ylabel("frequency (Hz)")
        fig.colorbar(image, ax=axes[0].tolist(), label="dB", shrink=0.9)
    return fig
