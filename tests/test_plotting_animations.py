"""plotting.py animations that play in a static page: frame counts, shape checks, HTML that needs no network."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import diffusion_lessons as dl  # noqa: E402
from diffusion_lessons import plotting  # noqa: E402

F64 = dict(dtype=torch.float64)


def _frame_count(anim) -> int:
    """Frames of an animation that is not rendered (marked as drawn: matplotlib warns when one is dropped unseen)."""
    anim._draw_was_started = True
    return len(list(anim.new_frame_seq()))


def _film(times, n_points=200):
    """Samples x_t = alpha_t x0 + sigma_t eps of GMM2 under VP, one row per time: [len(times), N, 2]."""
    gen = torch.Generator().manual_seed(0)
    x0 = dl.gmm2().sample(n_points, generator=gen)
    eps = torch.randn(x0.shape, generator=gen, **F64)
    return torch.stack([dl.VP().sample(x0, t, eps=eps)[0] for t in times])


def test_animate_densities_one_frame_per_time_and_offline_html():
    times = torch.linspace(0, 1, plotting.MAX_FRAMES).tolist()
    before = dict(matplotlib.rcParams)
    anim = dl.animate_densities(dl.gmm2(), dl.VP(), times, extent=(-5, 5, -4, 4), samples=_film(times))
    assert plt.get_fignums() == []  # closed: Jupyter must not also show the last frame as a still
    assert dict(matplotlib.rcParams) == before
    html = dl.animation_html(anim)
    assert html.count("data:image/png;base64") == plotting.MAX_FRAMES
    assert "http" not in html and "fa fa-" not in html  # no Font Awesome CDN, no icon font
    assert html.count("<svg") == 9  # the player's nine buttons
    assert len(html) < 1.5e6, f"{len(html) / 1e6:.2f} MB of HTML for {plotting.MAX_FRAMES} frames"


def test_animate_densities_rejects_bad_input():
    with pytest.raises(ValueError, match="1 to 40 times"):
        dl.animate_densities(dl.gmm2(), dl.VP(), [0.5] * 41)
    with pytest.raises(ValueError, match=r"samples must be \[len\(times\) = 2, N, 2\]"):
        dl.animate_densities(dl.gmm2(), dl.VP(), [0.1, 0.2], samples=torch.zeros(3, 10, 2))


def test_animate_particles_thins_long_trajectories():
    path = dl.VP()
    grid = dl.time_grid(99)  # 100 times, thinned to 12 frames (first and last kept)
    velocity = dl.pf_velocity(dl.exact_score(dl.gmm2(), path), path)
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), **F64)
    _, trajectory = dl.sample_ode(velocity, x_T, grid, method="euler", return_trajectory=True)
    anim = dl.animate_particles(trajectory, times=grid.tolist(), reference=dl.gmm2().sample(100), show_paths=True,
                                max_frames=12)
    html = dl.animation_html(anim, default_mode="once")
    assert html.count("data:image/png;base64") == 12 and "http" not in html
    assert list(plotting._frame_indices(100, 12))[::11] == [0, 99]
    assert _frame_count(dl.animate_particles(trajectory[:5])) == 5  # short trajectories keep every step
    assert _frame_count(dl.animate_particles(trajectory)) == plotting.MAX_FRAMES


@pytest.mark.filterwarnings("ignore:Animation was deleted without rendering")
def test_animate_particles_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[T, N, 2\]"):
        dl.animate_particles(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="one entry per trajectory step"):
        dl.animate_particles(torch.zeros(10, 5, 2), times=[0.0, 1.0])


def test_particles_with_their_exact_gaussian_law_fit_in_a_page():
    """Chapter 6's animation: the closed-form PF-ODE trajectory of GAUSS2 with the 2-sigma ellipse of the exact
    law of x_t on every frame. Every frame is embedded, and the page stays small."""
    from diffusion_lessons.closed_form import gaussian_pf_ode
    g, path = dl.gauss2(), dl.VP()
    times = torch.linspace(1.0, 0.0, 12, dtype=torch.float64)
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    traj = gaussian_pf_ode(g, path, x_T, 1.0, times)
    laws = [(g.noised(path, float(t)).mean(), g.noised(path, float(t)).covariance()) for t in times]
    html = dl.animation_html(dl.animate_particles(traj, times.tolist(), gaussians=laws, reference=g.sample(200)))
    assert "<script" in html and html.count("data:image/png") == 12
    assert len(html) < 2_000_000
    # the ellipse at t = 0 is the data law's: its points satisfy (x - mu)^T Sigma^-1 (x - mu) = 4
    ring = torch.as_tensor(plotting._ellipse(*laws[-1]))
    d = ring - g.mean().double()
    quad = (d @ torch.linalg.inv(g.covariance().double()) * d).sum(1)
    assert torch.allclose(quad, torch.full((len(d),), 4.0, dtype=torch.float64), atol=1e-5)  # gauss2 is float32
    with pytest.raises(ValueError, match="one \\(mean, cov\\) per trajectory step"):
        dl.animate_particles(traj, times.tolist(), gaussians=laws[:-1])
