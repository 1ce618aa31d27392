"""Solvers against exact answers: closed-form Gaussian PF-ODE, kernels, data moments (Song et al. 2021; Wang & Vastola 2023).

References are written here in float64, from the formulas, never from the solvers' own output.
"""
import math
import sys

import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import solvers

F64 = dict(dtype=torch.float64)

# GAUSS2, written out here: mu, Sigma = U diag(lam) U^T with U a 30-degree rotation.
MU = torch.tensor([1.0, -1.0], **F64)
LAM = torch.tensor([4.0, 0.25], **F64)
_C, _S = math.cos(math.pi / 6), math.sin(math.pi / 6)
U = torch.tensor([[_C, -_S], [_S, _C]], **F64)


def gauss2_score(path):
    """score(x, t) = -C_t^{-1}(x - alpha_t mu), C_t = U diag(alpha_t^2 lam + sigma_t^2) U^T."""

    def score(x, t):
        a, s = float(path.alpha(t)), float(path.sigma(t))
        return -(((x - a * MU) @ U) / (a**2 * LAM + s**2)) @ U.T

    return score


def gauss2_pf_closed_form(x_T, T, t, path):
    """Wang & Vastola (2023): x_t = alpha_t mu + U diag(psi) U^T (x_T - alpha_T mu),
    psi = sqrt((sigma_t^2 + alpha_t^2 lam) / (sigma_T^2 + alpha_T^2 lam))."""
    aT, sT, a, s = (float(v) for v in (path.alpha(T), path.sigma(T), path.alpha(t), path.sigma(t)))
    psi = torch.sqrt((s**2 + a**2 * LAM) / (sT**2 + aT**2 * LAM))
    return a * MU + (((x_T - aT * MU) @ U) * psi) @ U.T


def _start(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


# -- ODE solvers -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, steps, window",
    [("euler", (50, 100, 200), (1.7, 2.3)), ("heun", (25, 50, 100), (3.3, 5.0)), ("rk4", (25, 50, 100), (12.0, 20.0))],
)
def test_convergence_order_on_gaussian_pf_ode(method, steps, window):
    """Error ratios under step doubling: 2 (Euler), 4 (Heun), 16 (RK4) on the exact Gaussian PF-ODE."""
    path = dl.VP()
    x_T = _start()
    T, t_end = 1.0, 1e-3
    exact = gauss2_pf_closed_form(x_T, T, t_end, path)
    velocity = solvers.pf_velocity(gauss2_score(path), path)
    errors = [
        float((solvers.sample_ode(velocity, x_T, solvers.time_grid(n, T, t_end), method=method) - exact).abs().max())
        for n in steps
    ]
    ratios = [e0 / e1 for e0, e1 in zip(errors, errors[1:])]
    print(method, "errors", errors, "ratios", ratios)
    assert all(window[0] <= r <= window[1] for r in ratios), (method, errors, ratios)


def test_adaptive_matches_closed_form():
    """dopri5 with rtol = atol = 1e-9 reproduces the closed-form PF-ODE solution to 1e-6 at every grid time."""
    pytest.importorskip("torchdiffeq")
    path = dl.VP()
    x_T = _start(32)
    grid = torch.tensor([1.0, 0.5, 0.1, 1e-3], **F64)
    velocity = solvers.pf_velocity(gauss2_score(path), path)
    x, traj = solvers.sample_ode(velocity, x_T, grid, method="adaptive", rtol=1e-9, atol=1e-9, return_trajectory=True)
    assert traj.shape == (4, 32, 2)
    for t, x_t in zip(grid.tolist(), traj):
        err = float((x_t - gauss2_pf_closed_form(x_T, 1.0, t, path)).abs().max())
        assert err < 1e-6, (t, err)
    assert torch.equal(x, traj[-1])


def test_adaptive_without_torchdiffeq_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # makes `import torchdiffeq` raise ImportError
    with pytest.raises(ImportError, match="pip install torchdiffeq"):
        solvers.sample_ode(lambda x, t: -x, _start(4), [1.0, 0.5], method="adaptive")


