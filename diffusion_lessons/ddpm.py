"""The discrete variational view: the DDPM chain, its posterior, its ELBO and ancestral sampling.

Ho et al. (2020) fix betas beta_1..beta_N in (0, 1) and a Markov chain from data x_0 to noise x_N,

    q(x_i | x_{i-1}) = N(sqrt(alpha_i) x_{i-1}, beta_i I),   alpha_i = 1 - beta_i,

whose marginals are the Gaussian path of the rest of the package, on a grid of N steps:

    q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I),      abar_i = prod_{j <= i} alpha_j.

Steps are indexed i = 0..N with i = 0 the data (abar_0 = 1), as in the paper. The reverse model
p(x_{i-1} | x_i) = N(mu_theta, nu_i^2 I) is fit by the ELBO, whose step-i term is the KL to the
posterior q(x_{i-1} | x_i, x_0) (Ho et al. eq. 5-7); writing mu_theta through an eps-predictor turns that
KL into a weighted ||eps - eps_hat||^2, which is why DDPMs predict noise.

Song et al.'s VP SDE is the continuous limit of this chain: Song's discrete VP betas are
linspace(beta_min / N, beta_max / N, N), i.e. DDPM's linear schedule for N = 1000, so step i of the
chain is *roughly* continuous time t = i / N. Roughly: at i = 1 the chain's noise variance beta_1 =
1e-4 is 10 % below VP's sigma^2(1 / N) = 1.1e-4. `chain_times` gives the exact correspondence, the
time t_i at which the path has the chain's signal-to-noise ratio abar_i / (1 - abar_i), and
`eps_on_chain` reads a continuous-time model there.

The last part is the continuous-time ELBO of Kingma et al. (2021) for Gaussian data, in closed form
and by quadrature (check PR-3).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .closed_form import commitment_time
from .paths import VP, Path, convert

__all__ = [
    "DDPMSchedule",
    "DDPMPath",
    "linear_betas",
    "ddpm_elbo_weights",
    "reverse_mean",
    "ancestral_sample",
    "eps_on_chain",
    "chain_times",
    "ddim_sigma",
    "ddim_step",
    "gaussian_elbo_terms",
    "vdm_diffusion_term",
    "REVERSE_VARIANCES",
]

REVERSE_VARIANCES = ("beta", "tilde")


def linear_betas(n: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule beta_i = start + (i - 1)(end - start)/(n - 1), i = 1..n, float64 [n]."""
    if int(n) < 1 or not 0 < start <= end < 1:
        raise ValueError(f"linear_betas needs n >= 1 and 0 < start <= end < 1; got n={n}, start={start}, end={end}")
    return torch.linspace(start, end, int(n), dtype=torch.float64)


