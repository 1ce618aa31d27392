"""The measuring tools of the fast-samplers chapter against formulas written here."""
import math

import torch

import diffusion_lessons as dl
from diffusion_lessons.sampling.studies import GaussianOracle, affine_map, errors_per_nfe, order_slope

F64 = {"dtype": torch.float64}


def test_gaussian_oracle_is_the_closed_form_and_the_posterior_mean():
    """x0 = mu + alpha lam / (alpha^2 lam + sigma^2) (x - alpha mu); the flow agrees with dl.gaussian_pf_ode."""
    path = dl.VP()
    oracle = GaussianOracle([1.0, -1.0], [4.0, 0.01], path)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), **F64)
    a, s = float(path.alpha(0.3)), float(path.sigma(0.3))
    lam, mu = torch.tensor([4.0, 0.01], **F64), torch.tensor([1.0, -1.0], **F64)
    assert torch.allclose(oracle.x0(x, 0.3), mu + a * lam / (a * a * lam + s * s) * (x - a * mu), rtol=0, atol=1e-14)
    gauss = dl.Gaussian(mu, torch.diag(lam))
    assert torch.allclose(oracle.flow(x, 1.0, 0.2), dl.gaussian_pf_ode(gauss, path, x, 1.0, 0.2), rtol=0, atol=1e-12)


def test_order_slope_and_affine_map():
    """A power law e = c NFE^-p has slope -p; an affine run x -> x A^T + B is read off exactly."""
    nfes = [10, 20, 40, 80]
    assert abs(order_slope(nfes, [3.0 * n**-2.5 for n in nfes]) + 2.5) < 1e-12
    A, B = torch.tensor([[2.0, 0.5], [-1.0, 3.0]], **F64), torch.tensor([0.3, -0.7], **F64)
    A_hat, B_hat = affine_map(lambda x: x @ A.T + B, dim=2)
    assert torch.allclose(A_hat, A) and torch.allclose(B_hat, B)


def test_errors_per_nfe_counts_and_measures():
    """DDIM on a point mass is exact (error 0) with NFE = steps."""
    path, star = dl.VP(), torch.tensor([1.0, 2.0], **F64)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), **F64)
    exact = float(path.alpha(1e-3)) * star + float(path.sigma(1e-3)) / float(path.sigma(1.0)) * (x - float(path.alpha(1.0)) * star)
    nfes, errors = errors_per_nfe(lambda z, t: star.expand_as(z), path, x, exact, "ddim",
                                  [dl.time_grid(n, kind="log_snr", path=path) for n in (3, 6)])
    assert nfes == [3, 6] and max(errors) < 1e-12 and not math.isnan(errors[0])
