"""Gauge decomposition, continuity equation, WGF energy identity and intrinsic dimension (checks GF-*, WGF-*).

Known answers only: fields built by hand to be gradients or gauge fields, the continuity equation of
the exact (p_t, PF-ODE velocity) pair, regression values (measured by independent
numpy prototypes), closed-form flow-map singular values written here in numpy, and manifolds whose
dimension is known. Checks GF-1 ... GF-8, WGF-1, WGF-2, WGF-6.
"""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import gauge as G
from diffusion_lessons.diagnostics import circulation, jacobian_asymmetry
from diffusion_lessons.likelihood import log_likelihood
from diffusion_lessons.metrics import moment_errors
from reference import vp_alpha_sigma

ROT = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # a quarter turn: J grad psi is divergence-free
A3 = 3 * ROT  # the checks' A = [[0, 3], [-3, 0]]


pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")  # see conftest.py



@pytest.fixture(scope="module")
def setup():
    gm, path = dl.gmm2(), dl.VP()
    return gm, path, dl.exact_score(gm, path), dl.exact_log_prob(gm, path)


def grad_psi(x, t=None):
    """grad of psi = x2 sin(x1) + 0.3 x1^2 - x2^3 / 15: a gradient field by construction."""
    return torch.stack([torch.cos(x[:, 0]) * x[:, 1] + 0.6 * x[:, 0], torch.sin(x[:, 0]) - 0.2 * x[:, 1] ** 2], 1)


def gauge_field(score):
    """r = (1/p) J grad(p q) = J (q grad log p + grad q), q = 1 + sin(x1) cos(x2) / 2: div(p r) = div(J grad(pq)) = 0."""

    def r(x, t):
        q = 1 + 0.5 * torch.sin(x[:, 0]) * torch.cos(x[:, 1])
        dq = 0.5 * torch.stack([torch.cos(x[:, 0]) * torch.cos(x[:, 1]), -torch.sin(x[:, 0]) * torch.sin(x[:, 1])], 1)
        return (q[:, None] * score(x, t) + dq) @ ROT.T

    return r


# -- gauge decomposition ------------------------------------------------------------------------------
def test_gradient_fields_have_no_gauge_part(setup):
    """grad psi and the exact score: gauge part O(h^2) in L^2(p), halving h divides it by ~4; potential of the score = log p."""
    gm, path, score, logp = setup
    fracs = []
    for n in (41, 81):
        d = G.gauge_decomposition(grad_psi, logp, 0.3, G.make_grid((-6, 6, -5, 6), n))
        fracs.append(d.fractions()["gauge"])
    assert fracs[1] < 2e-3 and 3.3 < fracs[0] / fracs[1] < 5.0
    grid = G.make_grid((-6, 6, -5, 6), 81)
    d = G.gauge_decomposition(score, logp, 0.3, grid)
    assert d.fractions()["gauge"] < 5e-3
    gap = d.potential - grid.reshape(logp(grid.points, 0.3))  # phi = log p + const
    gap = gap - G.Grid.integrate(grid, d.density * gap)
    assert math.sqrt(grid.integrate(d.density * gap**2)) < 2e-3


def test_added_weighted_divergence_free_field_is_recovered(setup):
    """s = grad psi + r with div(p r) = 0: gauge part -> r, conservative part -> grad psi, at O(h^2); orthogonal in L^2(p)."""
    gm, path, score, logp = setup
    r = gauge_field(score)
    errors = []
    for n in (41, 81):
        grid = G.make_grid((-6, 6, -5, 6), n)
        d = G.gauge_decomposition(lambda x, t: grad_psi(x) + r(x, t), logp, 0.3, grid)
        r_true, c_true = grid.reshape(r(grid.points, 0.3)), grid.reshape(grad_psi(grid.points))
        errors.append(d.norm(d.gauge - r_true) / d.norm(r_true))
        assert d.norm(d.conservative - c_true) / d.norm(c_true) < 3e-2
        assert abs(d.orthogonality()) < 5e-3
        f = d.fractions()
        assert abs(f["conservative"] ** 2 + f["gauge"] ** 2 - 1) < 1e-2
    assert errors[1] < 3e-3 and 3.0 < errors[0] / errors[1] < 5.0
    # pointwise gauge condition of the hand-made r, at scattered points (autograd divergence)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * 2
    assert G.gauge_condition(r, score, x, 0.3).abs().max() < 1e-10
    # the interpolated gauge part agrees with r between the nodes
    between = torch.rand(200, 2, generator=torch.Generator().manual_seed(1)) * 4 - 2
    assert (d.as_field("gauge")(between) - r(between, 0.3)).abs().max() < 0.1


