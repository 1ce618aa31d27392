"""EVODiff against an independent numpy re-implementation of the authors' `EVODiff_edm.sample` (order 2, log-SNR
grid, EDM's alpha = 1, sigma = t), the Gaussian closed form, and a point mass in closed form."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _proj(a, b, guard):
    """<a, b> / <b, b> per sample (rows), clipped to [-2, 2]; guard: 0 where <b, b> = 0 (the authors divide)."""
    ab, bb = (a * b).sum(1, keepdims=True), (b * b).sum(1, keepdims=True)
    if guard:
        return np.clip(np.where(bb > 0, ab / np.where(bb > 0, bb, 1.0), 0.0), -2, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(ab / bb, -2, 2)


def evodiff_numpy(denoise, x, sigmas, denoise_to_zero, guard=True):
    """EVODiff_edm.sample, order 2, lower_order_final, written again in numpy on the EDM path (sigma = kappa)."""
    steps, s_start, s_end = len(sigmas) - 1, sigmas[0], sigmas[-1]
    ms = [denoise(x, sigmas[0])]
    h = 1 / sigmas[1] - 1 / sigmas[0]
    x = sigmas[1] / sigmas[0] * x + sigmas[1] * h * ms[0]
    ms.append(denoise(x, sigmas[1]))
    for i in range(2, steps + 1):
        kp, ks, kt = sigmas[i - 2], sigmas[i - 1], sigmas[i]
        m1, m0 = ms[-2], ms[-1]
        h = 1 / kt - 1 / ks
        x_e = kt / ks * x + kt * h * m0
        if i == steps:  # the order-1 final step of the code
            ratio = kt / ks
            r_f = 1 - 0.5 * math.sqrt(ratio) if ratio < 0.5 else 1 - 0.5 * math.sqrt(ratio - 0.5)
            x = (1 - math.sqrt(kt * ks)) * x_e + 0.5 * kt * h * (m0 - r_f * m1)
            continue
        r_log = math.log(kp / ks) / math.log(ks / kt)
        w = 0.5 * (1 - ((kt + s_end) / (s_start + s_end)) ** 2)
        b = math.sqrt((kt / ks) / (ks / kp))
        r1 = (1 - w) * b + w * _proj(m0, m1, guard)
        d1 = m0 - r1 * m1
        r_i = np.clip(_sigmoid(0.25 * np.abs(r1)) * r_log, 0.25 * r_log, 1.5 * r_log)
        x_p = x_e + 0.5 * kt * h / r_i * d1
        m_t = denoise(x_p, kt)
        r2 = (1 - w) * b + w * _proj(m_t, m0, guard)
        d2 = m_t - r2 * m0
        bm, bp = d1 / r_log / h, r_log / h * d2
        eta = 0.5 * _sigmoid(np.abs(0.5 * _proj(bp + bm, bp - bm, guard)))
        b_theta = -eta / r_log * d1 + r_log * (1 - eta) * d2
        p1 = x_p - x_e - 0.5 * kt * h / r_i * b_theta
        zeta = _sigmoid(np.abs(_proj(p1, d1, guard) / (h * kt)) - 0.5)
        x = x_e + 0.5 * kt * h / zeta * b_theta
        ms = [m0, m_t]
    return denoise(x, sigmas[-1]) if denoise_to_zero else x


def _gaussian16():
    rng = np.random.default_rng(1)
    return rng.uniform(-0.5, 0.5, 16), np.exp(rng.uniform(math.log(1e-3), math.log(0.25), 16))


def test_fs3_evodiff_matches_the_numpy_reimplementation_and_its_verdict():
    """Check FS-3: 16-D diagonal Gaussian, 2000 samples from x_T = 80 z, EDM path, log-SNR grid 80 -> 0.002,
    denoise_to_zero (NFE = steps + 1): dl.sample("evodiff") equals the numpy re-implementation to 1e-10; its
    first step is DDIM (< 1e-14); at NFE 10 DPM-Solver++(2M) (same NFE, same final denoising) is closer to the
    oracle x0_hat(flow(x_T)) and EVODiff over-disperses (output std / true std > 1.1 in most dimensions)."""
    mu, lam = _gaussian16()
    path = dl.EDM(80.0)
    x_T = 80 * np.random.default_rng(2).standard_normal((2000, 16))
    denoise = lambda x, s: mu + lam / (lam + s**2) * (x - mu)
    model = lambda x, t: torch.from_numpy(denoise(x.numpy(), 80.0 * t))
    flow_end = mu + np.sqrt((0.002**2 + lam) / (80.0**2 + lam)) * (x_T - mu)
    oracle = denoise(flow_end, 0.002)
    rms = {}
    for nfe in (6, 8, 10, 15, 20):
        grid = dl.time_grid(nfe - 1, 1.0, 0.002 / 80, kind="log_snr", path=path)
        out = dl.sample(model, path, torch.from_numpy(x_T), grid, "evodiff", target="x0", denoise_to_zero=True,
                        trajectory=True)
        ref = evodiff_numpy(denoise, x_T, (80.0 * grid).numpy(), denoise_to_zero=True)
        assert out.nfe == nfe
        assert np.abs(out.x.numpy() - ref).max() < 1e-10 * np.abs(ref).max()
        ddim = dl.sample(model, path, torch.from_numpy(x_T), grid[:2], "ddim", target="x0").x
        assert float((out.trajectory[1] - ddim).abs().max()) < 1e-14 * float(ddim.abs().max())
        pp = dl.sample(model, path, torch.from_numpy(x_T), grid, "dpm++2m", target="x0").x
        pp = model(pp, float(grid[-1]))
        rms[nfe] = (float(np.sqrt(((out.x.numpy() - oracle) ** 2).mean())), float(np.sqrt(((pp.numpy() - oracle) ** 2).mean())))
        if nfe == 10:
            spread = out.x.numpy().std(0) / np.sqrt(lam)
            spread_pp = pp.numpy().std(0) / np.sqrt(lam)
    print("FS-3 RMS (EVODiff, DPM-Solver++(2M)) per NFE:", rms)
    print("FS-3 NFE 10 std ratio EVODiff", np.round(spread, 3), "DPM-Solver++", np.round(spread_pp, 3))
    assert rms[10][1] < rms[10][0]
    assert (spread > 1.1).mean() > 0.5


def test_fs3b_point_mass_final_step_and_guarded_projections():
    """Check FS-3b: a point mass x*, 9 log-SNR steps 80 -> 0.002, no final denoising: every step before the last is
    exact, and the code's order-1 last step gives (1 - sqrt(k_t k_s)) x_E + (1 - k_t / k_s)(1 - r_f) x* / 2 with
    x_E = x* + k_t / 80 (x_T - x*), whose mean is 1.09... x* (DDIM: x*); with denoise_to_zero the output is x*.
    No NaN anywhere (the authors' unguarded arithmetic divides 0 by 0 here)."""
    path, star = dl.EDM(80.0), torch.tensor([1.5, -0.5, 2.0], **F64)
    x_T = 80 * torch.randn(64, 3, generator=torch.Generator().manual_seed(0), **F64)
    grid = dl.time_grid(9, 1.0, 0.002 / 80, kind="log_snr", path=path)
    model = lambda x, t: star.expand_as(x)
    out = dl.sample(model, path, x_T, grid, "evodiff", target="x0").x
    k_s, k_t = 80.0 * float(grid[-2]), 80.0 * float(grid[-1])
    ratio = k_t / k_s
    r_f = 1 - 0.5 * math.sqrt(ratio) if ratio < 0.5 else 1 - 0.5 * math.sqrt(ratio - 0.5)
    mean_gain = (1 - math.sqrt(k_t * k_s)) + 0.5 * (1 - ratio) * (1 - r_f)
    expected = (1 - math.sqrt(k_t * k_s)) * (star + k_t / 80 * (x_T - star)) + 0.5 * (1 - ratio) * (1 - r_f) * star
    print("FS-3b mean gain", mean_gain, "max gap", float((out - expected).abs().max()))
    assert bool(torch.isfinite(out).all())
    assert float((out - expected).abs().max()) < 1e-9
    assert 1.05 < mean_gain < 1.15
    denoised = dl.sample(model, path, x_T, grid, "evodiff", target="x0", denoise_to_zero=True).x
    assert float((denoised - star).abs().max()) == 0.0
    zero = torch.zeros(3, **F64)  # a point mass at 0: every difference vanishes, 0/0 in the authors' projections
    with np.errstate(invalid="ignore"):
        raw = evodiff_numpy(lambda x, s: np.zeros_like(x), x_T.numpy(), (80 * grid).numpy(), False, guard=False)
    ours = dl.sample(lambda x, t: zero.expand_as(x), path, x_T, grid, "evodiff", target="x0").x
    assert np.isnan(raw).all() and bool(torch.isfinite(ours).all())


def test_evodiff_errors():
    path = dl.EDM(80.0)
    model = lambda x, t: torch.zeros_like(x)
    x_T = torch.zeros(2, 2, **F64)
    with pytest.raises(ValueError, match="at least 3 times"):
        dl.sample(model, path, x_T, [1.0, 0.5], "evodiff", target="x0")
    with pytest.raises(ValueError, match="denoise_to_zero"):
        dl.sample(lambda x, t: x, dl.RectifiedFlow(), x_T, [1.0, 0.5, 0.1], "evodiff", target="x0")
