"""Explorers: pictures drawn up front, a slider linked to them in the browser (no kernel needed)."""
import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import diffusion_lessons as dl  # noqa: E402
from diffusion_lessons import widgets  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_noising_explorer_draws_one_picture_per_time():
    explorer = widgets.noising_explorer(dl.gmm2(), dl.VP(), n_samples=100, times=[0.0, 0.25, 0.5, 1.0], t=0.3, n=20)
    slider, stack = explorer.children
    assert isinstance(slider, ipywidgets.SelectionSlider) and isinstance(stack, ipywidgets.Stack)
    assert slider.options == ("0.00", "0.25", "0.50", "1.00")
    assert slider.index == stack.selected_index == 1  # the time nearest to t = 0.3 shows first
    pictures = [bytes(image.value) for image in stack.children]  # Image.value is a memoryview
    assert all(isinstance(image, ipywidgets.Image) for image in stack.children)
    assert len(pictures) == 4 and all(p.startswith(PNG) for p in pictures) and len(set(pictures)) == 4
    assert plt.get_fignums() == []  # the figures were closed after drawing


def test_noising_explorer_default_times():
    explorer = widgets.noising_explorer(dl.gmm2(), dl.RectifiedFlow(), n_samples=50, n=10, dpi=30)
    slider, stack = explorer.children
    assert len(slider.options) == len(stack.children) == 21 and slider.options[6] == "0.30"


def test_frame_explorer_checks_its_arguments():
    with pytest.raises(ValueError, match="one label per frame"):
        widgets.frame_explorer([PNG], ["0.1", "0.2"])
    with pytest.raises(ValueError, match="0 to 0"):
        widgets.frame_explorer([PNG], ["0.1"], value=1)
    explorer = widgets.frame_explorer([PNG, PNG], ["a", "b"], description="step", value=1)
    assert explorer.children[0].description == "step" and explorer.children[1].selected_index == 1