def test_gf1_gauge_identity(setup):
    """GF-1: tr(A H) = div(A grad log p) = 0 for antisymmetric A, 200 points, VP t = 0.3, to 1e-12."""
    gm, path, score, logp = setup
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(2)) * 2
    H = dl.exact_score_jacobian(gm, path)(x, 0.3)
    assert torch.einsum("ij,nji->n", A3, H).abs().max() < 1e-12
    assert G.gauge_condition(lambda y, t: score(y, t) @ A3.T, score, x, 0.3).abs().max() < 1e-12


# -- continuity equation and WGF ------------------------------------------------------------------------
def test_wgf1_continuity_residual_1d():
    """WGF-1: 1-D GMM, VP, dx = 1e-3 on [-12, 12]: relative residual < 1e-4 at t = 0.05, 0.2, 0.5 (about 6.9e-6 ...)."""
    gm1 = dl.GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-1.5], [1.0]]), torch.tensor([[[0.1]], [[0.3]]]))
    path = dl.VP()
    score, logp = dl.exact_score(gm1, path), dl.exact_log_prob(gm1, path)
    grid = G.make_grid((-12, 12), 24001)
    for t, max_dp in ((0.05, 1.8), (0.2, 1.37), (0.5, 0.135)):
        res = G.continuity_residual(logp, dl.pf_velocity(score, path), t, grid)
        assert res.relative < 1e-4 and abs(res.dp_dt.abs().max().item() - max_dp) < 0.01
        wrong = G.continuity_residual(logp, dl.pf_velocity(lambda x, s: 0.8 * score(x, s), path), t, grid)
        assert wrong.relative > 0.1


def test_continuity_residual_2d_gmm2_and_wrong_velocities(setup):
    """GMM2 (WGF-6, exact form): the PF velocity and the one with the gauge error -g^2/2 A grad log p satisfy
    the continuity equation to O(h^2); c = 0.8 and the error -g^2/2 A x do not."""
    gm, path, score, logp = setup
    grid = G.make_grid((-7, 7, -6, 7), 101)
    for t in (0.05, 0.3):
        exact = G.continuity_residual(logp, dl.pf_velocity(score, path), t, grid).relative
        rotated = G.continuity_residual(logp, dl.pf_velocity(lambda x, s: score(x, s) @ (torch.eye(2) + A3).T, path), t, grid)
        scaled = G.continuity_residual(logp, dl.pf_velocity(lambda x, s: 0.8 * score(x, s), path), t, grid)
        spun = G.continuity_residual(logp, dl.pf_velocity(lambda x, s: score(x, s) + x @ A3.T, path), t, grid)
        assert exact < 0.05 and rotated.relative < 0.05
        assert scaled.relative > 0.1 and spun.relative > 1.0


def test_wgf2_energy_dissipation_identity():
    """WGF-2: d/dt KL(p_t || N(0, 1)) = -beta/2 E|x + d log p|^2, values -2.363953, -1.298240, -0.016100; rel < 1e-5."""
    gm1 = dl.GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-1.5], [1.0]]), torch.tensor([[[0.1]], [[0.3]]]))
    path = dl.VP()
    grid = G.make_grid((-12, 12), 24001)
    for t, ref in ((0.05, -2.363953), (0.2, -1.298240), (0.5, -0.016100)):
        e = G.energy_dissipation(dl.exact_log_prob(gm1, path), dl.exact_score(gm1, path), path, t, grid)
        assert e.relative_gap < 1e-5 and abs(e.dkl_dt / ref - 1) < 1e-5
    with pytest.raises(ValueError, match="prior"):
        G.energy_dissipation(dl.exact_log_prob(gm1, dl.SubVP()), dl.exact_score(gm1, dl.SubVP()), dl.SubVP(), 0.3, grid)


