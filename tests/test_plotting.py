"""Plot helpers: each draws with Agg, returns its Figure or Axes, leaves rcParams unchanged."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import diffusion_lessons as dl  # noqa: E402
from diffusion_lessons import plotting, solvers  # noqa: E402

F64 = dict(dtype=torch.float64)


def _points(n=300, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


def test_import_and_style_leave_rcparams_alone():
    before = dict(matplotlib.rcParams)
    with plotting.style():
        assert matplotlib.rcParams["image.cmap"] == plotting.DENSITY_CMAP
    plotting.plot_samples(_points())
    assert dict(matplotlib.rcParams) == before


def test_plot_schedules():
    paths = {"VP": dl.VP(), "sub-VP": dl.SubVP(), "VE": dl.VE(), "RF": dl.RectifiedFlow(), "cosine": dl.Cosine()}
    fig = plotting.plot_schedules(paths, n=100)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    assert [len(ax.get_lines()) for ax in fig.axes] == [5, 5, 5]
    assert fig.axes[1].get_yscale() == "symlog"  # VE's sigma reaches 50
    log_snr = fig.axes[2].get_lines()[0].get_ydata()
    assert np.isnan(log_snr[0]) and np.isfinite(log_snr[1:]).all()  # +inf at t = 0 left out
    fig.canvas.draw()


def test_plot_densities_with_samples():
    data = dl.gmm2()
    x0 = data.sample(200, generator=torch.Generator().manual_seed(0))
    fig = plotting.plot_densities(data, dl.VP(), [0.0, 0.3, 1.0], n=40, samples=[x0, None, None])
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["t = 0.00", "t = 0.30", "t = 1.00"]
    assert len(fig.axes[0].collections) == 1 and len(fig.axes[1].collections) == 0
    fig.canvas.draw()
    with pytest.raises(ValueError, match="one entry per panel"):
        plotting.plot_densities(data, dl.VP(), [0.1, 0.2], n=10, samples=[x0])


def test_plot_density_grid_normalised_values():
    """The image is exp(log_prob) on the grid: a standard normal peaks at 1 / (2 pi)."""
    gauss = dl.Gaussian(torch.zeros(2, **F64), torch.eye(2, **F64))
    fig = plotting.plot_density_grid([gauss.log_prob], ["N(0, I)"], extent=(-3, 3, -3, 3), n=31)
    image = fig.axes[0].get_images()[0].get_array()
    assert abs(float(image.max()) - 1 / (2 * np.pi)) < 1e-12


@pytest.mark.parametrize("kind, normalize", [("quiver", False), ("quiver", True), ("stream", False)])
def test_plot_field(kind, normalize):
    path, data = dl.VP(), dl.gmm2()
    density = lambda x: data.noised(path, 0.3).log_prob(x)  # noqa: E731
    ax = plotting.plot_field(dl.exact_score(data, path), 0.3, n=12, density=density, kind=kind, normalize=normalize)
    assert len(ax.figure.axes) == 1 and ax.get_title() == "t = 0.30"
    ax.figure.canvas.draw()


def test_plot_field_on_given_axes_and_network():
    fig, axes = plt.subplots(1, 2)
    net = torch.nn.Linear(2, 2).float()
    field = lambda x, t: -x  # noqa: E731

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = net

        def forward(self, x, t):
            assert x.dtype == torch.float32  # evaluated in the network's own dtype
            return self.lin(x)

    assert plotting.plot_field(field, 0.5, ax=axes[0]) is axes[0]
    assert plotting.plot_field(Net(), 0.5, ax=axes[1]) is axes[1]
    with pytest.raises(ValueError, match="valid kinds"):
        plotting.plot_field(field, 0.5, kind="lic")


def test_plot_samples():
    reference = _points(seed=1).numpy()  # numpy works as well as torch
    ax = plotting.plot_samples(_points(), reference=reference, title="samples vs data", extent=(-4, 4, -4, 4))
    assert len(ax.figure.axes) == 1 and len(ax.collections) == 2 and ax.get_title() == "samples vs data"
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plotting.plot_samples(torch.zeros(5, 3))


def test_plot_trajectories_from_sampler():
    path = dl.VP()
    score = dl.exact_score(dl.gmm2(), path)
    _, traj = solvers.sample_ode(solvers.pf_velocity(score, path), _points(30), solvers.time_grid(10),
                                    return_trajectory=True)
    ax = plotting.plot_trajectories(traj, n_show=20)
    assert len(ax.figure.axes) == 1 and len(ax.collections) == 3  # lines, start points, end points
    assert len(ax.collections[0].get_segments()) == 10 * 20
    ax.figure.canvas.draw()
    with pytest.raises(ValueError, match=r"\[T, N, 2\]"):
        plotting.plot_trajectories(torch.zeros(10, 2))


def test_plot_histogram_vs_density():
    x = 1.0 + 0.5 * torch.randn(5000, 1, generator=torch.Generator().manual_seed(0), **F64)
    pdf = lambda x: torch.exp(-((x - 1.0) ** 2) / (2 * 0.25)) / np.sqrt(2 * np.pi * 0.25)  # noqa: E731
    ax = plotting.plot_histogram_vs_density(x, pdf, bins=50, title="t = 0.30")
    assert len(ax.figure.axes) == 1 and len(ax.patches) == 50 and len(ax.get_lines()) == 1


def test_plot_image_grid():
    images = torch.rand(10, 1, 8, 8) * 2 - 1
    ax = plotting.plot_image_grid(images, nrow=4)
    assert ax.get_images()[0].get_array().shape == (3 * 9 + 1, 4 * 9 + 1)
    ax = plotting.plot_image_grid(torch.rand(3, 3, 8, 8), value_range=(0, 1))
    assert ax.get_images()[0].get_array().shape == (9 + 1, 3 * 9 + 1, 3)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        plotting.plot_image_grid(torch.rand(3, 8, 8))


def test_style_keeps_interactive_mode_switched_on_inside_it():
    """Jupyter's inline backend switches interactive mode on when pyplot first loads it, which can happen
    inside `style()`; leaving the context must not switch it off again (later figures would not show)."""
    import matplotlib as mpl

    from diffusion_lessons.plotting import style

    was = mpl.is_interactive()
    try:
        mpl.interactive(False)
        with style():
            mpl.interactive(True)
        assert mpl.is_interactive()
    finally:
        mpl.interactive(was)


def test_curves_bands_heatmap_and_histograms():
    """The measurement plots of chapters 6-9: what they draw, on which axes, with which scales."""
    x = torch.linspace(0.1, 1.0, 10, **F64)
    ax = dl.plot_curves(x, {"a": x**2, "b": (x[:5], x[:5])}, marker=["o-", "--"], reverse_x=True, logy=True,
                        vlines={"t*": 0.5}, hlines={"level": 0.3})
    assert len(ax.lines) == 4 and ax.get_xlim()[0] > ax.get_xlim()[1] and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "t*", "level"]
    bands = torch.stack([x / 2, x, 2 * x], 1)
    ax = dl.plot_bands(x, {"median": bands})
    assert len(ax.collections) == 1 and np.allclose(ax.lines[0].get_ydata(), x.numpy())
    ax = dl.plot_heatmap(torch.tensor([[1.0, -2.0], [0.5, 0.0]]), extent=(0, 1, 0, 1), contours=torch.rand(2, 2) + 1)
    assert ax.images[0].get_clim() == (-2.0, 2.0)
    ax = dl.plot_histograms({"zeros and ones": torch.tensor([0.0, 1e-3, 1.0])}, bins=5, logx=True)
    assert ax.get_xscale() == "log" and len(ax.patches) == 5
    plt.close("all")
