"""The exact flow map (the oracle of chapter 12) against independent float64 references; checks PR-6 and PR-7."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import diffusion_lessons as dl
from diffusion_lessons.flow_maps import (
    AverageVelocityMap,
    exact_average_velocity,
    exact_flow_map,
    exact_velocity,
    gaussian_flow_map,
    mixture_flow_map,
    sample_flow_map,
)

RF = dl.RectifiedFlow()


def _np_gaussian_map(mu, cov, alpha, sigma, x, t, r):
    """Independent numpy closed form: Phi_{t->r}(x) = a_r mu + U diag(sqrt(v(r)/v(t))) U^T (x - a_t mu)."""
    lam, U = np.linalg.eigh(cov)
    out = np.empty_like(x)
    for i in range(len(x)):
        vt = sigma(t[i]) ** 2 + alpha(t[i]) ** 2 * lam
        vr = sigma(r[i]) ** 2 + alpha(r[i]) ** 2 * lam
        out[i] = alpha(r[i]) * mu + U @ (np.sqrt(vr / vt) * (U.T @ (x[i] - alpha(t[i]) * mu)))
    return out


def _np_rf(t):
    return 1.0 - t, t


def test_gaussian_flow_map_per_sample_times_matches_numpy():
    g = dl.gauss2()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    t = rng.uniform(0.05, 1.0, 50)
    r = rng.uniform(0.0, 1.0, 50)
    ours = gaussian_flow_map(g, RF, torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(r)).numpy()
    ref = _np_gaussian_map(g.means[0].numpy(), g.covs[0].numpy(), lambda s: 1 - s, lambda s: s, x, t, r)
    assert np.abs(ours - ref).max() < 1e-12


def _np_gmm_velocity(weights, means, covs, alpha, dalpha, sigma, dsigma):
    """Independent numpy exact velocity of a Gaussian mixture: E[alpha' x0 + sigma' eps | x_t = x]."""
    def velocity(x, t):
        a, da, s, ds = alpha(t), dalpha(t), sigma(t), dsigma(t)
        logs, posts = [], []
        for w, m, c in zip(weights, means, covs):
            C = a * a * c + s * s * np.eye(len(m))
            diff = x - a * m
            sol = np.linalg.solve(C, diff)
            logs.append(math.log(w) - 0.5 * (diff @ sol) - 0.5 * np.linalg.slogdet(C)[1])
            x0 = m + a * c @ sol
            posts.append(da * x0 + ds * (x - a * x0) / s)
        p = np.exp(np.array(logs) - max(logs))
        return (p[:, None] * np.array(posts)).sum(0) / p.sum()
    return velocity


def test_mixture_flow_map_matches_an_independent_dop853_solve():
    gm = dl.gmm2()
    path = dl.VP()
    vel = _np_gmm_velocity(gm.weights.numpy(), gm.means.numpy(), gm.covs.numpy(),
                           lambda t: float(path.alpha(t)), lambda t: float(path.dalpha(t)),
                           lambda t: float(path.sigma(t)), lambda t: float(path.dsigma(t)))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2))
    t = np.array([1.0, 0.9, 0.7, 0.5, 0.3, 0.6])
    r = np.array([1e-3, 0.2, 2e-3, 0.45, 0.05, 0.9])  # the last one runs forwards in time
    ours = mixture_flow_map(gm, path, torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(r)).numpy()
    for i in range(len(x)):
        sol = solve_ivp(lambda s, y: vel(y, s), (t[i], r[i]), x[i], method="DOP853", rtol=1e-11, atol=1e-13)
        assert np.abs(ours[i] - sol.y[:, -1]).max() < 1e-8


def test_mixture_flow_map_of_one_component_is_the_closed_form():
    g = dl.gauss2()
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert (mixture_flow_map(g, dl.VP(), x, 0.95, 0.01) - gaussian_flow_map(g, dl.VP(), x, 0.95, 0.01)).abs().max() < 1e-8


def test_exact_average_velocity_is_the_instantaneous_velocity_at_r_equal_t():
    g = dl.gauss2()
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u = exact_average_velocity(g, RF)
    v = exact_velocity(g, RF)(x, 0.4)
    assert (u(x, 0.4, 0.4) - v).abs().max() == 0
    # u(x, t, t - h) - v = O(h): the first-order limit
    errors = [(u(x, 0.4, 0.4 - h) - v).abs().max().item() for h in (1e-2, 5e-3, 2.5e-3)]
    assert 1.8 < errors[0] / errors[1] < 2.2 and 1.8 < errors[1] / errors[2] < 2.2, errors


# -- PR-6: the flow-map identities on an axis-aligned Gaussian, MeanFlow convention --------------------
MU, LAM = np.array([1.0, -0.5]), np.array([2.0, 0.3])


def _pr6_gaussian():
    return dl.Gaussian(torch.tensor(MU), torch.diag(torch.tensor(LAM)))


def _np_phi(z, t, r):
    """PR-6's closed form: Phi_{t->r}(z) = (1 - r) mu + (z - (1 - t) mu) sqrt(v(r) / v(t)), v = (1 - t)^2 lam + t^2."""
    v = lambda s: (1 - s) ** 2 * LAM + s**2
    return (1 - r) * MU + (z - (1 - t) * MU) * np.sqrt(v(r) / v(t))


