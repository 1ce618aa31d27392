"""Figures for the chapters: schedules, densities, vector fields, samples, trajectories, image grids.

Every helper takes torch tensors (or numpy arrays), draws with matplotlib only, and returns what it
drew on: the Figure for multi-panel helpers, the Axes for single-panel helpers that accept `ax=`
(pass your own Axes to compose panels). Nothing here calls plt.show() or changes global rcParams:
the house look is applied inside `style()`, a context manager every helper uses and readers may too.

Conventions: 2-D panels have equal aspect; densities use one colour map (DENSITY_CMAP); samples are
COLORS["samples"], references COLORS["reference"]; titles carry the time, e.g. "t = 0.30".
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle

__all__ = [
    "style",
    "COLORS",
    "DENSITY_CMAP",
    "BACKGROUND_CMAP",
    "plot_schedules",
    "plot_density_grid",
    "plot_densities",
    "plot_field",
    "plot_samples",
    "plot_trajectories",
    "plot_histogram_vs_density",
    "plot_image_grid",
    "plot_curves",
    "plot_bands",
    "plot_heatmap",
    "plot_histograms",
    "animate_densities",
    "animate_particles",
    "animation_html",
]

COLORS = {"samples": "#1f77b4", "reference": "#9a9a9a", "curve": "#d62728", "start": "#ff7f0e", "end": "#2ca02c",
          "field": "#1b2a41"}
DENSITY_CMAP = "magma"  # densities on their own
BACKGROUND_CMAP = "Purples"  # densities under arrows or streamlines
_RC = {
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.prop_cycle": mpl.cycler(color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]),
    "legend.frameon": False,
    "legend.fontsize": 9,
    "image.cmap": DENSITY_CMAP,
}


@contextlib.contextmanager
def style():
    """Context manager with the course's matplotlib settings: `with dl.style(): ...` (no global change)."""
    with mpl.rc_context(_RC):
        yield
        # If pyplot loaded Jupyter's inline backend inside this context, that switched interactive mode
        # on; restoring the old rcParams would switch it off and later figures would silently not show.
        interactive = mpl.is_interactive()
    mpl.interactive(interactive)


# -- small shared pieces -----------------------------------------------------------------------------
def _numpy(a) -> np.ndarray:
    """Tensor or array-like -> float numpy array (detached, on CPU)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _axes(ax, figsize=(4.2, 4.0)):
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _grid(extent, n: int, dtype=torch.float64, device=None):
    """Square grid over extent = (xmin, xmax, ymin, ymax): (X [n, n], Y [n, n], points [n*n, 2] tensor)."""
    xmin, xmax, ymin, ymax = extent
    xs = torch.linspace(xmin, xmax, n, dtype=dtype, device=device)
    ys = torch.linspace(ymin, ymax, n, dtype=dtype, device=device)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    return X, Y, torch.stack([X.flatten(), Y.flatten()], dim=1)


def _field_dtype_device(field):
    """A network evaluates in its parameters' dtype and device; anything else gets float64 on CPU."""
    if isinstance(field, torch.nn.Module):
        p = next(field.parameters(), None)
        if p is not None:
            return p.dtype, p.device
    return torch.float64, None


def _check_2d(points, who: str) -> np.ndarray:
    pts = _numpy(points)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{who} draws 2-D points: expected shape [N, 2]; got {list(pts.shape)}")
    return pts


def _time_title(t) -> str:
    return f"t = {float(t):.2f}"


