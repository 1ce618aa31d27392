"""Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023) in the package's time.

**Time.** Here t = 0 is data and t = 1 is the base (noise), as for every path in the package.
Albergo et al. run t from the base (t = 0) to the target (t = 1): replace their t by 1 - t to read
their formulas here; velocities change sign, scores do not (`flip_time`).

An interpolant joins a data point x0 (t = 0) and a base point x1 (t = 1), with latent noise z:

    x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z,     z ~ N(0, I) independent of (x0, x1),
    alpha(0) = beta(1) = 1,  alpha(1) = beta(0) = 0,  gamma(t)^2 = a t (1 - t)   (a >= 0).

(alpha, beta) are a path's (alpha, sigma): the *linear* interpolant is `RectifiedFlow`, the
*trigonometric* one `Cosine`. With gamma = 0 and a Gaussian base x1 ~ N(0, I) an interpolant *is*
that path; with gamma > 0 it is the Gaussian path sigma^2 = beta^2 + gamma^2 (`LatentNoisePath`).

The law rho_t of x_t has the velocity and score (Albergo et al. 2023, Sec. 2)

    b(t, x) = E[alpha' x0 + beta' x1 + gamma' z | x_t = x],    s(t, x) = grad_x log rho_t(x),

and for every epsilon(t) >= 0 these dynamics share the marginals rho_t:

    ODE                                dX = b dt
    SDE forward in t (data -> base)    dX = (b + epsilon s) dt + sqrt(2 epsilon) dW
    SDE backward in t (base -> data)   dX = (b - epsilon s) dt + sqrt(2 epsilon) dW_bar

(the Fokker-Planck equations d rho/dt + div((b +- epsilon s) rho) = +- epsilon Laplacian(rho)).
For a Gaussian path, epsilon = zeta^2 g^2 / 2 is the zeta-family of reverse SDEs (Song et al. 2021; zeta = 1: the
reverse SDE). Here epsilon is the diffusion strength, not the noise sample eps.
"""
from __future__ import annotations

from typing import Callable

import torch

from .distributions import Gaussian
from .paths import Path, as_time, expand_time, make_path
from .sampling.grids import as_times as _as_times
from .sampling.sde import euler_maruyama_step

__all__ = [
    "Interpolant",
    "LatentNoisePath",
    "linear_interpolant",
    "trigonometric_interpolant",
    "flip_time",
    "gaussian_interpolant_law",
    "gaussian_interpolant_velocity",
    "gaussian_interpolant_score",
    "quadratic_objective",
    "sde_family_drift",
    "sample_sde_family",
]


class Interpolant:
    """x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z with alpha = path.alpha, beta = path.sigma, gamma^2 = a t(1-t).

    path: a Path (or its name) with alpha(0) = 1, alpha(1) = 0, sigma(0) = 0, sigma(1) = 1, e.g. "rf" or "cosine".
    a: strength of the latent noise (0: no latent term; the Gaussian closed forms below are tested with a = 2).
    """

    def __init__(self, path: Path | str = "rf", a: float = 0.0):
        self.path, self.a = make_path(path), float(a)
        if not self.a >= 0:
            raise ValueError(f"the latent-noise strength a must be >= 0 (gamma^2 = a t (1 - t)); got {a}")
        ends = [float(f(s)) for f in (self.path.alpha, self.path.sigma) for s in (0.0, 1.0)]
        if max(abs(e - r) for e, r in zip(ends, (1, 0, 0, 1))) > 1e-12:
            raise ValueError(f"an interpolant needs alpha(0) = sigma(1) = 1 and alpha(1) = sigma(0) = 0, so that x_0 "
                             f"is the data point and x_1 the base point; {self.path!r} has alpha(0), alpha(1), "
                             f"sigma(0), sigma(1) = {ends}. Use RectifiedFlow (linear) or Cosine (trigonometric)")

    def __repr__(self) -> str:
        return f"Interpolant({self.path!r}, a={self.a})"

    # -- coefficients (t: float or tensor; tensors out) ----------------------------------------
    def alpha(self, t):
        return self.path.alpha(t)

    def beta(self, t):
        return self.path.sigma(t)

    def dalpha(self, t):
        return self.path.dalpha(t)

    def dbeta(self, t):
        return self.path.dsigma(t)

    def gamma(self, t):
        t = as_time(t)
        return torch.sqrt(self.a * t * (1 - t))

    def gamma_dgamma(self, t):
        """gamma gamma' = a (1 - 2t) / 2: finite at the ends, where gamma' itself is not."""
        return 0.5 * self.a * (1 - 2 * as_time(t))

    def dgamma(self, t):
        """gamma' = a (1 - 2t) / (2 gamma); infinite at t = 0 and 1 when a > 0."""
        return torch.zeros_like(as_time(t)) if self.a == 0 else self.gamma_dgamma(t) / self.gamma(t)

    # -- samples ---------------------------------------------------------------------------------
    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t, z: torch.Tensor | None = None, generator=None):
        """(x_t, z): x_t = alpha x0 + beta x1 + gamma z for x0, x1 [N, ...] and t a float or tensor [N]."""
        if x1.shape != x0.shape:
            raise ValueError(f"x0 and x1 must have the same shape; got {list(x0.shape)} and {list(x1.shape)}")
        if z is None:
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tt = expand_time(t, x0)
        return self.alpha(tt) * x0 + self.beta(tt) * x1 + self.gamma(tt) * z, z

    def velocity_target(self, x0: torch.Tensor, x1: torch.Tensor, z: torch.Tensor, t) -> torch.Tensor:
        """d x_t / dt = alpha' x0 + beta' x1 + gamma' z, whose conditional mean given x_t is b (0 < t < 1 if a > 0)."""
        tt = expand_time(t, x0)
        out = self.dalpha(tt) * x0 + self.dbeta(tt) * x1
        return out if self.a == 0 else out + self.dgamma(tt) * z

    def gaussian_path(self) -> Path:
        """The Gaussian path x_t = alpha x0 + sqrt(beta^2 + gamma^2) eps that this interpolant is for x1 ~ N(0, I)."""
        return self.path if self.a == 0 else LatentNoisePath(self.path, self.a)