def test_sde8_pf_drift_vanishes_for_standard_normal_data():
    """SDE-8: data N(0, I) under VP stays N(0, I), so f x - g^2/2 score = -beta/2 x + beta/2 x = 0.

    Check SDE-8 asks for a drift norm < 1e-14; the two terms that cancel have size beta |x| / 2 (up to ~30
    here), so rounding alone leaves a few ulps of that: the bound is 1e-14 per unit of beta |x| / 2.
    """
    path = dl.VP()
    g = dl.Gaussian(torch.zeros(2, **F64), torch.eye(2, **F64))
    x = _start(500)
    velocity = solvers.pf_velocity(dl.exact_score(g, path), path)
    per_point_t = torch.rand(500, generator=torch.Generator().manual_seed(1), **F64)
    for t in [*torch.linspace(1e-3, 1.0, 25, **F64).tolist(), per_point_t]:
        cancelling = 0.5 * path.beta(t).reshape(-1) * x.norm(dim=1)
        assert bool((velocity(x, t).norm(dim=1) < 1e-14 * cancelling.clamp_min(1.0)).all()), t


def test_reverse_drift_family():
    """zeta = 0 is the PF-ODE velocity; sample_sde(zeta=0) is Euler on the PF-ODE, step for step."""
    path = dl.VP()
    score = gauss2_score(path)
    x = _start(16)
    drift0, velocity = solvers.reverse_drift(score, path, zeta=0.0), solvers.pf_velocity(score, path)
    assert torch.allclose(drift0(x, 0.4), velocity(x, 0.4), rtol=0, atol=1e-14)
    grid = solvers.time_grid(20)
    ode = solvers.sample_ode(solvers.pf_velocity(score, path), x, grid, method="euler")
    sde = solvers.sample_sde(score, path, x, grid, zeta=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ode, sde, rtol=0, atol=1e-12)


# -- stochastic samplers -----------------------------------------------------------------------------
def _sde3_errors(x, data):
    mean_err = float((x.mean(0) - data.mean()).abs().max())
    cov_err = float((torch.cov(x.T) - data.covariance()).abs().max())
    left_err = abs(float((x[:, 0] < 0).to(x.dtype).mean()) - 0.30)  # mass of GMM2 left of x_1 = 0
    return mean_err, cov_err, left_err


def _run_sde3(path, method, steps, seed=0, n=20_000):
    data = dl.gmm2()
    g = torch.Generator().manual_seed(seed)
    x_T = data.noised(path, 1.0).sample(n, generator=g)  # exact p_1, so only the sampler is being tested
    score = dl.exact_score(data, path)
    grid = solvers.time_grid(steps)
    if method == "pf-euler":
        x = solvers.sample_ode(solvers.pf_velocity(score, path), x_T, grid, method="euler")
    else:
        x = solvers.sample_sde(score, path, x_T, grid, method=method, generator=g)
    return _sde3_errors(x, data)


@pytest.mark.parametrize("path, method", [(dl.VP(), "em"), (dl.VE(), "pc")], ids=["vp-em", "ve-pc"])
def test_sde3_samplers_reproduce_gmm2_fast(path, method):
    """SDE-3 (fast: 200 steps instead of 1000, two of the pairs): mean err < 0.05, cov err < 0.12,
    left-mass err < 0.015."""
    mean_err, cov_err, left_err = _run_sde3(path, method, steps=200)
    print(path.name, method, mean_err, cov_err, left_err)
    assert mean_err < 0.05 and cov_err < 0.12 and left_err < 0.015, (mean_err, cov_err, left_err)


@pytest.mark.slow
@pytest.mark.parametrize("path", [dl.VP(), dl.VE()], ids=lambda p: p.name)
@pytest.mark.parametrize("method", ["em", "pc", "pf-euler"])
def test_sde3_samplers_reproduce_gmm2(path, method):
    """Check SDE-3: 20 000 samples, N = 1000, exact score."""
    mean_err, cov_err, left_err = _run_sde3(path, method, steps=1000)
    print(path.name, method, mean_err, cov_err, left_err)
    assert mean_err < 0.05 and cov_err < 0.12 and left_err < 0.015, (mean_err, cov_err, left_err)


