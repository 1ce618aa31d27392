"""The Dale–Langevin and unconstrained multiplicative samplers (Shetty et al. 2025) against exact answers:
the log-space recursion for log-normal data (check BG-3a), Monte Carlo (BG-3b), sign preservation (BG-3c).

Exact scores and the moment recursion are written here, in float64, from the formulas.
"""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import diffusion_lessons as dl
from diffusion_lessons.processes import GBM

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

LOG_MEAN, LOG_VAR, S = math.log(1.5), 0.01, 0.8


def lognormal_stein_score(log_mean, log_var, s, drift=0.0):
    """grad_x log p_tau(x) for log X_tau ~ N(log_mean + drift tau, log_var + s^2 tau): (-(log x - m)/v - 1) / x."""

    def score(x, tau):
        m, v = log_mean + drift * tau, log_var + s**2 * tau
        return (-(torch.log(x) - m) / v - 1) / x

    return score


def recursion_as_products(n, log_mean=LOG_MEAN, log_var=LOG_VAR, s=S):
    """The variance after n steps as a closed sum: with c_k = 1 - s^2 / (n V_k), V_k = v0 + s^2 k / n,
    var = V_{n-1} prod_k c_k^2 + (s^2 / n) sum_k prod_{j < k} c_j^2 (k, j running over the steps n-1, ..., 0)."""
    k = np.arange(n - 1, -1, -1)
    c2 = (1 - (s**2 / n) / (log_var + s**2 * k / n)) ** 2
    tail = np.concatenate([np.cumprod(c2[::-1])[::-1][1:], [1.0]])  # prod of c^2 over the later steps
    return (log_var + s**2 * (n - 1) / n) * np.prod(c2) + (s**2 / n) * tail.sum()


def _start(n, n_steps, seed, process):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.exp(LOG_MEAN + math.sqrt(LOG_VAR) * torch.randn(n, 1, generator=gen))
    x_T, _ = process.sample(x0, (n_steps - 1) / n_steps, generator=gen)
    return x_T, gen


def test_log_space_recursion_is_exact_and_first_order():
    """Check BG-3a: with the exact score the log-space sampler maps the moments of log X linearly; its mean stays
    log 1.5 for every N, its variance approaches 0.01 at first order in delta = 1/N (error ratio in [8.5, 11.5] per
    tenfold N). Package recursion vs the closed sum written here: 1e-10."""
    process = GBM(sigma=S)
    errors = {}
    for n in (100, 1000, 10_000, 100_000):
        mean, var = dl.dale_langevin_log_moments(LOG_MEAN, LOG_VAR, process, n)
        assert abs(mean - LOG_MEAN) < 1e-12
        assert abs(var - recursion_as_products(n)) < 1e-10, (n, var, recursion_as_products(n))
        errors[n] = LOG_VAR - var
        print(f"BG-3a N = {n}: log-mean {mean:.6f}, log-var {var:.6f}")
    ratios = [errors[a] / errors[b] for a, b in ((1000, 10_000), (10_000, 100_000))]
    print("BG-3a error ratios per tenfold N:", ratios)
    assert all(8.5 <= r <= 11.5 for r in ratios)


def test_sampler_drift_is_the_recursion():
    """Without noise (a = 0) the Dale–Langevin sampler is the affine map of the recursion:
    log X_end - log 1.5 = prod_k c_k (log X_start - log 1.5) (1e-10), for a drift m != s^2/2 too."""
    for m in (0.5 * S**2, 0.9):
        process, n = GBM(sigma=S, mu=m), 200
        drift = m - 0.5 * S**2
        score = lognormal_stein_score(LOG_MEAN, LOG_VAR, S, drift)
        start = torch.tensor([[0.7], [1.5], [3.0]])
        out = dl.dale_langevin(score, process, start, n_steps=n, anneal=0.0)
        k = np.arange(n - 1, -1, -1)
        gain = np.prod(1 - (S**2 / n) / (LOG_VAR + S**2 * k / n))
        centre_start = LOG_MEAN + drift * (n - 1) / n
        expected = LOG_MEAN - drift / n + gain * (torch.log(start) - centre_start)
        assert (torch.log(out.x) - expected).abs().max() < 1e-10
        assert out.nfe == n