def test_wgf_velocity_is_minus_gradient_of_first_variation(setup):
    """u = -beta/2 (x + grad log p) for VP (Vuong et al. 2025), = f x - g^2/2 s; KL decreases along the flow."""
    gm, path, score, logp = setup
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(3))
    for t in (0.1, 0.6):
        beta = 0.1 + t * 19.9
        assert torch.allclose(G.wgf_velocity(score, path)(x, t), -0.5 * beta * (x + score(x, t)), atol=1e-12)
    grid = G.make_grid((-7, 7, -6, 7), 101)
    kls = [G.kl_to_prior(logp, t, grid) for t in (0.05, 0.2, 0.5, 0.9)]
    assert all(a > b for a, b in zip(kls, kls[1:])) and kls[-1] < 1e-3


# -- GF-2 ... GF-6: exact despite non-conservative, wrong despite conservative ----------------------------
N_FLOW = 4000  # samples per flow; bounds are 5 standard errors of an exact sampler of this size


def law_bounds(target, n=N_FLOW):
    """5 standard errors of the mean, the covariance entries (from the law's fourth moments, by 200 000
    exact draws) and the left mass, for n exact samples of `target`."""
    big = target.sample(200_000, generator=torch.Generator().manual_seed(99))
    c = big - big.mean(0)
    se_cov = (c[:, :, None] * c[:, None, :]).flatten(1).std(0).max().item() / math.sqrt(n)
    mass = float((big[:, 0] < 0).double().mean())
    return {"mean": 5 * math.sqrt(target.covariance().diag().max().item() / n), "cov": 5 * se_cov,
            "left_mass": 5 * math.sqrt(mass * (1 - mass) / n)}


@pytest.fixture(scope="module")
def flows(setup):
    gm, path, score, _ = setup
    x_T = gm.noised(path, 1.0).sample(N_FLOW, generator=torch.Generator().manual_seed(4))
    grid = dl.time_grid(100, t_end=1e-3)
    run = lambda s: dl.sample_ode(dl.pf_velocity(s, path), x_T, grid, method="heun")  # noqa: E731
    eye = torch.eye(2)
    return {"exact": run(score), "gauge": run(lambda x, t: score(x, t) @ (eye + A3).T),
            "c0.8": run(lambda x, t: 0.8 * score(x, t)), "c1.2": run(lambda x, t: 1.2 * score(x, t)),
            "spin": run(lambda x, t: score(x, t) + x @ A3.T)}


def test_gf2_gauge_field_samples_exactly_but_moves_every_trajectory(setup, flows):
    gm, path, *_ = setup
    target = gm.noised(path, 1e-3)
    bound = law_bounds(target)
    for name in ("exact", "gauge"):
        err = moment_errors(flows[name], target, left_mass=True)
        assert all(err[k] < bound[k] for k in bound), (name, err, bound)
    assert (flows["gauge"] - flows["exact"]).norm(dim=1).mean() > 0.5  # about 2.13


def test_gf4_conservative_but_wrong_fails(setup, flows):
    gm, path, *_ = setup
    target = gm.noised(path, 1e-3)
    for name in ("c0.8", "c1.2"):
        assert moment_errors(flows[name], target)["cov"] > 2 * law_bounds(target)["cov"]  # about (9.91, ...), (1.29, ...)


