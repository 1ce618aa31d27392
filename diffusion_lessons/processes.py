"""Forward processes that are not x_t = alpha_t x0 + sigma_t eps, and the change of variables that makes them so.

Three diffusions used in practice do not start from N(0, I) noise. Each becomes the course's Gaussian path
after one change of variables y = to_path(x, t, cond), with t = 0 data and t = 1 noise as everywhere:

* mean-reverting (IR-SDE, Luo et al. 2023):  dx = theta_t (mu - x) dt + sigma_t dw,  sigma_t^2 = 2 lam^2 theta_t.
  In y = x - mu it is linear: y_t = alpha_t y0 + sigma_t eps with alpha_t = exp(-theta_bar_t),
  sigma_t = lam sqrt(1 - alpha_t^2); mu is the degraded image the process drifts towards.
* OUVE (SGMSE, Richter et al. 2023):  dx = theta (y - x) dt + g(t) dw,
  g(t) = s_min (s_max/s_min)^t sqrt(2 log(s_max/s_min)).
  In z = x - y: alpha_t = exp(-theta t) and a closed-form sigma_t; y is the noisy recording.
* geometric Brownian motion (Dale meets Langevin, Shetty et al. 2025):  dX = m X dt + s X dW, elementwise.
  Its Lamperti transform Y = log X - (m - s^2/2) t is a driftless VE diffusion: alpha = 1, sigma_t = s sqrt(t).

A `Process` holds the `path` of the new variable and the map between the two, so everything the package knows
about paths (exact mixture scores, closed-form PF-ODEs, samplers, `fit`) applies in the new variable; the maps
carry samples and scores back. `cond` is the mean the process reverts to (mu, y), None for GBM.
"""
from __future__ import annotations

import math
from itertools import pairwise

import torch

from .closed_form import flow_map_jacobian, gaussian_pf_ode
from .distributions import Gaussian, GaussianMixture, exact_score
from .paths import Path, as_time, convert, expand_time

__all__ = [
    "GBM",
    "OUVE",
    "LogGBMPath",
    "MeanReverting",
    "MeanRevertingPath",
    "OUVEPath",
    "Process",
    "irsde_thetas",
    "lognormal_mixture2",
    "shifted",
]


# -- the three paths in their own variables ---------------------------------------------------------------
def irsde_thetas(T: int = 100, schedule: str = "cosine") -> torch.Tensor:
    """The IR-SDE's discrete rates theta_0..theta_T, float64 [T + 1] (Luo et al. 2023, codes/utils/sde_utils.py).

    cosine: theta_i = 1 - abar_{i+1} / abar_0 with abar_k = cos^2(((k / n) + s) / (1 + s) pi / 2), n = T + 2,
    s = 0.008 (the iDDPM schedule on T + 3 points, truncated at both ends); linear: linspace(1e-4, 0.02) scaled
    by 1000 / (T + 1); constant: ones. theta_0 is never used by the forward process (its sums start at 1).
    """
    if int(T) != T or T < 1:
        raise ValueError(f"T must be a positive integer (the number of discrete steps); got {T!r}")
    T = int(T)
    if schedule == "cosine":
        n, s = T + 2, 0.008
        k = torch.linspace(0, n, n + 1, dtype=torch.float64)
        abar = torch.cos(((k / n) + s) / (1 + s) * math.pi * 0.5) ** 2
        return 1 - (abar / abar[0])[1:-1]
    if schedule == "linear":
        scale = 1000 / (T + 1)
        return torch.linspace(scale * 1e-4, scale * 0.02, T + 1, dtype=torch.float64)
    if schedule == "constant":
        return torch.ones(T + 1, dtype=torch.float64)
    raise ValueError(f"unknown theta schedule {schedule!r}; valid schedules: cosine, linear, constant")


