"""EDM (Karras et al. 2022): preconditioning (EDM-1), the Heun sampler's orders against the Gaussian closed form
(EDM-3), one sampler on every path through sigma / alpha (DPM-5), and churn."""
import math
from itertools import pairwise

import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")

MU, LAM = torch.tensor([0.5, -0.2], **F64), torch.tensor([1.0, 0.01], **F64)  # EDM-3's Gaussian, axis-aligned


def denoiser(x, t, sigma_max=80.0):
    """D(x; sigma) = E[x0 | x0 + sigma n = x] = MU + LAM / (LAM + sigma^2) (x - MU) on the EDM path, sigma = 80 t."""
    s = sigma_max * t
    return MU + LAM / (LAM + s**2) * (x - MU)


def flow(x_T, sigma_from, sigma_to):
    """The PF-ODE in closed form on alpha = 1: x(sigma) = MU + sqrt((sigma^2 + LAM) / (sigma_T^2 + LAM)) (x_T - MU)."""
    return MU + torch.sqrt((sigma_to**2 + LAM) / (sigma_from**2 + LAM)) * (x_T - MU)


def _x_T(n=1000, seed=0):
    return 80.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


def _rms(x, ref):
    return float((x - ref).square().mean().sqrt())


def test_edm1_preconditioning_constants_and_unit_variances():
    """Check EDM-1: at sigma = 0.5 (sigma_data = 0.5): c_skip = 1/2, c_out = 1/(2 sqrt 2), c_in = sqrt 2,
    c_noise = ln(0.5)/4 to 1e-12; for y ~ N(0, 0.25), 10^6 samples, Var(c_in (y + sigma n)) and the network
    target Var((y - c_skip (y + sigma n)) / c_out) are 1 within 5 standard errors at sigma = 0.002, 0.5, 80."""
    c_skip, c_out, c_in, c_noise = (float(v) for v in dl.edm_scalings(0.5, 0.5))
    expected = (0.5, 1 / (2 * math.sqrt(2)), math.sqrt(2), math.log(0.5) / 4)
    assert max(abs(a - b) for a, b in zip((c_skip, c_out, c_in, c_noise), expected)) < 1e-12
    g = torch.Generator().manual_seed(0)
    n = 1_000_000
    se = math.sqrt(2 / (n - 1))  # standard error of a unit variance estimated from n Gaussian samples
    for sigma in (0.002, 0.5, 80.0):
        y = 0.5 * torch.randn(n, generator=g, **F64)
        noisy = y + sigma * torch.randn(n, generator=g, **F64)
        c_skip, c_out, c_in, _ = dl.edm_scalings(sigma, 0.5)
        v_in, v_target = float((c_in * noisy).var()), float(((y - c_skip * noisy) / c_out).var())
        print(f"EDM-1 sigma={sigma}: Var(c_in x) = {v_in:.4f}, Var(F target) = {v_target:.4f} (5 s.e. = {5 * se:.4f})")
        assert abs(v_in - 1) < 5 * se and abs(v_target - 1) < 5 * se


def test_edm_preconditioned_network_on_any_path():
    """EDMPreconditioned(F, path): x0_hat = c_skip x~ + c_out F(c_in x~, t), x~ = x / alpha, at sigma~ = sigma / alpha."""
    path = dl.VP()
    net = lambda x, t: 2 * x + (t.reshape(-1, 1) if torch.is_tensor(t) else t)
    model = dl.EDMPreconditioned(net, path, sigma_data=0.7)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), **F64)
    t = 0.4
    a, s = float(path.alpha(t)), float(path.sigma(t))
    level = s / a
    c_skip, c_out, c_in = 0.49 / (level**2 + 0.49), level * 0.7 / math.sqrt(level**2 + 0.49), 1 / math.sqrt(level**2 + 0.49)
    expected = c_skip * x / a + c_out * (2 * c_in * x / a + t)
    assert torch.allclose(model(x, t), expected, rtol=1e-13, atol=1e-13)
    per_sample = dl.EDMPreconditioned(net, path, 0.7, noise_input="c_noise")(x, torch.full((5,), t, **F64))
    assert torch.allclose(per_sample, c_skip * x / a + c_out * (2 * c_in * x / a + math.log(level) / 4), rtol=1e-13)
    with pytest.raises(ValueError, match="noise_input"):
        dl.EDMPreconditioned(net, path, noise_input="sigma")


def _edm3_errors(method, steps, **options):
    path, x_T = dl.EDM(80.0), _x_T()
    exact = flow(x_T, 80.0, 0.002)
    return [_rms(dl.sample(denoiser, path, x_T, dl.time_grid(n, 1.0, 0.002 / 80, kind="karras", path=path), method,
                           target="x0", **options).x, exact) for n in steps]


