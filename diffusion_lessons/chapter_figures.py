"""Figures that chapters draw from their own numbers, built on the primitives of plotting.py.

plotting.py holds the general pictures (schedules, densities, fields, samples); this module holds the
multi-panel figures a chapter would otherwise assemble cell by cell: images along the path, one
coordinate of many paths against time, density maps on one colour scale, and histograms of several
sample sets against a reference density. Each returns the Figure (or Axes with ax=) it drew on.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .plotting import COLORS, _axes, _numpy, _time_title, plot_image_grid, style

__all__ = ["plot_noised_images", "plot_coordinate_paths", "plot_density_maps", "plot_density_histograms"]


def plot_noised_images(rows: dict, times: Sequence[float], value_range=(-1.0, 1.0)):
    """A grid of images along the path: rows {label: images [len(times), C, H, W]}, one column per time.

    Each row is one path's x_t = alpha_t x0 + sigma_t eps at the given times (same x0, same eps);
    values are clipped to value_range. Returns the Figure.
    """
    with style():
        fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * len(times) + 0.8, 1.3 * len(rows)), squeeze=False)
        for ax, (label, images) in zip(axes[:, 0], rows.items()):
            if len(images) != len(times):
                raise ValueError(f"row {label!r} needs one image per time ({len(times)}); got {len(images)}")
            plot_image_grid(images, nrow=len(times), ax=ax, value_range=value_range)
            ax.set_axis_on()
            ax.set(xticks=(np.arange(len(times)) + 0.5) * (images.shape[-1] + 1),
                   xticklabels=[_time_title(t) for t in times], yticks=[], ylabel=label)
            ax.tick_params(length=0)
            for side in ax.spines.values():
                side.set_visible(False)
    return fig


def plot_coordinate_paths(trajectories: dict, times, coordinate: int = 0, ax=None, title: str | None = None):
    """One coordinate of several sets of paths against time, generation running right to left.

    trajectories: {label: tensor [len(times), N, D]} (e.g. sampler trajectories from t = 1 to t = 0);
    times: the len(times) time points. Each set gets one colour; thin lines, so a few dozen paths stay
    readable. Returns the Axes.
    """
    t = _numpy(times)
    with style():
        ax = _axes(ax, figsize=(6, 3.6))
        for (label, traj), colour in zip(trajectories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            values = _numpy(traj)[..., coordinate]
            if values.shape[0] != len(t):
                raise ValueError(f"{label!r}: trajectory has {values.shape[0]} time points, times has {len(t)}")
            lines = ax.plot(t, values, color=colour, lw=0.7, alpha=0.8)
            lines[0].set_label(label)
        ax.set(xlim=(t.max(), t.min()), xlabel="t  (generation runs from 1 to 0)",
               ylabel=f"coordinate {coordinate + 1}", title=title)
        ax.legend()
    return ax


def plot_density_maps(log_densities: dict, extent, floor: float = -12.0, axes=None):
    """Log-densities on one colour scale: {title: tensor [n, n]} on the grid `extent` = (x0, x1, y0, y1),
    clipped below at `floor` nats, with one shared colour bar. Returns the Figure."""
    with style():
        if axes is None:
            fig, axes = plt.subplots(1, len(log_densities), figsize=(4.6 * len(log_densities), 3.8), squeeze=False)
            axes = axes[0]
        fig = axes[0].figure
        for ax, (title, values) in zip(axes, log_densities.items()):
            shown = ax.imshow(_numpy(torch.as_tensor(values).clamp_min(floor)), origin="lower", extent=extent,
                              vmin=floor, vmax=0, cmap="viridis")
            ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$")
        fig.colorbar(shown, ax=list(axes), label=f"log density, nats (clipped at {floor:g})")
    return fig


def plot_density_histograms(samples: dict, density: tuple | None = None, ax=None, bins: int = 60,
                            title: str | None = None, xlabel: str | None = None, lines: dict | None = None):
    """Histograms (density-normalised, outlines) of several 1-D sample sets, {label: [N]}, optionally over a
    reference density (u [M], p [M], label) and vertical reference lines {label: value}. Returns the Axes."""
    with style():
        ax = _axes(ax, figsize=(6, 3.6))
        ax.hist([_numpy(v) for v in samples.values()], bins=bins, density=True, histtype="step", lw=1.4,
                label=list(samples))
        if density is not None:
            u, p, label = density
            ax.plot(_numpy(u), _numpy(p), color="k", lw=1, label=label)
        for (label, value), colour in zip((lines or {}).items(), ("k", COLORS["end"], COLORS["curve"], "0.5")):
            ax.axvline(float(value), color=colour, ls="--", lw=1.2, label=label)
        ax.set(xlabel=xlabel, ylabel="density", title=title)
        ax.legend(fontsize=8)
    return ax

