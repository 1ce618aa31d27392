"""Interactive explorers for the notebooks (ipywidgets is imported only when one is built).

Each explorer is a slider wired to a drawing function from `plotting`, so the static figures in the
book and the interactive ones in Jupyter come from the same code.
"""
from __future__ import annotations

__all__ = ["noising_explorer"]


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # the package works without Jupyter; only the explorers need it
        raise ImportError("the interactive explorers need ipywidgets: pip install ipywidgets") from err
    return ipywidgets


def noising_explorer(dist, path, extent=(-5, 5, -4, 4), n_samples=2000, t=0.3, seed=0):
    """A slider over t in [0, 1] showing the exact density p_t of `dist` under `path`, with samples of x_t.

    The same samples x0 and noise eps are reused at every t, so moving the slider moves each point
    along its own straight segment x_t = alpha_t x0 + sigma_t eps.
    """
    import matplotlib.pyplot as plt
    import torch
    from IPython.display import display

    from .plotting import plot_densities

    widgets = _ipywidgets()
    gen = torch.Generator().manual_seed(seed)
    x0 = dist.sample(n_samples, generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    output = widgets.Output()

    def draw(t):
        xt, _ = path.sample(x0, float(t), eps=eps)
        with output:
            output.clear_output(wait=True)
            fig = plot_densities(dist, path, [float(t)], extent=extent, samples=[xt])
            display(fig)
            plt.close(fig)

    slider = widgets.FloatSlider(value=t, min=0.0, max=1.0, step=0.02, description="t", continuous_update=False)
    slider.observe(lambda change: draw(change["new"]), names="value")
    draw(t)
    return widgets.VBox([slider, output])
