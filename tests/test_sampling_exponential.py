"""Exponential integrators (DDIM, DPM-Solver, DPM-Solver++) against references written here: the Gaussian
PF-ODE in closed form (Wang & Vastola), the DPM-Solver-1 / DPM-Solver++-1 formulas of Lu et al., the DDPM
posterior, and a DOP853 solve for a Gaussian mixture."""
import math
from itertools import pairwise

import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")

MU, LAM = torch.tensor([1.0, -1.0], **F64), torch.tensor([4.0, 0.01], **F64)  # DPM-1's Gaussian, axis-aligned


def vp_floats(t, bmin=0.1, bmax=20.0):
    """Song's VP written out: alpha = exp(-B/2), sigma = sqrt(1 - exp(-B)), B = bmin t + (bmax - bmin) t^2 / 2."""
    B = bmin * t + 0.5 * (bmax - bmin) * t**2
    return math.exp(-0.5 * B), math.sqrt(-math.expm1(-B))


def gaussian_x0(x, t):
    """E[x0 | x_t = x] for N(MU, diag(LAM)) on VP: MU + alpha LAM / (alpha^2 LAM + sigma^2) (x - alpha MU)."""
    a, s = vp_floats(t)
    return MU + a * LAM / (a**2 * LAM + s**2) * (x - a * MU)


def gaussian_eps(x, t):
    a, s = vp_floats(t)
    return (x - a * gaussian_x0(x, t)) / s


def gaussian_flow(x_T, t_from, t_to):
    """Closed-form PF-ODE (Wang & Vastola): x_t = alpha_t MU + sqrt(v(t) / v(T)) (x_T - alpha_T MU), v = sigma^2 + alpha^2 LAM."""
    (aT, sT), (a, s) = vp_floats(t_from), vp_floats(t_to)
    return a * MU + torch.sqrt((s**2 + a**2 * LAM) / (sT**2 + aT**2 * LAM)) * (x_T - aT * MU)


