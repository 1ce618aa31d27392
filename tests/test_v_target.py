"""The "v" target on every path, not only where alpha^2 + sigma^2 = 1.

Salimans & Ho (2022, Appendix D) define v on a variance-preserving path z_phi = cos(phi) x0 + sin(phi) eps
as v = dz/dphi = cos(phi) eps - sin(phi) x0. The package applies it to x_t / r, r = sqrt(alpha^2 + sigma^2),
which is such a path with phi = atan2(sigma, alpha) for any (alpha, sigma). The references here are computed
in the test from that angle with numpy's trigonometry (not from the package's algebra), from the
definitions of the other targets, and from Karras et al.'s (2022, Table 1) preconditioning on VE.
Before the fix, convert decoded v as if r = 1: on VE, eps -> v -> eps was off by about 1.
"""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.objectives import loss, target_value

PATHS = [dl.VP(), dl.SubVP(), dl.VE(), dl.RectifiedFlow(), dl.Cosine()]
if hasattr(dl, "EDM"):  # alpha = 1, sigma = sigma_max t (the sampling helper's path)
    PATHS.append(dl.EDM())
TIMES = [0.02, 0.3, 0.7, 0.98]


def _pairs(n=64, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(size=(n, dim))


def _references(path, t, x0, eps):
    """x_t and every target of (x0, eps) at t, in float64 numpy, v from the angle phi = atan2(sigma, alpha)."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    da, ds = float(path.dalpha(t)), float(path.dsigma(t))
    phi = math.atan2(s, a)
    targets = {"eps": eps, "x0": x0, "score": -eps / s, "velocity": da * x0 + ds * eps,
               "v": math.cos(phi) * eps - math.sin(phi) * x0}
    return a * x0 + s * eps, targets


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_v_converts_to_and_from_every_target_on_every_path(path, t):
    """convert(v) gives each target of the pair (x0, eps) that made x_t, and every target gives v."""
    x0, eps = _pairs()
    x, exact = _references(path, t, x0, eps)
    x = torch.from_numpy(x)
    scale = 1 + max(np.abs(v).max() for v in exact.values())
    for other, reference in exact.items():
        from_v = dl.convert(torch.from_numpy(exact["v"]), "v", other, x, t, path).numpy()
        to_v = dl.convert(torch.from_numpy(reference), other, "v", x, t, path).numpy()
        np.testing.assert_allclose(from_v, reference, rtol=0, atol=1e-10 * scale, err_msg=f"v -> {other}")
        np.testing.assert_allclose(to_v, exact["v"], rtol=0, atol=1e-10 * scale, err_msg=f"{other} -> v")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_eps_to_v_to_eps_is_exact(path):
    """The round trip eps -> v -> eps through a rotation: a few ulps, at every t in (0, 1] (rf: t < 1)."""
    x0, eps = _pairs(seed=1)
    for t in [1e-4, 0.1, 0.5, 0.9, 1.0 if path.name != "rf" else 0.999]:
        x, _ = _references(path, t, x0, eps)
        x, e = torch.from_numpy(x), torch.from_numpy(eps)
        back = dl.convert(dl.convert(e, "eps", "v", x, t, path), "v", "eps", x, t, path)
        assert (back - e).abs().max() <= 1e-14 * (1 + x.abs().max()), (t, (back - e).abs().max())


@pytest.mark.parametrize("path", [dl.VP(), dl.Cosine()], ids=lambda p: p.name)
def test_v_is_salimans_and_hos_where_alpha2_plus_sigma2_is_1(path):
    x0, eps = (torch.from_numpy(a) for a in _pairs(seed=2))
    t = torch.linspace(0.05, 0.95, len(x0), dtype=torch.float64)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    v = dl.convert(eps, "eps", "v", a * x0 + s * eps, t, path)
    torch.testing.assert_close(v, a * eps - s * x0, rtol=1e-13, atol=1e-13)


def test_v_on_ve_is_minus_the_edm_preconditioned_target():
    """Karras et al. 2022, Table 1 with sigma_data = 1: D = c_skip x + c_out F, c_skip = 1 / (sigma^2 + 1),
    c_out = sigma / sqrt(sigma^2 + 1); the F that gives D = x0 is (x0 - c_skip x) / c_out = -v."""
    path = dl.VE(sigma_min=0.002, sigma_max=80.0)
    x0, eps = _pairs(seed=3)
    for t in [0.1, 0.5, 0.9]:
        s = float(path.sigma(t))
        x = x0 + s * eps
        f_target = (x0 - x / (s**2 + 1)) / (s / math.sqrt(s**2 + 1))
        v = dl.convert(torch.from_numpy(eps), "eps", "v", torch.from_numpy(x), t, path).numpy()
        np.testing.assert_allclose(v, -f_target, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_the_v_that_fit_regresses_on_decodes_to_x0_and_eps(path):
    """objectives.target_value("v") is what fit(target="v") trains on; convert must read it back as the
    (x0, eps) it came from, per sample times included (before the fix, on VE fit trained on one v and
    every sampler decoded another)."""
    x0, eps = (torch.from_numpy(a) for a in _pairs(seed=4))
    t = torch.linspace(0.01, 0.99, len(x0), dtype=torch.float64)
    x_t, _ = path.sample(x0, t, eps=eps)
    v = target_value("v", x0, eps, t, path)
    torch.testing.assert_close(dl.convert(v, "v", "x0", x_t, t, path), x0, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(dl.convert(v, "v", "eps", x_t, t, path), eps, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_functions_taking_target_v_agree_with_the_exact_score(path):
    """exact_prediction(.., "v") is the exact score once converted; the likelihood-weighted loss of the exact
    v-predictor equals that of the exact eps-predictor (same draw); DPM-Solver++ on the exact v-predictor
    follows the same path as on the exact x0-predictor; and so does eps_on_chain (VP only: a DDPM chain)."""
    gmm = dl.gmm2()
    x = gmm.sample(200, generator=torch.Generator().manual_seed(5))
    v_field, eps_field = dl.exact_prediction(gmm, path, "v"), dl.exact_prediction(gmm, path, "eps")
    score = dl.exact_score(gmm, path)
    for t in [0.1, 0.5, 0.9]:
        x_t, _ = path.sample(x, t, generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(dl.convert(v_field(x_t, t), "v", "score", x_t, t, path), score(x_t, t),
                                   rtol=1e-9, atol=1e-9)
    weighted = [loss(field, x, path, target, weighting="likelihood", generator=torch.Generator().manual_seed(7))
                for field, target in ((v_field, "v"), (eps_field, "eps"))]
    torch.testing.assert_close(weighted[0], weighted[1], rtol=1e-9, atol=0)
    grid = dl.time_grid(20, 0.9, 0.05)
    x_T = float(path.sigma(0.9)) * torch.randn(100, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    via_v = dl.sample(v_field, path, x_T, grid, method="dpm++2m", target="v").x
    via_x0 = dl.sample(dl.exact_denoiser(gmm, path), path, x_T, grid, method="dpm++2m", target="x0").x
    torch.testing.assert_close(via_v, via_x0, rtol=1e-9, atol=1e-9)


def test_log_likelihood_with_target_v_is_that_of_the_score():
    """log_likelihood(field, target="v") on the exact v-predictor = with target="score" on the exact score, on
    VE (same ODE; the adaptive solver's tolerance 1e-6 bounds the difference)."""
    gmm, path = dl.gmm2(), dl.VE()
    x = gmm.sample(4, generator=torch.Generator().manual_seed(9))
    kwargs = {"eps": 0.05, "rtol": 1e-6, "atol": 1e-6}
    via_v = dl.log_likelihood(dl.exact_prediction(gmm, path, "v"), path, x, target="v", **kwargs)
    via_score = dl.log_likelihood(dl.exact_score(gmm, path), path, x, target="score", **kwargs)
    torch.testing.assert_close(via_v, via_score, rtol=0, atol=1e-5)


def test_eps_on_chain_reads_a_v_model():
    path, schedule = dl.VP(), dl.DDPMSchedule.linear(1000)
    gmm = dl.gmm2()
    v_model, eps_model = dl.exact_prediction(gmm, path, "v"), dl.exact_prediction(gmm, path, "eps")
    chain_v, chain_eps = dl.eps_on_chain(v_model, schedule, path, target="v"), dl.eps_on_chain(eps_model, schedule)
    x = gmm.sample(50, generator=torch.Generator().manual_seed(10))
    for i in (10, 500, 990):
        torch.testing.assert_close(chain_v(x, i), chain_eps(x, i), rtol=1e-9, atol=1e-9)