class DDPMSchedule:
    """The DDPM chain of `betas` [N] = (beta_1, ..., beta_N), kept in float64.

    Attributes: betas [N]; alphas [N] = 1 - betas; alpha_bar [N + 1] with alpha_bar[i] = abar_i =
    prod_{j <= i} (1 - beta_j) and alpha_bar[0] = 1 (step 0 is the data). Methods take a step
    i in 1..N (an int) and return float64 tensors.
    """

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D sequence (beta_1, ..., beta_N); got shape {list(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta_i must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(self.alphas, 0)])

    @classmethod
    def linear(cls, n: int = 1000, start: float = 1e-4, end: float = 0.02) -> "DDPMSchedule":
        """The schedule of Ho et al. (2020): `linear_betas(n, start, end)`."""
        return cls(linear_betas(n, start, end))

    @property
    def n_steps(self) -> int:
        return self.betas.numel()

    def _step(self, i: int) -> int:
        if not 1 <= int(i) <= self.n_steps:
            raise ValueError(f"step i must be an integer in 1..N = 1..{self.n_steps}; got {i}")
        return int(i)

    def beta(self, i: int) -> torch.Tensor:
        """beta_i."""
        return self.betas[self._step(i) - 1]

    def posterior_coefficients(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_x0, c_xt) of the posterior mean tilde mu_i = c_x0 x_0 + c_xt x_i (Ho et al. eq. 7):

        c_x0 = sqrt(abar_{i-1}) beta_i / (1 - abar_i),   c_xt = sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i).
        """
        i = self._step(i)
        ab, ab_prev, beta = self.alpha_bar[i], self.alpha_bar[i - 1], self.betas[i - 1]
        return ab_prev.sqrt() * beta / (1 - ab), (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)

    def posterior_variance(self, i: int) -> torch.Tensor:
        """tilde beta_i = (1 - abar_{i-1}) / (1 - abar_i) * beta_i, the variance of q(x_{i-1} | x_i, x_0)."""
        i = self._step(i)
        return (1 - self.alpha_bar[i - 1]) / (1 - self.alpha_bar[i]) * self.betas[i - 1]

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: int) -> torch.Tensor:
        """tilde mu_i(x_t, x0) = c_x0 x0 + c_xt x_t, the mean of q(x_{i-1} | x_i = x_t, x_0 = x0)."""
        c_x0, c_xt = (float(c) for c in self.posterior_coefficients(i))
        return c_x0 * x0 + c_xt * x_t

    def sample(self, x0: torch.Tensor, i: int, eps: torch.Tensor | None = None, generator=None):
        """x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps, a draw of q(x_i | x_0). Returns (x_i, eps)."""
        i = self._step(i)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        ab = float(self.alpha_bar[i])
        return math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, eps

    def reverse_variance(self, i: int, variance: str = "beta") -> torch.Tensor:
        """nu_i^2 of the reverse model: beta_i ("beta") or tilde beta_i ("tilde"), Ho et al.'s two choices."""
        if variance not in REVERSE_VARIANCES:
            raise ValueError(f"unknown reverse variance {variance!r}; valid: {', '.join(REVERSE_VARIANCES)}")
        return self.beta(i) if variance == "beta" else self.posterior_variance(i)

    def config(self) -> dict:
        return {"class": "DDPMSchedule", "betas": self.betas.tolist()}

    def __repr__(self) -> str:
        return (f"DDPMSchedule(N={self.n_steps}, beta_1={float(self.betas[0]):.3g}, "
                f"beta_N={float(self.betas[-1]):.3g}, abar_N={float(self.alpha_bar[-1]):.3g})")


def ddpm_elbo_weights(schedule: DDPMSchedule, variance: str = "beta") -> torch.Tensor:
    """Weights w_i, i = 1..N [N], of the eps-form of the ELBO (Ho et al. eq. 12):

        KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i)) = w_i ||eps - eps_hat(x_i, i)||^2 + const,
        w_i = beta_i^2 / (2 nu_i^2 (1 - beta_i) (1 - abar_i)),

    with nu_i^2 the reverse variance ("beta" or "tilde"). With "tilde", w_1 = inf: tilde beta_1 = 0,
    and DDPM treats step 1 as a decoder instead. The "simple" loss of Ho et al. sets every w_i to 1.
    """
    var = torch.stack([schedule.reverse_variance(i, variance) for i in range(1, schedule.n_steps + 1)])
    return schedule.betas**2 / (2 * var * schedule.alphas * (1 - schedule.alpha_bar[1:]))


def reverse_mean(schedule: DDPMSchedule, x_t: torch.Tensor, i: int, eps_hat: torch.Tensor) -> torch.Tensor:
    """mu_theta(x_i, i) = (x_i - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i) (Ho et al. eq. 11).

    It is tilde mu_i(x_i, x0_hat) with x0_hat = (x_i - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i).
    """
    beta, ab = float(schedule.beta(i)), float(schedule.alpha_bar[i])
    return (x_t - beta / math.sqrt(1 - ab) * eps_hat) / math.sqrt(1 - beta)


