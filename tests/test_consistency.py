"""Consistency models against independent float64 references: check FM-1 (a), (b), (c)."""
import itertools
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.flow_maps import (
    ConsistencyDistillation,
    ConsistencyModel,
    ConsistencyTraining,
    EDMDenoiser,
    consistency_scalings,
    ct_schedule,
    euler_teacher_step,
    gaussian_flow_map,
    karras_sigma,
    sample_consistency,
)

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA, RHO = 0.002, 80.0, 0.5, 7.0
MU, LAM = 0.5, 0.25  # the 1-D data N(0.5, 0.25) of FM-1


class _EDMPath(dl.Path):
    """alpha = 1, sigma = 80 t (EDM's variance-exploding path in the course's time)."""

    name = "edm-test"

    def alpha(self, t):
        return torch.ones_like(dl.paths.as_time(t))

    def sigma(self, t):
        return SIGMA_MAX * dl.paths.as_time(t)

    def dalpha(self, t):
        return torch.zeros_like(dl.paths.as_time(t))

    def dsigma(self, t):
        return torch.full_like(dl.paths.as_time(t), SIGMA_MAX)


EDM = _EDMPath()
DATA = dl.Gaussian(torch.tensor([MU], dtype=torch.float64), torch.tensor([[LAM]], dtype=torch.float64))


def exact_f(x, t):
    """The exact consistency function f*(x, sigma) = Phi_{sigma -> sigma_min}(x), from the package's oracle."""
    t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
    return gaussian_flow_map(DATA, EDM, x, t, torch.full_like(t, SIGMA_MIN / SIGMA_MAX))


EXACT_TEACHER = EDMDenoiser(dl.exact_prediction(DATA, EDM, "x0"), "x0", EDM)


# -- independent numpy references ------------------------------------------------------------------------
def np_phi(x, s_from, s_to):
    return MU + np.sqrt((LAM + s_to**2) / (LAM + s_from**2)) * (x - MU)


def np_denoiser(x, s):
    return MU + LAM / (LAM + s**2) * (x - MU)


def np_heun(x, s, s2):
    d = (x - np_denoiser(x, s)) / s
    xe = x + (s2 - s) * d
    return x + (s2 - s) * (d + (xe - np_denoiser(xe, s2)) / s2) / 2


def np_euler(x, s, s2):
    return x + (s2 - s) * (x - np_denoiser(x, s)) / s


# -- FM-1 (a) ---------------------------------------------------------------------------------------------
def test_fm1a_boundary_condition_constants():
    """Check FM-1 (a): c_skip(sigma_min) = 1, c_out(sigma_min) = 0 exactly; values at sigma = 0.5 vs the formula."""
    c_skip, c_out, _c_in = consistency_scalings(SIGMA_MIN)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    s = 0.5
    ref = (SIGMA_DATA**2 / ((s - SIGMA_MIN) ** 2 + SIGMA_DATA**2),
           (s - SIGMA_MIN) * SIGMA_DATA / math.sqrt(s**2 + SIGMA_DATA**2), 1 / math.sqrt(s**2 + SIGMA_DATA**2))
    for ours, theirs in zip(consistency_scalings(s), ref):
        assert abs(ours.item() - theirs) < 1e-15


def _random_consistency_model():
    torch.manual_seed(0)
    return ConsistencyModel(dl.TimeMLP(1, hidden=16), sigma_data=SIGMA_DATA).double()


def test_fm1a_a_consistency_model_is_the_identity_at_sigma_min_and_rebuilds():
    model = _random_consistency_model()
    x = torch.randn(100, 1, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(x, SIGMA_MIN / SIGMA_MAX), x)
        assert (model(x, 0.5) - x).abs().max() > 1e-3  # not trivially the identity
    rebuilt = dl.build_model(model.config).double()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x, 0.3), model(x, 0.3))


def test_fm1a_the_denoiser_scalings_of_edm_would_break_the_boundary_condition():
    """A wrong c_skip (EDM's denoiser sigma_d^2 / (sigma^2 + sigma_d^2), no sigma_min shift) fails the check above."""
    x = torch.randn(100, 1, dtype=torch.float64)
    net_out = torch.randn(100, 1, dtype=torch.float64)
    wrong_skip = SIGMA_DATA**2 / (SIGMA_MIN**2 + SIGMA_DATA**2)
    wrong_out = SIGMA_MIN * SIGMA_DATA / math.sqrt(SIGMA_MIN**2 + SIGMA_DATA**2)
    assert (wrong_skip * x + wrong_out * net_out - x).abs().max() > 1e-4