# -- schedules ---------------------------------------------------------------------------------------
def plot_schedules(paths: dict, n: int = 400, log_sigma: bool | None = None):
    """Three panels over t in [0, 1]: alpha(t), sigma(t) and log SNR(t) = log(alpha^2 / sigma^2).

    paths: {label: Path}. log SNR is +-inf where sigma or alpha vanishes (t = 0, or t = 1 for rectified
    flow): those points are left out and the axis is cut at +-20. log_sigma: symlog scale for sigma
    (default: when some sigma exceeds 10, as for VE). Returns the Figure.
    """
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    sigma_max, snr_range = 0.0, [np.inf, -np.inf]
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for label, path in paths.items():
            alpha, sigma = _numpy(path.alpha(t)), _numpy(path.sigma(t))
            with np.errstate(divide="ignore", invalid="ignore"):
                log_snr = 2 * (np.log(alpha) - np.log(sigma))
            log_snr[~np.isfinite(log_snr)] = np.nan
            sigma_max = max(sigma_max, float(np.nanmax(sigma)))
            snr_range = [min(snr_range[0], np.nanmin(log_snr)), max(snr_range[1], np.nanmax(log_snr))]
            for ax, values in zip(axes, (alpha, sigma, log_snr)):
                ax.plot(t.numpy(), values, label=label)
        if sigma_max > 10 if log_sigma is None else log_sigma:
            axes[1].set_yscale("symlog", linthresh=1e-2)
        if paths:  # log SNR -> -inf as alpha -> 0 (cosine, rectified flow): keep the informative range
            axes[2].set_ylim(max(snr_range[0], -20) - 1, min(snr_range[1], 20) + 1)
        for ax, name in zip(axes, (r"$\alpha_t$", r"$\sigma_t$", r"$\log\,\mathrm{SNR}(t)$")):
            ax.set(xlabel="t  (0 = data, 1 = noise)", title=name, xlim=(0, 1))
        axes[0].legend()
    return fig


# -- densities ---------------------------------------------------------------------------------------
def plot_density_grid(log_probs: Sequence[Callable], titles: Sequence[str] | None = None,
                      extent=(-4, 4, -4, 4), n: int = 200, samples: Sequence | None = None, panel_size: float = 3.0):
    """A row of panels, one density each: exp(log_prob(points)) on an n x n grid over extent.

    log_probs: callables points [M, 2] (float64 tensor) -> log density [M]; samples: optional sequence
    (one entry per panel, each [N, 2] or None) scattered on top. Each panel has its own colour scale
    (bright = its highest density); the ticks mark the extent, x on every panel, y on the first.
    Returns the Figure.
    """
    *_, pts = _grid(extent, n)
    k = len(log_probs)
    if samples is not None and len(samples) != k:
        raise ValueError(f"samples needs one entry per panel ({k}), e.g. [x_0, None, x_1]; got {len(samples)}")
    with style():
        fig, axes = plt.subplots(1, k, figsize=(panel_size * k, panel_size), squeeze=False)
        for i, (ax, log_prob) in enumerate(zip(axes[0], log_probs)):
            density = _numpy(torch.exp(torch.as_tensor(log_prob(pts)))).reshape(n, n)
            ax.imshow(density, extent=extent, origin="lower", cmap=DENSITY_CMAP, aspect="equal")
            if samples is not None and samples[i] is not None:
                pts_i = _check_2d(samples[i], "plot_density_grid")
                ax.scatter(pts_i[:, 0], pts_i[:, 1], s=1.5, c="white", alpha=0.5, linewidths=0)
            ax.set(xlim=extent[:2], ylim=extent[2:], xticks=extent[:2], yticks=extent[2:] if i == 0 else [])
            if titles is not None:
                ax.set_title(titles[i])
    return fig


def plot_densities(dist, path, times: Sequence[float], extent=(-4, 4, -4, 4), n: int = 200,
                   samples: Sequence | None = None):
    """p_t for each t in times: the exact law `dist.noised(path, t)` of x_t = alpha_t x0 + sigma_t eps.

    dist: a 2-D distribution with `noised(path, t).log_prob(points)` (dl.GaussianMixture, dl.Gaussian).
    Titles read "t = 0.30". Returns the Figure (one panel per time).
    """
    log_probs = [dist.noised(path, float(t)).log_prob for t in times]
    return plot_density_grid(log_probs, [_time_title(t) for t in times], extent, n, samples)


