"""Non-Gaussian forward processes against independent float64 references: the IR-SDE's schedule and marginals
(check BG-1a), SGMSE's OUVE variance and prior mismatch (BG-2), geometric Brownian motion (DL-1, DL-2).

References are written here from the formulas (numpy, scipy's DOP853), never from the package's output.
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.stats import norm

import diffusion_lessons as dl
from diffusion_lessons.processes import (
    GBM,
    OUVE,
    LogGBMPath,
    MeanReverting,
    OUVEPath,
    irsde_thetas,
    shifted,
)

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

LAM = 50 / 255


def cosine_thetas(T, s=0.008):
    """The IR-SDE's cosine rates, written out: theta_i = 1 - abar_{i+1}/abar_0 on T + 3 points."""
    n = T + 2
    abar = np.cos(((np.arange(n + 1) / n) + s) / (1 + s) * np.pi / 2) ** 2
    return 1 - abar[1:-1] / abar[0]


def irsde_alpha_sigma(T=100, eps=0.005, lam=LAM):
    """alpha_i = exp(-dt sum_{j=1..i} theta_j), dt = -log(eps) / sum_{j=1..T} theta_j,
    sigma_i = lam sqrt(1 - alpha_i^2)."""
    th = cosine_thetas(T)
    cum = np.concatenate([[0.0], np.cumsum(th[1:])])
    dt = -np.log(eps) / cum[-1]
    alpha = np.exp(-dt * cum)
    return th, dt, alpha, lam * np.sqrt(1 - alpha**2)


# -- BG-1a: the IR-SDE schedule and its terminal law ------------------------------------------------------
def test_irsde_schedule_terminal_law():
    """Check BG-1a: cosine theta, T = 100, eps = 0.005: alpha_1 = eps exactly, sigma_1 = lam sqrt(1 - eps^2),
    the time unit dt and alpha at every step as in the authors' IRSDE (to 1e-12)."""
    th, dt, alpha, sigma = irsde_alpha_sigma()
    path = MeanReverting(LAM, 100, "cosine", 0.005).path
    assert np.abs(irsde_thetas(100, "cosine").numpy() - th).max() < 1e-15
    assert abs(path.dt - dt) < 1e-12, (path.dt, dt)
    steps = torch.arange(101) / 100
    assert np.abs(path.alpha(steps).numpy() - alpha).max() < 1e-12
    assert np.abs(path.sigma(steps).numpy() - sigma).max() < 1e-12
    print(f"BG-1a: alpha_1 = {float(path.alpha(1.0)):.12f}, sigma_1 = {float(path.sigma(1.0)):.8f}, "
          f"dt = {path.dt:.6f}; "
          f"the MRS code's alpha array starts at exp(-theta_0 dt) = {math.exp(-th[0] * dt):.8f}")
    assert abs(float(path.alpha(1.0)) - 0.005) < 1e-12
    assert abs(float(path.sigma(1.0)) - LAM * math.sqrt(1 - 0.005**2)) < 1e-12


def test_mean_reverting_marginal_solves_its_sde():
    """The path's (alpha, sigma) solve the moment ODEs of dx = theta (mu - x) dt + sqrt(2 lam^2 theta) dw,
    d alpha/dt = -theta alpha, dP/dt = -2 theta P + 2 lam^2 theta, for the linear schedule (T = 20, eps = 0.01)
    with the rate written here: T dt theta_i on ((i-1)/T, i/T] (DOP853 knot to knot, 1e-9)."""
    T, eps = 20, 0.01
    th = np.linspace(1000 / (T + 1) * 1e-4, 1000 / (T + 1) * 0.02, T + 1)
    dt = -np.log(eps) / th[1:].sum()
    path = MeanReverting(LAM, T, "linear", eps).path
    knots = np.arange(T + 1) / T
    state, out = [1.0, 0.0], [[1.0, 0.0]]
    for i in range(1, T + 1):
        rate = T * dt * th[i]
        sol = solve_ivp(lambda t, v, r=rate: [-r * v[0], -2 * r * v[1] + 2 * LAM**2 * r], (knots[i - 1], knots[i]),
                        state, method="DOP853", rtol=1e-12, atol=1e-14)
        state = sol.y[:, -1].tolist()
        out.append(state)
    out = np.array(out)
    assert np.abs(path.alpha(torch.tensor(knots)).numpy() - out[:, 0]).max() < 1e-9
    assert np.abs(path.sigma(torch.tensor(knots)).numpy() ** 2 - out[:, 1]).max() < 1e-9
    # g^2 = 2 lam^2 theta agrees with the Path's g^2 = 2 sigma sigma' - 2 f sigma^2 between the knots
    t = torch.tensor([0.013, 0.52, 0.97])
    assert torch.allclose(path.g2(t), dl.Path.g2(path, t), rtol=1e-12)


