"""The probability-flow ODE solved in closed form for Gaussian data (Wang & Vastola 2023, arXiv:2303.02490; 2024,
arXiv:2412.09726; checks WV-1 to WV-8).

For data N(mu, Sigma) with Sigma = sum_k nu_k q_k q_k^T (zero eigenvalues allowed), and ANY path
x_t = alpha_t x0 + sigma_t eps, the PF-ODE dx/dt = f x - g^2/2 score started at x_T (time T) is

    x_t = alpha_t mu + sum_k psi_k(t) c_k q_k,   psi_k(t) = sqrt((sigma_t^2 + alpha_t^2 nu_k)
                                                                / (sigma_T^2 + alpha_T^2 nu_k)),
    c_k = q_k^T (x_T - alpha_T mu).

Why: with y_k = q_k^T (x - alpha_t mu) and v_k = alpha_t^2 nu_k + sigma_t^2 the ODE gives
dy_k/dt = (f + g^2 / (2 v_k)) y_k and dv_k/dt = 2 f v_k + g^2, so y_k / sqrt(v_k) is conserved.
Each eigen-direction is rescaled independently; on ker Sigma the factor is sigma_t / sigma_T.

Everything else in this module follows from that formula: the predicted endpoint along the
trajectory, the time t* at which a component is "committed" (SNR(t*) = 1 / nu), the
flow-map Jacobian Q diag(psi) Q^T, the gain of a perturbation, and the Gaussian-approximation
("teleport") sampler that replaces the first part of a numerical solve by the formula.
Time convention: t = 0 data, t = 1 noise.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .distributions import Gaussian, GaussianMixture
from .paths import VP, Path, as_time

__all__ = [
    "TeleportResult",
    "commitment_time",
    "fit_gaussian",
    "flow_map_jacobian",
    "gaussian_pf_endpoint",
    "gaussian_pf_ode",
    "perturbation_gain",
    "principal_components",
    "teleport_sample",
]


# -- helpers ---------------------------------------------------------------------------------------
def _eigen(gaussian) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [D], eigenvalues [D] >= 0, eigenvectors [D, D] as columns) of a Gaussian (or 1-component mixture)."""
    if not isinstance(gaussian, GaussianMixture):
        raise TypeError(f"expected a dl.Gaussian; got {type(gaussian).__name__}")
    if gaussian.n_components != 1:
        raise ValueError(
            f"the closed form needs a single Gaussian; got a mixture of {gaussian.n_components} components. "
            "Use its Gaussian approximation: dl.Gaussian(mixture.mean(), mixture.covariance())"
        )
    return gaussian.means[0], gaussian._evals[0], gaussian._evecs[0]