# -- fields, samples, trajectories -------------------------------------------------------------------
def plot_field(field: Callable, t: float, extent=(-4, 4, -4, 4), n: int = 20, ax=None, density=None,
               kind: str = "quiver", normalize: bool = False, scale: float | None = None, key: bool = True):
    """Arrows (kind="quiver") or streamlines (kind="stream") of a 2-D field(x, t) on an n x n grid.

    field: callable (points [n*n, 2], t float) -> [n*n, 2] (a network gets its own dtype and device);
    density: optional callable points -> log density [M], drawn underneath; normalize: unit-length
    arrows coloured by the field's norm. scale (plain arrows): an arrow of norm m is m / scale long in
    plot units; pass one scale to several panels to compare their arrows (None: matplotlib's autoscale,
    panel by panel). key (plain arrows): a reference arrow in the lower right corner, labelled with its
    norm, so that the arrows can be read. Returns the Axes.
    """
    if kind not in ("quiver", "stream"):
        raise ValueError(f"unknown kind {kind!r}; valid kinds: quiver, stream")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number (field units per plot unit); got {scale}")
    dtype, device = _field_dtype_device(field)
    X, Y, pts = _grid(extent, n, dtype, device)
    values = _numpy(field(pts, float(t))).reshape(n, n, 2)  # no torch.no_grad: energy models need autograd
    U, V = values[..., 0], values[..., 1]
    X, Y = _numpy(X), _numpy(Y)
    with style():
        ax = _axes(ax)
        if density is not None:
            *_, fine = _grid(extent, 150)
            dens = _numpy(torch.exp(torch.as_tensor(density(fine)))).reshape(150, 150)
            ax.imshow(dens, extent=extent, origin="lower", cmap=BACKGROUND_CMAP, aspect="equal")
        norm = np.hypot(U, V)
        if kind == "stream":
            ax.streamplot(X, Y, U, V, color=norm, cmap="viridis", density=1.2, linewidth=0.8)
        elif normalize:
            unit = np.where(norm > 0, norm, 1.0)
            ax.quiver(X, Y, U / unit, V / unit, norm, cmap="viridis", pivot="mid")
        else:
            fixed = {} if scale is None else dict(angles="xy", scale_units="xy", scale=float(scale))
            arrows = ax.quiver(X, Y, U, V, color=COLORS["field"], pivot="mid", **fixed)
            length = _key_length(norm)
            if key and length is not None:  # on a white patch in the lower right corner, above the arrows
                ax.add_patch(Rectangle((0.8, 0.01), 0.19, 0.13, transform=ax.transAxes, facecolor="white",
                                       edgecolor="0.75", lw=0.6, alpha=0.9, zorder=3))
                ax.quiverkey(arrows, 0.895, 0.045, length, f"{length:g}", labelpos="N", coordinates="axes",
                             color=COLORS["field"], fontproperties={"size": 8}, zorder=4)
        ax.set(xlim=extent[:2], ylim=extent[2:], aspect="equal", title=_time_title(t))
    return ax


def _key_length(norms: np.ndarray) -> float | None:
    """A round arrow length for a quiver key: the number 1, 2 or 5 times a power of ten nearest (in ratio) to the
    90th percentile of the arrows' norms (None when the field is zero or not finite on the grid)."""
    finite = norms[np.isfinite(norms)]
    typical = float(np.percentile(finite, 90)) if finite.size else 0.0
    if not typical > 0:
        return None
    power = 10.0 ** np.floor(np.log10(typical))
    return float(min((m * power for m in (1, 2, 5, 10)), key=lambda c: abs(np.log(c / typical))))


def plot_samples(samples, ax=None, reference=None, title: str | None = None, extent=None, max_points: int = 5000,
                 size: float = 2.0, label: str = "samples"):
    """Scatter of 2-D samples [N, 2] (at most max_points drawn), over an optional reference set in grey.

    Returns the Axes.
    """
    pts = _check_2d(samples, "plot_samples")[:max_points]
    with style():
        ax = _axes(ax)
        if reference is not None:
            ref = _check_2d(reference, "plot_samples (reference)")[:max_points]
            ax.scatter(ref[:, 0], ref[:, 1], s=size, c=COLORS["reference"], alpha=0.4, linewidths=0, label="reference")
        ax.scatter(pts[:, 0], pts[:, 1], s=size, c=COLORS["samples"], alpha=0.6, linewidths=0, label=label)
        ax.set_aspect("equal")
        if extent is not None:
            ax.set(xlim=extent[:2], ylim=extent[2:])
        if title is not None:
            ax.set_title(title)
        if reference is not None:
            legend = ax.legend(markerscale=5, loc="best", frameon=True, framealpha=0.9)
            for handle in legend.legend_handles:
                handle.set_alpha(1.0)
    return ax