def test_mean_reverting_sample_terminal_law_monte_carlo():
    """x_1 given x0 is N(mu + eps (x0 - mu), lam^2 (1 - eps^2)) (check BG-1a); 4e5 draws, within 5 standard errors."""
    process, n = MeanReverting(LAM, 100, "cosine", 0.005), 400_000
    mu, x0 = torch.tensor([[-0.2, 0.7]]), torch.tensor([[0.3, -0.4]])
    x1, _ = process.sample(x0.expand(n, 2), 1.0, mu, generator=torch.Generator().manual_seed(0))
    mean, var = (-0.2 + 0.005 * 0.5, 0.7 + 0.005 * -1.1), LAM**2 * (1 - 0.005**2)
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / n)
    assert np.abs(x1.mean(0).numpy() - mean).max() < 5 * se_mean
    assert np.abs(x1.var(0).numpy() - var).max() < 5 * se_var
    m, s = process.terminal_law(x0, mu)
    assert np.abs(m.numpy()[0] - mean).max() < 1e-15 and abs(float(s) - math.sqrt(var)) < 1e-15


def test_exact_score_of_a_mean_reverting_mixture_is_the_shifted_score():
    """grad_x log p_t(x) for x0 ~ GMM2 and a fixed mu: the mixture score of y = x - mu, by explicit inverses."""
    from reference import GMM2, gmm_logpdf_score, gmm_t

    process, mu, t = MeanReverting(LAM, 100), torch.tensor([0.5, -1.0]), 0.37
    score = process.exact_score(shifted(dl.gmm2(), -mu), mu)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    a, s = float(process.path.alpha(t)), float(process.path.sigma(t))
    pis, mus, covs = gmm_t(GMM2["pis"], GMM2["mus"] - mu.numpy(), GMM2["covs"], a, s)
    _, expected, _, _ = gmm_logpdf_score((x - mu).numpy(), pis, mus, covs)
    assert np.abs(score(x, t).numpy() - expected).max() < 1e-10


# -- BG-2: SGMSE's OUVE process --------------------------------------------------------------------------------
def ouve_std(t, theta=1.5, smin=0.05, smax=0.5):
    L = np.log(smax / smin)
    return np.sqrt(smin**2 * np.exp(-2 * theta * t) * (np.exp(2 * (theta + L) * t) - 1) * L / (theta + L))


def test_ouve_std_solves_the_riccati_equation():
    """Check BG-2a: sigma_t^2 solves dP/dt = -2 theta P + g(t)^2 from P(0) = 0 (DOP853, rtol 1e-13), and
    alpha_1 = exp(-theta); the std at 1 and at t_eps = 0.03 from the closed form (1e-10)."""
    theta, smin, smax = 1.5, 0.05, 0.5

    def g2(t):
        return (smin * (smax / smin) ** t) ** 2 * 2 * np.log(smax / smin)

    ts = np.array([0.03, 0.1, 0.5, 1.0])
    sol = solve_ivp(lambda t, p: -2 * theta * p + g2(t), (0.0, 1.0), [0.0], t_eval=ts, method="DOP853",
                    rtol=1e-13, atol=1e-16)
    path = OUVEPath(theta, smin, smax)
    got = path.sigma(torch.tensor(ts)).numpy()
    rel = np.abs(got**2 - sol.y[0]) / sol.y[0]
    print(f"BG-2a: std(1) = {got[-1]:.8f}, std(0.03) = {got[0]:.8f}, alpha_1 = {float(path.alpha(1.0)):.8f}; "
          f"max relative gap to the Riccati solve {rel.max():.1e} (tolerance 1e-10)")
    assert rel.max() < 1e-10
    assert np.abs(got - ouve_std(ts)).max() < 1e-12
    assert abs(float(path.alpha(1.0)) - math.exp(-theta)) < 1e-15
    assert torch.allclose(path.g2(torch.tensor(ts)), torch.tensor(g2(ts)), rtol=1e-12)
    assert torch.allclose(path.g2(torch.tensor(ts)), dl.Path.g2(path, torch.tensor(ts)), rtol=1e-10)