def _coeffs(path: Path, t) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t in float64 on the CPU (t: float or tensor of any shape)."""
    t = as_time(t).detach().to("cpu", torch.float64)
    return path.alpha(t).double(), path.sigma(t).double()


def _psi(nu: torch.Tensor, path: Path, t_from, t_to) -> torch.Tensor:
    """psi_k = sqrt(v_k(t_to) / v_k(t_from)), v_k = sigma^2 + alpha^2 nu_k; shape [*t_to.shape, D], float64.

    A direction with v_k(t_from) = 0 (no variance and no noise: sigma(t_from) = 0 on ker Sigma) is a
    fixed point only if it stays at zero noise; flowing it to a noisier time is undefined.
    """
    nu = nu.detach().to("cpu", torch.float64)
    a0, s0 = _coeffs(path, t_from)
    if a0.dim() != 0:
        raise ValueError(f"t_from must be a single time; got shape {list(a0.shape)}")
    a1, s1 = _coeffs(path, t_to)
    v0 = s0**2 + a0**2 * nu  # [D]
    v1 = s1[..., None] ** 2 + a1[..., None] ** 2 * nu  # [..., D]
    singular = v0 == 0
    if bool(singular.any()):
        if bool((v1[..., singular] > 0).any()):
            raise ValueError(
                "the flow from t_from, where sigma = 0, along a zero-variance direction to a noisier time is "
                "undefined (every point of that direction maps to the same place); start at a time with "
                "sigma(t_from) > 0"
            )
        return torch.where(singular, torch.ones_like(v1), torch.sqrt(v1 / torch.where(singular, 1.0, v0)))
    return torch.sqrt(v1 / v0)


def _flatten(x: torch.Tensor, dim: int, who: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{who} expects a tensor [N, ...]; got {type(x).__name__} {getattr(x, 'shape', '')}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != dim:
        raise ValueError(f"{who}: points have {flat.shape[1]} features but the Gaussian has dimension {dim}")
    return flat


# -- the closed form -------------------------------------------------------------------------------
def gaussian_pf_ode(gaussian: Gaussian, path: Path, x_T: torch.Tensor, t_from, t_to) -> torch.Tensor:
    """Closed-form PF-ODE solution for Gaussian data, any path (Wang & Vastola 2023; check WV-1):

        x_t = alpha_t mu + Q diag(psi(t)) Q^T (x_T - alpha_T mu),
        psi_k(t) = sqrt((sigma_t^2 + alpha_t^2 nu_k) / (sigma_T^2 + alpha_T^2 nu_k)),

    with T = t_from (the time of x_T) and t = t_to, either direction in time. Zero-variance
    directions (nu_k = 0) scale by sigma_t / sigma_T.

    gaussian: dl.Gaussian of dimension D; x_T: [N, D] or [N, ...] with D features (images are
    flattened and reshaped back); t_from: float; t_to: float -> [N, ...], or 1-D tensor [M] of
    times -> trajectory [M, N, ...]. Computed in x_T's dtype and on its device.
    """
    mu, nu, Q = _eigen(gaussian)
    flat = _flatten(x_T, gaussian.dim, "gaussian_pf_ode")
    t_to_tensor = as_time(t_to) if not isinstance(t_to, torch.Tensor) else t_to
    if t_to_tensor.dim() > 1:
        raise ValueError(f"t_to must be a float or a 1-D tensor of times; got shape {list(t_to_tensor.shape)}")
    psi = _psi(nu, path, t_from, t_to_tensor)  # [D] or [M, D]
    a0, _ = _coeffs(path, t_from)
    a1, _ = _coeffs(path, t_to_tensor)
    kw = {"dtype": flat.dtype, "device": flat.device}
    mu, Q, psi, a1 = mu.to(**kw), Q.to(**kw), psi.to(**kw), a1.to(**kw)
    c = (flat - float(a0) * mu) @ Q  # [N, D] coordinates in the eigenbasis
    if psi.dim() == 1:
        return (a1 * mu + (c * psi) @ Q.T).reshape(x_T.shape)
    out = a1[:, None, None] * mu + (c[None] * psi[:, None, :]) @ Q.T  # [M, N, D]
    return out.reshape(psi.shape[0], *x_T.shape)


def gaussian_pf_endpoint(gaussian: Gaussian, path: Path, x_t: torch.Tensor, t) -> torch.Tensor:
    """Predicted endpoint x0_hat = E[x0 | x_t] for Gaussian data (Tweedie; Wang & Vastola 2023):

        x0_hat = mu + Q diag(alpha_t nu_k / (alpha_t^2 nu_k + sigma_t^2)) Q^T (x_t - alpha_t mu).

    Along a closed-form trajectory this is mu + sum_k alpha_t nu_k / sqrt(v_k(t) v_k(T)) c_k q_k.
    x_t: [N, D] or [N, ...]; t: float or tensor [N]. Zero-variance directions give mu's component
    (also at t = 0, the data limit). Returns a tensor like x_t.
    """
    mu, nu, Q = _eigen(gaussian)
    flat = _flatten(x_t, gaussian.dim, "gaussian_pf_endpoint")
    a, s = _coeffs(path, t)
    if a.dim() == 1 and a.shape[0] != flat.shape[0]:
        raise ValueError(f"t must be a float or a tensor [N] = [{flat.shape[0]}]; got shape {list(a.shape)}")
    a, s = a.reshape(-1, 1), s.reshape(-1, 1)
    nu64 = nu.detach().to("cpu", torch.float64)
    den = a**2 * nu64 + s**2
    gain = torch.where(nu64 > 0, a * nu64 / torch.where(den > 0, den, 1.0), torch.zeros_like(den))
    kw = {"dtype": flat.dtype, "device": flat.device}
    mu, Q, gain, a = mu.to(**kw), Q.to(**kw), gain.to(**kw), a.to(**kw)
    return (mu + ((flat - a * mu) @ Q * gain) @ Q.T).reshape(x_t.shape)


def flow_map_jacobian(gaussian: Gaussian, path: Path, t_from, t_to) -> torch.Tensor:
    """Jacobian of the flow map x_T -> x_t: d x_t / d x_T = Q diag(psi(t)) Q^T (Wang & Vastola 2023).

    t_from: float; t_to: float -> [D, D], or 1-D tensor [M] -> [M, D, D]. Same dtype/device as the Gaussian.
    """
    _, nu, Q = _eigen(gaussian)
    t_to = t_to if isinstance(t_to, torch.Tensor) else as_time(t_to)
    psi = _psi(nu, path, t_from, t_to).to(dtype=Q.dtype, device=Q.device)
    return (Q * psi[..., None, :]) @ Q.T


def perturbation_gain(gaussian: Gaussian, path: Path, t) -> torch.Tensor:
    """Gain on the final sample of a perturbation along q_k at time t (Wang & Vastola 2023; check WV-7):

        d x_0 / d x_t |_{q_k} = psi_k(0) / psi_k(t) = sqrt((sigma_0^2 + alpha_0^2 nu_k) / (sigma_t^2 + alpha_t^2 nu_k))

    (= sqrt(nu_k / (sigma_t^2 + alpha_t^2 nu_k)) when alpha_0 = 1, sigma_0 = 0). Off-support
    directions (nu_k = 0) are erased: gain 0 for t > 0. Ordered like `gaussian.eigen` (ascending
    eigenvalues). t: float -> [D]; 1-D tensor [M] -> [M, D] (float64).
    """
    _, nu, _ = _eigen(gaussian)
    t = t if isinstance(t, torch.Tensor) else as_time(t)
    nu = nu.detach().to("cpu", torch.float64)
    a, s = _coeffs(path, t)
    a0, s0 = _coeffs(path, 0.0)
    den = s[..., None] ** 2 + a[..., None] ** 2 * nu
    num = (s0**2 + a0**2 * nu).expand_as(den)
    return torch.where(den > 0, torch.sqrt(num / torch.where(den > 0, den, 1.0)), torch.ones_like(den))


# -- commitment times ------------------------------------------------------------------------------
def _is_song_vp(path: Path) -> bool:
    return isinstance(path, VP) and type(path).alpha is VP.alpha and type(path).sigma is VP.sigma


def commitment_time(nu, path: Path) -> torch.Tensor:
    """Time t* at which a component of variance nu is committed: alpha^2 nu = sigma^2, i.e.
    SNR(t*) = 1 / nu (Wang & Vastola 2023, "outline first, details later"; check WV-5).

    Song's VP (SNR = 1 / (e^B - 1)) gives B(t*) = log(1 + nu), solved exactly:
        t* = [-beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) log(1 + nu))] / (beta_max - beta_min);
    any other path: bisection on log SNR (assumed decreasing in t) to float64 resolution.
    A component already committed at t = 1 gets t* = 1; nu = 0 gets t* = 0.
    nu: float or tensor of any shape (>= 0) -> float64 tensor of that shape.
    """
    nu = torch.as_tensor(nu, dtype=torch.float64).detach().cpu()
    if bool((nu < 0).any()) or bool(torch.isnan(nu).any()):
        raise ValueError("variances nu must be >= 0")
    if _is_song_vp(path):
        b0, b1 = path.beta_min, path.beta_max
        B = torch.log1p(nu)
        if b1 == b0:
            t = B / b0
        else:
            t = (-b0 + torch.sqrt(b0**2 + 2 * (b1 - b0) * B)) / (b1 - b0)
        return t.clamp(0.0, 1.0)
    target = -torch.log(nu)  # log SNR(t*) = -log(nu); +inf for nu = 0
    lo, hi = torch.zeros_like(nu), torch.ones_like(nu)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        too_clean = path.log_snr(mid) > target  # SNR still above 1/nu: t* is later
        lo, hi = torch.where(too_clean, mid, lo), torch.where(too_clean, hi, mid)
    t = 0.5 * (lo + hi)
    t = torch.where(path.log_snr(torch.ones_like(nu)) >= target, torch.ones_like(t), t)
    return torch.where(nu == 0, torch.zeros_like(t), t)


# -- the data's Gaussian approximation -------------------------------------------------------------
def fit_gaussian(data: torch.Tensor, rank: int | None = None, dtype=torch.float64) -> Gaussian:
    """Gaussian N(m, C) with the data's mean and (unbiased) covariance; data [N, ...] is flattened to [N, D].

    The covariance is eigendecomposed in float64 (PCA) and rebuilt from clamped (>= 0) eigenvalues so
    that it is exactly symmetric PSD, as dl.Gaussian requires. With N <= D (or rank=k, keeping the top
    k principal components) the remaining directions get variance 0, which the closed form handles.
    Returns a dl.Gaussian of dimension D in `dtype`, on data's device.
    """
    flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)
    n, d = flat.shape
    if n < 2:
        raise ValueError(f"fit_gaussian needs at least 2 points; got {n}")
    mean = flat.mean(0)
    centred = flat - mean
    cov = centred.T @ centred / (n - 1)
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    evals = evals.clamp_min(0.0)
    if rank is not None:
        if not 0 <= int(rank) <= d:
            raise ValueError(f"rank must lie in [0, D] = [0, {d}]; got {rank}")
        evals[: d - int(rank)] = 0.0  # ascending order: keep the top `rank`
    cov = (evecs * evals) @ evecs.T
    return Gaussian(mean.to(dtype), (0.5 * (cov + cov.T)).to(dtype))


def principal_components(gaussian: Gaussian, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(variances [k], directions [D, k] as columns) of the top k principal components, largest first."""
    _, nu, Q = _eigen(gaussian)
    k = gaussian.dim if k is None else int(k)
    return nu.flip(0)[:k], Q.flip(1)[:, :k]