def plot_trajectories(trajectory, ax=None, n_show: int = 50, extent=None, title: str | None = None):
    """Paths of n_show particles from a trajectory [T, N, 2] (as returned by the samplers).

    Lines are coloured along time (light at the start, dark at the end); start points in COLORS["start"],
    end points in COLORS["end"]. Returns the Axes.
    """
    traj = _numpy(trajectory)
    if traj.ndim != 3 or traj.shape[2] != 2:
        raise ValueError(f"plot_trajectories expects a trajectory [T, N, 2]; got {list(traj.shape)}")
    traj = traj[:, :n_show]
    segments = np.stack([traj[:-1], traj[1:]], axis=2)  # [T-1, n, 2 (ends), 2 (xy)]
    progress = np.repeat(np.linspace(0, 1, traj.shape[0] - 1), traj.shape[1])
    with style():
        ax = _axes(ax)
        lines = LineCollection(segments.reshape(-1, 2, 2), array=progress, cmap="Blues",
                               norm=mpl.colors.Normalize(-0.3, 1), linewidths=0.8, alpha=0.8)
        ax.add_collection(lines)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=8, c=COLORS["start"], label="start", zorder=3)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=8, c=COLORS["end"], label="end", zorder=3)
        ax.set_aspect("equal")
        ax.autoscale_view()
        if extent is not None:
            ax.set(xlim=extent[:2], ylim=extent[2:])
        if title is not None:
            ax.set_title(title)
        ax.legend(loc="best", frameon=True, framealpha=0.9, markerscale=1.5)
    return ax


def plot_histogram_vs_density(samples, pdf: Callable, ax=None, bins: int = 100, title: str | None = None,
                              labels=("samples", "exact density")):
    """Histogram (as a density) of 1-D samples [N] or [N, 1] against pdf(x) -> density, x a float64 tensor [M].

    Used for SDE-1: Euler–Maruyama paths of the forward SDE against the kernel N(alpha_t x0, sigma_t^2).
    Returns the Axes.
    """
    x = _numpy(samples).reshape(-1)
    grid = torch.linspace(float(x.min()), float(x.max()), 400, dtype=torch.float64)
    with style():
        ax = _axes(ax, figsize=(5, 3.2))
        ax.hist(x, bins=bins, density=True, color=COLORS["samples"], alpha=0.5, label=labels[0])
        ax.plot(grid.numpy(), _numpy(pdf(grid)), color=COLORS["curve"], lw=1.8, label=labels[1])
        ax.set(xlabel="x", ylabel="density")
        if title is not None:
            ax.set_title(title)
        ax.legend()
    return ax


