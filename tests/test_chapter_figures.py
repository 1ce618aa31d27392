"""Chapter figures (chapter_figures.py): each draws with Agg what it is given, returns its Figure or Axes,
and refuses inputs whose shapes disagree with a one-line error."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import diffusion_lessons as dl  # noqa: E402
from diffusion_lessons.datasets import digits  # noqa: E402

F64 = {"dtype": torch.float64}


def test_noised_images_one_row_per_path_one_column_per_time():
    images = digits(size=8).double()[:1]
    times = [0.0, 0.5, 1.0]
    rows = {"VP": torch.stack([dl.VP().sample(images, t, eps=torch.zeros_like(images))[0] for t in times])[:, 0]}
    fig = dl.plot_noised_images(rows, times)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t = 0.00", "t = 0.50", "t = 1.00"]
    assert ax.get_ylabel() == "VP"
    with pytest.raises(ValueError, match=r"row 'VP' needs one image per time \(2\); got 3"):
        dl.plot_noised_images(rows, [0.0, 1.0])


def test_coordinate_paths_draw_every_path_with_time_reversed():
    times = torch.linspace(1.0, 0.0, 11, **F64)
    traj = torch.randn(11, 7, 2, generator=torch.Generator().manual_seed(0), **F64)
    ax = dl.plot_coordinate_paths({"a": traj, "b": traj[:, :3]}, times, coordinate=1)
    assert len(ax.get_lines()) == 10
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), traj[:, 0, 1].numpy())
    assert ax.get_xlim() == (1.0, 0.0)  # generation runs right to left
    with pytest.raises(ValueError, match="has 11 time points, times has 5"):
        dl.plot_coordinate_paths({"a": traj}, times[:5])


def test_density_maps_share_one_colour_scale_and_histograms_draw_their_lines():
    maps = {"p": -torch.rand(8, 8, **F64) * 20, "q": -torch.rand(8, 8, **F64)}
    fig = dl.plot_density_maps(maps, extent=(-1, 1, -1, 1), floor=-12.0)
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert len(images) == 2 and all(im.get_clim() == (-12.0, 0.0) for im in images)
    assert images[0].get_array().min() >= -12.0  # clipped at the floor
    ax = dl.plot_density_histograms({"x": torch.randn(500, **F64)}, lines={"zero": 0.0})
    assert len(ax.patches) > 0 and ax.get_lines()[-1].get_xdata()[0] == 0.0