def test_edm3_heun_and_euler_orders_against_the_closed_form():
    """Check EDM-3: Karras grid 80 -> 0.002, 1000 trajectories, exact D, oracle the closed form: error ratios under
    step doubling in [3.3, 5.5] for Heun (EDM Alg. 1) and [1.7, 2.3] for Euler, N >= 16. Alg. 1 down to sigma = 0
    (18 and 36 steps, NFE 35 and 71): ratio in [3.3, 5.5]."""
    steps = (8, 16, 32, 64, 128)
    heun, euler = _edm3_errors("edm", steps), _edm3_errors("euler", steps)
    heun_ratios, euler_ratios = [a / b for a, b in pairwise(heun)], [a / b for a, b in pairwise(euler)]
    print("EDM-3 RMS Heun", heun, "ratios", heun_ratios, "Euler", euler, "ratios", euler_ratios)
    assert all(3.3 <= r <= 5.5 for r in heun_ratios[1:]), heun_ratios
    assert all(1.7 <= r <= 2.3 for r in euler_ratios[1:]), euler_ratios
    path, x_T = dl.EDM(80.0), _x_T()
    to_zero = []
    for n in (18, 36):
        grid = torch.cat([dl.time_grid(n - 1, 1.0, 0.002 / 80, kind="karras", path=path), torch.zeros(1, **F64)])
        out = dl.sample(denoiser, path, x_T, grid, "edm", target="x0")
        assert out.nfe == 2 * n - 1
        to_zero.append(_rms(out.x, flow(x_T, 80.0, 0.0)))
    print("EDM-3 Alg. 1 to sigma = 0, N = 18, 36:", to_zero)
    assert 3.3 <= to_zero[0] / to_zero[1] <= 5.5


def test_heun_in_t_is_edm_heun_on_the_edm_path():
    """On alpha = 1, sigma = 80 t the PF-ODE in t is EDM's ODE in sigma: "heun" and "edm" (churn 0) agree to 1e-12."""
    path, x_T = dl.EDM(80.0), _x_T(200)
    grid = torch.cat([dl.time_grid(12, 1.0, 0.002 / 80, kind="karras", path=path), torch.zeros(1, **F64)])
    a = dl.sample(denoiser, path, x_T, grid, "heun", target="x0")
    b = dl.sample(denoiser, path, x_T, grid, "edm", target="x0")
    assert a.nfe == b.nfe == 25
    assert float((a.x - b.x).abs().max()) < 1e-12 * float(x_T.abs().max())


def test_dpm5_edm_sampler_is_the_same_on_vp_through_sigma_over_alpha():
    """Check DPM-5: with x_VP = alpha x_EDM and sigma_EDM = sigma_VP / alpha_VP, (a) the Gaussian closed forms coincide
    (< 1e-10) and (b) "edm" on VP equals "edm" on the EDM path at the same noise levels, scaled by alpha (< 1e-10)."""
    vp, edm = dl.VP(), dl.EDM(80.0)
    gauss = dl.Gaussian(MU, torch.diag(LAM))
    levels = dl.time_grid(10, 1.0, 0.01 / 80, kind="karras", path=edm) * 80  # sigma~ from 80 to 0.01
    t_vp, t_edm = dl.time_at_lambda(vp, -torch.log(levels)), levels / 80
    x_edm = _x_T(300)
    alpha = lambda t: float(vp.alpha(float(t)))
    x_vp = alpha(t_vp[0]) * x_edm
    closed_vp = dl.gaussian_pf_ode(gauss, vp, x_vp, float(t_vp[0]), float(t_vp[-1]))
    closed_edm = dl.gaussian_pf_ode(gauss, edm, x_edm, float(t_edm[0]), float(t_edm[-1]))
    assert float((closed_vp - alpha(t_vp[-1]) * closed_edm).abs().max()) < 1e-10
    out_vp = dl.sample(dl.exact_prediction(gauss, vp, "x0"), vp, x_vp, t_vp, "edm", target="x0").x
    out_edm = dl.sample(dl.exact_prediction(gauss, edm, "x0"), edm, x_edm, t_edm, "edm", target="x0").x
    gap = float((out_vp - alpha(t_vp[-1]) * out_edm).abs().max())
    print("DPM-5 closed-form gap", float((closed_vp - alpha(t_vp[-1]) * closed_edm).abs().max()), "sampler gap", gap)
    assert gap < 1e-10


def test_churn_adds_noise_only_inside_its_window_and_caps_at_the_top():
    """gamma = min(churn / N, sqrt 2 - 1) only where s_tmin <= sigma~ <= s_tmax: a window above every level changes
    nothing; churn at the first level of the path is capped at sigma~(1) (no time beyond t = 1 is ever asked for)."""
    path, x_T = dl.EDM(80.0), _x_T(100)
    grid = dl.time_grid(10, 1.0, 0.002 / 80, kind="karras", path=path)
    plain = dl.sample(denoiser, path, x_T, grid, "edm", target="x0").x
    outside = dl.sample(denoiser, path, x_T, grid, "edm", target="x0", churn=40.0, s_tmin=100.0, s_tmax=200.0,
                        generator=torch.Generator().manual_seed(0)).x
    assert torch.equal(plain, outside)
    times = []
    out = dl.sample(lambda x, t: times.append(t) or denoiser(x, t), path, x_T, grid, "edm", target="x0", churn=40.0,
                    generator=torch.Generator().manual_seed(0))
    assert max(times) <= 1.0 and not torch.allclose(out.x, plain)


def test_edm_path_is_registered_and_checked():
    """dl.EDM: alpha = 1, sigma = sigma_max t, f = 0, g^2 = d sigma^2 / dt = 2 sigma_max^2 t; make_path builds it by name
    and from its config; a bad sigma_max is refused."""
    path = dl.make_path("edm", sigma_max=10.0)
    assert isinstance(path, dl.EDM) and dl.make_path(path.config()).sigma_max == 10.0
    t = torch.tensor([0.0, 0.3, 1.0], **F64)
    assert torch.equal(path.alpha(t), torch.ones(3, **F64)) and torch.allclose(path.sigma(t), 10 * t)
    assert torch.allclose(path.g2(t), 2 * path.sigma(t) * path.dsigma(t) - 2 * path.f(t) * path.sigma(t) ** 2)
    with pytest.raises(ValueError, match="sigma_max"):
        dl.EDM(sigma_max=-1.0)