def _start(n=1000, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


def _rms(x, ref):
    """Root mean square over every coordinate of every trajectory."""
    return float((x - ref).square().mean().sqrt())


def _ratios(errors):
    return [e0 / e1 for e0, e1 in pairwise(errors)]


def _dpm1_errors(method, steps, model=gaussian_x0, target="x0", **options):
    path, x_T = dl.VP(), _start()
    exact = gaussian_flow(x_T, 1.0, 1e-3)
    return [_rms(dl.sample(model, path, x_T, dl.time_grid(n, kind="log_snr", path=path), method, target=target,
                           **options).x, exact) for n in steps]


def test_dpm1_orders_on_the_gaussian_closed_form():
    """Check DPM-1: error ratios when the steps double (log-SNR grid, 1000 trajectories, exact model, oracle the
    closed form): DPM-Solver-1 (= DDIM) in [1.7, 2.3] for N >= 20; DPM-Solver-2 in [3.3, 5.0]; DPM-Solver++(2M),
    both variants, in [3.3, 5.0] for N >= 40. DPM-Solver++(3M): ratios >= 6.5 (at least third order) for N >= 20 and
    40 steps 10 times better than DPM-Solver++(2M); with the repository's coefficient it is second order, [3.3, 5.0]
    for N >= 80."""
    steps = (5, 10, 20, 40, 80)
    first = _ratios(_dpm1_errors("ddim", steps))
    second = _ratios(_dpm1_errors("dpm2", steps, gaussian_eps, "eps"))
    multi = _ratios(_dpm1_errors("dpm++2m", steps))
    taylor = _ratios(_dpm1_errors("dpm++2m", steps, variant="taylor"))
    third_errors = _dpm1_errors("dpm++3m", (10, 20, 40, 80, 160))
    third, repository = _ratios(third_errors), _ratios(_dpm1_errors("dpm++3m", (10, 20, 40, 80, 160), variant="repository"))
    print("DPM-1 ratios: ddim", first, "dpm2", second, "2M", multi, "2M taylor", taylor, "3M", third, "3M repository",
          repository, "3M errors", third_errors)
    assert all(1.7 <= r <= 2.3 for r in first[1:]), first
    assert all(3.3 <= r <= 5.0 for r in second), second
    assert all(3.3 <= r <= 5.0 for r in multi[2:]), multi
    assert all(3.3 <= r <= 5.0 for r in taylor[2:]), taylor
    assert all(r >= 6.5 for r in third[1:]), third
    assert third_errors[2] < _dpm1_errors("dpm++2m", (40,))[0] / 10
    assert all(3.3 <= r <= 5.0 for r in repository[2:]), repository


def test_dpm_solver_pp_3m_integrates_a_quadratic_exactly():
    """A third-order multistep step is exact when x0_hat is a quadratic in lambda (here x0_hat = lambda^2, whatever x):
    from its third step on, x_t - (sigma_t / sigma_s) x_s = sigma_t int e^lambda lambda^2 dlambda (scipy quad);
    the repository's coefficient misses it by O(h^3)."""
    from scipy.integrate import quad

    path = dl.VP()
    grid = dl.time_grid(6, kind="log_snr", path=path).tolist()
    lam = lambda t: math.log(vp_floats(t)[0] / vp_floats(t)[1])
    model = lambda x, t: torch.full_like(x, lam(t) ** 2)
    for variant, should_be_exact in (("taylor", True), ("repository", False)):
        traj = dl.sample(model, path, torch.zeros(1, 1, **F64), grid, "dpm++3m", target="x0", variant=variant,
                         trajectory=True).trajectory.flatten().tolist()
        for k in range(2, len(grid) - 1):
            s0, s1 = vp_floats(grid[k])[1], vp_floats(grid[k + 1])[1]
            exact = s1 * quad(lambda v: math.exp(v) * v * v, lam(grid[k]), lam(grid[k + 1]), epsabs=1e-14, epsrel=1e-13)[0]
            gap = abs(traj[k + 1] - s1 / s0 * traj[k] - exact)
            assert (gap < 1e-12) == should_be_exact, (variant, k, gap)


def test_dpm2_first_order_solvers_coincide():
    """Check DPM-2: DDIM = DPM-Solver-1 (noise prediction) = DPM-Solver++-1 (data prediction), written here:
    x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_hat and x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0_hat,
    h = lambda_t - lambda_s; max difference < 1e-12 on GMM2 (exact predictions)."""
    path, data = dl.VP(), dl.gmm2()
    x_T = _start(256)
    grid = dl.time_grid(12, kind="log_snr", path=path).tolist()
    eps_model, x0_model = dl.exact_prediction(data, path, "eps"), dl.exact_prediction(data, path, "x0")
    ours = dl.sample(eps_model, path, x_T, grid, "ddim", target="eps").x
    noise, data_pred = x_T, x_T
    for s, t in pairwise(grid):
        (a_s, s_s), (a_t, s_t) = vp_floats(s), vp_floats(t)
        h = math.log(a_t / s_t) - math.log(a_s / s_s)
        noise = (a_t / a_s) * noise - s_t * math.expm1(h) * eps_model(noise, s)
        data_pred = (s_t / s_s) * data_pred - a_t * math.expm1(-h) * x0_model(data_pred, s)
    print("DPM-2 gaps", float((ours - noise).abs().max()), float((ours - data_pred).abs().max()))
    assert float((ours - noise).abs().max()) < 1e-12
    assert float((ours - data_pred).abs().max()) < 1e-12


def test_ddim_is_the_ddim_step_of_the_ddpm_chain():
    """On a chain whose abar_i = alpha(t_i)^2, dl.sample("ddim") is the DDPM chain's DDIM step (Song et al. 2021a, eq. 12)
    with eta = 0, computed here from abar alone: x_j = sqrt(abar_j) x0_hat + sqrt(1 - abar_j) eps_hat."""
    path, data = dl.VP(), dl.gmm2()
    eps_model = dl.exact_prediction(data, path, "eps")
    x_T = _start(128)
    grid = dl.time_grid(9, kind="quadratic").tolist()
    ours = dl.sample(eps_model, path, x_T, grid, "ddim").x
    x = x_T
    for s, t in pairwise(grid):
        ab_s, ab_t = vp_floats(s)[0] ** 2, vp_floats(t)[0] ** 2
        eps = eps_model(x, s)
        x0 = (x - math.sqrt(1 - ab_s) * eps) / math.sqrt(ab_s)
        x = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
    assert float((ours - x).abs().max()) < 1e-12


def test_pr2_ddim_eta_one_is_the_ddpm_posterior():
    """Check PR-2 (the DDIM part): one step s -> t with eta = 1 draws x_t ~ q(x_t | x_s, x0 = x0_hat), mean
    sqrt(abar_t) beta~ / ... in DDPM's form and variance beta~ = (1 - abar_t)/(1 - abar_s) (1 - abar_s / abar_t).
    Exactly, given the same normal draws (the generator's first randn of x's shape), and by Monte Carlo (4 s.e.)."""
    path, star = dl.VP(), torch.tensor([0.7, -1.2], **F64)
    s, t = 0.5, 0.45
    ab_s, ab_t = vp_floats(s)[0] ** 2, vp_floats(t)[0] ** 2
    x_s = torch.tensor([[0.3, 0.9]], **F64).expand(200_000, 2).clone()
    point_mass = lambda x, u: star.expand_as(x)
    out = dl.sample(point_mass, path, x_s, [s, t], "ddim", target="x0", eta=1.0,
                    generator=torch.Generator().manual_seed(7)).x
    alpha_t = 1 - ab_s / ab_t  # the one-step "beta" from t to s
    mean = (math.sqrt(ab_t) * alpha_t / (1 - ab_s)) * star + (math.sqrt(ab_s / ab_t) * (1 - ab_t) / (1 - ab_s)) * x_s
    var = (1 - ab_t) / (1 - ab_s) * alpha_t
    z = torch.randn(x_s.shape, generator=torch.Generator().manual_seed(7), **F64)
    assert float((out - (mean + math.sqrt(var) * z)).abs().max()) < 1e-12
    n = out.shape[0]
    emp_var = out.var(0)
    se_var = var * math.sqrt(2 / (n - 1))
    se_mean = math.sqrt(var / n)
    print("PR-2 variance", emp_var.tolist(), "exact", var, "s.e.", se_var)
    assert bool(((emp_var - var).abs() < 4 * se_var).all())
    assert bool(((out.mean(0) - mean[0]).abs() < 4 * se_mean).all())


@pytest.mark.parametrize("method", ["ddim", "dpm2", "dpm2m", "dpm++2m", "dpm++3m"])
def test_dpm3_point_mass_is_exact(method):
    """Check DPM-3: data delta_{x*}, x0_hat = x* constant in lambda: 3 steps reproduce the flow exactly,
    x_t0 = alpha_t0 x* + sigma_t0 / sigma_T (x_T - alpha_T x*), on every path; < 1e-12."""
    star = torch.tensor([3.0, -2.0], **F64)
    x_T = _start(32)
    for path, grid in [(dl.VP(), [1.0, 0.6, 0.2, 1e-3]), (dl.RectifiedFlow(), [0.999, 0.6, 0.2, 1e-3]),
                       (dl.VE(), [1.0, 0.6, 0.2, 1e-3]), (dl.Cosine(), [0.9, 0.5, 0.1, 1e-3]),
                       (dl.EDM(), [1.0, 0.6, 0.2, 1e-3])]:
        T, t0 = grid[0], grid[-1]
        aT, sT, a0, s0 = (float(v) for v in (path.alpha(T), path.sigma(T), path.alpha(t0), path.sigma(t0)))
        expected = a0 * star + s0 / sT * (x_T - aT * star)
        out = dl.sample(lambda x, t: star.expand_as(x), path, x_T, grid, method, target="x0").x
        assert float((out - expected).abs().max()) < 1e-12, path.name
        onto_data = dl.sample(lambda x, t: star.expand_as(x), path, x_T, grid + [0.0], method, target="x0").x
        assert float((onto_data - star).abs().max()) < 1e-12, path.name


def test_dpm4_data_prediction_beats_noise_prediction_at_low_nfe():
    """Check DPM-4: multistep, same grid and NFE: DPM-Solver++(2M) (x0_hat) vs DPM-Solver-2M (eps_hat) at N = 5;
    the data-prediction error is smaller by a factor > 3; at N = 40 they agree within 10 %."""
    data5, noise5 = _dpm1_errors("dpm++2m", (5, 40)), _dpm1_errors("dpm2m", (5, 40), gaussian_eps, "eps")
    print("DPM-4 RMS data / noise prediction, N = 5, 40:", data5, noise5)
    assert noise5[0] > 3 * data5[0]
    assert abs(noise5[1] / data5[1] - 1) < 0.1


def _gmm2_pf_ode_dop853(x_T, t_end):
    """The VP PF-ODE dx/dt = -beta/2 (x + score) of GMM2, score from tests/reference.py (numpy), DOP853 rtol 1e-10."""
    from reference import GMM2, gmm_logpdf_score, gmm_t
    from scipy.integrate import solve_ivp

    shape = x_T.shape

    def rhs(t, y):
        a, s = vp_floats(t)
        x = y.reshape(shape)
        score = gmm_logpdf_score(x, *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s))[1]
        return (-0.5 * (0.1 + t * 19.9) * (x + score)).ravel()

    sol = solve_ivp(rhs, (1.0, t_end), x_T.numpy().ravel(), method="DOP853", rtol=1e-10, atol=1e-12)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y[:, -1].reshape(shape))