class MeanRevertingPath(Path):
    """The IR-SDE in y = x - mu: alpha_t = exp(-theta_bar_t), sigma_t = lam sqrt(1 - alpha_t^2) (Luo et al. 2023).

    The authors' process has T discrete steps with rates theta_i; step i is the time t = i / T here, and the
    time unit dt = -log(eps) / sum_{i=1..T} theta_i makes alpha_1 = eps exactly (0.005 in the MRS configs).
    Between the steps theta_bar is linear in t, i.e. the rate is constant on ((i-1)/T, i/T]:

        theta_bar(i / T) = dt sum_{j=1..i} theta_j,   rate(t) = T dt theta_i,   f = -rate,   g^2 = 2 lam^2 rate,

    so at the steps alpha and sigma are those the authors' network is trained on, and in between the path
    is the exact marginal of an SDE with a piecewise-constant rate. lam is the stationary std (50/255 for
    images in [0, 1] in the paper; double it for images in [-1, 1]).
    """

    name = "mean_reverting"

    def __init__(self, lam: float = 50 / 255, T: int = 100, schedule: str = "cosine", eps: float = 0.005):
        if not (lam > 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a positive number (the stationary std); got {lam!r}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1): it is alpha at t = 1; got {eps!r}")
        thetas = irsde_thetas(T, schedule)  # validates T and schedule
        self.lam, self.T, self.schedule, self.eps = float(lam), int(T), schedule, float(eps)
        self._cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(thetas[1:], 0)])  # [T + 1]
        self.dt = -math.log(self.eps) / float(self._cum[-1])
        self._rates = self.T * self.dt * thetas  # rate on ((i-1)/T, i/T] is _rates[i]

    @property
    def thetas(self) -> torch.Tensor:
        """The discrete rates theta_0..theta_T (float64 [T + 1])."""
        return self._rates / (self.T * self.dt)

    def theta_bar(self, t) -> torch.Tensor:
        """theta_bar(t) = integral_0^t rate = dt sum_{j <= tT} theta_j, linear between the steps."""
        t = as_time(t)
        u = t * self.T
        i = torch.clamp(torch.floor(u), 0, self.T - 1)
        cum = self._cum.to(t.device, t.dtype)
        lo, hi = cum[i.long()], cum[i.long() + 1]
        return self.dt * (lo + (u - i) * (hi - lo))

    def rate(self, t) -> torch.Tensor:
        """theta(t) in units of t: T dt theta_i on ((i-1)/T, i/T] (theta_1 at t = 0)."""
        t = as_time(t)
        i = torch.clamp(torch.ceil(t * self.T), 1, self.T).long()
        return self._rates.to(t.device, t.dtype)[i]

    def alpha(self, t):
        return torch.exp(-self.theta_bar(t))

    def sigma(self, t):
        return self.lam * torch.sqrt(-torch.expm1(-2 * self.theta_bar(t)))

    def dalpha(self, t):
        return -self.rate(t) * self.alpha(t)

    def dsigma(self, t):
        return self.g2(t) * self.alpha(t) ** 2 / (2 * self.sigma(t))

    def f(self, t):
        return -self.rate(t)

    def g2(self, t):
        return 2 * self.lam**2 * self.rate(t)

    def config(self) -> dict:
        return {"name": self.name, "lam": self.lam, "T": self.T, "schedule": self.schedule, "eps": self.eps}

    def __repr__(self) -> str:
        return f"MeanRevertingPath(lam={self.lam:.4g}, T={self.T}, schedule={self.schedule!r}, eps={self.eps})"


