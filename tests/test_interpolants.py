"""Stochastic interpolants (Albergo et al. 2023; checks SI-1…SI-5) and their conversions (PR-1 style), in float64.

References are written here in numpy, independently of the package: the law of x_t and E[dx_t/dt | x_t]
come from conditioning the joint Gaussian of (x_t, dx_t/dt) = (A w, B w), w = (x0, x1, z), with the
coefficients (alpha, beta, gamma and their derivatives) typed in by hand. Package time: t = 0 data,
t = 1 base; Albergo et al.'s time is 1 - t.
"""
import math

import numpy as np
import pytest
import torch
from scipy.linalg import block_diag
from scipy.stats import multivariate_normal

import diffusion_lessons as dl
from diffusion_lessons import solvers
from diffusion_lessons.interpolants import (
    Interpolant,
    LatentNoisePath,
    flip_time,
    gaussian_interpolant_law,
    gaussian_interpolant_score,
    gaussian_interpolant_velocity,
    linear_interpolant,
    quadratic_objective,
    sample_sde_family,
    sde_family_drift,
    trigonometric_interpolant,
)
from reference import GMM2, gmm_logpdf_score, gmm_posterior_mean, gmm_t



pytestmark = pytest.mark.usefixtures("float64_default")  # see conftest.py


M, S = np.array([3.0, -1.0]), np.array([[0.5, 0.3], [0.3, 0.4]])  # SI-1's target, our data at t = 0
KINDS = {"linear": linear_interpolant, "trig": trigonometric_interpolant}


# -- independent numpy references ------------------------------------------------------------------
def coefficients(kind, a, t):
    """alpha, beta, gamma, alpha', beta', gamma' by hand (package time: alpha multiplies the data)."""
    if kind == "linear":
        al, be, dal, dbe = 1 - t, t, -1.0, 1.0
    else:
        al, be = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
        dal, dbe = -math.pi / 2 * be, math.pi / 2 * al
    ga = math.sqrt(a * t * (1 - t))
    dga = a * (1 - 2 * t) / (2 * ga) if a > 0 else 0.0
    return al, be, ga, dal, dbe, dga


def joint_gaussian(x, m0, S0, m1, S1, c):
    """(E[dx_t/dt | x_t = x], grad log p(x_t), mean, cov) of x_t.

    x0 ~ N(m0, S0), x1 ~ N(m1, S1) and z ~ N(0, I) independent; c = coefficients(...)."""
    al, be, ga, dal, dbe, dga = c
    eye = np.eye(len(m0))
    A, B = np.hstack([al * eye, be * eye, ga * eye]), np.hstack([dal * eye, dbe * eye, dga * eye])
    mw, Sw = np.concatenate([m0, m1, 0 * m0]), block_diag(S0, S1, eye)
    mx, Sx, mv, Cvx = A @ mw, A @ Sw @ A.T, B @ mw, B @ Sw @ A.T
    P = np.linalg.inv(Sx)
    return mv + (x - mx) @ (Cvx @ P).T, -(x - mx) @ P, mx, Sx


def gmm_interpolant_velocity(x, c):
    """E[dx_t/dt | x_t] for GMM2 data and a N(0, I) base: Gaussian conditioning per component, mixed by
    the responsibilities."""
    parts = [joint_gaussian(x, GMM2["mus"][k], GMM2["covs"][k], np.zeros(2), np.eye(2), c) for k in range(2)]
    logw = np.stack([np.log(GMM2["pis"][k]) + multivariate_normal(p[2], p[3]).logpdf(x)
                     for k, p in enumerate(parts)], 1)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return sum(w[:, k : k + 1] * parts[k][0] for k in range(2))


def _gauss(m, C):
    return dl.Gaussian(torch.tensor(m), torch.tensor(C))


DATA, BASE = _gauss(M, S), _gauss(np.zeros(2), np.eye(2))