def test_gf5_rotation_that_is_not_a_gauge_field_hurts(setup, flows):
    """A x is a gauge field for N(0, I) only: (1/p) div(p A x) = 0 there, up to 27 for diag(4, 1/4); GMM2 law moves."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(5))
    spin = lambda y, t: y @ A3.T  # noqa: E731
    iso = lambda y, t: -y  # noqa: E731
    aniso = lambda y, t: -y / torch.tensor([4.0, 0.25])  # noqa: E731
    assert G.gauge_condition(spin, iso, x, 0.0).abs().max() < 1e-12
    assert G.gauge_condition(spin, aniso, x, 0.0).abs().max() > 1.0
    gm, path, *_ = setup
    target = gm.noised(path, 1e-3)
    err, bound = moment_errors(flows["spin"], target, left_mass=True), law_bounds(target)
    assert err["cov"] > 2 * bound["cov"] and err["left_mass"] > 2 * bound["left_mass"]  # left mass about 0.411, not 0.30


def test_gf3_gauge_field_gives_the_exact_likelihood_through_other_latents(setup):
    gm, path, score, logp = setup
    x = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, 0.5]])
    rotated = lambda y, t: score(y, t) @ (torch.eye(2) + A3).T  # noqa: E731
    kw = dict(eps=1e-3, prior=gm.noised(path, 1.0), rtol=1e-7, atol=1e-8, return_details=True)
    a, b = log_likelihood(score, path, x, **kw), log_likelihood(rotated, path, x, **kw)
    exact = logp(x, 1e-3)
    assert (a.log_prob - exact).abs().max() < 1e-5 and (b.log_prob - exact).abs().max() < 1e-5
    assert (a.x_1 - b.x_1).norm(dim=1).max() > 1.0  # other latents (about 4.09, 1.07, 0.65 apart at its points)


def test_gf6_loops_and_asymmetry(setup):
    gm, path, score, _ = setup
    rotated = lambda y, t: score(y, t) @ (torch.eye(2) + A3).T  # noqa: E731
    c, u, v = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert abs(circulation(score, c, u, v, 1.0, 0.3)) < 1e-12
    assert abs(circulation(rotated, c, u, v, 1.0, 0.3) - 12.07) < 0.01  # 12.07 (normalised 0.986)
    x = gm.noised(path, 0.3).sample(200, generator=torch.Generator().manual_seed(6))
    assert jacobian_asymmetry(score, x, 0.3).max() < 1e-12
    assert jacobian_asymmetry(rotated, x, 0.3).median() > 0.1  # median about 1.86


# -- intrinsic dimension ----------------------------------------------------------------------------------
def _ve_time(sigma, ve):
    """t with VE sigma(t) = sigma: sigma^2 = s_min^2 ((s_max / s_min)^(2t) - 1)."""
    return math.log1p((sigma / ve.sigma_min) ** 2) / (2 * math.log(ve.sigma_max / ve.sigma_min))


def test_gf7_plane_in_r5_hessian_and_flow_map():
    """D = 5, d = 2, in-plane variances (1, 0.5), VP: Hessian ID 0 at t = 0.3 (noise too large), 2 at t <= 0.05;
    flow-map singular values equal the closed form sqrt((s_t^2 + a_t^2 lam) / (s_1^2 + a_1^2 lam)); ID 2 at t <= 0.01."""
    path, g = dl.VP(), torch.Generator().manual_seed(7)
    basis, _ = torch.linalg.qr(torch.randn(5, 2, generator=g))
    gauss = dl.Gaussian(torch.zeros(5), basis @ torch.diag(torch.tensor([1.0, 0.5])) @ basis.T)
    hess = dl.exact_score_jacobian(gauss, path)
    x0 = gauss.sample(6, generator=g)
    for t, dim in ((0.3, 0), (0.05, 2), (1e-3, 2)):
        est = G.score_hessian_dimension(None, path.sample(x0, t, generator=g)[0], t, path, jacobian=hess)
        assert (est.dimension == dim).all()
    velocity, jac = dl.pf_velocity(dl.exact_score(gauss, path), path), G.pf_velocity_jacobian(hess, path)
    a1, s1 = vp_alpha_sigma(1.0)
    for t_end, dim in ((0.1, 5), (0.01, 2)):
        grid = dl.time_grid(150, t_end=t_end, kind="log_snr", path=path)
        _, sv = G.flow_map_singular_values(velocity, torch.randn(3, 5, generator=g), grid, jacobian=jac)
        a, s = vp_alpha_sigma(t_end)
        lam = np.array([1.0, 0.5, 0.0, 0.0, 0.0])
        ref = np.sqrt((s**2 + a**2 * lam) / (s1**2 + a1**2 * lam))  # about (1, 0.708, 0.0446, ...) at 0.01
        assert np.abs(sv[-1].numpy() - ref).max() < 2e-3
        assert (G.flow_map_dimension(sv[-1]).dimension == dim).all()
    _, sv_auto = G.flow_map_singular_values(velocity, torch.randn(2, 5, generator=g), dl.time_grid(40, t_end=0.01, kind="log_snr", path=path))
    assert (G.flow_map_dimension(sv_auto[-1]).dimension == 2).all()  # same answer through autograd Jacobians


def test_plane_in_r5_dataset_has_dimension_two():
    """manifold_data("plane_in_r5"): the exact score of the fitted (near-degenerate) Gaussian gives ID 2 both ways."""
    data = dl.manifold_data("plane_in_r5", 5000, generator=torch.Generator().manual_seed(8)).double()
    assert dl.MANIFOLD_DATASETS["plane_in_r5"] == (5, 2)
    fitted, path, t = dl.Gaussian(data.mean(0), torch.cov(data.T)), dl.VP(), 0.01
    xt = path.sample(data[:8], t, generator=torch.Generator().manual_seed(9))[0]
    assert (G.score_hessian_dimension(None, xt, t, path, jacobian=dl.exact_score_jacobian(fitted, path)).dimension == 2).all()
    est = G.score_svd_dimension(dl.exact_score(fitted, path), data[:8], t, path, generator=torch.Generator().manual_seed(10))
    assert (est.dimension == 2).all()


def test_gf8_circle_in_r3_delta_mixture():
    """4000 points on the unit circle (delta mixture, VE so alpha = 1): Hessian ID 1 at sigma = 0.2, 0.05, 0.02;
    score-matrix SVD (K = 200, sigma = 0.02): normalised values ~ (1, 0.9, 0.055) -> codimension 2."""
    data = dl.manifold_data("circle_in_r3", 4000, generator=torch.Generator().manual_seed(11)).double()
    delta, ve = dl.GaussianMixture(torch.ones(4000), data, torch.zeros(4000, 3, 3)), dl.VE()
    q = data[:4] + 0.01 * torch.randn(4, 3, generator=torch.Generator().manual_seed(12))
    for sigma in (0.2, 0.05, 0.02):
        t = _ve_time(sigma, ve)
        assert abs(float(ve.sigma(t)) - sigma) < 1e-12
        est = G.score_hessian_dimension(None, q, t, ve, jacobian=dl.exact_score_jacobian(delta, ve))
        assert (est.dimension == 1).all()
    est = G.score_svd_dimension(dl.exact_score(delta, ve), data[:4], _ve_time(0.02, ve), ve,
                                generator=torch.Generator().manual_seed(13))
    assert (est.dimension == 1).all() and (est.spectrum[:, 2] < 0.2).all() and (est.spectrum[:, 1] > 0.7).all()
    # the Hessian route through autograd on the exact score gives the same spectrum as the closed form
    t = _ve_time(0.05, ve)
    auto = G.score_hessian_dimension(dl.exact_score(delta, ve), q[:2], t, ve)
    closed = G.score_hessian_dimension(None, q[:2], t, ve, jacobian=dl.exact_score_jacobian(delta, ve))
    assert torch.allclose(auto.spectrum, closed.spectrum, atol=1e-8)


def test_empirical_score_hessian_is_the_delta_mixture_hessian():
    """Second-order Tweedie for K = 60 points in R^4 (VP and VE) against the mixture's closed-form Hessian."""
    g = torch.Generator().manual_seed(14)
    data = torch.randn(60, 4, generator=g)
    delta = dl.GaussianMixture(torch.ones(60), data, torch.zeros(60, 4, 4))
    for path, t in ((dl.VP(), 0.05), (dl.VP(), 0.4), (dl.VE(), 0.2)):
        x = path.sample(data[:5], t, generator=g)[0]
        ref = dl.exact_score_jacobian(delta, path)(x, t)
        assert torch.allclose(G.empirical_score_hessian(data, path)(x, t), ref, atol=1e-8 * ref.abs().max())