class LatentNoisePath(Path):
    """alpha = base.alpha, sigma = sqrt(base.sigma^2 + a t (1 - t)): a one-sided interpolant with latent noise.

    beta x1 + gamma z with x1, z ~ N(0, I) independent is N(0, (beta^2 + gamma^2) I), so the law of x_t and
    the velocity b are those of this path: sigma' = (beta beta' + gamma gamma') / sigma. sigma' is infinite at
    t = 0 (the latent noise grows like sqrt(a t)), so keep grids inside (0, 1].
    """

    name = "latent_noise"

    def __init__(self, base: Path | str = "rf", a: float = 2.0):
        self.base, self.a = make_path(base), float(a)

    def alpha(self, t):
        return self.base.alpha(t)

    def dalpha(self, t):
        return self.base.dalpha(t)

    def sigma(self, t):
        t = as_time(t)
        return torch.sqrt(self.base.sigma(t) ** 2 + self.a * t * (1 - t))

    def dsigma(self, t):
        t = as_time(t)
        return (self.base.sigma(t) * self.base.dsigma(t) + 0.5 * self.a * (1 - 2 * t)) / self.sigma(t)

    def config(self) -> dict:
        return {"name": self.name, "base": self.base.config(), "a": self.a}


def linear_interpolant(a: float = 0.0) -> Interpolant:
    """alpha = 1 - t, beta = t (rectified flow), gamma^2 = a t (1 - t)."""
    return Interpolant("rf", a)


def trigonometric_interpolant(a: float = 0.0) -> Interpolant:
    """alpha = cos(pi t / 2), beta = sin(pi t / 2) (the cosine path), gamma^2 = a t (1 - t)."""
    return Interpolant("cosine", a)


def flip_time(field: Callable, velocity: bool = True) -> Callable:
    """A field G of Albergo's (or Lipman's) time as a field of ours: F(x, t) = -G(x, 1 - t) for a velocity,
    F(x, t) = G(x, 1 - t) for anything else (points, scores, densities).

    The map is its own inverse, so it also carries our fields to their time.
    """
    sign = -1.0 if velocity else 1.0
    return lambda x, t: sign * field(x, 1 - t)


# -- closed forms for Gaussian endpoints: the test oracle (check SI-1) --------------------------------
def _gaussian_parts(interp: Interpolant, data: Gaussian, base: Gaussian, t, x):
    """Mean m_t, its derivative, Sigma_t and Sigma_t'/2 of x_t, shaped [N|1, D] and [N|1, D, D]."""
    tt = as_time(t, x).reshape(-1, 1, 1)
    m0, m1 = data.mean_vector.to(x), base.mean_vector.to(x)
    S0, S1 = data.cov.to(x), base.cov.to(x)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    a, b, g = interp.alpha(tt), interp.beta(tt), interp.gamma(tt)
    da, db = interp.dalpha(tt), interp.dbeta(tt)
    mean, dmean = a[:, 0] * m0 + b[:, 0] * m1, da[:, 0] * m0 + db[:, 0] * m1
    cov = a**2 * S0 + b**2 * S1 + g**2 * eye
    half_dcov = a * da * S0 + b * db * S1 + interp.gamma_dgamma(tt) * eye
    return mean, dmean, cov, half_dcov