def _points(n=40, seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(size=(n, 2)) * scale + np.array([1.0, -0.5])


# -- definitions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("a", [0.0, 2.0])
def test_endpoints_and_velocity_target(kind, a):
    """x_0 = data point, x_1 = base point, and d x_t/dt (same z) equals velocity_target, by central differences."""
    interp, g = KINDS[kind](a), torch.Generator().manual_seed(0)
    x0, x1, z = (torch.randn(30, 2, generator=g) for _ in range(3))
    assert torch.allclose(interp.sample(x0, x1, 0.0, z)[0], x0, atol=1e-15)
    assert torch.allclose(interp.sample(x0, x1, 1.0, z)[0], x1, atol=1e-15)
    h = 1e-6
    for t in (0.1, 0.37, 0.8):
        fd = (interp.sample(x0, x1, t + h, z)[0] - interp.sample(x0, x1, t - h, z)[0]) / (2 * h)
        assert (fd - interp.velocity_target(x0, x1, z, t)).abs().max() < 1e-7
    if a == 0:  # without latent noise the interpolant with a N(0, I) base *is* its path
        assert torch.allclose(interp.sample(x0, x1, 0.3, z)[0], interp.path.sample(x0, 0.3, eps=x1)[0], atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("a", [0.0, 2.0])
def test_gaussian_oracle_matches_joint_gaussian_conditioning(kind, a):
    """The Gaussian-endpoint closed forms (b, s, law of x_t) vs the numpy reference, also two-sided (a non-standard
    base) and with one time per point."""
    interp = KINDS[kind](a)
    base = _gauss(np.array([-1.0, 0.5]), np.array([[1.5, -0.2], [-0.2, 0.7]]))  # two-sided: both ends non-standard
    x = _points()
    b, s = gaussian_interpolant_velocity(interp, DATA, base), gaussian_interpolant_score(interp, DATA, base)
    for t in (0.05, 0.3, 0.6, 0.95):
        v_ref, s_ref, m_ref, C_ref = joint_gaussian(x, M, S, base.mean_vector.numpy(), base.cov.numpy(),
                                                    coefficients(kind, a, t))
        assert np.abs(b(torch.tensor(x), t).numpy() - v_ref).max() < 1e-10
        assert np.abs(s(torch.tensor(x), t).numpy() - s_ref).max() < 1e-10
        law = gaussian_interpolant_law(interp, DATA, base, t)
        assert np.abs(law.mean_vector.numpy() - m_ref).max() < 1e-12 and np.abs(law.cov.numpy() - C_ref).max() < 1e-12
    ts = np.linspace(0.02, 0.98, len(x))  # one time per point
    v_ref = np.stack([joint_gaussian(x[i : i + 1], M, S, base.mean_vector.numpy(), base.cov.numpy(),
                                     coefficients(kind, a, t))[0][0] for i, t in enumerate(ts)])
    assert np.abs(b(torch.tensor(x), torch.tensor(ts)).numpy() - v_ref).max() < 1e-10


# -- PR-1 style: interpolants are paths, and the four targets convert ------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("a", [0.0, 2.0])
def test_pr1_interpolant_velocity_is_the_gaussian_paths_velocity(kind, a):
    """GMM2 data, N(0, I) base: b from per-component conditioning == exact velocity of interp.gaussian_path();
    converting it with dl.convert gives the exact score of the law of x_t (sigma^2 = beta^2 + gamma^2)."""
    interp = KINDS[kind](a)
    path = interp.gaussian_path()
    assert isinstance(path, LatentNoisePath if a else (dl.RectifiedFlow if kind == "linear" else dl.Cosine))
    x = _points(50, seed=1)
    xt = torch.tensor(x)
    for t in (0.1, 0.4, 0.75):
        c = coefficients(kind, a, t)
        v_ref = gmm_interpolant_velocity(x, c)
        v = dl.exact_prediction(dl.gmm2(), path, "velocity")(xt, t)
        assert np.abs(v.numpy() - v_ref).max() < 1e-10
        sig = math.sqrt(c[1] ** 2 + c[2] ** 2)
        _, s_ref, _, _ = gmm_logpdf_score(x, *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], c[0], sig))
        x0_ref = gmm_posterior_mean(x, GMM2["pis"], GMM2["mus"], GMM2["covs"], c[0], sig)
        for dst, ref in (("score", s_ref), ("x0", x0_ref)):
            assert np.abs(dl.convert(v, "velocity", dst, xt, t, path).numpy() - ref).max() < 1e-10, dst