def plot_image_grid(images, nrow: int = 8, ax=None, value_range=(-1.0, 1.0), title: str | None = None):
    """Images [N, C, H, W] (C = 1 or 3, values in value_range) tiled nrow per row. Returns the Axes."""
    img = _numpy(images)
    if img.ndim != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"plot_image_grid expects images [N, C, H, W] with C = 1 or 3; got {list(img.shape)}")
    lo, hi = value_range
    img = np.clip((img - lo) / (hi - lo), 0, 1)
    n, c, h, w = img.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    canvas = np.ones((rows * (h + 1) + 1, ncol * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img[i].transpose(1, 2, 0)
    with style():
        ax = _axes(ax, figsize=(0.6 * ncol + 0.4, 0.6 * rows + 0.4))
        ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        if title is not None:
            ax.set_title(title)
    return ax


# -- measured curves, bands, maps and histograms ------------------------------------------------------
def _finish(ax, xlabel, ylabel, title, logx, logy, reverse_x, legend: bool):
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if reverse_x:
        ax.set_xlim(*sorted(ax.get_xlim(), reverse=True))
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend()
    return ax


def plot_curves(x, series: dict, ax=None, xlabel=None, ylabel=None, title=None, logx=False, logy=False,
                reverse_x=False, marker: str = "o-", vlines: dict | None = None, hlines: dict | None = None,
                legend: bool = True):
    """One curve per entry of series {label: y} (y [M], plotted against x [M]) or {label: (x_i, y_i)}.

    marker: one matplotlib format string ("o-", "--", ...) or one per series; vlines / hlines:
    {label: position} drawn as dotted reference lines; reverse_x: x decreasing to the right (time in
    the direction of sampling). Returns the Axes.
    """
    with style():
        ax = _axes(ax, figsize=(6.2, 3.6))
        markers = [marker] * len(series) if isinstance(marker, str) else list(marker)
        for (label, y), m in zip(series.items(), markers):
            xi, yi = y if isinstance(y, tuple) else (x, y)
            ax.plot(_numpy(xi), _numpy(yi), m, ms=3, label=label)
        for label, pos in (vlines or {}).items():
            ax.axvline(float(pos), color="k", ls=":", lw=1, label=label)
        for label, pos in (hlines or {}).items():
            ax.axhline(float(pos), color="k", ls=":", lw=1, label=label)
        return _finish(ax, xlabel, ylabel, title, logx, logy, reverse_x, legend)


def plot_bands(x, bands: dict, ax=None, xlabel=None, ylabel=None, title=None, logy=True, floor: float = 1e-17):
    """Median line and shaded band per entry of bands {label: q [M, 3]} (columns: low, median, high
    quantiles, e.g. 10 %, 50 %, 90 %) against x [M]; values are floored at `floor` for a log axis."""
    with style():
        ax = _axes(ax, figsize=(6.5, 4.0))
        for label, q in bands.items():
            q = np.maximum(_numpy(q), floor)
            (line,) = ax.plot(_numpy(x), q[:, 1], "o-", ms=3, label=label)
            ax.fill_between(_numpy(x), q[:, 0], q[:, 2], color=line.get_color(), alpha=0.15)
        return _finish(ax, xlabel, ylabel, title, False, logy, False, True)


def plot_heatmap(values, extent=None, ax=None, title=None, contours=None, colorbar: bool = True):
    """A signed map values [ny, nx] in a diverging colour map centred on 0 (red > 0 > blue), rows from
    bottom to top over extent (x_min, x_max, y_min, y_max), or a matrix (extent None: row 0 on top).
    contours: optional [ny, nx] array drawn as thin black level lines (e.g. a density). Returns the Axes."""
    v = _numpy(values)
    lim = float(np.abs(v).max()) or 1.0
    with style():
        ax = _axes(ax)
        origin = "upper" if extent is None else "lower"
        im = ax.imshow(v, extent=extent, origin=origin, cmap="RdBu_r", vmin=-lim, vmax=lim)
        if contours is not None:
            c = _numpy(contours)
            xs = np.linspace(extent[0], extent[1], c.shape[1])
            ys = np.linspace(extent[2], extent[3], c.shape[0])
            ax.contour(xs, ys, c, levels=6, colors="k", linewidths=0.6)
        if extent is None:
            ax.set(xticks=[], yticks=[])
        if colorbar:
            ax.figure.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(title)
    return ax


def plot_histograms(values: dict, bins=40, ax=None, xlabel=None, ylabel="count", title=None, logx=False):
    """Overlaid histograms, one per entry of values {label: samples [N]}; with logx the bins are
    logarithmic (an integer `bins` spans the positive values given) and zeros are floored at 1e-18."""
    data = {k: _numpy(v).ravel() for k, v in values.items()}
    if logx:
        data = {k: np.maximum(v, 1e-18) for k, v in data.items()}
        if np.isscalar(bins):
            everything = np.concatenate(list(data.values()))
            bins = np.logspace(np.log10(everything.min()), np.log10(everything.max()) + 1e-9, int(bins) + 1)
    with style():
        ax = _axes(ax, figsize=(6.0, 3.8))
        for label, v in data.items():
            ax.hist(v, bins=bins, alpha=0.6, label=label)
        return _finish(ax, xlabel, ylabel, title, logx, False, False, True)


# -- animations that play in a static HTML page ------------------------------------------------------
MAX_FRAMES = 40  # every frame is embedded in the page as a PNG: 40 small frames stay well under 1.5 MB

# Inline SVG for the player's buttons: matplotlib's template asks a CDN for Font Awesome 4, which an
# offline page cannot reach (the buttons would be blank and the console would log the failed load).
_ICONS = {
    "fa fa-minus": "M3 7h10v2H3z",
    "fa fa-plus": "M7 3h2v4h4v2H9v4H7V9H3V7h4z",
    "fa fa-fast-backward": "M2 3h2v10H2zM9 3v10L4 8zM15 3v10l-5-5z",
    "fa fa-step-backward": "M3 3h2v10H3zM13 3v10L6 8z",
    "fa fa-play fa-flip-horizontal": "M12 3v10L4 8z",
    "fa fa-pause": "M4 3h3v10H4zM9 3h3v10H9z",
    "fa fa-play": "M4 3v10l8-5z",
    "fa fa-step-forward": "M3 3v10l7-5zM11 3h2v10h-2z",
    "fa fa-fast-forward": "M1 3v10l5-5zM7 3v10l5-5zM12 3h2v10h-2z",
}


def _frame_indices(count: int, max_frames: int) -> np.ndarray:
    """At most max_frames indices spread evenly over range(count), first and last included."""
    return np.unique(np.linspace(0, count - 1, min(count, max_frames)).round().astype(int))


def _animation(fig, update, frames: int, interval: int):
    """FuncAnimation over `frames` frames; the figure is closed so that Jupyter does not also show it still."""
    from matplotlib.animation import FuncAnimation

    anim = FuncAnimation(fig, update, frames=frames, interval=interval, blit=False)
    plt.close(fig)
    return anim


def _density_film(dist, path, times: Sequence[float], extent, n: int, samples, figsize, dpi):
    """One figure of p_t and an update(k) that redraws it for times[k]; shared by animations and explorers.

    samples: None or [len(times), N, 2]. Densities are computed up front; each frame has its own colour scale.
    """
    times = [float(t) for t in times]
    if samples is not None:
        samples = _numpy(samples)
        if samples.ndim != 3 or samples.shape[0] != len(times) or samples.shape[2] != 2:
            raise ValueError(f"samples must be [len(times) = {len(times)}, N, 2]; got {list(samples.shape)}")
    *_, pts = _grid(extent, n)
    densities = [_numpy(torch.exp(dist.noised(path, t).log_prob(pts))).reshape(n, n) for t in times]
    with style():
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        image = ax.imshow(densities[0], extent=extent, origin="lower", cmap=DENSITY_CMAP, aspect="equal")
        dots = None
        if samples is not None:
            dots = ax.scatter(samples[0, :, 0], samples[0, :, 1], s=1.5, c="white", alpha=0.5, linewidths=0)
        ax.set(xlim=extent[:2], ylim=extent[2:], xticks=[], yticks=[], title=_time_title(times[0]))

    def update(k):
        image.set_data(densities[k])
        image.set_clim(0.0, float(densities[k].max()))
        if dots is not None:
            dots.set_offsets(samples[k])
        ax.set_title(_time_title(times[k]))

    return fig, update


def animate_densities(dist, path, times: Sequence[float], extent=(-4, 4, -4, 4), n: int = 120, samples=None,
                      figsize=(3.6, 3.0), dpi: int = 70, interval: int = 150):
    """An animation of p_t over `times`: the exact law `dist.noised(path, t)` of x_t, one frame per time.

    samples: optional [len(times), N, 2] points (e.g. x_t = alpha_t x0 + sigma_t eps for fixed x0, eps)
    scattered on top. Each frame has its own colour scale (p_t spreads out by orders of magnitude).
    At most MAX_FRAMES frames. Returns a matplotlib FuncAnimation; show it with `animation_html`.
    """
    if not 0 < len(times) <= MAX_FRAMES:
        raise ValueError(f"animate_densities draws one frame per time: give 1 to {MAX_FRAMES} times; got {len(times)}")
    fig, update = _density_film(dist, path, times, extent, n, samples, figsize, dpi)
    return _animation(fig, update, len(times), interval)


def _ellipse(mean, cov, n_std: float = 2.0, n: int = 100) -> np.ndarray:
    """Points [n, 2] on the n_std-standard-deviation ellipse of N(mean, cov) in 2-D."""
    w, v = np.linalg.eigh(_numpy(cov))
    angle = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(angle), np.sin(angle)], 1)
    return _numpy(mean) + n_std * (circle * np.sqrt(np.clip(w, 0, None))) @ v.T