def pf_ode_moments(m0, v, t_end, theta=1.5):
    """Mean and variance in z = x - y at t_end of the exact PF-ODE for z0 ~ N(m0, v), started from N(0, std(1)^2)
    at t = 1: the ODE is linear, dz/dt = A(t) z + B(t), so dM/dt = A M + B, dV/dt = 2 A V (DOP853)."""
    smin, smax = 0.05, 0.5
    L = np.log(smax / smin)

    def coeffs(t):
        a, s = np.exp(-theta * t), ouve_std(t)
        g2 = (smin * (smax / smin) ** t) ** 2 * 2 * L
        c = a**2 * v + s**2  # variance of z_t; score = -(z - a m0) / c
        return -theta + g2 / (2 * c), -g2 * a * m0 / (2 * c)

    def rhs(t, mv):
        A, B = coeffs(t)
        return [A * mv[0] + B, 2 * A * mv[1]]

    sol = solve_ivp(rhs, (1.0, t_end), [0.0, ouve_std(1.0) ** 2], method="DOP853", rtol=1e-12, atol=1e-14)
    return sol.y[0, -1], sol.y[1, -1]


@pytest.mark.parametrize("t_end", [0.0, 0.03])
def test_prior_mismatch_through_the_pf_ode(t_end):
    """Check BG-2b: x0 | y ~ N(0.2, 0.05), y = 1, PF-ODE from SGMSE's prior y + std(1) z: the end law's mean and
    variance against a DOP853 solve of the moment ODEs (1e-9); it stays biased, the exact law is the data's."""
    process, y, m, v = OUVE(), 1.0, 0.2, 0.05
    law = process.prior_mismatch(dl.Gaussian(torch.tensor([m - y]), torch.tensor([[v]])), t_end)
    mean_ref, var_ref = pf_ode_moments(m - y, v, t_end)
    mean, var = float(law.mean_vector[0]) + y, float(law.cov[0, 0])
    a, s = math.exp(-1.5 * t_end), float(ouve_std(t_end))
    exact_mean, exact_var = y + a * (m - y), a**2 * v + s**2
    print(f"BG-2b t = {t_end}: PF-ODE from the prior: mean {mean:.6f}, var {var:.6f}; exact {exact_mean:.6f}, "
          f"{exact_var:.6f}")
    assert abs(mean - (mean_ref + y)) < 1e-9 and abs(var - var_ref) < 1e-9
    assert abs(mean - exact_mean) > 0.09  # the bias the prior mismatch leaves


def test_pc_sampler_forgets_most_of_the_mismatch():
    """Check BG-2c: SGMSE's PC sampler (30 steps, ALD snr 0.5, t_eps 0.03) with the exact score, from the same
    prior, 2e5 samples: its mean is within 0.02 of the data's 0.2 (5 s.e. stated) and far closer than the PF-ODE's."""
    process, n, y, m, v = OUVE(), 200_000, 1.0, 0.2, 0.05

    def score(x, t):  # exact score of p_t(x | y), x - y ~ N(alpha (m - y), alpha^2 v + std^2)
        a, s = math.exp(-1.5 * t), float(ouve_std(t))
        return -(x - y - a * (m - y)) / (a**2 * v + s**2)

    ys = torch.full((n, 1), y)
    out = dl.sgmse_pc(score, process, ys, generator=torch.Generator().manual_seed(0))
    mean, var = out.x.mean().item(), out.x.var().item()
    se = math.sqrt(var / n)
    ode_bias = abs(pf_ode_moments(m - y, v, 0.0)[0] + y - m)
    print(f"BG-2c: PC mean {mean:.4f} (s.e. {se:.1e}), var {var:.5f}; PF-ODE bias {ode_bias:.4f}; nfe {out.nfe}")
    assert out.nfe == 60
    assert abs(mean - m) + 5 * se < 0.02 and abs(mean - m) < 0.2 * ode_bias
    assert abs(var - v) < 0.005