def test_pr6_flow_map_identities():
    """Check PR-6: velocity = E[eps - x | z_t], MeanFlow identity, shortcut self-consistency, consistency invariance."""
    g = _pr6_gaussian()
    rng = np.random.default_rng(4)
    z = rng.normal(size=(40, 2))
    zt = torch.from_numpy(z)
    flow = exact_flow_map(g, RF)
    # the package's map is PR-6's closed form
    assert np.abs(flow(zt, 0.7, 0.2).numpy() - _np_phi(z, 0.7, 0.2)).max() < 1e-12
    # instantaneous velocity = E[eps - x | z_t] by Gaussian conditioning (numpy)
    t = 0.6
    cov_xz = (1 - t) * LAM
    var_z = (1 - t) ** 2 * LAM + t**2
    ex = MU + cov_xz / var_z * (z - (1 - t) * MU)
    eeps = t / var_z * (z - (1 - t) * MU)
    v = exact_velocity(g, RF)(zt, t).numpy()
    assert np.abs(v - (eeps - ex)).max() < 1e-12
    # MeanFlow identity u = v - (t - r) du/dt along the trajectory (central difference, h = 1e-6)
    t, r, h = 0.7, 0.2, 1e-6
    u = exact_average_velocity(g, RF)

    def u_along(s):
        zs = flow(zt, t, s)
        return u(zs, s, r).numpy()

    dudt = (u_along(t + h) - u_along(t - h)) / (2 * h)
    v_t = exact_velocity(g, RF)(zt, t).numpy()
    assert np.abs(u(zt, t, r).numpy() - (v_t - (t - r) * dudt)).max() < 1e-8
    # shortcut self-consistency: s(x, t, 2d) = (s(x, t, d) + s(x', t - d, d)) / 2, x' = x - d s(x, t, d)
    d = 0.2
    s1 = u(zt, 0.9, 0.9 - d)
    s2 = u(zt - d * s1, 0.9 - d, 0.9 - 2 * d)
    assert (u(zt, 0.9, 0.9 - 2 * d) - 0.5 * (s1 + s2)).abs().max() < 1e-12
    # consistency invariance Phi_{t->0} = Phi_{0.5->0} o Phi_{t->0.5}
    assert (flow(zt, 0.9, 0.0) - flow(flow(zt, 0.9, 0.5), 0.5, 0.0)).abs().max() < 1e-12


# -- PR-7: one Euler step with the instantaneous velocity collapses; the exact map in one step is exact ----
def test_pr7_one_euler_step_collapses_to_the_mean_and_the_exact_map_is_exact():
    """Check PR-7: Euler with v(z, 1) = z - mu maps every z_1 to mu; one step of the exact map samples the data."""
    g = _pr6_gaussian()
    n = 200_000
    z1 = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    velocity = exact_velocity(g, RF)
    euler = sample_flow_map(lambda x, t, r: x - (t - r) * velocity(x, t), z1, [1.0, 0.0])
    assert euler.nfe == 1
    assert np.abs(euler.x.numpy() - MU).max() < 1e-12  # every sample lands on the mean: covariance 0
    exact = sample_flow_map(AverageVelocityMap(lambda x, t, r: exact_average_velocity(g, RF)(x, t, r)), z1, [1.0, 0.0])
    x = exact.x.numpy()
    se_mean = np.sqrt(LAM / n)
    se_var = LAM * np.sqrt(2 / (n - 1))
    assert np.all(np.abs(x.mean(0) - MU) < 4 * se_mean), (x.mean(0), MU)
    assert np.all(np.abs(x.var(0, ddof=1) - LAM) < 4 * se_var), (x.var(0, ddof=1), LAM)


def test_bad_times_are_refused():
    g = dl.gauss2()
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"t must be a float or a tensor \[N\] = \[3\]"):
        gaussian_flow_map(g, RF, x, torch.ones(2, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="time must lie in"):
        gaussian_flow_map(g, RF, x, torch.full((3,), 1.5, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_flow_map(exact_flow_map(g, RF), x, [0.0, 1.0])
