"""The exact flow map Phi_{t -> r} of the probability-flow ODE: the oracle every flow-map model is checked against.

The PF-ODE dx/dt = v(x, t) of a path x_t = alpha_t x0 + sigma_t eps (t = 0 data, t = 1 noise) moves a
sample of p_t to a sample of p_r. Its solution map

    Phi_{t -> r}(x) = x + int_t^r v(x_s, s) ds,      Phi_{r -> s} o Phi_{t -> r} = Phi_{t -> s}  (semigroup),

is what consistency models (r fixed near 0), shortcut models and MeanFlow (any r <= t) learn. The
average velocity u(x, t, r) = (x - Phi_{t -> r}(x)) / (t - r), so that Phi_{t -> r}(x) = x - (t - r) u,
tends to the instantaneous velocity v(x, t) as r -> t (Geng et al. 2025, eq. 3).

* Gaussian data N(mu, Sigma = U diag(lambda) U^T), any path, in closed form (Wang & Vastola 2023):

      Phi_{t -> r}(x) = alpha_r mu + U diag(psi) U^T (x - alpha_t mu),
      psi_k = sqrt((sigma_r^2 + alpha_r^2 lambda_k) / (sigma_t^2 + alpha_t^2 lambda_k)).

* Gaussian mixtures: scipy's DOP853 on the exact mixture velocity, every sample with its own (t, r):
  with s in [0, 1] and tau(s) = t + s (r - t), dx/ds = (r - t) v(x, tau(s)); rtol 1e-10, atol 1e-12
  give about 1e-10.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..closed_form import _eigen, gaussian_pf_ode
from ..distributions import GaussianMixture, exact_denoiser, exact_score
from ..paths import Path, as_time, expand_time

__all__ = ["exact_average_velocity", "exact_flow_map", "exact_velocity", "gaussian_flow_map", "mixture_flow_map"]


def _pair_of_times(t, r, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t and r as tensors [N] in x's dtype and device (a float is repeated for the batch), checked to
    lie in [0, 1]; a tensor keeps its graph, so the map can be differentiated in t and r."""
    n = x.shape[0]
    out = []
    for name, value in (("t", t), ("r", r)):
        v = as_time(value, x).reshape(-1)
        if v.numel() == 1:
            v = v.expand(n)
        if v.shape != (n,):
            raise ValueError(f"{name} must be a float or a tensor [N] = [{n}]; got shape {list(v.shape)}")
        out.append(v)
    return out[0], out[1]


def gaussian_flow_map(gaussian: GaussianMixture, path: Path, x: torch.Tensor, t, r) -> torch.Tensor:
    """Exact Phi_{t -> r}(x) for Gaussian data on any path (closed form in the module docstring).

    gaussian: dl.Gaussian of dimension D; x: [N, D]; t, r: floats (then this is dl.gaussian_pf_ode)
    or tensors [N], a pair of times per sample, either order. With tensor times it is computed in
    x's dtype and is differentiable in x, t and r (torch.func.jvp works through it).
    """
    if not isinstance(t, torch.Tensor) and not isinstance(r, torch.Tensor):
        return gaussian_pf_ode(gaussian, path, x, float(t), float(r))
    if x.dim() != 2 or x.shape[1] != gaussian.dim:
        raise ValueError(f"gaussian_flow_map expects x of shape [N, {gaussian.dim}]; got {list(x.shape)}")
    mu, lam, U = (a.detach().to(dtype=x.dtype, device=x.device) for a in _eigen(gaussian))
    tt, rr = _pair_of_times(t, r, x)
    a_t, s_t, a_r, s_r = (c[:, None] for c in (path.alpha(tt), path.sigma(tt), path.alpha(rr), path.sigma(rr)))
    v_from, v_to = s_t**2 + a_t**2 * lam, s_r**2 + a_r**2 * lam  # [N, D]
    if not torch.compiler.is_compiling() and bool((v_from == 0).any()):
        raise ValueError("the flow map from a time with sigma_t = 0 along a zero-variance direction is undefined; "
                         "start at a time with sigma_t > 0")
    c = (x - a_t * mu) @ U
    return a_r * mu + (c * torch.sqrt(v_to / v_from)) @ U.T


