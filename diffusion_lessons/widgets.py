"""Interactive explorers for the notebooks (ipywidgets is imported only when one is built).

Each explorer draws its pictures with `plotting` once, when it is built, and lets a slider choose which
one shows. The slider and the pictures are linked in the browser (`ipywidgets.jslink`), not through a
Python callback, so an explorer needs no running kernel: it works the same in Jupyter and in the static
HTML book, whose pages carry the widget state that was saved when the chapter was executed.
"""
from __future__ import annotations

__all__ = ["noising_explorer", "frame_explorer"]


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # the package works without Jupyter; only the explorers need it
        raise ImportError("the interactive explorers need ipywidgets: pip install ipywidgets") from err
    return ipywidgets


def frame_explorer(frames, labels, description: str = "t", value: int = 0):
    """A slider over pre-rendered PNG frames; it runs in the browser, without a kernel.

    frames: PNG images as bytes, one per slider position; labels: the slider's text for each, e.g. "0.30".
    The slider's index is linked to a `Stack` of images with `jslink`, so moving it only changes which
    image is visible. Returns the widget (a VBox). (No `Play` button: in the book's theme its icons are
    swapped for SVG by Font Awesome, and the widget then throws on every change; an animation made with
    `plotting.animate_densities` is the way to show a film.)
    """
    widgets = _ipywidgets()
    frames, labels = list(frames), [str(label) for label in labels]
    if not frames or len(frames) != len(labels):
        raise ValueError(f"frame_explorer needs one label per frame; got {len(frames)} frames, {len(labels)} labels")
    if not 0 <= value < len(frames):
        raise ValueError(f"value is the index of the frame shown first: 0 to {len(frames) - 1}; got {value}")
    images = widgets.Stack([widgets.Image(value=png, format="png") for png in frames], selected_index=value)
    slider = widgets.SelectionSlider(options=labels, index=value, description=description, continuous_update=True)
    widgets.jslink((slider, "index"), (images, "selected_index"))
    return widgets.VBox([slider, images])


def noising_explorer(dist, path, extent=(-5, 5, -4, 4), n_samples=2000, t=0.3, seed=0, times=None, n=120, dpi=80):
    """A slider over t in [0, 1] showing the exact density p_t of `dist` under `path`, with samples of x_t.

    The same samples x0 and noise eps are reused at every t, so moving the slider moves each point
    along its own straight segment x_t = alpha_t x0 + sigma_t eps. times: the slider's positions
    (default 0, 0.05, ..., 1); the one nearest to `t` shows first. Each position is one picture drawn
    now (n x n density grid, `dpi`), so the explorer works without a kernel (see `frame_explorer`).
    """
    import io

    import matplotlib.pyplot as plt
    import torch

    from .plotting import _density_film

    _ipywidgets()  # fail before drawing anything when ipywidgets is missing
    times = [i / 20 for i in range(21)] if times is None else [float(s) for s in times]
    gen = torch.Generator().manual_seed(seed)
    x0 = dist.sample(n_samples, generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    samples = torch.stack([path.sample(x0, s, eps=eps)[0] for s in times])
    fig, update = _density_film(dist, path, times, extent, n, samples, figsize=(3.6, 3.0), dpi=dpi)
    frames = []
    for k in range(len(times)):  # one figure, redrawn for each time
        update(k)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        frames.append(buffer.getvalue())
    plt.close(fig)  # Jupyter must not show it a second time
    first = min(range(len(times)), key=lambda i: abs(times[i] - t))
    return frame_explorer(frames, [f"{s:.2f}" for s in times], description="t", value=first)