def test_dpm_solver_orders_on_gmm2_against_dop853():
    """On a Gaussian mixture (GMM2, VP, exact denoiser, log-SNR steps) against DOP853: ratios ~2 for DDIM,
    ~4 for DPM-Solver++(2M) and DPM-Solver-2, ~8 for DPM-Solver++(3M) under step doubling."""
    path, x_T = dl.VP(), _start(64)
    reference = _gmm2_pf_ode_dop853(x_T, 1e-3)
    x0_model = dl.exact_denoiser(dl.gmm2(), path)
    run = lambda m, k: _rms(dl.sample(x0_model, path, x_T, dl.time_grid(k, kind="log_snr", path=path), m,
                                      target="x0").x, reference)
    errors = {m: [run(m, k) for k in (25, 50, 100, 200)] for m in ("ddim", "dpm++2m", "dpm2", "dpm++3m")}
    ratios = {m: _ratios(e) for m, e in errors.items()}
    print("GMM2 errors", errors, "ratios", ratios)
    assert all(1.7 <= r <= 2.3 for r in ratios["ddim"])
    assert all(3.3 <= r <= 5.0 for r in ratios["dpm++2m"] + ratios["dpm2"])
    assert all(r >= 6.5 for r in ratios["dpm++3m"][1:])


def test_ddim_on_the_ddpm_chain_path_is_the_chains_ddim_step():
    """dl.DDPMPath puts the chain's step i at t = i / N with alpha^2 = abar_i exactly; dl.sample("ddim") on the grid
    {i / N} is then the chain's DDIM step (ddpm.ddim_step, Song et al. 2021a eq. 12) for eta = 0 and, with the same
    normal draws, eta = 1 (DDPM's posterior noise)."""
    from diffusion_lessons.ddpm import DDPMSchedule, ddim_step

    schedule = DDPMSchedule.linear()
    path = dl.DDPMPath(schedule)
    steps = [901, 801, 601, 401, 201, 101, 1]
    abar = schedule.alpha_bar
    assert max(abs(float(path.alpha(i / 1000)) ** 2 - float(abar[i])) for i in steps) < 1e-15
    data = dl.Gaussian(torch.tensor([0.3], **F64), torch.tensor([[0.1]], **F64))
    eps_model = dl.exact_prediction(data, path, "eps")
    x_T = _start(64)[:, :1]
    for eta in (0.0, 1.0):
        ours = dl.sample(eps_model, path, x_T, [i / 1000 for i in steps], "ddim", eta=eta,
                         generator=torch.Generator().manual_seed(5)).x
        x, g = x_T, torch.Generator().manual_seed(5)
        for i, j in pairwise(steps):
            x = ddim_step(schedule, x, i, eps_model(x, i / 1000), j, eta=eta, generator=g)
        assert float((ours - x).abs().max()) < 1e-12, eta