def _rows_times(matrix: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """r M for rows r [N, D] and M [N|1, D, D] (one product for all points when t is shared)."""
    return r @ matrix[0] if matrix.shape[0] == 1 else (r[:, None, :] @ matrix)[:, 0]


def gaussian_interpolant_law(interp: Interpolant, data: Gaussian, base: Gaussian, t: float) -> Gaussian:
    """Law of x_t for independent x0 ~ data, x1 ~ base: N(alpha m0 + beta m1, alpha^2 S0 + beta^2 S1 + gamma^2 I)."""
    mean, _, cov, _ = _gaussian_parts(interp, data, base, t, data.mean_vector[None])
    return Gaussian(mean[0], cov[0])


def gaussian_interpolant_velocity(interp: Interpolant, data: Gaussian, base: Gaussian) -> Callable:
    """b(x, t) = m_t' + (Sigma_t'/2) Sigma_t^{-1} (x - m_t) for Gaussian endpoints (check SI-1), t float or [N]."""

    def velocity(x, t):
        mean, dmean, cov, half_dcov = _gaussian_parts(interp, data, base, t, x)
        # rows: (x - m) Sigma^{-1} (Sigma'/2) is the transpose of (Sigma'/2) Sigma^{-1} (x - m), both symmetric
        return dmean + _rows_times(torch.linalg.solve(cov, half_dcov), x - mean)

    return velocity


def gaussian_interpolant_score(interp: Interpolant, data: Gaussian, base: Gaussian) -> Callable:
    """s(x, t) = -Sigma_t^{-1} (x - m_t) for Gaussian endpoints (check SI-1), t float or [N]."""

    def score(x, t):
        mean, _, cov, _ = _gaussian_parts(interp, data, base, t, x)
        return -_rows_times(torch.linalg.inv(cov), x - mean)

    return score


# -- the quadratic objectives (Albergo et al. 2023, Sec. 2; check SI-2) --------------------------------
def quadratic_objective(field: Callable, interp: Interpolant, x0, x1, t, which: str = "velocity", z=None,
                        generator=None) -> torch.Tensor:
    """Monte-Carlo value of one of Albergo et al.'s objectives at time(s) t (float or [N]), on samples x0, x1 [N, D]:

    "velocity": E[ |f|^2 / 2 - (alpha' x0 + beta' x1 + gamma' z) . f ]   (minimiser b)
    "score":    E[ |f|^2 / 2 + z . f / gamma ]                          (minimiser s; needs gamma > 0)
    "denoiser": E[ |f|^2 / 2 - z . f ]                                   (minimiser eta_z = E[z | x_t] = -gamma s)

    f = field(x_t, t). The minimum is -E|minimiser|^2 / 2 (per t); f = minimiser + delta costs E|delta|^2 / 2 more.
    """
    x_t, z = interp.sample(x0, x1, t, z, generator)
    f = field(x_t, t)
    if which == "velocity":
        target = interp.velocity_target(x0, x1, z, t)
    elif which == "score":
        if interp.a == 0:
            raise ValueError("the score objective divides by gamma: build the interpolant with latent noise a > 0")
        target = -z / interp.gamma(expand_time(t, x0))
    elif which == "denoiser":
        target = z
    else:
        raise ValueError(f"unknown objective {which!r}; valid: velocity, score, denoiser")
    return (0.5 * f.square() - target * f).flatten(1).sum(1).mean()


# -- the epsilon-family of SDEs with the marginals of the ODE -------------------------------------
def _strength(epsilon, t) -> float:
    value = float(epsilon(t) if callable(epsilon) else epsilon)
    if not value >= 0:
        raise ValueError(f"epsilon(t) must be >= 0 (a diffusion strength); got {value} at t = {t}")
    return value


def sde_family_drift(velocity: Callable, score: Callable, epsilon, backward: bool = True) -> Callable:
    """Drift b - epsilon s (backward in t: base -> data) or b + epsilon s (forward: data -> base), Albergo et al. 2023.

    epsilon: a number or a function epsilon(t) >= 0. With epsilon = zeta^2 g^2 / 2 the backward drift is
    solvers.reverse_drift(score, path, zeta).
    """
    sign = -1.0 if backward else 1.0

    def drift(x, t):
        return velocity(x, t) + sign * _strength(epsilon, t) * score(x, t)

    return drift


def sample_sde_family(velocity: Callable, score: Callable, x_start: torch.Tensor, t_grid, epsilon=1.0,
                      generator=None, denoise: bool = False, return_trajectory: bool = False):
    """Euler–Maruyama for dX = (b -+ epsilon s) dt + sqrt(2 epsilon) dW along t_grid (either direction).

    A decreasing grid (1 -> 0) generates data with the backward drift b - epsilon s; an increasing grid
    runs the forward SDE b + epsilon s. epsilon = 0 is Euler on the ODE dX = b dt. denoise=True: the last
    step adds no noise. Returns X at t_grid[-1], or (X, trajectory [len(t_grid), N, ...]).
    """
    times = _as_times(t_grid)
    drift = sde_family_drift(velocity, score, epsilon, backward=times[-1] < times[0])
    diffusion2 = lambda t: 2 * _strength(epsilon, t)  # noqa: E731  (g^2 of the SDE: sqrt(2 eps) squared)
    x, trajectory = x_start, [x_start]
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        last = i == len(times) - 2
        x = euler_maruyama_step(drift, diffusion2, x, t, t_next, generator, noise=not (denoise and last))
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x
