"""Exact moments of affine samplers (checks FS-1, FS-2): for Gaussian data and the exact prediction every step of
DDIM and of EDM's Heun sampler is affine in the state and the fresh noise, so the terminal mean and variance follow
an exact recursion, written here in numpy from the update formulas. The code's own affine map is read off exactly
(by least squares on its outputs and the normal draws its generator made) and compared at 1e-10; Monte Carlo
agrees within 4 standard errors."""
import itertools
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")

MU, LAM = 0.3, 0.1  # FS-1's data N(0.3, 0.1)


def _abar_code():
    """abar_c = prod_{k <= c} (1 - beta_k), c = 0..999, linear betas 1e-4 -> 0.02 (numpy)."""
    return np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


def ddim_recursion(steps, eta):
    """Affine maps (A, B, C) of DDIM from c = 1000 - k along 0, k, ..., 1000 - k then onto the data (abar = 1),
    eps_hat = sigma (x - alpha mu) / (alpha^2 lam + sigma^2) exact; returns the list of maps and the start law."""
    abar, k = _abar_code(), 1000 // steps
    seq = list(range(0, 1000, k))[::-1]
    maps = []
    for i, j in zip(seq, [*seq[1:], -1]):
        ab_i, ab_j = abar[i], (abar[j] if j >= 0 else 1.0)
        a, s = math.sqrt(ab_i), math.sqrt(1 - ab_i)
        e1, e0 = s / (a * a * LAM + s * s), -s * a * MU / (a * a * LAM + s * s)  # eps_hat = e1 x + e0
        c1 = eta * math.sqrt((1 - ab_i / ab_j) * (1 - ab_j) / (1 - ab_i)) if j >= 0 else 0.0
        c2 = math.sqrt(max(1 - ab_j - c1**2, 0.0))
        x0_1, x0_0 = (1 - s * e1) / a, -s * e0 / a  # x0_hat = x0_1 x + x0_0
        maps.append((math.sqrt(ab_j) * x0_1 + c2 * e1, math.sqrt(ab_j) * x0_0 + c2 * e0, c1))
    ab_T = abar[seq[0]]
    return seq, maps, (math.sqrt(ab_T) * MU, ab_T * LAM + 1 - ab_T)


def _propagate(maps, mean, var):
    for A, B, C in maps:
        mean, var = A * mean + B, A * A * var + C * C
    return mean, var


def _code_moments(run, start_mean, start_var, draws, m=None):
    """The code's exact terminal (mean, var) for x_T ~ N(start_mean, start_var): run(x_T, seed) on m points, the
    output regressed on [x_T, 1, z_1..z_draws] (the generator's draws, one [m, 1] tensor a step) -> A, B, C."""
    m = m or draws + 8
    x_T = torch.linspace(-3, 3, m, **F64).reshape(m, 1)
    out = run(x_T, 11).numpy().ravel()
    g = torch.Generator().manual_seed(11)
    zs = [torch.randn((m, 1), generator=g, **F64).numpy().ravel() for _ in range(draws)]
    design = np.stack([x_T.numpy().ravel(), np.ones(m), *zs], axis=1)
    coef, *_ = np.linalg.lstsq(design, out, rcond=None)
    assert np.abs(design @ coef - out).max() < 1e-11  # the output IS affine in (x_T, z)
    A, B, C = coef[0], coef[1], coef[2:]
    return A * start_mean + B, A * A * start_var + float((C**2).sum())


def _ddim_runner(steps, eta):
    path = dl.DDPMPath()
    seq, _, _ = ddim_recursion(steps, eta)
    grid = [(c + 1) / 1000 for c in seq] + [0.0]
    data = dl.Gaussian(torch.tensor([MU], **F64), torch.tensor([[LAM]], **F64))
    model = dl.exact_prediction(data, path, "eps")
    return lambda x, seed: dl.sample(model, path, x, grid, "ddim", eta=eta,
                                     generator=torch.Generator().manual_seed(seed)).x