@pytest.mark.parametrize("kind", KINDS)
def test_si4_one_sided_interpolant_is_the_pf_ode(kind):
    """SI-4 in Albergo's time tau (x_tau = al z + be x1, data x1 ~ GMM2): b = (be'/be) x + al (al be'/be - al') s
    equals be' E[x1|x] + al' E[z|x] (< 1e-10); flipped to our time (t = 1 - tau, velocity sign), it is the
    package's exact velocity and pf_velocity(exact_score)."""
    x = _points(50, seed=2)
    for tau in (0.35, 0.7):
        # Albergo's coefficients at tau are ours at t = 1 - tau with the roles of alpha and beta kept:
        # al (on the noise) = our beta(1 - tau), be (on the data) = our alpha(1 - tau); d/dtau = -d/dt.
        al_d, be_n, _, dal_d, dbe_n, _ = coefficients(kind, 0.0, 1 - tau)
        be, al, dbe, dal = al_d, be_n, -dal_d, -dbe_n
        _, s, _, _ = gmm_logpdf_score(x, *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], be, al))
        b_formula = dbe / be * x + al * (al * dbe / be - dal) * s
        x1_hat = gmm_posterior_mean(x, GMM2["pis"], GMM2["mus"], GMM2["covs"], be, al)
        b_posterior = dbe * x1_hat + dal * (x - be * x1_hat) / al
        assert np.abs(b_formula - b_posterior).max() < 1e-10
        path = KINDS[kind]().gaussian_path()
        ours = flip_time(lambda y, t: dl.exact_prediction(dl.gmm2(), path, "velocity")(y, t))
        assert np.abs(ours(torch.tensor(x), tau).numpy() - b_posterior).max() < 1e-10
        pf = solvers.pf_velocity(dl.exact_score(dl.gmm2(), path), path)(torch.tensor(x), 1 - tau)
        assert np.abs(-pf.numpy() - b_posterior).max() < 1e-10


def test_flip_time_reads_lipman_flow_matching():
    """Lipman's FM (data at tau = 1): x_tau = tau x1 + (1 - tau) z, u = E[x1 - z | x_tau]. flip_time(u) is our
    rectified-flow velocity E[eps - x0 | x_t] at t = 1 - tau; scores are not negated."""
    x = _points(30, seed=3)
    tau = 0.6
    x1_hat = gmm_posterior_mean(x, GMM2["pis"], GMM2["mus"], GMM2["covs"], tau, 1 - tau)
    u_lipman = lambda y, s: torch.tensor(x1_hat - (x - tau * x1_hat) / (1 - tau))  # noqa: E731 (only at (x, tau))
    ours = dl.exact_prediction(dl.gmm2(), dl.RectifiedFlow(), "velocity")(torch.tensor(x), 1 - tau)
    assert torch.allclose(flip_time(u_lipman)(torch.tensor(x), 1 - tau), ours, atol=1e-10)
    score = dl.exact_score(dl.gmm2(), dl.RectifiedFlow())
    assert torch.allclose(flip_time(score, velocity=False)(torch.tensor(x), 0.3), score(torch.tensor(x), 0.7))


@pytest.mark.parametrize("path", [dl.VP(), dl.RectifiedFlow(), dl.Cosine()], ids=lambda p: p.name)
def test_epsilon_family_is_the_zeta_family(path):
    """Reverse-SDE family vs interpolant SDEs: with epsilon(t) = zeta^2 g^2(t) / 2 the backward drift b - epsilon s is
    solvers.reverse_drift(score, path, zeta), b = f x - g^2 s / 2 (computed here from f, g^2)."""
    score = dl.exact_score(dl.gmm2(), path)
    b = lambda x, t: path.f(t) * x - 0.5 * path.g2(t) * score(x, t)  # noqa: E731
    x = torch.tensor(_points(20, seed=4))
    for zeta in (0.0, 0.5, 1.0):
        drift = sde_family_drift(b, score, lambda t: 0.5 * zeta**2 * float(path.g2(t)))
        for t in (0.2, 0.6):
            assert torch.allclose(drift(x, t), solvers.reverse_drift(score, path, zeta)(x, t), atol=1e-12)


def test_epsilon_zero_is_euler_on_the_ode():
    b = gaussian_interpolant_velocity(linear_interpolant(2.0), DATA, BASE)
    s = gaussian_interpolant_score(linear_interpolant(2.0), DATA, BASE)
    x1 = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    grid = solvers.time_grid(20, 1.0, 0.0)
    assert torch.equal(sample_sde_family(b, s, x1, grid, epsilon=0.0), solvers.sample_ode(b, x1, grid, method="euler"))


