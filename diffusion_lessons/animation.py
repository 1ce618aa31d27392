"""Animations that play in a static HTML page: matplotlib's FuncAnimation, embedded with to_jshtml().

    from IPython.display import HTML
    HTML(animate_points(trajectory, times).to_jshtml())

Every frame is stored as a PNG inside the page, so keep animations short and small (<= 40 frames,
a figure of a few inches at 80 dpi: well under 2 MB).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation

from .plotting import COLORS, _numpy, style

__all__ = ["animate_points", "MAX_FRAMES"]

MAX_FRAMES = 60


def _ellipse(mean, cov, n_std: float = 2.0, n: int = 100) -> np.ndarray:
    """Points [n, 2] on the n_std-standard-deviation ellipse of N(mean, cov) in 2-D."""
    w, v = np.linalg.eigh(_numpy(cov))
    angle = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(angle), np.sin(angle)], 1)
    return _numpy(mean) + n_std * (circle * np.sqrt(np.clip(w, 0, None))) @ v.T


def animate_points(trajectory, times, gaussians=None, reference=None, extent=(-5, 5, -5, 5), n_show: int = 300,
                   figsize=(3.6, 3.6), dpi: int = 80, interval: int = 100, title: str = "t = {t:.2f}") -> FuncAnimation:
    """Animate 2-D particles moving along a trajectory [T, N, 2] (e.g. from gaussian_pf_ode or sample_ode).

    times: the T times (for the title); gaussians: optional T pairs (mean [2], cov [2, 2]) drawn as
    2-sigma ellipses, e.g. the exact law of x_t; reference: optional points [M, 2] drawn in grey on every
    frame. At most MAX_FRAMES frames. Returns the FuncAnimation (its figure is closed, so only the
    animation is displayed): show it with IPython.display.HTML(anim.to_jshtml()).
    """
    traj = _numpy(trajectory)[:, :n_show]
    times = _numpy(torch.as_tensor(times)).reshape(-1)
    if traj.ndim != 3 or traj.shape[2] != 2 or len(times) != traj.shape[0]:
        raise ValueError(f"animate_points expects a trajectory [T, N, 2] and T times; got {list(traj.shape)} "
                         f"and {len(times)} times")
    if traj.shape[0] > MAX_FRAMES:
        raise ValueError(f"{traj.shape[0]} frames is too many for a static page; subsample to <= {MAX_FRAMES} "
                         "(e.g. trajectory[::k])")
    with style():
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        if reference is not None:
            ref = _numpy(reference)
            ax.scatter(ref[:, 0], ref[:, 1], s=3, c=COLORS["reference"], alpha=0.4, lw=0)
        dots = ax.scatter(traj[0, :, 0], traj[0, :, 1], s=5, c=COLORS["samples"], lw=0)
        (ring,) = ax.plot([], [], color=COLORS["curve"], lw=1.2)
        ax.set(xlim=extent[:2], ylim=extent[2:], aspect="equal")
        label = ax.set_title(title.format(t=times[0]))

    def draw(i):
        dots.set_offsets(traj[i])
        if gaussians is not None:
            ring.set_data(*_ellipse(*gaussians[i]).T)
        label.set_text(title.format(t=times[i]))
        return dots, ring, label

    anim = FuncAnimation(fig, draw, frames=traj.shape[0], interval=interval, blit=False)
    plt.close(fig)
    return anim