def test_langevin_stationary_variance():
    """Unadjusted Langevin on N(0, 1) with step eps: x' = (1 - eps) x + sqrt(2 eps) z has variance 2 / (2 - eps)."""
    eps = 0.1
    x = 2 * torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), **F64)
    x = solvers.langevin(lambda x, t: -x, x, 0.5, steps=200, step_size=eps, generator=torch.Generator().manual_seed(1))
    assert abs(float(x.var()) / (2 / (2 - eps)) - 1) < 0.03
    assert abs(float(x.mean())) < 0.03


def test_langevin_snr_rule_step_size():
    """Song's rule eps = 2 alpha (r ||z|| / ||s||)^2: with score = -x / 4 and x = 2 z_0 the move is predictable."""
    x = torch.full((8, 3), 1.0, **F64)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), **F64)
    out = solvers.langevin(lambda x, t: -x / 4, x, 0.5, steps=1, snr=0.2, alpha=0.9, generator=g)
    s = -x / 4
    eps = 2 * 0.9 * (0.2 * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
    assert torch.allclose(out, x + eps * s + torch.sqrt(2 * eps) * z, rtol=0, atol=1e-14)


def test_denoise_last_step_adds_no_noise():
    """One EM step with denoise=True is the deterministic mean x + h [f x - g^2 s]."""
    path = dl.VP()
    x = _start(8)
    score = lambda x, t: -x  # noqa: E731
    out = solvers.sample_sde(score, path, x, [0.5, 0.4], generator=torch.Generator().manual_seed(0))
    beta = 0.1 + 0.5 * (20.0 - 0.1)
    expected = x + (0.4 - 0.5) * (-0.5 * beta * x + beta * x)
    assert torch.allclose(out, expected, rtol=0, atol=1e-13)
    noisy = solvers.sample_sde(score, path, x, [0.5, 0.4], denoise=False, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy, expected)


@pytest.mark.parametrize("path, t", [(dl.VP(), 0.3), (dl.SubVP(), 0.3)], ids=["vp", "subvp"])
def test_sde1_forward_em_matches_kernel_fast(path, t):
    """SDE-1 (fast: 100 000 paths, 300 steps): x0 = 2, EM of dx = f x dt + g dw vs N(2 alpha_t, sigma_t^2)."""
    _check_sde1(path, t, n_paths=100_000, n_steps=300)


@pytest.mark.slow
@pytest.mark.parametrize("path, t", [(dl.VP(), 0.3), (dl.SubVP(), 0.3), (dl.VE(), 0.5)], ids=["vp", "subvp", "ve"])
def test_sde1_forward_em_matches_kernel(path, t):
    """Check SDE-1: 200 000 paths, 3000 steps."""
    _check_sde1(path, t, n_paths=200_000, n_steps=3000)


def _check_sde1(path, t, n_paths, n_steps):
    x0 = torch.full((n_paths, 1), 2.0, **F64)
    x = solvers.simulate_forward_sde(path, x0, torch.linspace(0.0, t, n_steps + 1, **F64),
                                     generator=torch.Generator().manual_seed(0))
    mean, var = 2.0 * float(path.alpha(t)), float(path.sigma(t)) ** 2
    print(path.name, float(x.mean()), mean, float(x.var()), var)
    assert abs(float(x.mean()) - mean) < 0.01
    assert abs(float(x.var()) / var - 1) < 0.02


# -- interface: shapes, errors, dtypes, devices --------------------------------------------------------
@pytest.mark.parametrize("method", solvers.ODE_METHODS)
def test_ode_trajectory_shape(method):
    if method == "adaptive":
        pytest.importorskip("torchdiffeq")
    x_T = torch.randn(5, 1, 4, 4, **F64)  # image-shaped batch
    x, traj = solvers.sample_ode(lambda x, t: -x, x_T, solvers.time_grid(6), method=method, return_trajectory=True)
    assert traj.shape == (7, 5, 1, 4, 4) and x.shape == x_T.shape
    assert torch.equal(traj[0], x_T) and torch.equal(traj[-1], x)


@pytest.mark.parametrize("method", solvers.SDE_METHODS)
def test_sde_trajectory_shape(method):
    x_T = torch.randn(5, 1, 4, 4, **F64)
    g = torch.Generator().manual_seed(0)
    x, traj = solvers.sample_sde(lambda x, t: -x, dl.VP(), x_T, [1.0, 0.5, 0.1], method=method, generator=g,
                                 return_trajectory=True)
    assert traj.shape == (3, 5, 1, 4, 4) and torch.equal(traj[-1], x)
    _, fwd = solvers.simulate_forward_sde(dl.VP(), x_T, [0.0, 0.1, 0.2, 0.3], generator=g, return_trajectory=True)
    assert fwd.shape == (4, 5, 1, 4, 4)


def test_unknown_methods_name_the_valid_ones():
    with pytest.raises(ValueError, match="'midpoint'.*euler, heun, rk4, adaptive"):
        solvers.sample_ode(lambda x, t: x, _start(2), [1.0, 0.0], method="midpoint")
    with pytest.raises(ValueError, match="'ddim'.*em, pc"):
        solvers.sample_sde(lambda x, t: x, dl.VP(), _start(2), [1.0, 0.0], method="ddim")
    with pytest.raises(ValueError, match="'cosine'.*uniform"):
        solvers.time_grid(10, kind="cosine")


def test_bad_grids_are_explained():
    with pytest.raises(ValueError, match="strictly decreasing"):
        solvers.sample_ode(lambda x, t: x, _start(2), [1.0, 0.5, 0.7])
    with pytest.raises(ValueError, match="at least 2 times"):
        solvers.sample_ode(lambda x, t: x, _start(2), [1.0])
    with pytest.raises(ValueError, match="must increase"):
        solvers.simulate_forward_sde(dl.VP(), _start(2), [0.5, 0.1])
    with pytest.raises(ValueError, match="needs the path"):
        solvers.time_grid(10, kind="log_snr")


def test_float32_follows_float64():
    """float32 in, float32 out, close to the float64 answer (exact GMM2 score, VP)."""
    path = dl.VP()
    data64, data32 = dl.gmm2(), dl.gmm2(dtype=torch.float32)
    x64 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), **F64)
    grid = solvers.time_grid(50)
    for method in ("heun", "rk4"):
        out64 = solvers.sample_ode(solvers.pf_velocity(dl.exact_score(data64, path), path), x64, grid, method=method)
        out32 = solvers.sample_ode(solvers.pf_velocity(dl.exact_score(data32, path), path), x64.float(),
                                   grid.float(), method=method)
        assert out32.dtype == torch.float32
        assert float((out32.double() - out64).abs().max()) < 1e-3, method
    out = solvers.sample_sde(dl.exact_score(data32, path), path, x64.float(), grid, method="pc",
                             generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    path, dev = dl.VP(), torch.device("cuda")
    data = dl.gmm2(dtype=torch.float32, device=dev)
    score = dl.exact_score(data, path)
    x_T = torch.randn(512, 2, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    grid = solvers.time_grid(20)
    for method in solvers.ODE_METHODS:
        out = solvers.sample_ode(solvers.pf_velocity(score, path), x_T, grid, method=method)
        assert out.device.type == "cuda" and out.dtype == torch.float32
    for method in solvers.SDE_METHODS:
        out = solvers.sample_sde(score, path, x_T, grid, method=method, generator=g)
        assert out.device.type == "cuda" and bool(torch.isfinite(out).all())
    fwd = solvers.simulate_forward_sde(path, x_T, solvers.time_grid(10, 0.0, 0.5), generator=g)
    assert fwd.device.type == "cuda"
