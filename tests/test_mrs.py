"""MRS (Li et al. 2025) on the IR-SDE against independent float64 references: the authors' updates in x,
written out here with their mu terms (check BG-1b), exactness for a point mass (BG-1b, MRS-1), convergence
orders against the exact PF-ODE map of Gaussian data (BG-1c, MRS-1), and the restoration sampler's plumbing.
"""
import math
from itertools import pairwise

import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.processes import MeanReverting

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

LAM = 50 / 255


def coeffs(path, t):
    a, s = float(path.alpha(t)), float(path.sigma(t))
    return a, s, math.log(a / s) if s > 0 else math.inf


def authors_ode(x, mu, x0_hat, path, grid, order):
    """The authors' data-parameterised ODE steps in x (order 1; order 2 'taylor': D = phi1 m0 - phi2 D1,
    phi1 = e^{-h} - 1, phi2 = phi1 / h + 1, D1 = (m0 - m1) / r), each with its mu term. First step first order."""
    prev = None
    for s, t in pairwise(grid):
        a_s, s_s, l_s = coeffs(path, s)
        a_t, s_t, l_t = coeffs(path, t)
        h, m0 = l_t - l_s, x0_hat(x, s)
        phi1 = math.expm1(-h)
        d = phi1 * m0
        if order == 2 and prev is not None:
            r = (l_s - prev[0]) / h
            d = d - (phi1 / h + 1) * (m0 - prev[1]) / r
        x = s_t / s_s * x - a_t * d + mu * (1 - s_t / s_s + s_t / s_s * a_s - a_t)
        prev = (l_s, m0)
    return x


def authors_sde(x, mu, x0_hat, path, grid, order, generator):
    """The authors' data-parameterised SDE steps in x: phi1 = 1 - e^{-2h}, phi2 = 1 - phi1 / (2h),
    x = (s_t / s_s) e^{-h} x + a_t phi1 m0 [+ a_t phi2 D1] + s_t sqrt(phi1) z
        + mu (1 - (a_t / a_s) e^{-2h} - a_t phi1)."""
    prev = None
    for s, t in pairwise(grid):
        a_s, s_s, l_s = coeffs(path, s)
        a_t, s_t, l_t = coeffs(path, t)
        h, m0 = l_t - l_s, x0_hat(x, s)
        phi1 = 1 - math.exp(-2 * h)
        z = torch.randn(x.shape, generator=generator)
        new = s_t / s_s * math.exp(-h) * x + a_t * phi1 * m0 + s_t * math.sqrt(phi1) * z
        if order == 2 and prev is not None:
            new = new + a_t * (1 - phi1 / (2 * h)) * (m0 - prev[1]) / ((l_s - prev[0]) / h)
        x = new + mu * (1 - a_t / a_s * math.exp(-2 * h) - a_t * phi1)
        prev = (l_s, m0)
    return x


def gaussian_x0_hat(m, v, mu, path):
    """E[x0 | x_t] for x0 ~ N(m, v) under x_t = mu + alpha (x0 - mu) + sigma eps, written out (1-D, elementwise)."""

    def x0_hat(x, t):
        a, s, _ = coeffs(path, t)
        return m + a * v / (a * a * v + s * s) * (x - mu - a * (m - mu))

    return x0_hat


def pf_ode_map(x_T, m, v, mu, path, t_from, t_to):
    """The exact PF-ODE map for Gaussian data: y_t = a_t y_m + psi (y_T - a_T y_m), psi = sqrt(v_t / v_T)."""
    a0, s0, _ = coeffs(path, t_from)
    a1, s1, _ = coeffs(path, t_to)
    psi = math.sqrt((s1**2 + a1**2 * v) / (s0**2 + a0**2 * v))
    return mu + a1 * (m - mu) + psi * (x_T - mu - a0 * (m - mu))


@pytest.mark.parametrize("order", [1, 2])
def test_mrs_ode_is_dpm_solver_pp_on_y(order):
    """Check BG-1b: the authors' x-form steps (with mu) and dl.mrs_sample (DPM-Solver++ on y = x - mu) agree to
    1e-12 on Gaussian data, 20 steps from the authors' prior to t = 0.01."""
    process = MeanReverting(LAM, 100, "cosine", 0.005)
    mu = torch.tensor([[-0.2], [0.4], [0.1]])
    x_T = process.prior_sample(mu, torch.Generator().manual_seed(0))
    grid = dl.time_grid(20, 1.0, 0.01)
    theirs = authors_ode(x_T, mu, gaussian_x0_hat(0.3, 0.04, mu, process.path), process.path, grid.tolist(), order)
    law_y = [dl.Gaussian(torch.tensor([0.3 - float(m)]), torch.tensor([[0.04]])) for m in mu[:, 0]]
    ours = torch.cat([dl.mrs_sample(dl.exact_prediction(law, process.path, "x0"), process, mu[i:i + 1], grid=grid,
                                    order=order, target="x0", x_T=x_T[i:i + 1]).x for i, law in enumerate(law_y)])
    assert (theirs - ours).abs().max() < 1e-12