# -- FM-1 (b): residual of the exact map under the three targets ------------------------------------------
def _draw(objective, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = DATA.sample(n, generator=g)
    return x0, objective.draw(x0, g, 0, 1)


def _rms_ours(objective, x0, drawn):
    with torch.no_grad():
        return math.sqrt(objective.loss(exact_f, exact_f, x0, *drawn).item())


def _rms_numpy(x0, drawn, step):
    s, s2, z = (v.numpy().ravel() for v in drawn)
    x0 = x0.numpy().ravel()
    x = x0 + s * z
    nxt = (x0 + s2 * z) if step == "ct" else step(x, s, s2)
    return math.sqrt(np.mean((np_phi(x, s, SIGMA_MIN) - np_phi(nxt, s2, SIGMA_MIN)) ** 2))


class _EulerDistillation(ConsistencyDistillation):
    """The same objective with an Euler teacher step (the order-1 reference of FM-1)."""

    def next_point(self, x0, x, sigma, sigma_next, z):
        return euler_teacher_step(self.teacher, x, sigma, sigma_next)


@pytest.fixture(scope="module")
def residuals():
    out = {"heun": [], "euler": [], "ct": []}
    for n in (80, 160, 320):
        for kind, objective, step in (
            ("heun", ConsistencyDistillation(EXACT_TEACHER, n_scales=n), np_heun),
            ("euler", _EulerDistillation(EXACT_TEACHER, n_scales=n), np_euler),
            ("ct", ConsistencyTraining(start_scales=n, end_scales=n), "ct"),
        ):
            x0, drawn = _draw(objective, seed=n)
            ours = _rms_ours(objective, x0, drawn)
            assert abs(ours - _rms_numpy(x0, drawn, step)) < 1e-9 * ours + 1e-15, kind
            out[kind].append(ours)
    return out


@pytest.mark.parametrize("kind, window", [("heun", (7.0, 9.5)), ("euler", (3.6, 4.4)), ("ct", (1.8, 2.2))])
def test_fm1b_residual_orders(residuals, kind, window):
    """Check FM-1 (b): the exact map's residual falls 8x (Heun teacher), 4x (Euler), 2x (CT) per doubling of N."""
    rms = residuals[kind]
    ratios = [a / b for a, b in itertools.pairwise(rms)]
    print(kind, rms, ratios)
    assert all(window[0] <= q <= window[1] for q in ratios), (kind, rms, ratios)


def test_fm1b_the_draw_is_on_the_karras_grid():
    objective = ConsistencyDistillation(EXACT_TEACHER, n_scales=18)
    _, (s, s2, _) = _draw(objective, n=5000)
    grid = [SIGMA_MAX ** (1 / RHO) + i / 17 * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO)) for i in range(18)]
    grid = torch.tensor([g**RHO for g in grid], dtype=torch.float64)
    index = (s[:, None] - grid[None]).abs().argmin(1)
    assert torch.allclose(s, grid[index], rtol=1e-12) and torch.allclose(s2, grid[index + 1], rtol=1e-12)
    assert set(index.tolist()) == set(range(17))  # n ~ U{0, ..., N - 2}
    assert torch.allclose(karras_sigma(torch.arange(18.0, dtype=torch.float64), 18), grid, rtol=1e-13)


# -- FM-1 (c): one- and two-step laws ---------------------------------------------------------------------
def _affine_law(apply, var_in):
    """Mean and variance of apply(x) for x ~ N(0, var_in) when apply is affine in x (read off two points)."""
    a = apply(torch.zeros(1, 1, dtype=torch.float64)).item()
    b = apply(torch.ones(1, 1, dtype=torch.float64)).item() - a
    return a, b * b * var_in