class OUVEPath(Path):
    """SGMSE's OUVE process in z = x - y: alpha_t = exp(-theta t) and (Richter et al. 2023, sgmse/sdes.py)

        sigma_t^2 = s_min^2 exp(-2 theta t) (exp(2 (theta + L) t) - 1) L / (theta + L),   L = log(s_max / s_min),

    the solution of the variance ODE dP/dt = -2 theta P + g(t)^2 with g(t)^2 = 2 L s_min^2 (s_max/s_min)^(2t).
    alpha_1 = exp(-theta) is not 0: the terminal law still depends on the clean signal.
    """

    name = "ouve"

    def __init__(self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5):
        if not (theta > 0 and 0 < sigma_min < sigma_max < math.inf):
            raise ValueError(f"OUVE needs theta > 0 and 0 < sigma_min < sigma_max; got theta={theta}, "
                             f"sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.theta, self.sigma_min, self.sigma_max = float(theta), float(sigma_min), float(sigma_max)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t):
        return torch.exp(-self.theta * as_time(t))

    def dalpha(self, t):
        return -self.theta * self.alpha(t)

    def sigma(self, t):
        t, L = as_time(t), self._log_ratio
        # exp(-2 theta t) (exp(2 (theta + L) t) - 1) with expm1: exact near t = 0
        return self.sigma_min * torch.sqrt(torch.exp(-2 * self.theta * t) * torch.expm1(2 * (self.theta + L) * t)
                                           * L / (self.theta + L))

    def dsigma(self, t):
        s = self.sigma(t)
        return (self.g2(t) - 2 * self.theta * s**2) / (2 * s)

    def f(self, t):
        return torch.full_like(as_time(t), -self.theta)

    def g2(self, t):
        return 2 * self._log_ratio * (self.sigma_min * (self.sigma_max / self.sigma_min) ** as_time(t)) ** 2


class LogGBMPath(Path):
    """Geometric Brownian motion after the Lamperti transform: alpha = 1, sigma_t = s sqrt(t), f = 0, g^2 = s^2.

    Y_t = log X_t - (m - s^2 / 2) t = Y_0 + s W_t: a variance-exploding path with a square-root schedule.
    """

    name = "log_gbm"

    def __init__(self, sigma: float = 0.8):
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive number (the volatility s of GBM); got {sigma!r}")
        self.s = float(sigma)

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def dalpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return self.s * torch.sqrt(as_time(t))

    def dsigma(self, t):
        return 0.5 * self.s / torch.sqrt(as_time(t))

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return torch.full_like(as_time(t), self.s**2)


# -- processes: a path plus the change of variables ---------------------------------------------------------
def shifted(dist: GaussianMixture, offset) -> GaussianMixture:
    """The law of x + offset for x ~ dist (offset: a vector [D] or a float): the means move, nothing else."""
    offset = torch.as_tensor(offset, dtype=dist.means.dtype, device=dist.means.device)
    return GaussianMixture(dist.weights, dist.means + offset, dist.covs)


class Process:
    """A forward SDE dx = drift(x, t, cond) dt + diffusion(x, t) dw whose change of variables
    y = to_path(x, t, cond) is the Gaussian path `self.path`: y_t = alpha_t y_0 + sigma_t eps.

    Subclasses define to_path, from_path, score_from_path (the chain rule for grad log p), drift, diffusion.
    x: [N, ...]; t: float or tensor [N]; cond: a tensor that broadcasts against x, or None.
    """

    path: Path

    def to_path(self, x, t, cond=None):
        raise NotImplementedError

    def from_path(self, y, t, cond=None):
        raise NotImplementedError

    def score_from_path(self, score_y, x, t, cond=None):
        """grad_x log p_t(x) from grad_y log q_t(y) at y = to_path(x, t, cond)."""
        raise NotImplementedError

    def drift(self, x, t, cond=None):
        raise NotImplementedError

    def diffusion(self, x, t):
        raise NotImplementedError

    def sample(self, x0: torch.Tensor, t, cond=None, eps: torch.Tensor | None = None, generator=None):
        """x_t given x0 [N, ...] exactly, through the path: (x_t, eps). t: float or tensor [N]."""
        y_t, eps = self.path.sample(self.to_path(x0, 0.0, cond), t, eps=eps, generator=generator)
        return self.from_path(y_t, t, cond), eps

    def exact_score(self, path_law: GaussianMixture, cond=None):
        """score(x, t) = grad_x log p_t(x) when the law of y_0 = to_path(x0, 0, cond) is the mixture `path_law`
        (for a vector cond, `shifted(law_of_x0, -cond)`; for GBM, the law of log X0)."""
        score_y = exact_score(path_law, self.path)

        def score(x, t):
            return self.score_from_path(score_y(self.to_path(x, t, cond), t), x, t, cond)

        return score

    def score_of(self, model, target: str = "eps", cond=None):
        """score(x, t) = grad_x log p_t(x) of a network trained on the path of y: model(y, t) predicts `target`
        (eps, x0, score, velocity) for y_t. Evaluated in the model's dtype, returned in x's."""
        dtype = next(model.parameters()).dtype if isinstance(model, torch.nn.Module) else None

        def score(x, t):
            y = self.to_path(x, t, cond)
            out = model(y if dtype is None else y.to(dtype), t).to(x.dtype)
            return self.score_from_path(convert(out, target, "score", y, t, self.path), x, t, cond)

        return score

    def simulate(self, x0: torch.Tensor, t_grid, cond=None, generator=None, return_trajectory: bool = False):
        """Euler–Maruyama of the forward SDE along an increasing grid: x += drift h + diffusion sqrt(h) z.

        Returns x [N, ...] at t_grid[-1], or the trajectory [len(t_grid), N, ...] when return_trajectory.
        """
        times = torch.as_tensor(t_grid, dtype=torch.float64).tolist()
        if len(times) < 2 or any(b <= a for a, b in pairwise(times)):
            raise ValueError("simulate runs data -> noise: t_grid must increase, e.g. torch.linspace(0, 1, 101)")
        x, trajectory = x0, [x0]
        for t, t_next in pairwise(times):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + self.drift(x, t, cond) * (t_next - t) + self.diffusion(x, t) * math.sqrt(t_next - t) * z
            if return_trajectory:
                trajectory.append(x)
        return torch.stack(trajectory) if return_trajectory else x

    def config(self) -> dict:
        return {"process": type(self).__name__, **self.path.config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class _Shifted(Process):
    """A process whose change of variables is a shift by the condition: y = x - cond (Jacobian I)."""

    @staticmethod
    def _cond(cond, x):
        if cond is None:
            raise ValueError("this process reverts to a mean: pass cond (a tensor that broadcasts against x)")
        return torch.as_tensor(cond, dtype=x.dtype, device=x.device)

    def to_path(self, x, t, cond=None):
        return x - self._cond(cond, x)

    def from_path(self, y, t, cond=None):
        return y + self._cond(cond, y)

    def score_from_path(self, score_y, x, t, cond=None):
        return score_y

    def drift(self, x, t, cond=None):
        return -self.path.f(expand_time(t, x)) * (self._cond(cond, x) - x)

    def diffusion(self, x, t):
        return torch.sqrt(self.path.g2(expand_time(t, x)))

    def terminal_law(self, x0: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cond + alpha_1 (x0 - cond) and std sigma_1 of x_1 given x0 (the exact law at t = 1)."""
        a, s = self.path.alpha(1.0), self.path.sigma(1.0)
        c = self._cond(cond, x0)
        return c + a.to(x0) * (x0 - c), s.to(x0)


class MeanReverting(_Shifted):
    """IR-SDE (Luo et al. 2023): dx = theta_t (mu - x) dt + sqrt(2 lam^2 theta_t) dw, cond = mu.

    x_t = mu + alpha_t (x0 - mu) + sigma_t eps with the `MeanRevertingPath`; x_1 ~ N(mu + eps (x0 - mu),
    lam^2 (1 - eps^2)), which the authors' sampler approximates by its prior mu + lam z (`prior_sample`).
    """

    def __init__(self, lam: float = 50 / 255, T: int = 100, schedule: str = "cosine", eps: float = 0.005):
        self.path = MeanRevertingPath(lam, T, schedule, eps)

    def prior_sample(self, mu: torch.Tensor, generator=None) -> torch.Tensor:
        """mu + lam z, the authors' start (it neglects eps (x0 - mu) and the factor sqrt(1 - eps^2))."""
        return mu + self.path.lam * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)


class OUVE(_Shifted):
    """SGMSE's Ornstein–Uhlenbeck variance-exploding SDE (Richter et al. 2023): dx = theta (y - x) dt + g(t) dw,
    cond = y, the noisy recording. Defaults theta = 1.5, sigma_min = 0.05, sigma_max = 0.5 (sgmse)."""

    def __init__(self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5):
        self.path = OUVEPath(theta, sigma_min, sigma_max)

    def prior_sample(self, y: torch.Tensor, generator=None) -> torch.Tensor:
        """y + sigma_1 z, SGMSE's start: the true x_1 has mean y + alpha_1 (x0 - y), not y (the prior mismatch)."""
        return y + float(self.path.sigma(1.0)) * torch.randn(y.shape, generator=generator, dtype=y.dtype,
                                                             device=y.device)

    def prior_mismatch(self, path_law: Gaussian, t_end: float = 0.0, t_start: float = 1.0) -> Gaussian:
        """The law, in z = x - y, at t_end of the exact PF-ODE of Gaussian data z0 ~ path_law started from
        SGMSE's prior N(0, sigma_1^2 I) at t_start instead of the true N(alpha_1 m, alpha_1^2 C + sigma_1^2 I).

        The flow map is affine, z_e = alpha_e m + J (z_1 - alpha_1 m) with J = U diag(psi) U^T (closed_form),
        so the end law is N(alpha_e m - J alpha_1 m, sigma_1^2 J J^T); the exact law is path_law noised to t_end.
        """
        s1 = float(self.path.sigma(t_start))
        mean = gaussian_pf_ode(path_law, self.path, torch.zeros_like(path_law.mean_vector)[None], t_start, t_end)[0]
        jac = flow_map_jacobian(path_law, self.path, t_start, t_end)
        cov = s1**2 * jac @ jac.T
        return Gaussian(mean, 0.5 * (cov + cov.T))


class GBM(Process):
    """Geometric Brownian motion dX = m X dt + s X dW on (0, inf)^D, elementwise (Shetty et al. 2025).

    Lamperti: Y = log X - (m - s^2/2) t follows the `LogGBMPath` (Y_t = Y_0 + s sqrt(t) eps), so X_t is
    log-normal: log X_t ~ N(log x0 + (m - s^2/2) t, s^2 t). Scores: p_X(x) = q_Y(y) / prod x, hence

        grad_x log p_X = (grad_y log q_Y - 1) / x,   i.e.  h(x) := x * grad_x log p_X = grad_y log q_Y - 1,

    with h the Hyvarinen score. Defaults: s = 0.8 and m = s^2 / 2 (the authors' code: log X is then driftless).
    """

    def __init__(self, sigma: float = 0.8, mu: float | None = None):
        self.path = LogGBMPath(sigma)
        self.mu = 0.5 * sigma**2 if mu is None else float(mu)

    @property
    def sigma(self) -> float:
        return self.path.s

    @property
    def log_drift(self) -> float:
        """m - s^2 / 2, the drift of log X."""
        return self.mu - 0.5 * self.sigma**2

    @staticmethod
    def _positive(x):
        if not bool((x > 0).all()):
            raise ValueError("GBM lives on (0, inf): every coordinate of x must be positive "
                             "(shift the data, e.g. pixels in [1, 2], before using it)")
        return x

    def to_path(self, x, t, cond=None):
        return torch.log(self._positive(x)) - self.log_drift * expand_time(t, x)

    def from_path(self, y, t, cond=None):
        return torch.exp(y + self.log_drift * expand_time(t, y))

    def score_from_path(self, score_y, x, t, cond=None):
        return (score_y - 1) / x

    def drift(self, x, t, cond=None):
        return self.mu * x

    def diffusion(self, x, t):
        return self.sigma * x

    def moments(self, x0, t) -> tuple[torch.Tensor, torch.Tensor]:
        """E X_t = x0 e^{m t} and Var X_t = x0^2 e^{2 m t} (e^{s^2 t} - 1), X_0 = x0 (check DL-1)."""
        t = as_time(t)
        mean = x0 * torch.exp(self.mu * t)
        return mean, mean**2 * torch.expm1(self.sigma**2 * t)

    def config(self) -> dict:
        return {"process": "GBM", "sigma": self.sigma, "mu": self.mu}

    def __repr__(self) -> str:
        return f"GBM(sigma={self.sigma}, mu={self.mu})"


def lognormal_mixture2(dtype=torch.float64) -> GaussianMixture:
    """A 2-D log-normal mixture, given as the law of log X: weights (0.4, 0.6), log-means (-0.7, 0.4) and
    (0.6, -0.3), covariances diag(0.08, 0.05) and [[0.06, 0.03], [0.03, 0.06]] (X around (0.5, 1.5) and (1.8, 0.7))."""
    return GaussianMixture(torch.tensor([0.4, 0.6], dtype=dtype), torch.tensor([[-0.7, 0.4], [0.6, -0.3]], dtype=dtype),
                           torch.tensor([[[0.08, 0.0], [0.0, 0.05]], [[0.06, 0.03], [0.03, 0.06]]], dtype=dtype))
