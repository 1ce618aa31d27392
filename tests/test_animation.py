"""Animations embed in static HTML and stay small."""
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.animation import MAX_FRAMES, animate_points
from diffusion_lessons.closed_form import gaussian_pf_ode


def test_animation_of_a_closed_form_trajectory_fits_in_a_page():
    g, path = dl.gauss2(), dl.VP()
    times = torch.linspace(1.0, 0.0, 12, dtype=torch.float64)
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    traj = gaussian_pf_ode(g, path, x_T, 1.0, times)
    laws = [(g.noised(path, float(t)).mean(), g.noised(path, float(t)).covariance()) for t in times]
    html = animate_points(traj, times, gaussians=laws, reference=g.sample(200)).to_jshtml()
    assert "<script" in html and html.count("data:image/png") == 12
    assert len(html) < 2_000_000


def test_animation_rejects_bad_shapes_and_too_many_frames():
    with pytest.raises(ValueError, match="trajectory"):
        animate_points(torch.zeros(5, 10, 3), torch.linspace(1, 0, 5))
    with pytest.raises(ValueError, match="frames"):
        animate_points(torch.zeros(MAX_FRAMES + 1, 10, 2), torch.linspace(1, 0, MAX_FRAMES + 1))