def test_grid_and_input_errors():
    grid = G.make_grid((-1, 1, 0, 2), (5, 3))
    assert grid.shape == (5, 3) and grid.points.shape == (15, 2) and torch.allclose(grid.points[1], torch.tensor([-1.0, 1.0]))
    assert abs(grid.integrate(torch.ones(15)) - 15 * 0.5 * 1.0) < 1e-12
    with pytest.raises(ValueError, match="extent"):
        G.make_grid((0, 1, 2), 10)
    with pytest.raises(ValueError, match="2-D"):
        G.gauge_decomposition(grad_psi, lambda x, t: x[:, 0], 0.3, G.make_grid((-1, 1), 10))
    with pytest.raises(ValueError, match="Gaussian prior"):
        G.wgf_prior_variance(dl.VE(), 0.5)
    with pytest.raises(ValueError, match="t - dt"):
        G.continuity_residual(lambda x, t: x[:, 0], grad_psi, 1.0, grid)


def test_gauge_perturbed_is_score_plus_a_gauge_field_and_refuses_a_symmetric_matrix(setup):
    """(I + A) score against the product written out, its gauge part against tr(A H) = 0 (check GF-1), and the
    clear error for a matrix that is not antisymmetric."""
    gm, path, score, _ = setup
    x = gm.noised(path, 0.3).sample(50, generator=torch.Generator().manual_seed(3))
    field = G.gauge_perturbed(score, A3)
    s = score(x, 0.3).numpy()
    expected = s + s @ A3.numpy().T
    assert np.abs(field(x, 0.3).numpy() - expected).max() < 1e-12

    def gauge_part(y, t):
        return field(y, t) - score(y, t)

    assert G.gauge_condition(gauge_part, score, x, 0.3).abs().max() < 1e-12
    with pytest.raises(ValueError, match="antisymmetric"):
        G.gauge_perturbed(score, torch.eye(2, dtype=torch.float64))