def ancestral_sample(eps_model: Callable, schedule: DDPMSchedule, x_T: torch.Tensor, generator=None,
                     variance: str = "beta", return_trajectory: bool = False):
    """DDPM ancestral sampling (Ho et al. Alg. 2): for i = N, ..., 1,

        x_{i-1} = mu_theta(x_i, i) + nu_i z,   z ~ N(0, I)   (no noise at i = 1),

    with mu_theta from `reverse_mean` and nu_i^2 = beta_i or tilde beta_i (`variance`).
    eps_model(x, i) -> eps_hat, with i the integer step (`eps_on_chain` turns a model(x, t) into one).
    Returns x_0 [N, ...], or (x_0, trajectory [N + 1, n, ...] from x_N to x_0) when return_trajectory.
    """
    x, trajectory = x_T, [x_T]
    for i in range(schedule.n_steps, 0, -1):
        x = reverse_mean(schedule, x, i, eps_model(x, i))
        if i > 1:
            std = math.sqrt(float(schedule.reverse_variance(i, variance)))
            x = x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def chain_times(schedule: DDPMSchedule, path: Path | None = None) -> torch.Tensor:
    """t_i, i = 0..N [N + 1] (float64): the time at which `path` (default VP()) has step i's SNR,

        alpha(t_i)^2 / sigma(t_i)^2 = abar_i / (1 - abar_i),   t_0 = 0,

    so that x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps is x_{t_i} of the path up to the factor
    sigma(t_i) / sqrt(1 - abar_i) (1 for VP and the cosine path). These are the commitment times
    SNR(t) = 1 / lambda of `closed_form.commitment_time`, lambda = (1 - abar_i) / abar_i. A step whose SNR is below the path's SNR(1) gets t_i = 1: for DDPM's linear
    schedule on VP(0.1, 20) these are the last four steps (abar_1000 = 4.04e-5 < alpha_1^2 = 4.32e-5),
    where a model of x_1 is read a shade early.
    """
    path = VP() if path is None else path
    abar = schedule.alpha_bar[1:]
    # SNR(t_i) = abar_i / (1 - abar_i) is SNR(t*) = 1 / lambda with lambda = (1 - abar_i) / abar_i
    return torch.cat([torch.zeros(1, dtype=torch.float64), commitment_time((1 - abar) / abar, path)])


def eps_on_chain(model: Callable, schedule: DDPMSchedule, path: Path | None = None, target: str = "eps"):
    """A continuous-time model(x, t) of `path` (default VP()) as a chain model eps_model(x, i).

    Step i is read at t_i = `chain_times(schedule, path)[i]`, where the path's SNR is the chain's, with x
    rescaled to the path, x_t = (sigma(t_i) / sqrt(1 - abar_i)) x_i (eps is the same noise in both), so
    a model of the exact eps gives the chain's exact E[eps | x_i] at every step inside the path's SNR range.
    model predicts `target`; any target other than "eps" is converted with the path at t_i.
    """
    path = VP() if path is None else path
    times = chain_times(schedule, path).tolist()
    scale = (path.sigma(torch.tensor(times[1:], dtype=torch.float64)) / (1 - schedule.alpha_bar[1:]).sqrt()).tolist()

    def eps_model(x, i):
        t, x_t = times[i], x * scale[i - 1]
        out = model(x_t, t)
        return out if target == "eps" else convert(out, target, "eps", x_t, t, path)

    return eps_model


def ddim_sigma(schedule: DDPMSchedule, i: int, j: int | None = None, eta: float = 0.0) -> torch.Tensor:
    """Noise scale of a DDIM step i -> j < i (Song et al. 2021a, eq. 16; j = i - 1 by default):

        sigma = eta sqrt((1 - abar_j) / (1 - abar_i)) sqrt(1 - abar_i / abar_j).

    For j = i - 1, eta = 1 gives sigma^2 = tilde beta_i (the DDPM posterior variance; check PR-2).
    """
    i = schedule._step(i)
    j = i - 1 if j is None else int(j)
    if not 0 <= j < i:
        raise ValueError(f"a DDIM step goes from step i to an earlier step j, 0 <= j < i; got i={i}, j={j}")
    ab_i, ab_j = schedule.alpha_bar[i], schedule.alpha_bar[j]
    return eta * ((1 - ab_j) / (1 - ab_i) * (1 - ab_i / ab_j)).sqrt()