@pytest.mark.parametrize("order", [1, 2])
def test_mrs_sde_is_sde_dpm_solver_pp_on_y(order):
    """Check BG-1b (SDE): the authors' stochastic x-form steps and dl.mrs_sample(solver="sde") with the same
    random numbers agree to 1e-12."""
    process = MeanReverting(LAM, 100, "cosine", 0.005)
    mu = torch.full((200, 1), -0.2)
    x_T = process.prior_sample(mu, torch.Generator().manual_seed(0))
    grid = dl.time_grid(10, 1.0, 0.01)
    x0_hat = gaussian_x0_hat(0.3, 0.04, mu, process.path)
    theirs = authors_sde(x_T, mu, x0_hat, process.path, grid.tolist(), order, torch.Generator().manual_seed(1))
    ours = dl.mrs_sample(lambda y, t: x0_hat(y + mu, t) - mu, process, mu, grid=grid, order=order, solver="sde",
                         target="x0", x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert ours.nfe == 10 and (theirs - ours.x).abs().max() < 1e-12


def test_point_mass_chain_is_exact():
    """Check BG-1b / MRS-1: for a point mass the first-order MRS step is exact: ten steps land on the exact
    marginal map x_t = mu + a_t (x* - mu) + (s_t / s_1)(x_1 - mu - a_1 (x* - mu)) (1e-12), second order too."""
    process = MeanReverting(LAM, 100, "cosine", 0.005)
    x_star, mu = torch.tensor([[0.3, -0.5]]), torch.tensor([[-0.2, 0.4]])
    x_T = process.prior_sample(mu.expand(6, 2), torch.Generator().manual_seed(2))
    grid = dl.time_grid(10, 1.0, 0.01)
    a1, s1, _ = coeffs(process.path, 1.0)
    ae, se, _ = coeffs(process.path, 0.01)
    exact = mu + ae * (x_star - mu) + se / s1 * (x_T - mu - a1 * (x_star - mu))
    for order in (1, 2):
        x = dl.mrs_sample(lambda y, t: (x_star - mu).expand_as(y), process, mu, grid=grid, order=order, target="x0",
                          x_T=x_T).x
        assert (x - exact).abs().max() < 1e-12, order
    # onto t = 0 (sigma = 0) the last step returns the data prediction
    x = dl.mrs_sample(lambda y, t: (x_star - mu).expand_as(y), process, mu, n_steps=5, target="x0", x_T=x_T).x
    assert (x - x_star).abs().max() < 1e-12


def test_orders_against_the_exact_pf_ode_map():
    """Check BG-1c / MRS-1: x0 ~ N(0.3, 0.04), mu = -0.2, M steps uniform in the step index 100 -> 1, exact model,
    1000 trajectories; RMS error against the exact map halves (order 1, ratios in [1.7, 2.3] for M >= 20) or
    quarters (order 2, ratio in [3.3, 5.5] for M >= 40) as M doubles."""
    process = MeanReverting(LAM, 100, "cosine", 0.005)
    mu = torch.full((1000, 1), -0.2)
    x_T = process.prior_sample(mu, torch.Generator().manual_seed(3))
    x0_hat = gaussian_x0_hat(0.3, 0.04, mu, process.path)

    def model(y, t):
        return x0_hat(y + mu, t) - mu

    oracle = pf_ode_map(x_T, 0.3, 0.04, mu, process.path, 1.0, 0.01)
    errors = {1: [], 2: []}
    for m in (5, 10, 20, 40, 80):
        for order in (1, 2):
            x = dl.mrs_sample(model, process, mu, grid=dl.time_grid(m, 1.0, 0.01), order=order, target="x0", x_T=x_T).x
            errors[order].append((x - oracle).square().mean().sqrt().item())
    r1 = [a / b for a, b in zip(errors[1][2:], errors[1][3:])]
    r2 = [a / b for a, b in zip(errors[2][3:], errors[2][4:])]
    print("BG-1c RMS errors", errors, "ratios", r1, r2)
    assert all(1.7 <= r <= 2.3 for r in r1) and all(3.3 <= r <= 5.5 for r in r2)


def test_mrs_beats_euler_on_narrow_data_at_five_steps():
    """Check MRS-1 (its comparison): on narrow data, x0 ~ N(0.3, 0.02^2), five first-order MRS steps have a smaller
    RMS error than five Euler steps of the PF-ODE in t (the exponential integrator is exact as the data narrow
    to a point), by a factor > 3; a point mass shows the limit (MRS exact, Euler not)."""
    process = MeanReverting(LAM, 100, "cosine", 0.005)
    mu = torch.full((1000, 1), -0.2)
    x_T = process.prior_sample(mu, torch.Generator().manual_seed(4))
    grid = dl.time_grid(5, 1.0, 0.01)
    for v in (4e-4, 0.0):
        x0_hat = gaussian_x0_hat(0.3, v, mu, process.path)

        def model(y, t, f=x0_hat):
            return f(y + mu, t) - mu

        oracle = pf_ode_map(x_T, 0.3, v, mu, process.path, 1.0, 0.01)
        mrs = dl.mrs_sample(model, process, mu, grid=grid, order=1, target="x0", x_T=x_T).x
        euler = dl.sample(model, process.path, x_T - mu, grid, method="euler", target="x0").x + mu
        e_mrs, e_euler = ((v_ - oracle).square().mean().sqrt().item() for v_ in (mrs, euler))
        print(f"MRS-1 v = {v}: MRS {e_mrs:.2e}, Euler {e_euler:.2e}")
        assert e_euler > 3 * e_mrs


def test_terminal_law_is_close_to_the_prior():
    """MRS-1's terminal check: with theta_bar_1 = -log(eps) large, N(mu + eps (x0 - mu), lam^2 (1 - eps^2)) is close to
    the prior N(mu, lam^2): their KL divergence for |x0 - mu| = 1 is below 1e-3 (computed here)."""
    process = MeanReverting(LAM, 100, "cosine", 0.005)
    mean, std = process.terminal_law(torch.tensor([[0.8]]), torch.tensor([[-0.2]]))
    m, s2 = float(mean) + 0.2, float(std) ** 2
    kl = 0.5 * (s2 / LAM**2 + m * m / LAM**2 - 1 - math.log(s2 / LAM**2))
    assert abs(m - 0.005) < 1e-12 and kl < 1e-3


def test_mrs_refuses_bad_input():
    process = MeanReverting()
    with pytest.raises(ValueError, match="order"):
        dl.mrs_sample(lambda y, t: y, process, torch.zeros(2, 1), order=3)
    with pytest.raises(TypeError, match="mean-reverting"):
        dl.mrs_sample(lambda y, t: y, dl.OUVE(), torch.zeros(2, 1))
    out = dl.mrs_sample(lambda y, t: torch.zeros_like(y), process, torch.zeros(2, 1), n_steps=3)
    assert bool(torch.isfinite(out.x).all())


class _PointMassNet(torch.nn.Module):
    """The exact noise predictor of a restoration network whose every clean image is x_star:
    eps_hat(y, t, mu) = (y - alpha_t (x_star - mu)) / sigma_t."""

    def __init__(self, process, x_star):
        super().__init__()
        self.process, self.x_star = process, x_star
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, y, t, cond):
        a, s, _ = coeffs(self.process.path, float(t))
        return (y - a * (self.x_star - cond)) / s


def test_restore_with_an_exact_network():
    """dl.restoration.restore: MRS lands exactly on the clean image of a point mass (1e-10, any order, in
    batches); Euler–Maruyama with 100 steps comes close (its last step is a first-order one onto t = 0)."""
    from diffusion_lessons.restoration import restore

    process = MeanReverting(0.4, 100, "cosine", 0.005)
    x_star = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    mu = x_star + 0.3 * torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    net = _PointMassNet(process, x_star)
    for order in (1, 2):
        out = restore(net, process, mu, "mrs", n_steps=7, order=order, generator=torch.Generator().manual_seed(1),
                      batch=2)
        assert out.nfe == 7 and (out.x - x_star).abs().max() < 1e-10
    em = restore(net, process, mu, "em", n_steps=100, generator=torch.Generator().manual_seed(2))
    assert em.nfe == 100 and (em.x - x_star).abs().max() < 0.05
    with pytest.raises(ValueError, match="sampler"):
        restore(net, process, mu, "heun")