def exact_velocity(dist: GaussianMixture, path: Path) -> Callable:
    """The exact PF-ODE velocity of a Gaussian mixture, v(x, t) = E[alpha'_t x0 + sigma'_t eps | x_t = x]
    = alpha'_t x0_hat - sigma'_t sigma_t score: written with the score rather than eps_hat = (x - alpha x0_hat)
    / sigma, it stays accurate as sigma_t -> 0 (no cancellation), so the ODE can be run down to t = 0."""
    denoiser, score = exact_denoiser(dist, path), exact_score(dist, path)

    def velocity(x, t):
        tt = expand_time(t, x)
        return path.dalpha(tt) * denoiser(x, t) - path.dsigma(tt) * path.sigma(tt) * score(x, t)

    return velocity


def mixture_flow_map(mixture: GaussianMixture, path: Path, x: torch.Tensor, t, r, rtol: float = 1e-10,
                     atol: float = 1e-12) -> torch.Tensor:
    """Phi_{t -> r}(x) for a Gaussian mixture: DOP853 (scipy) on the exact velocity, in float64.

    x: [N, D]; t, r: floats or tensors [N] (each sample its own pair). All samples are integrated as
    one system in the normalised time s in [0, 1] (see the module docstring), so one solve serves
    any set of pairs. Returns a tensor like x (not differentiable).
    """
    from scipy.integrate import solve_ivp

    if x.dim() != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"mixture_flow_map expects x of shape [N, {mixture.dim}]; got {list(x.shape)}")
    tt, rr = (v.detach().to("cpu", torch.float64) for v in _pair_of_times(t, r, x))
    velocity = exact_velocity(mixture.to(torch.float64), path)
    shape = (x.shape[0], x.shape[1])
    span = (rr - tt)[:, None]

    def rhs(s, y):
        tau = (tt + s * (rr - tt)).clamp(0.0, 1.0)  # stays in [0, 1]; the clamp only absorbs rounding
        z = torch.from_numpy(y).reshape(shape)
        return (span * velocity(z, tau)).reshape(-1).numpy()

    y0 = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    sol = solve_ivp(rhs, (0.0, 1.0), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"DOP853 failed on the mixture flow map: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape).to(dtype=x.dtype, device=x.device)


def exact_flow_map(dist: GaussianMixture, path: Path) -> Callable:
    """flow(x, t, r) = Phi_{t -> r}(x): the closed form for one Gaussian, DOP853 for a mixture."""
    if not isinstance(dist, GaussianMixture):
        raise TypeError(f"exact_flow_map needs a dl.Gaussian or dl.GaussianMixture; got {type(dist).__name__}")
    if dist.n_components == 1:
        return lambda x, t, r: gaussian_flow_map(dist, path, x, t, r)
    return lambda x, t, r: mixture_flow_map(dist, path, x, t, r)


def exact_average_velocity(dist: GaussianMixture, path: Path) -> Callable:
    """u(x, t, r) = (x - Phi_{t -> r}(x)) / (t - r), and u = v(x, t) where r = t (Geng et al. 2025, eq. 3).

    The average velocity MeanFlow and shortcut models learn; one step x - (t - r) u is exact.
    x: [N, D]; t, r: floats or tensors [N]. Returns a tensor like x.
    """
    flow, velocity = exact_flow_map(dist, path), exact_velocity(dist, path)

    def average_velocity(x, t, r):
        tt, rr = _pair_of_times(t, r, x)
        h = (tt - rr)[:, None]
        same = h == 0
        moved = (x - flow(x, tt, rr)) / torch.where(same, torch.ones_like(h), h)
        return torch.where(same, velocity(x, tt), moved)

    return average_velocity