def ddim_step(schedule: DDPMSchedule, x_t: torch.Tensor, i: int, eps_hat: torch.Tensor, j: int | None = None,
              eta: float = 0.0, generator=None) -> torch.Tensor:
    """One DDIM step from x_i to x_j (Song et al. 2021a, eq. 12), with
    x0_hat = (x_i - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i):

        x_j = sqrt(abar_j) x0_hat + sqrt(1 - abar_j - varsigma^2) eps_hat + varsigma eps,
        varsigma = ddim_sigma(i, j, eta),  eps ~ N(0, I).

    Arguments in the order of reverse_mean(schedule, x_t, i, eps_hat). eta = 0: deterministic (the PF-ODE's
    first-order step); eta = 1, j = i - 1: DDPM's step with tilde beta_i.
    """
    if not isinstance(schedule, DDPMSchedule):
        raise TypeError(f"ddim_step(schedule, x_t, i, eps_hat, ...) takes the DDPMSchedule first, as reverse_mean "
                        f"does; got {type(schedule).__name__} (calls written for the old order eps_hat, x_t, "
                        f"schedule, i need reordering)")
    i = schedule._step(i)
    j = i - 1 if j is None else int(j)
    sigma = float(ddim_sigma(schedule, i, j, eta))
    ab_i, ab_j = float(schedule.alpha_bar[i]), float(schedule.alpha_bar[j])
    x0_hat = (x_t - math.sqrt(1 - ab_i) * eps_hat) / math.sqrt(ab_i)
    x = math.sqrt(ab_j) * x0_hat + math.sqrt(max(1 - ab_j - sigma**2, 0.0)) * eps_hat
    if sigma > 0:
        x = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x


# -- the continuous-time ELBO for Gaussian data (Kingma et al. 2021; check PR-3) -------------------------

def gaussian_elbo_terms(s2, snr_min: float, snr_max: float) -> dict:
    """Terms of -ELBO (nats) for x0 ~ N(0, diag(s2)) under a variance-preserving path (alpha^2 + sigma^2 = 1)
    observed between SNR_max (t_min) and SNR_min (t_max), with the exact denoiser (Kingma et al. 2021, eq. 14-17; check PR-3):

        diffusion = 1/2 int_{SNR_min}^{SNR_max} E||x0 - x0_hat||^2 dSNR = 1/2 sum log((1/s2 + SNR_max) / (1/s2 + SNR_min)),
        decoder   = -E log N(x0; z / alpha, sigma^2 / alpha^2) = 1/2 sum log(2 pi e / SNR_max),
        prior     = E KL(N(alpha_T x0, sigma_T^2) || N(0, 1)) = 1/2 sum (alpha_T^2 s2 + sigma_T^2 - 1 - log sigma_T^2),

    with alpha_T^2 = SNR_min / (1 + SNR_min), sigma_T^2 = 1 / (1 + SNR_min). Uses E||x0 - x0_hat||^2 = s2 / (1 + s2 SNR)
    per coordinate. s2: a variance or a 1-D sequence of variances (summed over coordinates).
    Returns floats: diffusion, decoder, prior, bound (their sum, >= entropy), entropy = 1/2 sum log(2 pi e s2), gap.
    """
    s2 = torch.as_tensor(s2, dtype=torch.float64).reshape(-1)
    if not bool((s2 > 0).all()) or not 0 < snr_min < snr_max:
        raise ValueError(f"need variances s2 > 0 and 0 < snr_min < snr_max; got s2={s2.tolist()}, "
                         f"snr_min={snr_min}, snr_max={snr_max}")
    two_pi_e = 2 * math.pi * math.e
    diffusion = 0.5 * torch.log((1 / s2 + snr_max) / (1 / s2 + snr_min)).sum()
    decoder = 0.5 * s2.numel() * math.log(two_pi_e / snr_max)
    a2, v2 = snr_min / (1 + snr_min), 1 / (1 + snr_min)
    prior = 0.5 * (a2 * s2 + v2 - 1 - math.log(v2)).sum()
    entropy = 0.5 * torch.log(two_pi_e * s2).sum()
    bound = diffusion + decoder + prior
    out = dict(diffusion=diffusion, decoder=decoder, prior=prior, bound=bound, entropy=entropy, gap=bound - entropy)
    return {k: float(v) for k, v in out.items()}