# -- SI-1: the ODE and the SDEs of the family reach the data ---------------------------------------
@pytest.mark.parametrize("kind,a", [("linear", 0.0), ("linear", 2.0), ("trig", 2.0)])
def test_si1_ode_and_sdes_reach_the_data(kind, a):
    """Start at the base N(0, I) (t = 1), integrate to t = 0: mean and covariance of N(m, S) within 0.02
    (ODE: Heun, 100 steps; SDEs epsilon = 0.5, 1: Euler-Maruyama, 500 steps; 20 000 samples, so the Monte-Carlo
    standard error of a covariance entry is <= 0.005 and the Euler-Maruyama bias O(1/500))."""
    interp = KINDS[kind](a)
    b, s = gaussian_interpolant_velocity(interp, DATA, BASE), gaussian_interpolant_score(interp, DATA, BASE)
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(20_000, 2, generator=g)
    runs = {0.0: solvers.sample_ode(b, x1, solvers.time_grid(100, 1.0, 0.0))}
    for eps in (0.5, 1.0):
        runs[eps] = sample_sde_family(b, s, x1, solvers.time_grid(500, 1.0, 0.0), epsilon=eps, generator=g)
    for eps, x in runs.items():
        mean_err = (x.mean(0) - torch.tensor(M)).abs().max().item()
        cov_err = (torch.cov(x.T) - torch.tensor(S)).abs().max().item()
        assert mean_err < 0.02 and cov_err < 0.02, (eps, mean_err, cov_err)


# -- SI-2, SI-3: the quadratic objectives and the denoiser identity --------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_si2_quadratic_objectives_are_minimised_by_b_and_s(kind):
    """SI-2 at t = 0.4, 4e5 samples, common random numbers: L_b(b + 0.1) - L_b(b) = |delta|^2 / 2 = 0.01 and
    L_s(1.1 s) - L_s(s) = 0.01 E|s|^2 / 2, within 15 %."""
    interp, t, n = KINDS[kind](2.0), 0.4, 400_000
    b, s = gaussian_interpolant_velocity(interp, DATA, BASE), gaussian_interpolant_score(interp, DATA, BASE)

    def objective(field, which):
        g = torch.Generator().manual_seed(7)  # the same (x0, x1, z) for every field
        x0, x1 = DATA.sample(n, generator=g), torch.randn(n, 2, generator=g)
        return quadratic_objective(field, interp, x0, x1, t, which, generator=g).item()

    gain_b = objective(lambda x, t: b(x, t) + 0.1, "velocity") - objective(b, "velocity")
    assert abs(gain_b / 0.01 - 1) < 0.15, gain_b
    law = gaussian_interpolant_law(interp, DATA, BASE, t)
    mean_sq_score = torch.trace(torch.linalg.inv(law.cov)).item()  # E|s|^2 = tr(Sigma_t^{-1})
    gain_s = objective(lambda x, t: 1.1 * s(x, t), "score") - objective(s, "score")
    assert abs(gain_s / (0.005 * mean_sq_score) - 1) < 0.15, (gain_s, mean_sq_score)
    eta = lambda x, t: -interp.gamma(t) * s(x, t)  # noqa: E731  (denoiser E[z | x_t])
    gain_eta = objective(lambda x, t: eta(x, t) - 0.1, "denoiser") - objective(eta, "denoiser")
    assert abs(gain_eta / 0.01 - 1) < 0.15, gain_eta


@pytest.mark.parametrize("kind", KINDS)
def test_si3_denoiser_identity(kind):
    """SI-3: E|z - eta_z|^2 = D - E|eta_z|^2 with eta_z = -gamma s; both Monte-Carlo means within 5 standard
    errors of the exact values D - gamma^2 tr(Sigma_t^{-1}) and gamma^2 tr(Sigma_t^{-1}) (t = 0.4, 2e5 samples)."""
    interp, t, n = KINDS[kind](2.0), 0.4, 200_000
    g = torch.Generator().manual_seed(3)
    x0, x1 = DATA.sample(n, generator=g), torch.randn(n, 2, generator=g)
    x_t, z = interp.sample(x0, x1, t, generator=g)
    eta = -interp.gamma(t) * gaussian_interpolant_score(interp, DATA, BASE)(x_t, t)
    _, _, _, C = joint_gaussian(np.zeros((1, 2)), M, S, np.zeros(2), np.eye(2), coefficients(kind, 2.0, t))
    exact_eta2 = coefficients(kind, 2.0, t)[2] ** 2 * np.trace(np.linalg.inv(C))
    for values, exact in (((z - eta).square().sum(1), 2 - exact_eta2), (eta.square().sum(1), exact_eta2)):
        se = values.std().item() / math.sqrt(n)
        assert abs(values.mean().item() - exact) < 5 * se, (values.mean().item(), exact, se)