def test_fs1_ddim_variance_deficit_exact_and_monte_carlo():
    """Check FS-1: terminal mean 0.3 exactly and var / lam < 1, increasing with S, for eta = 0 and 1 (S = 10 ... 1000);
    the code's affine map equals the recursion to 1e-10; eta = 1, S = 10: 4 x 10^5 samples within 4 s.e."""
    ratios = {}
    for eta in (0.0, 1.0):
        for steps in (10, 20, 50, 100, 1000):
            seq, maps, (m_T, v_T) = ddim_recursion(steps, eta)
            mean, var = _propagate(maps, m_T, v_T)
            draws = sum(1 for _, _, c in maps if c > 0)
            code_mean, code_var = _code_moments(_ddim_runner(steps, eta), m_T, v_T, draws)
            assert abs(code_mean - mean) < 1e-10 and abs(code_var - var) < 1e-10, (eta, steps)
            assert abs(mean - MU) < 1e-10
            ratios[(eta, steps)] = var / LAM
    print("FS-1 var / lam:", {k: round(v, 6) for k, v in ratios.items()})
    for eta in (0.0, 1.0):
        seq = [ratios[(eta, s)] for s in (10, 20, 50, 100, 1000)]
        assert all(a < b for a, b in itertools.pairwise(seq)) and seq[-1] < 1
    _, maps, (m_T, v_T) = ddim_recursion(10, 1.0)
    mean, var = _propagate(maps, m_T, v_T)
    n = 400_000
    x_T = m_T + math.sqrt(v_T) * torch.randn(n, 1, generator=torch.Generator().manual_seed(3), **F64)
    out = _ddim_runner(10, 1.0)(x_T, 4)
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    print(f"FS-1 MC eta=1 S=10: mean {float(out.mean()):.5f} (exact {mean:.5f}, s.e. {se_mean:.1e}), "
          f"var/lam {float(out.var()) / LAM:.5f} (exact {var / LAM:.5f}, s.e. {se_var / LAM:.1e})")
    assert abs(float(out.mean()) - mean) < 4 * se_mean and abs(float(out.var()) - var) < 4 * se_var


def edm_recursion(n, churn, s_tmin, s_tmax, s_noise, mu=0.3, lam=0.25):
    """EDM Alg. 2 on N(mu, lam) data, exact D(x; s) = mu + lam / (lam + s^2) (x - mu), Karras levels 80 -> 0.002 (n)
    then 0: affine maps (A, B, C) of every step; C the std of the churn noise through the step."""
    i = np.arange(n)
    sig = np.append((80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, 0.0)
    gamma_max = min(churn / n, math.sqrt(2) - 1)
    D = lambda x, s: mu + lam / (lam + s * s) * (x - mu)

    def heun(x_hat, s_hat, s_next):
        d = (x_hat - D(x_hat, s_hat)) / s_hat
        x1 = x_hat + (s_next - s_hat) * d
        if s_next == 0:
            return x1
        return x_hat + (s_next - s_hat) * 0.5 * (d + (x1 - D(x1, s_next)) / s_next)

    maps = []
    for s, s_next in itertools.pairwise(sig):
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        b = heun(0.0, s_hat, s_next)
        a = heun(1.0, s_hat, s_next) - b  # x_next = a x_hat + b, x_hat = x + sqrt(s_hat^2 - s^2) s_noise z
        maps.append((a, b, a * math.sqrt(s_hat**2 - s**2) * s_noise))
    return sig, maps


def _edm_runner(n, **options):
    path = dl.EDM(80.0)
    grid = torch.cat([dl.time_grid(n - 1, 1.0, 0.002 / 80, kind="karras", path=path), torch.zeros(1, **F64)])
    data = dl.Gaussian(torch.tensor([0.3], **F64), torch.tensor([[0.25]], **F64))
    model = dl.exact_prediction(data, path, "x0")
    return lambda x, seed: dl.sample(model, path, x, grid, "edm", target="x0",
                                     generator=torch.Generator().manual_seed(seed), **options).x


def test_fs2_edm_churn_exact_moments():
    """Check FS-2: N(mu, 0.25) data, x_T ~ N(0, 0.25 + 80^2), 18 / 64 / 256 levels then 0: terminal var / lam of the
    deterministic sampler and of churn 40 (s_tmin 0.05, s_tmax 50) with s_noise 1.003 and 1 from the recursion, the
    code's affine map equal to 1e-10; deterministic -> 1 as N grows; s_noise > 1 inflates the variance."""
    settings = {"deterministic": {}, "churn": {"churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},
                "churn, s_noise 1": {"churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0}}
    ratios = {}
    for n in (18, 64, 256):
        for name, options in settings.items():
            full = {"churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, **options}
            _, maps = edm_recursion(n, **full)
            _, var = _propagate(maps, 0.0, 0.25 + 80.0**2)
            draws = sum(1 for _, _, c in maps if c != 0)
            if n <= 64:
                _, code_var = _code_moments(_edm_runner(n, **options), 0.0, 0.25 + 80.0**2, draws)
                assert abs(code_var - var) < 1e-10 * max(1.0, var), (n, name, code_var, var)
            ratios[(n, name)] = var / 0.25
    print("FS-2 var / lam:", {k: round(v, 6) for k, v in ratios.items()})
    det = [abs(ratios[(n, "deterministic")] - 1) for n in (18, 64, 256)]
    assert det[0] > det[1] > det[2] and det[2] < 1e-3
    assert all(ratios[(n, "churn")] > ratios[(n, "churn, s_noise 1")] for n in (18, 64, 256))