def vdm_diffusion_term(mse: Callable[[float], float], path: Path, t_min: float = 1e-3, t_max: float = 1.0,
                       epsabs: float = 1e-13, epsrel: float = 1e-12, order: int | None = None) -> float:
    """The diffusion term of the continuous-time ELBO by quadrature over time (Kingma et al. 2021, eq. 17):

        1/2 int_{t_min}^{t_max} mse(t) (-d SNR/dt) dt = 1/2 int_{SNR(t_max)}^{SNR(t_min)} mse dSNR,

    mse(t) = E||x0 - x0_hat(x_t, t)||^2 (a float for a float t), SNR = alpha^2 / sigma^2 of `path`, and
    dSNR/dt = 2 alpha (alpha' sigma - alpha sigma') / sigma^3. Adaptive Gauss-Kronrod in log t (scipy.quad) to the
    tolerances epsabs, epsrel (the defaults suit a closed-form mse); or, with `order`, Gauss-Legendre with that
    many points in log t (scipy.fixed_quad): a fixed, small number of calls, for an mse estimated from samples.
    With Song's weighting this is E g^2(t) ||s_hat - score||^2 / 2 in other clothes (Kingma et al. 2021, App. E).
    """
    from scipy.integrate import quad

    if not 0 < t_min < t_max <= 1:
        raise ValueError(f"need 0 < t_min < t_max <= 1; got t_min={t_min}, t_max={t_max}")

    def integrand(log_t):  # t = exp(log_t), dt = t dlog_t: the SNR changes fastest near t = 0
        t = math.exp(log_t)
        a, s = float(path.alpha(t)), float(path.sigma(t))
        da, ds = float(path.dalpha(t)), float(path.dsigma(t))
        dsnr = 2 * a * (da * s - a * ds) / s**3
        return 0.5 * mse(t) * (-dsnr) * t

    if order is not None:
        from scipy.integrate import fixed_quad

        value, _ = fixed_quad(lambda u: [integrand(v) for v in u], math.log(t_min), math.log(t_max), n=int(order))
        return float(value)
    value, _ = quad(integrand, math.log(t_min), math.log(t_max), epsabs=epsabs, epsrel=epsrel, limit=200)
    return value


class DDPMPath(Path):
    """The DDPM chain of a schedule as a continuous path: step i of N is time t = i / N, exactly.

    log abar is interpolated linearly in s = t N between the integer steps, so that

        alpha(i / N)^2 = abar_i,   sigma(i / N)^2 = 1 - abar_i   (i = 0..N, abar_0 = 1),

    and a sampler on the grid {i / N} (DDIM's skips, Time-Shift's windows) sees the chain's own abar
    instead of Song's continuous VP (whose sigma^2 at t = 1/N is ~10 % off abar_1).
    """

    name = "ddpm"

    def __init__(self, schedule: DDPMSchedule | None = None):
        self.schedule = DDPMSchedule.linear() if schedule is None else schedule
        self._log_abar = torch.log(self.schedule.alpha_bar)  # [N + 1], float64

    def _log_alpha_bar(self, t):
        from .paths import as_time

        t = as_time(t)
        n = self.schedule.n_steps
        s = t * n
        k = torch.clamp(torch.floor(s), max=n - 1).long()
        table = self._log_abar.to(dtype=t.dtype, device=t.device)
        lo, hi = table[k], table[k + 1]
        return lo + (s - k) * (hi - lo), n * (hi - lo)  # log abar and its t-derivative

    def alpha(self, t):
        return torch.exp(0.5 * self._log_alpha_bar(t)[0])

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_alpha_bar(t)[0]))

    def dalpha(self, t):
        log_ab, slope = self._log_alpha_bar(t)
        return 0.5 * torch.exp(0.5 * log_ab) * slope

    def dsigma(self, t):
        log_ab, slope = self._log_alpha_bar(t)
        return -0.5 * torch.exp(log_ab) * slope / torch.sqrt(-torch.expm1(log_ab))

    def config(self) -> dict:
        return {"name": self.name, "schedule": self.schedule.config()}

    def __repr__(self) -> str:
        return f"DDPMPath({self.schedule!r})"