def test_constant_gauge_leaves_the_flow_map_singular_values_of_gaussian_data():
    """For Gaussian data the gauge part only rotates the standardised coordinates, so the flow-map Jacobian
    C_t^(1/2) O_t C_1^(-1/2) keeps the singular values sqrt(C_t / C_1) of the closed form (numpy, here)."""
    path = dl.VP()
    cov = torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64))  # data on a plane in R^3
    plane = dl.Gaussian(torch.zeros(3, dtype=torch.float64), cov)
    A = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.5], [-1.0, -0.5, 0.0]], dtype=torch.float64)
    hess = dl.exact_score_jacobian(plane, path)
    field = G.gauge_perturbed(dl.exact_score(plane, path), A)

    def jac(x, t):
        return (torch.eye(3, dtype=torch.float64) + A) @ hess(x, t)

    grid = dl.time_grid(800, t_end=0.01, kind="log_snr", path=path)
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, sv = G.flow_map_singular_values(dl.pf_velocity(field, path), x_T, grid, jacobian=G.pf_velocity_jacobian(jac, path))
    a1, s1 = math.exp(-path.B(1.0).item() / 2), math.sqrt(1 - math.exp(-path.B(1.0).item()))
    at, st = math.exp(-path.B(0.01).item() / 2), math.sqrt(1 - math.exp(-path.B(0.01).item()))
    nu = np.array([4.0, 1.0, 0.0])
    expected = np.sort(np.sqrt((at**2 * nu + st**2) / (a1**2 * nu + s1**2)))[::-1]
    assert np.abs(sv[-1].numpy() / expected - 1).max() < 1e-3