def test_fm1c_one_and_two_step_laws():
    """Check FM-1 (c): one step from 80 z has law N(mu (1 - psi), psi^2 80^2); two steps ts = (0, 22, 39) of 40."""
    psi = math.sqrt((LAM + SIGMA_MIN**2) / (LAM + SIGMA_MAX**2))
    one = (MU * (1 - psi), psi**2 * SIGMA_MAX**2)
    ours = _affine_law(lambda x: exact_f(x, 1.0), SIGMA_MAX**2)
    assert abs(ours[0] - one[0]) < 1e-9 and abs(ours[1] - one[1]) < 1e-9
    t1 = (SIGMA_MAX ** (1 / RHO) + 22 / 39 * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    psi1 = math.sqrt((LAM + SIGMA_MIN**2) / (LAM + t1**2))
    mean1 = MU * (1 - psi)
    var1 = psi**2 * SIGMA_MAX**2 + t1**2 - SIGMA_MIN**2  # after re-noising to t1
    two = (MU + psi1 * (mean1 - MU), psi1**2 * var1)
    _, var2 = _affine_law(lambda x: exact_f(x, t1 / SIGMA_MAX), var1)
    assert abs(exact_f(torch.tensor([[mean1]], dtype=torch.float64), t1 / SIGMA_MAX).item() - two[0]) < 1e-9
    assert abs(var2 - two[1]) < 1e-9
    n = 200_000
    g = torch.Generator().manual_seed(7)
    x_T = SIGMA_MAX * torch.randn(n, 1, dtype=torch.float64, generator=g)
    for ts, (mean, var), nfe in (((0, 39), one, 1), ((0, 22, 39), two, 2)):
        out = sample_consistency(exact_f, x_T, ts=ts, steps=40, generator=g)
        x = out.x.numpy().ravel()
        assert out.nfe == nfe
        assert abs(x.mean() - mean) < 4 * math.sqrt(var / n), (ts, x.mean(), mean)
        assert abs(x.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (n - 1)), (ts, x.var(ddof=1), var)


# -- the objectives' gradients: the target network is held fixed ----------------------------------------
def _gradient(fn, model):
    model.zero_grad()
    fn().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("objective", [ConsistencyDistillation(EXACT_TEACHER, n_scales=18),
                                       ConsistencyTraining(start_scales=10, end_scales=10)])
def test_the_gradient_flows_through_the_online_network_only(objective):
    """The loss's gradient is that of ||f_theta(x_n) - sg(f_target(x_{n+1}))||^2 written out here; using the
    online network as target without a stop-gradient (a wrong target) changes it."""
    model = _random_consistency_model()
    x0 = DATA.sample(256, generator=torch.Generator().manual_seed(1))
    s, s2, z = objective.draw(x0, torch.Generator().manual_seed(2), 0, 1)
    ours = _gradient(lambda: objective.loss(model, model, x0, s, s2, z), model)
    x, x_next = x0 + s[:, None] * z, objective.next_point(x0, x0 + s[:, None] * z, s, s2, z)

    def reference(detach):
        target = model(x_next, s2 / SIGMA_MAX)
        target = target.detach() if detach else target
        return ((model(x, s / SIGMA_MAX) - target) ** 2).mean()

    assert torch.allclose(ours, _gradient(lambda: reference(True), model), rtol=1e-10, atol=1e-14)
    assert (ours - _gradient(lambda: reference(False), model)).abs().max() > 1e-3 * ours.abs().max()


def test_ct_schedule_matches_the_formula():
    for k, K in ((0, 100), (1, 100), (37, 100), (100, 100)):
        n = max(math.ceil(math.sqrt(k / K * (151**2 - 4) + 4) - 1), 1)
        mu, scales = ct_schedule(k, K, 2, 150, 0.95)
        assert scales == n + 1 and abs(mu - math.exp(2 * math.log(0.95) / n)) < 1e-15


def test_EDMDenoiser_of_a_vp_model_is_the_exact_EDMDenoiser():
    """A model on another path (VP, eps) read as an EDM denoiser: x0_hat(alpha_t x, t) at sigma_t / alpha_t = sigma."""
    vp = dl.VP()
    denoiser = EDMDenoiser(dl.exact_prediction(DATA, vp, "eps"), "eps", vp)
    x = torch.randn(50, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    sigma = torch.tensor([0.05, 0.5, 3.0, 40.0], dtype=torch.float64).repeat_interleave(
        torch.tensor([12, 13, 12, 13]))
    ours = denoiser(x, sigma).numpy().ravel()
    assert np.abs(ours - np_denoiser(x.numpy().ravel(), sigma.numpy())).max() < 1e-8


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ts must hold at least 2 increasing indices"):
        sample_consistency(exact_f, torch.zeros(2, 1, dtype=torch.float64), ts=(5, 39))
    with pytest.raises(ValueError, match="n_scales >= 2"):
        ConsistencyDistillation(EXACT_TEACHER, n_scales=1)
    with pytest.raises(ValueError, match="start_scales <= end_scales"):
        ConsistencyTraining(start_scales=10, end_scales=5)
