"""Time grids against formulas written here in numpy (EDM's rho-schedule, equal log-SNR steps) and the
closed-form inverse of lambda(t) for Song's VP (Lu et al. 2022a, appendix)."""
import math

import numpy as np
import pytest
import torch
from reference import vp_alpha_sigma

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}


def karras_sigmas(n, sigma_max, sigma_min, rho=7.0):
    """EDM's eq. 5 in numpy: (s_max^(1/rho) + i/n (s_min^(1/rho) - s_max^(1/rho)))^rho, i = 0..n."""
    i = np.arange(n + 1)
    return (sigma_max ** (1 / rho) + i / n * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_edm2_karras_schedule_on_the_edm_path():
    """Check EDM-2: 18 levels from 80 to 0.002 with rho = 7 (NVlabs/edm's default num_steps = 18), then sigma = 0.

    dl.time_grid(17, 1, 0.002 / 80, "karras", dl.EDM()) gives the times; sigma = 80 t must be the numpy
    schedule to 1e-12 relative (EDM-2 asks for 1e-3)."""
    path = dl.EDM(80.0)
    grid = dl.time_grid(17, 1.0, 0.002 / 80, kind="karras", path=path)
    sigmas = torch.cat([path.sigma(grid), torch.zeros(1, **F64)]).numpy()
    expected = np.append(karras_sigmas(17, 80.0, 0.002), 0.0)
    print("EDM-2 sigmas", np.round(sigmas, 4))
    assert sigmas.shape == (19,)
    assert np.allclose(sigmas, expected, rtol=1e-12, atol=0)


def test_karras_grid_on_vp_is_the_rho_schedule_in_sigma_over_alpha():
    """On VP the Karras grid is EDM's schedule in sigma~ = sigma / alpha; alpha, sigma by quadrature of beta."""
    path = dl.VP()
    grid = dl.time_grid(10, 1.0, 1e-3, kind="karras", path=path, rho=5.0)
    levels = np.array([vp_alpha_sigma(t)[1] / vp_alpha_sigma(t)[0] for t in grid.tolist()])
    expected = karras_sigmas(10, levels[0], levels[-1], rho=5.0)
    assert np.allclose(levels, expected, rtol=1e-9, atol=0)


def test_log_snr_grid_has_equal_steps_in_lambda():
    path = dl.VP()
    grid = dl.time_grid(40, kind="log_snr", path=path)
    lam = np.array([math.log(a / s) for a, s in map(vp_alpha_sigma, grid.tolist())])
    steps = np.diff(lam)
    assert grid.shape == (41,) and float(grid[0]) == 1.0 and float(grid[-1]) == 1e-3
    assert np.abs(steps - steps.mean()).max() < 1e-9 * np.abs(steps).mean()


def test_uniform_and_quadratic_grids():
    assert torch.allclose(dl.time_grid(4, 1.0, 0.0, kind="quadratic"), torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0], **F64))
    assert torch.allclose(dl.time_grid(3, 0.0, 0.3), torch.linspace(0.0, 0.3, 4, **F64), rtol=0, atol=1e-15)
    for kind in dl.GRID_KINDS:
        grid = dl.time_grid(7, kind=kind, path=dl.VP())
        assert grid.shape == (8,) and grid.dtype == torch.float64 and bool((grid[1:] < grid[:-1]).all())
        assert float(grid[0]) == 1.0 and float(grid[-1]) == 1e-3
    assert dl.time_grid(5, dtype=torch.float32).dtype == torch.float32


def test_time_at_lambda_inverts_vp_in_closed_form():
    """Song's VP: t(lambda) = (sqrt(b0^2 + 2 (b1 - b0) log(1 + e^{-2 lambda})) - b0) / (b1 - b0) (Lu et al. 2022a)."""
    b0, b1 = 0.1, 20.0
    lam = torch.linspace(-5.0, 6.0, 23, **F64)
    closed = (torch.sqrt(b0**2 + 2 * (b1 - b0) * torch.log1p(torch.exp(-2 * lam))) - b0) / (b1 - b0)
    assert torch.allclose(dl.time_at_lambda(dl.VP(b0, b1), lam), closed, rtol=1e-13, atol=1e-15)
    # rectified flow: lambda = log((1 - t) / t)  =>  t = 1 / (1 + e^lambda); EDM: t = e^{-lambda} / sigma_max
    assert torch.allclose(dl.time_at_lambda(dl.RectifiedFlow(), lam), torch.sigmoid(-lam), rtol=1e-13, atol=1e-16)
    lam_edm = torch.linspace(-4.3, 6.0, 9, **F64)
    assert torch.allclose(dl.time_at_lambda(dl.EDM(80.0), lam_edm), torch.exp(-lam_edm) / 80, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [2.7, 0, -3, True, "5", None])
def test_step_count_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="n .*positive integer"):
        dl.time_grid(bad)


def test_bad_grid_arguments_are_explained():
    with pytest.raises(ValueError, match="t_start must be a time in \\[0, 1\\]"):
        dl.time_grid(10, t_start=1.5)
    with pytest.raises(ValueError, match="t_end must be a time in \\[0, 1\\]"):
        dl.time_grid(10, t_end=-0.1)
    with pytest.raises(ValueError, match="must differ"):
        dl.time_grid(10, 0.5, 0.5)
    with pytest.raises(ValueError, match="'cosine'.*uniform, quadratic, log_snr, karras"):
        dl.time_grid(10, kind="cosine")
    for kind in ("log_snr", "karras"):
        with pytest.raises(ValueError, match="needs the path"):
            dl.time_grid(10, kind=kind)
        with pytest.raises(ValueError, match="t_end=1e-3"):
            dl.time_grid(10, t_end=0.0, kind=kind, path=dl.VP())  # sigma = 0: lambda = +inf
    with pytest.raises(ValueError, match="rho must be a positive"):
        dl.time_grid(10, kind="karras", path=dl.VP(), rho=0)