def animate_particles(trajectory, times: Sequence[float] | None = None, n_show: int = 300, extent=None,
                      reference=None, show_paths: bool = False, gaussians=None, max_frames: int = MAX_FRAMES,
                      figsize=(3.6, 3.2), dpi: int = 70, interval: int = 120):
    """An animation of particles moving along a trajectory [T, N, 2] (as returned by the samplers).

    times: the T times of the trajectory (titles "t = 0.30"; default: the step number); reference: optional
    [M, 2] points drawn in grey underneath (e.g. the data); show_paths: draw each particle's whole path as a
    faint line (about 1.5x the bytes per frame: keep n_show near 100 then); gaussians: optional T pairs
    (mean [2], cov [2, 2]), one per trajectory step, drawn as the 2-sigma ellipse of that law on its frame
    (e.g. the exact law of x_t, chapter 6). Long trajectories are thinned
    to max_frames evenly spaced frames (first and last kept). Returns a matplotlib FuncAnimation; show it
    with `animation_html`.
    """
    traj = _numpy(trajectory)
    if traj.ndim != 3 or traj.shape[2] != 2:
        raise ValueError(f"animate_particles expects a trajectory [T, N, 2]; got {list(traj.shape)}")
    if times is not None and len(times) != traj.shape[0]:
        raise ValueError(f"times needs one entry per trajectory step ({traj.shape[0]}); got {len(times)}")
    if gaussians is not None and len(gaussians) != traj.shape[0]:
        raise ValueError(f"gaussians needs one (mean, cov) per trajectory step ({traj.shape[0]}); got {len(gaussians)}")
    frames = _frame_indices(traj.shape[0], min(max_frames, MAX_FRAMES))
    traj = traj[:, :n_show]
    if extent is None:
        lo, hi = traj.min(axis=(0, 1)), traj.max(axis=(0, 1))
        pad = 0.05 * (hi - lo).max()
        extent = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)

    def title(k):
        return _time_title(times[k]) if times is not None else f"step {k} of {traj.shape[0] - 1}"

    with style():
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        if reference is not None:
            ref = _check_2d(reference, "animate_particles (reference)")
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c=COLORS["reference"], alpha=0.4, linewidths=0)
        if show_paths:
            lines = LineCollection(traj.transpose(1, 0, 2), colors=COLORS["samples"], linewidths=0.5, alpha=0.15)
            ax.add_collection(lines)
        dots = ax.scatter(traj[0, :, 0], traj[0, :, 1], s=6, c=COLORS["curve"], linewidths=0, zorder=3)
        if gaussians is not None:
            (ring,) = ax.plot(*_ellipse(*gaussians[0]).T, color=COLORS["samples"], lw=1.2, zorder=4)
        ax.set(xlim=extent[:2], ylim=extent[2:], aspect="equal", title=title(0))

    def update(i):
        dots.set_offsets(traj[frames[i]])
        if gaussians is not None:
            ring.set_data(*_ellipse(*gaussians[frames[i]]).T)
        ax.set_title(title(frames[i]))

    return _animation(fig, update, len(frames), interval)


def animation_html(anim, default_mode: str = "loop") -> str:
    """The animation as a self-contained HTML player (frames embedded as PNG) that works offline.

    Notebook use: `IPython.display.HTML(dl.animation_html(anim))`. This is `anim.to_jshtml()` without its
    link to a Font Awesome CDN (the buttons get inline SVG icons instead), so a page shows it with no
    network and no console error.
    """
    html = anim.to_jshtml(default_mode=default_mode)
    start = html.find("<link rel=\"stylesheet\"")
    if start >= 0:
        html = html[:start] + html[html.index(">", start) + 1:]
    for icon, shape in _ICONS.items():
        svg = (f'<svg viewBox="0 0 16 16" width="12" height="12" aria-hidden="true">'
               f'<path d="{shape}" fill="currentColor"/></svg>')
        html = html.replace(f'<i class="{icon}"></i>', svg)
    return html
