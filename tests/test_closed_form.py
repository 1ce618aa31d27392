"""Closed-form Gaussian PF-ODE (Wang & Vastola 2023; checks WV-1…WV-8) against scipy solves written here in numpy.

The references below never call the package: schedules, scores and ODE right-hand sides are written
out in numpy from Song et al. 2021 (App. B), and integrated with solve_ivp(DOP853, rtol=1e-10, atol=1e-12).
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import diffusion_lessons as dl
from diffusion_lessons.closed_form import (
    commitment_time,
    fit_gaussian,
    flow_map_jacobian,
    gaussian_pf_endpoint,
    gaussian_pf_ode,
    perturbation_gain,
    principal_components,
    teleport_sample,
)
from diffusion_lessons.solvers import pf_velocity, sample_ode, time_grid
from reference import GMM2, gmm_logpdf_score, gmm_t

ODE = dict(method="DOP853", rtol=1e-10, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# -- numpy schedules (Song et al. 2021, App. B), independent of the package ---------------------------
class NpVP:
    bmin, bmax = 0.1, 20.0

    def B(self, t):
        return self.bmin * t + 0.5 * (self.bmax - self.bmin) * t**2

    def beta(self, t):
        return self.bmin + t * (self.bmax - self.bmin)

    def alpha(self, t):
        return np.exp(-0.5 * self.B(t))

    def sigma(self, t):
        return np.sqrt(-np.expm1(-self.B(t)))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)


class NpSubVP(NpVP):
    def sigma(self, t):
        return -np.expm1(-self.B(t))

    def g2(self, t):
        return self.beta(t) * -np.expm1(-2 * self.B(t))


class NpVE:
    smin, smax = 0.01, 50.0

    def alpha(self, t):
        return 1.0

    def sigma(self, t):
        s = self.smin * (self.smax / self.smin) ** t
        return np.sqrt(s**2 - self.smin**2)

    def f(self, t):
        return 0.0

    def g2(self, t):
        return 2 * (self.smin * (self.smax / self.smin) ** t) ** 2 * np.log(self.smax / self.smin)


def gaussian_pf_numeric(np_path, mu, cov, x_T, t_eval, t_from=1.0):
    """Integrate dx/dt = f x - g^2/2 s, s = -(alpha^2 Sigma + sigma^2 I)^{-1}(x - alpha mu), for all rows of x_T."""
    n, d = x_T.shape

    def rhs(t, y):
        x = y.reshape(n, d)
        a, s = np_path.alpha(t), np_path.sigma(t)
        C = a**2 * cov + s**2 * np.eye(d)
        score = -np.linalg.solve(C, (x - a * mu).T).T
        return (np_path.f(t) * x - 0.5 * np_path.g2(t) * score).ravel()

    sol = solve_ivp(rhs, (t_from, min(t_eval)), x_T.ravel(), t_eval=sorted(t_eval, reverse=True), **ODE)
    assert sol.success
    return {t: sol.y[:, i].reshape(n, d) for i, t in enumerate(sorted(t_eval, reverse=True))}


def _xT(n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


# -- WV-1, WV-2: the closed form against a high-accuracy numerical solve ---------------------------
@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_wv1_closed_form_matches_numerical_pf_ode(name):
    """WV-1: GAUSS2, 20 x_T, T = 1 -> 0 (and intermediate times); max error < 1e-8 in float64."""
    np_path, path = {"vp": (NpVP(), dl.VP()), "subvp": (NpSubVP(), dl.SubVP()), "ve": (NpVE(), dl.VE())}[name]
    g = dl.gauss2()
    mu, cov = g.mean_vector.numpy(), g.cov.numpy()
    z = _xT(20, 2, seed=1)
    x_T = mu + 50 * z if name == "ve" else z  # VE: prior N(mu, 50^2 I) scale
    times = [0.7, 0.3, 0.1, 0.0]
    ref = gaussian_pf_numeric(np_path, mu, cov, x_T, times)
    traj = gaussian_pf_ode(g, path, torch.from_numpy(x_T), 1.0, torch.tensor(times, dtype=torch.float64))
    assert traj.shape == (4, 20, 2) and traj.dtype == torch.float64
    err = max(np.abs(traj[i].numpy() - ref[t]).max() for i, t in enumerate(times))
    assert err < 1e-8, err


@pytest.mark.parametrize("name", ["rf", "cosine"])
def test_closed_form_matches_numerical_flow_for_rectified_flow_and_cosine(name):
    """Any path: integrate u = alpha' x0_hat + sigma' eps_hat (finite at t = 1 where f blows up for RF)."""
    if name == "rf":
        al, sg, dal, dsg = (lambda t: 1 - t), (lambda t: t), (lambda t: -1.0), (lambda t: 1.0)
        path = dl.RectifiedFlow()
    else:
        h = math.pi / 2
        al, sg = (lambda t: np.cos(h * t)), (lambda t: np.sin(h * t))
        dal, dsg = (lambda t: -h * np.sin(h * t)), (lambda t: h * np.cos(h * t))
        path = dl.Cosine()
    g = dl.gauss2()
    mu, cov = g.mean_vector.numpy(), g.cov.numpy()
    x_T = _xT(10, 2, seed=2)

    def rhs(t, y):
        x = y.reshape(-1, 2)
        a, s = al(t), sg(t)
        Cinv_r = np.linalg.solve(a**2 * cov + s**2 * np.eye(2), (x - a * mu).T).T
        x0_hat = mu + a * Cinv_r @ cov  # cov symmetric: (Sigma C^{-1} r)^T = r^T C^{-1} Sigma
        eps_hat = s * Cinv_r
        return (dal(t) * x0_hat + dsg(t) * eps_hat).ravel()

    sol = solve_ivp(rhs, (1.0, 0.0), x_T.ravel(), t_eval=[0.5, 0.0], **ODE)
    closed = gaussian_pf_ode(g, path, torch.from_numpy(x_T), 1.0, torch.tensor([0.5, 0.0], dtype=torch.float64))
    for i in range(2):
        assert np.abs(closed[i].numpy() - sol.y[:, i].reshape(-1, 2)).max() < 1e-8


def test_wv2_reference_values():
    """WV-2: VP, mu = (1, -1), Sigma = diag(4, .25), x_T = (.3, -.7): x_{0.5}, x_{0.1}, x_0 to 1e-9."""
    g = dl.gauss2(axis_aligned=True)
    x_T = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    expected = {0.5: (0.6075395463, -0.9537486079), 0.1: (1.5102547635, -1.3437354510), 0.0: (1.5868188149, -1.3467198218)}
    for t, ref in expected.items():
        got = gaussian_pf_ode(g, dl.VP(), x_T, 1.0, t)[0]
        assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), atol=1e-9, rtol=0), (t, got)


def test_wv3_pushforward_of_exact_prior_is_the_data():
    """WV-3: 20 000 samples of p_1 = N(alpha_1 mu, alpha_1^2 Sigma + sigma_1^2 I) pushed to t = 0 have mean, cov of N(mu, Sigma)."""
    g, path = dl.gauss2(), dl.VP()
    prior = g.noised(path, 1.0)
    x_T = prior.sample(20_000, generator=torch.Generator().manual_seed(0))
    x0 = gaussian_pf_ode(g, path, x_T, 1.0, 0.0)
    cov = np.cov(x0.numpy().T)
    assert np.abs(x0.numpy().mean(0) - g.mean_vector.numpy()).max() < 0.05
    assert np.abs(cov - g.cov.numpy()).max() < 0.1


def test_wv4_delta_data_trajectories_are_planar_rotations():
    """WV-4: point mass x0 in R^5 (zero covariance), VP: 50 snapshots span a plane; sigma_3 / sigma_1 < 1e-10."""
    x0 = np.array([3.0, -2.0, 1.0, 0.5, 0.0])
    g = dl.Gaussian(torch.from_numpy(x0), torch.zeros(5, 5, dtype=torch.float64))
    x_T = _xT(1, 5, seed=4)
    times = torch.linspace(1.0, 0.0, 50, dtype=torch.float64)
    traj = gaussian_pf_ode(g, dl.VP(), torch.from_numpy(x_T), 1.0, times)[:, 0, :]  # [50, 5]
    sv = np.linalg.svd(traj.numpy().T, compute_uv=False)
    assert sv[2] / sv[0] < 1e-10 and sv[1] / sv[0] > 0.1
    assert np.abs(traj[-1].numpy() - x0).max() < 1e-12  # every trajectory ends on the point mass
    # against the ODE with the delta score s = -(x - alpha x0) / sigma^2, stopped at t = 1e-3
    vp = NpVP()

    def rhs(t, x):
        return vp.f(t) * x + 0.5 * vp.g2(t) * (x - vp.alpha(t) * x0) / vp.sigma(t) ** 2

    sol = solve_ivp(rhs, (1.0, 1e-3), x_T[0], **ODE)
    closed = gaussian_pf_ode(g, dl.VP(), torch.from_numpy(x_T), 1.0, 1e-3)[0].numpy()
    assert np.abs(closed - sol.y[:, -1]).max() < 1e-8


def test_wv5_commitment_times():
    """WV-5: t*(lambda) for lambda = 10, 1, .1, .01 (VP): values to 1e-4 and strictly decreasing."""
    t = commitment_time(torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64), dl.VP()).numpy()
    assert np.abs(t - [0.4859, 0.2590, 0.0930, 0.0270]).max() < 1e-4
    assert np.all(np.diff(t) < 0)
    vp = NpVP()
    snr = vp.alpha(t) ** 2 / vp.sigma(t) ** 2
    assert np.allclose(snr, 1 / np.array([10.0, 1.0, 0.1, 0.01]), rtol=1e-10)


def test_commitment_time_by_bisection_on_other_paths():
    """Cosine: SNR = cot^2(pi t / 2) -> t* = 2/pi arctan(sqrt(lambda)); RF: t* = sqrt(l) / (1 + sqrt(l)); sub-VP, VE by SNR."""
    lam = np.array([1e3, 10.0, 1.0, 0.1, 1e-3])
    got = commitment_time(torch.from_numpy(lam), dl.Cosine()).numpy()
    assert np.abs(got - 2 / np.pi * np.arctan(np.sqrt(lam))).max() < 1e-12
    got = commitment_time(torch.from_numpy(lam), dl.RectifiedFlow()).numpy()
    assert np.abs(got - np.sqrt(lam) / (1 + np.sqrt(lam))).max() < 1e-12
    for np_path, path in ((NpSubVP(), dl.SubVP()), (NpVE(), dl.VE())):
        t = commitment_time(torch.from_numpy(lam[1:]), path).numpy()
        snr = np_path.alpha(t) ** 2 / np_path.sigma(t) ** 2
        assert np.allclose(snr, 1 / lam[1:], rtol=1e-9) and np.all(np.diff(t) < 0)
    # lambda = 0 never commits; lambda above 1 / SNR(1) is committed from the start
    assert commitment_time(0.0, dl.VE()).item() == 0.0 and commitment_time(1e6, dl.VE()).item() == 1.0
    with pytest.raises(ValueError):
        commitment_time(-1.0, dl.VP())


# -- zero-variance directions, dtypes, shapes, devices ---------------------------------------------
def _degenerate_gaussian():
    """N(mu, Sigma) in R^3 with Sigma of rank 2 (variances 2, 0.5, 0) in a rotated basis."""
    Q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))
    cov = Q @ np.diag([2.0, 0.5, 0.0]) @ Q.T
    mu = np.array([0.5, -1.0, 2.0])
    return mu, 0.5 * (cov + cov.T), Q[:, 2]


def test_zero_variance_directions_follow_the_ode_and_land_on_the_support():
    mu, cov, null = _degenerate_gaussian()
    g = dl.Gaussian(torch.from_numpy(mu), torch.from_numpy(cov))
    x_T = _xT(8, 3, seed=8)
    ref = gaussian_pf_numeric(NpVP(), mu, cov, x_T, [0.5, 0.05, 1e-3])
    times = torch.tensor([0.5, 0.05, 1e-3, 0.0], dtype=torch.float64)
    traj = gaussian_pf_ode(g, dl.VP(), torch.from_numpy(x_T), 1.0, times)
    for i, t in enumerate([0.5, 0.05, 1e-3]):
        assert np.abs(traj[i].numpy() - ref[t]).max() < 1e-8
    vp = NpVP()
    # on ker Sigma: P(x_t - alpha_t mu) = sigma_t / sigma_T P(x_T - alpha_T mu)
    ker_T = (x_T - vp.alpha(1.0) * mu) @ null
    ker_t = (traj[0].numpy() - vp.alpha(0.5) * mu) @ null
    assert np.allclose(ker_t, vp.sigma(0.5) / vp.sigma(1.0) * ker_T, atol=1e-12)
    assert np.abs((traj[-1].numpy() - mu) @ null).max() < 1e-12  # at t = 0 on the support
    assert np.isfinite(traj.numpy()).all()
    # the endpoint prediction on ker Sigma is mu's component, at every time including t = 0
    x0_hat = gaussian_pf_endpoint(g, dl.VP(), traj[-1], 0.0).numpy()
    assert np.abs(x0_hat - traj[-1].numpy()).max() < 1e-12
    # flowing from sigma = 0 back into noise along a zero-variance direction is undefined
    with pytest.raises(ValueError, match="sigma"):
        gaussian_pf_ode(g, dl.VP(), torch.from_numpy(x_T), 0.0, 0.5)


def test_float32_follows_input_and_trajectory_shapes():
    g = dl.gauss2()
    x64 = torch.from_numpy(_xT(6, 2, seed=3))
    x32 = x64.float()
    out32 = gaussian_pf_ode(g, dl.VP(), x32, 1.0, 0.0)
    out64 = gaussian_pf_ode(g, dl.VP(), x64, 1.0, 0.0)
    assert out32.dtype == torch.float32 and out32.shape == (6, 2)
    assert (out32.double() - out64).abs().max() < 1e-5
    times = torch.linspace(1.0, 0.0, 7)
    assert gaussian_pf_ode(g, dl.VP(), x32, 1.0, times).shape == (7, 6, 2)
    assert gaussian_pf_ode(g.to(torch.float32), dl.VE(), x64, 1.0, 0.2).dtype == torch.float64
    # image-shaped input: [N, 1, 4, 4] against a 16-dimensional Gaussian
    imgs = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    g16 = fit_gaussian(torch.randn(100, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    assert gaussian_pf_ode(g16, dl.VP(), imgs, 1.0, 0.3).shape == (5, 1, 4, 4)
    assert gaussian_pf_ode(g16, dl.VP(), imgs, 1.0, torch.tensor([0.5, 0.3])).shape == (2, 5, 1, 4, 4)
    assert gaussian_pf_endpoint(g16, dl.VP(), imgs, 0.3).shape == (5, 1, 4, 4)
    with pytest.raises(ValueError, match="dimension"):
        gaussian_pf_ode(g, dl.VP(), imgs, 1.0, 0.3)
    with pytest.raises(ValueError, match="single Gaussian"):
        gaussian_pf_ode(dl.gmm2(), dl.VP(), x64, 1.0, 0.3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_input_device():
    g = dl.gauss2()
    x = torch.from_numpy(_xT(6, 2)).cuda()
    out = gaussian_pf_ode(g, dl.VP(), x, 1.0, torch.tensor([0.5, 0.0]))
    assert out.device == x.device
    assert (out.cpu() - gaussian_pf_ode(g, dl.VP(), x.cpu(), 1.0, torch.tensor([0.5, 0.0]))).abs().max() < 1e-12


# -- endpoint, flow-map Jacobian, perturbation gain -------------------------------------------------
def test_endpoint_is_tweedie_and_matches_the_trajectory_formula():
    g, path, vp = dl.gauss2(), dl.VP(), NpVP()
    mu, cov = g.mean_vector.numpy(), g.cov.numpy()
    x_T = _xT(10, 2, seed=5)
    for t in (0.9, 0.4, 0.05):
        x_t = gaussian_pf_ode(g, path, torch.from_numpy(x_T), 1.0, t)
        a, s = vp.alpha(t), vp.sigma(t)
        C = a**2 * cov + s**2 * np.eye(2)
        tweedie = mu + a * np.linalg.solve(C, (x_t.numpy() - a * mu).T).T @ cov
        got = gaussian_pf_endpoint(g, path, x_t, t).numpy()
        assert np.abs(got - tweedie).max() < 1e-12
        # Wang & Vastola 2023: mu + sum_k alpha_t lambda_k / sqrt(v_k(t) v_k(T)) c_k u_k
        lam, U = np.linalg.eigh(cov)
        c = (x_T - vp.alpha(1.0) * mu) @ U
        vt, vT = s**2 + a**2 * lam, vp.sigma(1.0) ** 2 + vp.alpha(1.0) ** 2 * lam
        assert np.abs(got - (mu + (c * a * lam / np.sqrt(vt * vT)) @ U.T)).max() < 1e-12
    # per-point times
    t = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    x = torch.from_numpy(x_T[:3])
    rows = torch.cat([gaussian_pf_endpoint(g, path, x[i : i + 1], float(t[i])) for i in range(3)])
    assert (gaussian_pf_endpoint(g, path, x, t) - rows).abs().max() < 1e-14


def test_flow_map_jacobian_solves_the_variational_equation():
    """d Phi/dt = (f I + g^2/2 C(t)^{-1}) Phi, Phi(1) = I, integrated in numpy, vs U diag(psi) U^T."""
    g, vp = dl.gauss2(), NpVP()
    cov = g.cov.numpy()

    def rhs(t, y):
        C = vp.alpha(t) ** 2 * cov + vp.sigma(t) ** 2 * np.eye(2)
        A = vp.f(t) * np.eye(2) + 0.5 * vp.g2(t) * np.linalg.inv(C)
        return (A @ y.reshape(2, 2)).ravel()

    sol = solve_ivp(rhs, (1.0, 0.0), np.eye(2).ravel(), t_eval=[0.3, 0.0], **ODE)
    J = flow_map_jacobian(g, dl.VP(), 1.0, torch.tensor([0.3, 0.0], dtype=torch.float64))
    assert J.shape == (2, 2, 2)
    for i in range(2):
        assert np.abs(J[i].numpy() - sol.y[:, i].reshape(2, 2)).max() < 1e-8
    assert flow_map_jacobian(g, dl.VP(), 1.0, 0.3).shape == (2, 2)


def test_perturbation_gain():
    """Wang & Vastola 2023: gain sqrt(lambda / (sigma_t^2 + alpha_t^2 lambda)); erased off the support.

    For VP it is sqrt(lambda / (1 + (lambda - 1) alpha_t^2)): a direction with lambda > 1 amplifies an
    early perturbation (up to sqrt(lambda) at t = 1) and a later one less; lambda < 1 the other way.
    """
    mu, cov, _ = _degenerate_gaussian()
    g, vp = dl.Gaussian(torch.from_numpy(mu), torch.from_numpy(cov)), NpVP()
    lam = np.clip(np.linalg.eigvalsh(cov), 0, None)
    lam[0] = 0.0
    times = np.array([0.9, 0.5, 0.2, 0.05])
    gain = perturbation_gain(g, dl.VP(), torch.from_numpy(times)).numpy()
    a, s = vp.alpha(times)[:, None], vp.sigma(times)[:, None]
    assert np.abs(gain - np.sqrt(lam / (s**2 + a**2 * lam))).max() < 1e-7  # eigh roundoff on lambda = 0
    assert np.abs(gain[:, 0]).max() < 1e-7
    assert np.all(np.diff(gain[:, 1], axis=0) > 0) and np.all(np.diff(gain[:, 2], axis=0) < 0)  # lambda = .5, 2
    # the gain is the flow map t -> 0 in the eigenbasis
    J = flow_map_jacobian(g, dl.VP(), 0.5, 0.0).numpy()
    assert np.allclose(np.sort(np.linalg.eigvalsh(J)), np.sort(gain[1]), atol=1e-7)


# -- the data's Gaussian approximation -------------------------------------------------------------
def test_fit_gaussian_matches_numpy_and_truncates_rank():
    data = np.random.default_rng(9).normal(size=(300, 2, 3)) @ np.diag([1.0, 2.0, 0.5])
    g = fit_gaussian(torch.from_numpy(data))
    flat = data.reshape(300, -1)
    assert np.abs(g.mean_vector.numpy() - flat.mean(0)).max() < 1e-12
    assert np.abs(g.cov.numpy() - np.cov(flat.T)).max() < 1e-12
    g2 = fit_gaussian(torch.from_numpy(data), rank=2)
    lam = np.linalg.eigvalsh(g2.cov.numpy())
    assert np.abs(lam[:-2]).max() < 1e-12 and np.allclose(lam[-2:], np.linalg.eigvalsh(np.cov(flat.T))[-2:])
    var, vec = principal_components(g, 2)
    assert var[0] >= var[1] and vec.shape == (6, 2)
    # fewer points than dimensions: a singular covariance, still a valid Gaussian
    few = fit_gaussian(torch.from_numpy(flat[:4]))
    assert int((few.eigen[0] > 1e-10).sum()) == 3


# -- WV-6: teleportation error on a non-Gaussian target --------------------------------------------
def test_wv6_teleport_error_grows_as_t_skip_decreases():
    """GMM2, VP, exact score: closed form (global mean/cov) vs exact PF-ODE at t_skip; then finish with RK4."""
    gm, path, vp = dl.gmm2(), dl.VP(), NpVP()
    approx = dl.Gaussian(gm.mean(), gm.covariance())
    x_T = _xT(300, 2, seed=0)
    skips = [0.9, 0.7, 0.5, 0.4, 0.3, 0.2]

    def rhs(t, y):
        x = y.reshape(-1, 2)
        a, s = vp.alpha(t), vp.sigma(t)
        _, score, _, _ = gmm_logpdf_score(x, *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s))
        return (vp.f(t) * x - 0.5 * vp.g2(t) * score).ravel()

    sol = solve_ivp(rhs, (1.0, 0.2), x_T.ravel(), t_eval=skips, **ODE)
    jumped = gaussian_pf_ode(approx, path, torch.from_numpy(x_T), 1.0, torch.tensor(skips, dtype=torch.float64))
    rel = []
    for i in range(len(skips)):
        exact = sol.y[:, i].reshape(-1, 2)
        rel.append(np.linalg.norm(jumped[i].numpy() - exact) / np.linalg.norm(exact))
    assert np.all(np.diff(rel) > 0), rel
    measured = [5.4e-6, 6.9e-4, 2.2e-2, 6.9e-2, 0.16, 0.27]  # check WV-6's reference values (300 other trajectories)
    assert all(m / 1.5 < r < 1.5 * m for r, m in zip(rel, measured)), rel

    velocity = pf_velocity(dl.exact_score(gm, path), path)
    grid = time_grid(200)
    plain = sample_ode(velocity, torch.from_numpy(x_T), grid, method="rk4")
    rms = []
    for t_skip in skips:
        res = teleport_sample(velocity, approx, path, torch.from_numpy(x_T), t_skip, t_grid=grid, method="rk4")
        assert res.nfe + res.nfe_saved == 4 * 200 and res.nfe_saved > 0
        rms.append(float((res.samples - plain).pow(2).sum(1).mean().sqrt()))
    assert np.all(np.diff(rms) > 0), rms
    assert max(rms[:2]) < 5e-3 and min(rms[4:]) > 0.1, rms


def test_teleport_edge_cases_and_nfe_accounting():
    g, path = dl.gauss2(), dl.VP()
    velocity = pf_velocity(dl.exact_score(g, path), path)
    x_T = torch.from_numpy(_xT(50, 2, seed=10))
    # for Gaussian data the teleport is exact: any t_skip gives the plain sampler's answer up to its error
    full = teleport_sample(velocity, g, path, x_T, 1.0, n_steps=100)
    assert full.nfe == 200 and full.nfe_saved == 0
    half = teleport_sample(velocity, g, path, x_T, 0.5, n_steps=100)
    assert half.nfe < 200 and half.nfe + half.nfe_saved == 200
    closed = gaussian_pf_ode(g, path, x_T, 1.0, 1e-3)
    assert (half.samples - closed).abs().max() < 2e-3 and (full.samples - closed).abs().max() < 2e-3  # Heun error
    none = teleport_sample(velocity, g, path, x_T, 0.0, n_steps=100)
    assert none.nfe == 0 and (none.samples - closed).abs().max() < 1e-12
    with pytest.raises(ValueError):
        teleport_sample(velocity, g, path, x_T, 0.5)


# -- WV-7, WV-8 -------------------------------------------------------------------------------------
def test_wv7_early_perturbations_flip_the_mode_more():
    """Symmetric two-mode GMM, VP, exact PF-ODE (Heun, 100 steps); add 0.5 z at t_p and count mode flips."""
    gm = dl.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[2.0, 0.0], [-2.0, 0.0]]),
                            0.2 * torch.eye(2).repeat(2, 1, 1))
    path = dl.VP()
    velocity = pf_velocity(dl.exact_score(gm, path), path)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    kick = 0.5 * torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    grid = time_grid(100)
    ref_sign = torch.sign(sample_ode(velocity, x_T, grid)[:, 0])
    flips = {}
    for t_p in (0.9, 0.6, 0.4, 0.2, 0.05):
        before, after = grid[grid > t_p], grid[grid < t_p]
        x = sample_ode(velocity, x_T, torch.cat([before, before.new_tensor([t_p])])) + kick
        x = sample_ode(velocity, x, torch.cat([after.new_tensor([t_p]), after]))
        flips[t_p] = float((torch.sign(x[:, 0]) != ref_sign).double().mean())
    assert flips[0.9] > 0.08 and flips[0.05] < 0.01, flips
    seq = [flips[t] for t in (0.6, 0.4, 0.2, 0.05)]
    assert all(b <= a + 0.01 for a, b in zip(seq, seq[1:])), flips


def test_wv8_gaussian_score_approximation_error_grows_toward_data():
    """E||s_G - s||^2 / E||s||^2 under p_t (20 000 samples): increasing as t decreases, < 1e-3 for t >= 0.6."""
    gm, path = dl.gmm2(), dl.VP()
    approx = dl.Gaussian(gm.mean(), gm.covariance())
    s_true, s_gauss = dl.exact_score(gm, path), dl.exact_score(approx, path)
    ratios = []
    for i, t in enumerate((1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)):
        x = gm.noised(path, t).sample(20_000, generator=torch.Generator().manual_seed(i))
        s = s_true(x, t)
        ratios.append(float((s_gauss(x, t) - s).pow(2).sum(1).mean() / s.pow(2).sum(1).mean()))
    assert np.all(np.diff(ratios) > 0), ratios
    assert max(ratios[:3]) < 1e-3, ratios
    assert 0.1 < ratios[5] < 0.3 and 0.5 < ratios[-1] < 0.9, ratios  # about 0.20 (t = .3), 0.72 (t = .05)