@pytest.mark.parametrize("sampler", ["dale", "unconstrained"])
def test_monte_carlo_against_the_recursion(sampler):
    """Check BG-3b: 1e5 samples, N = 1000 steps, exact score, started at the exact law at tau = (N-1)/N: the mean
    and variance of log X within 5 standard errors of the exact recursion; the unconstrained sampler discretises
    the same SDE differently, in X, so its gap to the log-space recursion is O(delta) and is allowed delta = 1/N
    more. No sign change for either at this step size."""
    process, n, n_steps = GBM(sigma=S), 100_000, 1000
    run = dl.dale_langevin if sampler == "dale" else dl.multiplicative_langevin
    x_T, gen = _start(n, n_steps, 0, process)
    out = run(lognormal_stein_score(LOG_MEAN, LOG_VAR, S), process, x_T, n_steps=n_steps, generator=gen)
    mean_ref, var_ref = dl.dale_langevin_log_moments(LOG_MEAN, LOG_VAR, process, n_steps)
    logs = torch.log(out.x)
    se_mean, se_var = math.sqrt(var_ref / n), var_ref * math.sqrt(2 / n)
    print(f"BG-3b {sampler}: log-mean {logs.mean():.5f} vs {mean_ref:.5f} (se {se_mean:.1e}), "
          f"log-var {logs.var():.5f} vs {var_ref:.5f} (se {se_var:.1e}), sign changes {out.sign_changes}")
    allowance = 0.0 if sampler == "dale" else 1 / n_steps
    assert abs(logs.mean().item() - mean_ref) < 5 * se_mean + allowance
    assert abs(logs.var().item() - var_ref) < 5 * se_var + allowance * var_ref
    assert out.sign_changes == 0


def test_sign_preservation_per_step_type():
    """Check BG-3c: one step with h = 0, s = 2, delta = 0.1, m = 2. The unconstrained step multiplies by
    1 + 2 delta s^2 - delta m + sqrt(delta) s Z = 1.6 + 0.632 Z, negative with probability Phi(-1.6 / 0.632)
    = 0.0057 (5 binomial s.e.); the Dale–Langevin step multiplies by an exponential: never."""
    n, s, d, m = 1_000_000, 2.0, 0.1, 2.0
    process, zero = GBM(sigma=s, mu=m), (lambda x, t: torch.zeros_like(x))
    p = norm.cdf(-(1 + 2 * d * s**2 - d * m) / (math.sqrt(d) * s))
    un = dl.multiplicative_langevin(zero, process, torch.ones(n, 1), n_steps=1, delta=d,
                                    generator=torch.Generator().manual_seed(0))
    dale = dl.dale_langevin(zero, process, torch.ones(n, 1), n_steps=1, delta=d,
                            generator=torch.Generator().manual_seed(0))
    print(f"BG-3c: unconstrained step negative {un.sign_changes:.5f} vs Phi = {p:.5f}; "
          f"Dale-Langevin {dale.sign_changes}")
    assert abs(un.sign_changes - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert dale.sign_changes == 0 and bool((dale.x > 0).all())


def test_authors_schedule_and_bad_input():
    assert dl.authors_schedule(500) == (1e-3, 1, 1.0) and dl.authors_schedule(60)[1] == 2
    assert dl.authors_schedule(30) == (6e-4, 3, 0.9993) and dl.authors_schedule(0) == (5e-4, 3, 0.999)
    out = dl.dale_langevin(lambda x, t: torch.zeros_like(x), GBM(), torch.ones(4, 1), n_steps=1000,
                           schedule=dl.authors_schedule)
    assert out.nfe == 899 + 50 * 2 + 25 * 3 + 26 * 3  # L = 1 above index 100, 2 for 51..100, 3 below
    with pytest.raises(ValueError, match="positive"):
        dl.dale_langevin(lambda x, t: x, GBM(), -torch.ones(4, 1))
    with pytest.raises(TypeError, match="GBM"):
        dl.multiplicative_langevin(lambda x, t: x, dl.OUVE(), torch.ones(4, 1))


def test_a_trained_network_is_read_at_t_min_on_the_last_step():
    """recipes.beyond_gaussian.gbm_model_score: the samplers' last step asks for tau = 0, where sigma = 0 and an eps
    prediction has no score; it is read at tau = t_min instead: for a network predicting eps = c everywhere the
    Stein score is (-c / (s sqrt(t_min)) - 1) / x (Lamperti: grad_y log q = -eps / sigma, h = grad_y log q - 1)."""
    from diffusion_lessons.recipes.beyond_gaussian import gbm_model_score

    class ConstantEps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

        def forward(self, y, t):
            return self.c.expand_as(y)

    process, x = GBM(sigma=S), torch.tensor([[0.5, 2.0]])
    score = gbm_model_score(ConstantEps(), process, t_min=1e-3)
    expected = (-torch.tensor([0.3, -0.2]) / (S * math.sqrt(1e-3)) - 1) / x
    assert (score(x, 0.0) - expected).abs().max() < 1e-12
    assert (score(x, 0.25) - (-torch.tensor([0.3, -0.2]) / (S * 0.5) - 1) / x).abs().max() < 1e-12
    out = dl.dale_langevin(score, process, torch.ones(3, 2), n_steps=5, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.x).all() and (out.x > 0).all())