# -- Dale meets Langevin: GBM, its Lamperti transform -----------------------------------------------------------
def test_gbm_moments_monte_carlo():
    """Check DL-1: x0 = 1.3, m = 0.1, s = 0.5, t = 1: E X = x0 e^{m}, Var X = x0^2 e^{2m} (e^{s^2} - 1), for 2e5
    Euler–Maruyama paths of 1000 steps and for exact (log-normal) draws, each within 5 standard errors."""
    x0, m, s, n = 1.3, 0.1, 0.5, 200_000
    mean_ref, var_ref = x0 * math.exp(m), x0**2 * math.exp(2 * m) * (math.exp(s**2) - 1)
    process = GBM(sigma=s, mu=m)
    mean, var = process.moments(torch.tensor(x0), 1.0)
    assert abs(float(mean) - mean_ref) < 1e-12 and abs(float(var) - var_ref) < 1e-12
    start = torch.full((n, 1), x0)
    em = process.simulate(start, torch.linspace(0, 1, 1001), generator=torch.Generator().manual_seed(0))
    exact, _ = process.sample(start, 1.0, generator=torch.Generator().manual_seed(1))
    kurt = math.exp(4 * s**2) + 2 * math.exp(3 * s**2) + 3 * math.exp(2 * s**2) - 3  # of the log-normal factor
    se_mean, se_var = math.sqrt(var_ref / n), var_ref * math.sqrt((kurt - 1) / n)
    for name, xs in (("Euler-Maruyama", em), ("exact", exact)):
        print(f"DL-1 {name}: mean {xs.mean():.5f} vs {mean_ref:.5f} (se {se_mean:.1e}), var {xs.var():.4f} vs "
              f"{var_ref:.4f} (se {se_var:.1e})")
        assert abs(xs.mean().item() - mean_ref) < 5 * se_mean and abs(xs.var().item() - var_ref) < 5 * se_var


def test_lamperti_identity():
    """Check DL-2: grad_y log q_Y(y) = h(x) + 1, h = x grad_x log p_X, at x = (0.5, 1, 2): the package's Stein
    score (through its log-space path) against autograd of the log-normal density written here (1e-12)."""
    process, t = GBM(sigma=0.8, mu=0.5), 0.4
    log_mean, log_var = torch.tensor([0.1, -0.3, 0.2]), torch.tensor([0.2, 0.05, 0.1])
    law = dl.Gaussian(log_mean, torch.diag(log_var))
    x = torch.tensor([[0.5, 1.0, 2.0]], requires_grad=True)
    m_t = log_mean + (0.5 - 0.32) * t  # log X_t ~ N(log_mean + (m - s^2/2) t, log_var + s^2 t)
    v_t = log_var + 0.64 * t
    log_p = (-0.5 * (torch.log(x) - m_t) ** 2 / v_t - 0.5 * torch.log(2 * math.pi * v_t) - torch.log(x)).sum()
    (stein,) = torch.autograd.grad(log_p, x)
    hyvarinen = (x * stein).detach()
    grad_y = -(torch.log(x.detach()) - m_t) / v_t
    assert (hyvarinen + 1 - grad_y).abs().max() < 1e-12
    assert (process.exact_score(law)(x.detach(), t) - stein).abs().max() < 1e-12
    assert isinstance(process.path, LogGBMPath) and abs(float(process.path.sigma(t)) - 0.8 * math.sqrt(t)) < 1e-15


def test_additive_euler_crosses_zero_log_space_never():
    """Check DL-3: one Euler–Maruyama step of dX = s X dW (s = 2, dt = 0.1) is X (1 + s sqrt(dt) Z), negative with
    probability Phi(-1 / (s sqrt(dt))) = 0.057; the Dale–Langevin (log-space) step never leaves (0, inf)."""
    n, s, dt = 400_000, 2.0, 0.1
    x = GBM(sigma=s, mu=0.0).simulate(torch.ones(n, 1), [0.0, dt], generator=torch.Generator().manual_seed(0))
    p = norm.cdf(-1 / (s * math.sqrt(dt)))
    frac = (x < 0).double().mean().item()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n), (frac, p)
    out = dl.dale_langevin(lambda x, t: torch.zeros_like(x), GBM(sigma=s, mu=2.0), torch.ones(n, 1), n_steps=10,
                           delta=dt, generator=torch.Generator().manual_seed(1))
    assert out.sign_changes == 0 and bool((out.x > 0).all())


def test_processes_refuse_bad_input():
    with pytest.raises(ValueError, match="eps"):
        MeanReverting(eps=1.5)
    with pytest.raises(ValueError, match="schedule"):
        MeanReverting(schedule="cos")
    with pytest.raises(ValueError, match="cond"):
        MeanReverting().sample(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match="positive"):
        GBM().to_path(torch.tensor([[1.0, -1.0]]), 0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        OUVE(sigma_min=1.0, sigma_max=0.5)
