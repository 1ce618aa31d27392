"""Conservativity diagnostics (checks TK-5, GF-6) on fields whose answers are known exactly:
gradients (zero), linear fields F(x) = A x (ratio and circulation from A), rotations, the exact
mixture score in float64 against numpy references, and the Monte-Carlo law of the probe estimator."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import diagnostics as dg
from reference import GMM2, gmm_logpdf_score, gmm_t, vp_alpha_sigma


pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")  # see conftest.py



def _ratio_np(J):
    """||J - J^T||_F / ||J||_F in numpy."""
    J = np.asarray(J)
    return np.linalg.norm(J - np.swapaxes(J, -1, -2), axis=(-2, -1)) / np.linalg.norm(J, axis=(-2, -1))


def _vp_gmm2(t):
    a, s = vp_alpha_sigma(t)
    return gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s)


def _hessian_np(x, t):
    """Hessian of log p_t for GMM2 under VP (explicit inverses): [N, 2, 2]."""
    pis, mus, covs = _vp_gmm2(t)
    _, s, w, sk = gmm_logpdf_score(x, pis, mus, covs)
    P = np.linalg.inv(covs)
    return (np.einsum("nk,kij->nij", w, -P) + np.einsum("nk,nki,nkj->nij", w, sk, sk)
            - np.einsum("ni,nj->nij", s, s))


def _linear(A):
    """F(x) = A x for x [N, D] or images [N, C, H, W] flattened (A is [D, D])."""
    A = torch.as_tensor(A)
    return lambda x, t: (x.reshape(x.shape[0], -1) @ A.T.to(x)).reshape(x.shape)


@pytest.fixture
def score():
    return dl.exact_score(dl.gmm2(), dl.VP())


# -- Jacobians and the asymmetry ratio -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["func", "autograd"])
def test_jacobian_of_exact_score_is_the_numpy_hessian(score, method):
    """TK-2: J of the exact score = Hessian of log p_t (numpy reference), symmetric; t a float or per point."""
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(60, 2)) * 2)
    for t in (0.05, 0.3, 0.8):
        J = dg.jacobian(score, x, t, method=method)
        assert J.shape == (60, 2, 2) and J.dtype == torch.float64
        assert np.abs(J.numpy() - _hessian_np(x.numpy(), t)).max() < 1e-11
        assert dg.jacobian_asymmetry(score, x, t).max() < 1e-12
    times = torch.linspace(0.1, 0.9, 60)
    J = dg.jacobian(score, x, times, method=method)
    ref = np.stack([_hessian_np(x[i:i + 1].numpy(), float(times[i]))[0] for i in range(60)])
    assert np.abs(J.numpy() - ref).max() < 1e-11


def test_linear_field_ratio_is_exact_for_both_methods_and_images():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4))
    x = torch.from_numpy(rng.normal(size=(7, 4)))
    for method in ("func", "autograd"):
        J = dg.jacobian(_linear(A), x, 0.5, method=method)
        assert np.abs(J.numpy() - A).max() < 1e-13
    ratio = dg.jacobian_asymmetry(_linear(A), x, 0.5)
    assert np.abs(ratio.numpy() - _ratio_np(A)).max() < 1e-13
    # images [N, 1, 4, 4]: the field sees the flattened pixels, D = 16
    B = rng.normal(size=(16, 16))
    imgs = torch.from_numpy(rng.normal(size=(3, 1, 4, 4)))
    assert np.abs(dg.jacobian(_linear(B), imgs, 0.5).numpy() - B).max() < 1e-13
    assert np.abs(dg.jacobian_asymmetry(_linear(B), imgs, 0.5).numpy() - _ratio_np(B)).max() < 1e-13


def test_rotations_and_symmetric_fields_give_the_extremes():
    """A rotation generator (antisymmetric A) gives the largest ratio, 2; a symmetric A gives 0."""
    rng = np.random.default_rng(2)
    M = rng.normal(size=(3, 3))
    x = torch.from_numpy(rng.normal(size=(5, 3)))
    assert torch.allclose(dg.jacobian_asymmetry(_linear(M - M.T), x, 0.1), torch.full((5,), 2.0), atol=1e-14)
    assert dg.jacobian_asymmetry(_linear(M + M.T), x, 0.1).max() < 1e-15


def test_energy_net_is_symmetric_by_construction():
    """EnergyNet's field is -grad E: its Jacobian -Hess E is symmetric to float64 round-off, by both
    methods and by the probe estimator (which falls back to autograd: EnergyNet has no forward-mode AD)."""
    torch.manual_seed(0)
    net = dl.EnergyNet(3, hidden=32, depth=2).double()
    x = torch.randn(20, 3)
    J1, J2 = dg.jacobian(net, x, 0.4, method="func"), dg.jacobian(net, x, 0.4, method="autograd")
    assert (J1 - J2).abs().max() < 1e-14 and J1.abs().max() > 1e-4
    assert dg.jacobian_asymmetry(net, x, 0.4).max() < 1e-12
    # the estimator's numerator is round-off, so its floor is sqrt(eps), not eps
    assert dg.jacobian_asymmetry(net, x[:4], 0.4, exact=False, n_probes=8).max() < 1e-6


# -- the matrix-free estimator --------------------------------------------------------------------------
def _delta_method_std(A, n_probes, kind):
    """Standard deviation of sqrt(2 mean a / mean b) from the exact second moments of
    a = z^T (A^T A - A A) z and b = z^T A^T A z (Gaussian: Cov = 2 tr(S T); Rademacher: the same
    sum without the diagonal), S, T the symmetric parts."""
    M = A.T @ A - A @ A
    Ms, B = (M + M.T) / 2, A.T @ A
    mean_a, mean_b = np.trace(M), np.trace(B)

    def cov(S, T):
        total = (S * T).sum()
        return 2 * (total - (np.diag(S) * np.diag(T)).sum() if kind == "rademacher" else total)

    R = math.sqrt(2 * mean_a / mean_b)
    rel = cov(Ms, Ms) / mean_a**2 + cov(B, B) / mean_b**2 - 2 * cov(Ms, B) / (mean_a * mean_b)
    return R, 0.5 * R * math.sqrt(rel / n_probes)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_probe_estimator_converges_with_its_monte_carlo_error(kind):
    """All points of a linear field share J = A, so N points give N independent estimates: their
    spread matches the delta-method standard deviation, their mean error shrinks like 1/sqrt(P), and the
    reported standard error agrees with the exact one."""
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6)) + 2 * np.eye(6)
    n_points = 300
    x = torch.zeros(n_points, 6)
    rms = {}
    for P in (32, 512):
        R, std = _delta_method_std(A, P, kind)
        gen = torch.Generator().manual_seed(P)
        est, se = dg.jacobian_asymmetry(_linear(A), x, 0.5, exact=False, n_probes=P, probes=kind,
                                        generator=gen, return_stderr=True, max_batch=n_points * P)
        rms[P] = float((est - R).square().mean().sqrt())
        assert 0.8 * std < float(est.std()) < 1.2 * std, (P, float(est.std()), std)
        assert abs(float(est.mean()) - R) < 5 * std / math.sqrt(n_points) + 2 * std**2 / R  # MC + O(1/P) bias
        assert 0.8 * std < float(se.median()) < 1.25 * std
    assert 2.8 < rms[32] / rms[512] < 5.7  # ideal sqrt(16) = 4
    assert abs(R - _ratio_np(A)) < 1e-12


def test_probe_estimator_on_a_network_matches_the_exact_ratio():
    torch.manual_seed(0)
    net = dl.TimeMLP(2, hidden=32, depth=2).double()
    x = torch.randn(4, 2)
    exact = dg.jacobian_asymmetry(net, x, 0.3, exact=True)
    est, se = dg.jacobian_asymmetry(net, x, torch.full((4,), 0.3), exact=False, n_probes=1500,
                                    generator=torch.Generator().manual_seed(0), return_stderr=True, max_batch=6000)
    assert ((est - exact).abs() < 5 * se + 1e-3).all()


# -- sub-Jacobians ------------------------------------------------------------------------------------------
def test_sub_jacobian_of_a_linear_field_is_the_sub_block():
    rng = np.random.default_rng(4)
    A = rng.normal(size=(16, 16))
    imgs = torch.from_numpy(rng.normal(size=(3, 1, 4, 4)))
    idx = [5, 0, 11, 7]
    block = dg.sub_jacobian(_linear(A), imgs, 0.2, idx)
    assert block.shape == (3, 4, 4)
    assert np.abs(block.numpy() - A[np.ix_(idx, idx)]).max() < 1e-13
    per_point = torch.tensor([[1, 2, 3], [15, 4, 9], [8, 0, 6]])
    blocks = dg.sub_jacobian(_linear(A), imgs, 0.2, per_point)
    for n in range(3):
        i = per_point[n].numpy()
        assert np.abs(blocks[n].numpy() - A[np.ix_(i, i)]).max() < 1e-13
    ratio = dg.sub_jacobian_asymmetry(_linear(A), imgs, 0.2, index=idx)
    assert np.abs(ratio.numpy() - _ratio_np(A[np.ix_(idx, idx)])).max() < 1e-13
    # a random subset drawn by the generator: reproducible, distinct, the block ratio of that subset
    r1 = dg.sub_jacobian_asymmetry(_linear(A), imgs, 0.2, k=6, generator=torch.Generator().manual_seed(0))
    r2 = dg.sub_jacobian_asymmetry(_linear(A), imgs, 0.2, k=6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1, r2)
    sym = dg.sub_jacobian_asymmetry(_linear(A + A.T), imgs, 0.2, k=8, generator=torch.Generator().manual_seed(1))
    assert sym.max() < 1e-15


# -- circulation, Stokes and path independence ---------------------------------------------------------------
def test_circulation_of_a_linear_field_is_pi_r2_v_antisym_u():
    """C = pi r^2 v^T (A - A^T) u exactly (the trapezoid is exact on trigonometric polynomials), for a
    batch of loops with their own centres, planes and radii in R^5."""
    rng = np.random.default_rng(5)
    A = rng.normal(size=(5, 5))
    B = 4
    centres = rng.normal(size=(B, 5))
    planes = [np.linalg.qr(rng.normal(size=(5, 2)))[0] for _ in range(B)]
    u, v = np.stack([p[:, 0] for p in planes]), np.stack([p[:, 1] for p in planes])
    radii = np.array([0.1, 0.5, 1.0, 3.0])
    C = dg.circulation(_linear(A), torch.from_numpy(centres), torch.from_numpy(u), torch.from_numpy(v),
                       torch.from_numpy(radii), 0.5, n=16)
    ref = math.pi * radii**2 * np.einsum("bi,ij,bj->b", v, A - A.T, u)
    assert C.shape == (B,)
    assert np.abs(C.numpy() - ref).max() < 1e-12 * np.abs(ref).max()


def test_rotation_circulation_is_twice_the_area():
    rot = _linear(np.array([[0.0, -1.0], [1.0, 0.0]]))  # F = (-y, x)
    e1, e2 = torch.eye(2)
    for r in (0.3, 2.0):
        C = dg.circulation(rot, torch.tensor([1.0, -2.0]), e1, e2, r, 0.5)
        assert abs(float(C) - 2 * math.pi * r**2) < 1e-12
        assert abs(float(dg.circulation(rot, torch.zeros(2), e1, e2, r, 0.5, normalize=True)) - 1) < 1e-12
    assert abs(float(dg.circulation(rot, torch.zeros(2), e2, e1, 1.0, 0.5)) + 2 * math.pi) < 1e-12  # clockwise


def test_gf6_loops_of_the_exact_score_and_the_gauge_field(score):
    """GF-6: circulation of the exact score ~ 0 (spectral accuracy); of (I + A) grad log p_t it is 12.07
    (normalised 0.986) around the circle centre (0.5, 0.5), r = 1 at VP t = 0.3 (check GF-6's reference values)."""
    A = torch.tensor([[0.0, 3.0], [-3.0, 0.0]])
    gauge = lambda x, t: score(x, t) @ (torch.eye(2) + A).T  # noqa: E731
    c, (e1, e2) = torch.tensor([0.5, 0.5]), torch.eye(2)
    assert abs(float(dg.circulation(score, c, e1, e2, 1.0, 0.3))) < 1e-12
    assert abs(float(dg.circulation(score, c, e1, e2, 1.0, 0.3, normalize=True))) < 1e-12
    centres = torch.from_numpy(np.random.default_rng(6).normal(size=(10, 2)) * 2)
    loops = dg.circulation(score, centres, e1, e2, torch.linspace(0.2, 3.0, 10), torch.linspace(0.05, 0.9, 10))
    assert loops.abs().max() < 1e-12
    assert abs(float(dg.circulation(gauge, c, e1, e2, 1.0, 0.3)) - 12.07) < 0.01
    assert abs(float(dg.circulation(gauge, c, e1, e2, 1.0, 0.3, normalize=True)) - 0.986) < 0.001
    x = torch.from_numpy(np.random.default_rng(7).normal(size=(200, 2)) * 2)
    assert dg.jacobian_asymmetry(gauge, x, 0.3).median() > 0.1


def test_tk5_stokes_link(score):
    """TK-5: C / (pi r^2) -> v^T (J - J^T) u with J = (I + A) H and H the numpy Hessian; 1e-3 at r = 0.01."""
    A = np.array([[0.0, 3.0], [-3.0, 0.0]])
    gauge = lambda x, t: score(x, t) @ (torch.eye(2) + torch.from_numpy(A)).T  # noqa: E731
    J = (np.eye(2) + A) @ _hessian_np(np.array([[0.5, 0.5]]), 0.3)[0]
    curl = (J - J.T)[1, 0]  # v^T (J - J^T) u with u = e1, v = e2
    assert abs(curl - 4.792057) < 1e-6
    c, (e1, e2) = torch.tensor([0.5, 0.5]), torch.eye(2)
    rel = {}
    for r, quoted in ((0.1, 4.7717), (0.03, 4.79022), (0.01, 4.79185)):
        value = float(dg.circulation(gauge, c, e1, e2, r, 0.3)) / (math.pi * r**2)
        assert abs(value - quoted) < 1e-4
        rel[r] = abs(value / curl - 1)
    assert rel[0.01] < 1e-3
    assert 8 < rel[0.03] / rel[0.01] < 10  # the gap is O(r^2): (3)^2 = 9


def test_path_independence_of_the_exact_score(score):
    """Line integrals of grad log p_t = log p_t(b) - log p_t(a) (numpy) for a straight and a bent path."""
    pis, mus, covs = _vp_gmm2(0.3)
    a, b = np.array([-2.0, -1.0]), np.array([2.0, 1.5])
    logp = gmm_logpdf_score(np.stack([a, b]), pis, mus, covs)[0]
    straight = torch.from_numpy(np.stack([a, b]))
    bent = torch.from_numpy(np.stack([a, [0.0, 4.0], [1.0, -2.0], b]))
    for path in (straight, bent):
        assert abs(float(dg.path_integral(score, path, 0.3, n=256)) - (logp[1] - logp[0])) < 1e-9
    assert abs(float(dg.path_independence_gap(score, bent, straight, 0.3, n=256))) < 1e-9
    batch = dg.path_integral(score, torch.stack([straight, straight.flip(0)]), torch.tensor([0.3, 0.3]), n=256)
    assert abs(float(batch[0] + batch[1])) < 1e-12


def test_closed_polyline_of_a_linear_field_encloses_the_curl():
    """Simpson is exact on each segment of a linear field: the gap between a -> b -> c and a -> c is the
    loop integral around the triangle, (A21 - A12) times its signed area (Green)."""
    A = np.array([[0.3, -1.2], [0.7, 0.1]])
    a, b, c = np.array([0.0, 0.0]), np.array([2.0, 0.0]), np.array([0.5, 1.5])
    area = 0.5 * ((b - a)[0] * (c - a)[1] - (b - a)[1] * (c - a)[0])
    via_b, direct = torch.from_numpy(np.stack([a, b, c])), torch.from_numpy(np.stack([a, c]))
    gap = dg.path_independence_gap(_linear(A), via_b, direct, 0.5, n=2)
    assert abs(float(gap) - (A[1, 0] - A[0, 1]) * area) < 1e-13


# -- dtypes, devices, networks and errors -----------------------------------------------------------------
def test_float32_and_networks_in_their_own_dtype():
    torch.manual_seed(0)
    net = dl.TimeMLP(2, hidden=16, depth=1)  # float32 parameters (built under float64 default: cast)
    net = net.float()
    x64 = torch.randn(5, 2)
    J64 = dg.jacobian(net, x64, 0.5)
    assert J64.dtype == torch.float64
    J32 = dg.jacobian(net, x64.float(), 0.5)
    assert J32.dtype == torch.float32 and torch.allclose(J64.float(), J32, atol=1e-6)
    C = dg.circulation(net, torch.zeros(2, dtype=torch.float32), torch.tensor([1.0, 0.0], dtype=torch.float32),
                       torch.tensor([0.0, 1.0], dtype=torch.float32), 0.5, 0.3)
    assert C.dtype == torch.float32 and C.dim() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    score = dl.exact_score(dl.gmm2(device="cuda"), dl.VP())
    x = torch.randn(10, 2, device="cuda")
    assert dg.jacobian_asymmetry(score, x, 0.3).max() < 1e-12
    e1, e2 = torch.eye(2, device="cuda")
    assert abs(float(dg.circulation(score, torch.zeros(2, device="cuda"), e1, e2, 1.0, 0.3))) < 1e-12


def test_errors_speak_to_the_reader(score):
    e1, e2 = torch.eye(2)
    with pytest.raises(ValueError, match=r"\[N, \.\.\.\]"):
        dg.jacobian(score, torch.zeros(2), 0.3)
    with pytest.raises(ValueError, match="shaped like its input"):
        dg.jacobian_asymmetry(lambda x, t: x.sum(1), torch.zeros(3, 2), 0.3)
    with pytest.raises(ValueError, match="t must be a float or a tensor"):
        dg.jacobian(score, torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="orthonormal"):
        dg.circulation(score, torch.zeros(2), e1, e1 + e2, 1.0, 0.3)
    with pytest.raises(ValueError, match="same dimension"):
        dg.circulation(score, torch.zeros(3), e1, e2, 1.0, 0.3)
    with pytest.raises(ValueError, match="radius"):
        dg.circulation(score, torch.zeros(2), e1, e2, -1.0, 0.3)
    with pytest.raises(ValueError, match="same start and end"):
        dg.path_independence_gap(score, torch.stack([e1, e2]), torch.stack([e1, -e2]), 0.3)
    with pytest.raises(ValueError, match="even"):
        dg.path_integral(score, torch.stack([e1, e2]), 0.3, n=3)
    with pytest.raises(ValueError, match="index values"):
        dg.sub_jacobian(score, torch.zeros(3, 2), 0.3, [0, 2])
    with pytest.raises(ValueError, match="repeat"):
        dg.sub_jacobian(score, torch.zeros(3, 2), 0.3, [1, 1])
    with pytest.raises(ValueError, match="k must lie"):
        dg.sub_jacobian_asymmetry(score, torch.zeros(3, 2), 0.3, k=5)
    with pytest.raises(ValueError, match="no_grad"):
        dg.jacobian(lambda x, t: x.detach() * 2, torch.zeros(3, 2), 0.3, method="autograd")
    with pytest.raises(ValueError, match="unknown probe kind"):
        dg.jacobian_asymmetry(score, torch.zeros(3, 2), 0.3, exact=False, probes="uniform")