# -- SI-5: transport and Fokker-Planck equations, 1-D, on a grid -----------------------------------
@pytest.mark.parametrize("kind,a", [("linear", 2.0), ("trig", 0.0), ("trig", 2.0)])
def test_si5_transport_and_fokker_planck_residuals(kind, a):
    """1-D Gaussian endpoints: d rho/dt + d(b rho)/dx = 0 and d rho/dt + d((b +- eps s) rho)/dx = +- eps rho''
    (central differences, rho written here in numpy); max residual / max |d rho/dt| < 1e-4."""
    interp, m0, v0, eps = KINDS[kind](a), 1.5, 0.3, 0.7
    data, base = dl.Gaussian(torch.tensor([m0]), torch.tensor([[v0]])), dl.Gaussian(torch.zeros(1), torch.eye(1))
    b, s = gaussian_interpolant_velocity(interp, data, base), gaussian_interpolant_score(interp, data, base)

    def rho(x, t):
        al, be, ga, *_ = coefficients(kind, a, t)
        var = al**2 * v0 + be**2 + ga**2
        return np.exp(-((x - al * m0) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)

    x, h, hx = np.linspace(-4, 5, 401), 1e-5, 1e-4
    for t in (0.2, 0.5, 0.8):
        drho_dt = (rho(x, t + h) - rho(x, t - h)) / (2 * h)
        lap = (rho(x + hx, t) - 2 * rho(x, t) + rho(x - hx, t)) / hx**2
        for drift, sign in ((b, 0.0), (sde_family_drift(b, s, eps, backward=False), 1.0),
                            (sde_family_drift(b, s, eps, backward=True), -1.0)):
            flux = lambda y: drift(torch.tensor(y)[:, None], t)[:, 0].numpy() * rho(y, t)  # noqa: E731
            residual = drho_dt + (flux(x + h) - flux(x - h)) / (2 * h) - sign * eps * lap
            assert np.abs(residual).max() / np.abs(drho_dt).max() < 1e-4, (t, sign)


# -- errors and dtypes -----------------------------------------------------------------------------
def test_errors_speak_to_the_reader():
    with pytest.raises(ValueError, match="alpha\\(0\\) = sigma\\(1\\) = 1"):
        Interpolant(dl.VP())
    with pytest.raises(ValueError, match="must be >= 0"):
        Interpolant("rf", a=-1.0)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="latent noise a > 0"):
        quadratic_objective(lambda y, t: y, linear_interpolant(), x, x, 0.5, "score")
    with pytest.raises(ValueError, match="unknown objective"):
        quadratic_objective(lambda y, t: y, linear_interpolant(), x, x, 0.5, "eps")
    with pytest.raises(ValueError, match="epsilon\\(t\\) must be >= 0"):
        sample_sde_family(lambda y, t: y, lambda y, t: y, x, solvers.time_grid(2), epsilon=-0.1)
    with pytest.raises(ValueError, match="same shape"):
        linear_interpolant().sample(x, torch.zeros(3, 2), 0.5)


def test_float32_and_config():
    interp = trigonometric_interpolant(1.0)
    data32 = dl.Gaussian(torch.tensor([1.0, 0.0], dtype=torch.float32), torch.eye(2, dtype=torch.float32))
    base32 = dl.Gaussian(torch.zeros(2, dtype=torch.float32), torch.eye(2, dtype=torch.float32))
    x = torch.randn(8, 2, dtype=torch.float32)
    assert gaussian_interpolant_velocity(interp, data32, base32)(x, 0.5).dtype == torch.float32
    assert interp.sample(x, x, torch.rand(8, dtype=torch.float32))[0].dtype == torch.float32
    assert interp.gaussian_path().config() == {"name": "latent_noise", "base": dl.Cosine().config(), "a": 1.0}