# -- the teleport sampler --------------------------------------------------------------------------
class TeleportResult(NamedTuple):
    samples: torch.Tensor  # like x_T
    nfe: int  # velocity evaluations used by the numerical part
    nfe_saved: int | None  # evaluations of the plain sampler on the same grid minus nfe (None if adaptive)
    t_grid: torch.Tensor  # the grid actually integrated, from t_skip down


_EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


def teleport_sample(velocity: Callable, gaussian: Gaussian, path: Path, x_T: torch.Tensor, t_skip: float,
                    n_steps: int | None = None, t_grid=None, method: str = "heun") -> TeleportResult:
    """Gaussian-approximation ("teleport") sampler (Wang & Vastola 2024, arXiv:2412.09726; check WV-6).

    The plain sampler integrates dx/dt = velocity(x, t) along t_grid (default dl.time_grid(n_steps),
    1 -> 1e-3). Here, x_T (at t_grid[0]) is first moved to t_skip in closed form with the data's
    Gaussian approximation `gaussian` (see `fit_gaussian`), then the grid's times below t_skip are
    integrated with dl.sample_ode(velocity, ..., method). The steps above t_skip are skipped:
    nfe_saved = (evaluations per step) x (steps skipped), counted on the same grid.

    velocity: field(x, t) -> dx/dt (for a score use dl.pf_velocity(score, path)); x_T: [N, ...].
    Returns TeleportResult(samples, nfe, nfe_saved, t_grid); nfe is counted, not assumed.
    """
    from .solvers import sample_ode, time_grid

    if (n_steps is None) == (t_grid is None):
        raise ValueError("give exactly one of n_steps (a uniform grid 1 -> 1e-3) or t_grid (the plain sampler's grid)")
    grid = time_grid(n_steps) if t_grid is None else torch.as_tensor(t_grid, dtype=torch.float64).cpu()
    grid = grid.to(torch.float64).cpu()
    if grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("t_grid must be 1-D and strictly decreasing (noise -> data), e.g. dl.time_grid(50)")
    t_start, t_end = float(grid[0]), float(grid[-1])
    t_skip = min(max(float(t_skip), t_end), t_start)
    x = x_T if t_skip == t_start else gaussian_pf_ode(gaussian, path, x_T, t_start, t_skip)
    after = grid[grid < t_skip - 1e-12]
    rest = torch.cat([grid.new_tensor([t_skip]), after])
    calls = [0]

    def counted(z, t):
        calls[0] += 1
        return velocity(z, t)

    if rest.numel() >= 2:
        x = sample_ode(counted, x, rest, method=method)
    per_step = _EVALS_PER_STEP.get(method)
    saved = None if per_step is None else per_step * (grid.numel() - 1) - calls[0]
    return TeleportResult(x, calls[0], saved, rest)
