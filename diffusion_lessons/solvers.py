"""Solvers: integrate a field from noise (t = 1) to data (t = 0), deterministically or not.

A *field* is any callable field(x, t) -> tensor like x, with x of shape [N, ...] and t a Python
float (one time for the whole batch, which is what every solver here passes) or a tensor [N].
Networks, exact scores and hand-written lambdas are all fields.

* Ordinary differential equations dx/dt = v(x, t), e.g. the probability-flow ODE (MATH.md §0.1)

      dx/dt = f(t) x - g(t)^2 / 2 * score(x, t),

  are integrated along a time grid by `sample_ode` with Euler, Heun, RK4 or an adaptive solver.
* The same ODE written for a data-prediction model x0_hat(x, t) is solved by `sample_dpm_solver`
  (DPM-Solver++, Lu et al. 2022b; MATH.md §7.2), an exponential integrator in lambda = log(alpha / sigma):
  order 1 is DDIM, order 2 the multistep DPM-Solver++(2M).
* The reverse SDE (MATH.md §0.1, §1.2), time running from 1 down to 0,

      dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar,

  is integrated by `sample_sde` with Euler–Maruyama, optionally with Langevin corrector steps
  (predictor–corrector, MATH.md §1.3).

Time steps h = t_next - t are *negative* when generating; every formula below is written for a
signed h, so the same code integrates forwards (t increasing) or backwards. The solvers do not
switch off autograd: sample a network under `torch.no_grad()`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .paths import Path, convert, expand_time

__all__ = [
    "pf_velocity",
    "reverse_drift",
    "euler_step",
    "heun_step",
    "rk4_step",
    "euler_maruyama_step",
    "langevin",
    "sample_ode",
    "dpm_solver_pp_step",
    "sample_dpm_solver",
    "sample_sde",
    "simulate_forward_sde",
    "time_grid",
    "ODE_METHODS",
    "SDE_METHODS",
    "DPM_ORDERS",
    "GRID_KINDS",
]

Field = Callable[[torch.Tensor, object], torch.Tensor]


# -- fields built from a score ----------------------------------------------------------------------
def pf_velocity(score: Field, path: Path) -> Field:
    """Probability-flow ODE velocity (MATH.md §0.1): v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t).

    For the exact score, v is also the flow-matching velocity E[alpha' x0 + sigma' eps | x_t = x].
    """

    def velocity(x, t):
        tt = expand_time(t, x)
        return path.f(tt) * x - 0.5 * path.g2(tt) * score(x, t)

    return velocity


def reverse_drift(score: Field, path: Path, zeta: float = 1.0) -> Field:
    """Drift of the reverse-time family dx = [f x - (1 + zeta^2)/2 g^2 score] dt + zeta g dw_bar (MATH.md §0.1).

    zeta = 1: the reverse SDE; zeta = 0: the PF-ODE velocity. All zeta give the same marginals p_t.
    """

    def drift(x, t):
        tt = expand_time(t, x)
        return path.f(tt) * x - 0.5 * (1 + zeta**2) * path.g2(tt) * score(x, t)

    return drift


# -- one step of an ODE solver: x(t) -> x(t_next), t and t_next floats -----------------------------
def euler_step(velocity: Field, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Euler (order 1):  x_next = x + h v(x, t),  h = t_next - t."""
    return x + (t_next - t) * velocity(x, t)


def heun_step(velocity: Field, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Heun (order 2, trapezoid):  x_pred = x + h v(x, t);  x_next = x + h/2 [v(x, t) + v(x_pred, t_next)]."""
    h = t_next - t
    v = velocity(x, t)
    x_pred = x + h * v
    return x + 0.5 * h * (v + velocity(x_pred, t_next))


def rk4_step(velocity: Field, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Classical Runge–Kutta (order 4):  x_next = x + h/6 (k1 + 2 k2 + 2 k3 + k4)."""
    h = t_next - t
    k1 = velocity(x, t)
    k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = velocity(x + h * k3, t_next)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


ODE_STEPS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}
ODE_METHODS = (*ODE_STEPS, "adaptive")


# -- one step of a stochastic solver ---------------------------------------------------------------
def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def euler_maruyama_step(drift: Field, g2: Callable, x, t: float, t_next: float, generator=None, noise=True):
    """Euler–Maruyama for dx = b(x, t) dt + g(t) dw over h = t_next - t (either sign):

        x_next = x + h b(x, t) + sqrt(g(t)^2 |h|) z,   z ~ N(0, I).

    g2 is the squared diffusion coefficient as a function of t. With noise=False the step returns
    its mean x + h b(x, t) (the "denoised" last step of a sampler).
    """
    h = t_next - t
    mean = x + h * drift(x, t)
    if not noise:
        return mean
    return mean + math.sqrt(float(g2(t)) * abs(h)) * _noise_like(x, generator)


def langevin(score: Field, x, t: float, steps: int = 1, step_size=None, snr: float = 0.16, alpha: float = 1.0,
             generator=None):
    """Langevin MCMC at a fixed time t (Song et al. 2021, Alg. 4/5; MATH.md §1.3), `steps` times:

        x <- x + eps * score(x, t) + sqrt(2 eps) z,   z ~ N(0, I).

    eps = step_size when given; otherwise Song's signal-to-noise rule
    eps = 2 alpha (snr ||z|| / ||score||)^2, with norms the batch means of per-sample norms.
    """
    for _ in range(steps):
        s = score(x, t)
        z = _noise_like(x, generator)
        if step_size is None:
            z_norm = z.flatten(1).norm(dim=1).mean()
            s_norm = s.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
            eps = 2 * alpha * (snr * z_norm / s_norm) ** 2
        else:
            eps = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
        x = x + eps * s + torch.sqrt(2 * eps) * z
    return x


SDE_METHODS = ("em", "pc")


# -- time grids ------------------------------------------------------------------------------------
def _as_times(t_grid) -> list[float]:
    """A 1-D tensor or sequence of times as a list of floats, checked strictly monotone, >= 2 points."""
    grid = torch.as_tensor(t_grid, dtype=torch.float64).detach().cpu()
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"t_grid must be 1-D with at least 2 times (start, ..., end); got shape {list(grid.shape)}")
    steps = grid[1:] - grid[:-1]
    if not (bool((steps < 0).all()) or bool((steps > 0).all())):
        raise ValueError("t_grid must be strictly decreasing (generation, 1 -> 0) or strictly increasing; "
                         "use dl.time_grid(n_steps) for a standard grid")
    return grid.tolist()


GRID_KINDS = ("uniform", "quadratic", "log_snr")


def time_grid(n_steps: int, t_start: float = 1.0, t_end: float = 1e-3, kind: str = "uniform",
              path: Path | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
    """n_steps + 1 times from t_start to t_end (decreasing by default: noise -> data), 1-D tensor.

    kind = "uniform":   equal steps in t (Song et al.: linspace(1, 1e-3, N));
           "quadratic": t = t_end + (t_start - t_end) u^2 with u uniform, steps denser near t_end
                        (the "quadratic" skip of DDIM);
           "log_snr":   equal steps in log SNR(t) = log(alpha_t^2 / sigma_t^2) of `path` (needs path;
                        t_end > 0 where sigma vanishes at 0), found by bisection, so log SNR must be
                        monotone in t.
    """
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps}")
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid kind {kind!r}; valid kinds: {', '.join(GRID_KINDS)}")
    u = torch.linspace(1.0, 0.0, int(n_steps) + 1, dtype=torch.float64)  # 1 at t_start, 0 at t_end
    if kind == "uniform":
        t = t_end + (t_start - t_end) * u
    elif kind == "quadratic":
        t = t_end + (t_start - t_end) * u**2
    else:
        t = _log_snr_grid(u, t_start, t_end, path)
    t[0], t[-1] = t_start, t_end
    return t.to(dtype=dtype, device=device)


def _log_snr_grid(u: torch.Tensor, t_start: float, t_end: float, path: Path | None) -> torch.Tensor:
    """Times whose log SNR is uniform between log SNR(t_end) and log SNR(t_start); log SNR decreasing in t."""
    if path is None:
        raise ValueError('time_grid(kind="log_snr") needs the path, e.g. time_grid(50, kind="log_snr", path=dl.VP())')
    lam_start, lam_end = float(path.log_snr(t_start)), float(path.log_snr(t_end))
    if not (math.isfinite(lam_start) and math.isfinite(lam_end)):
        raise ValueError(f"log SNR is infinite at t_start={t_start} or t_end={t_end}; move both inside (0, 1)")
    target = lam_end + (lam_start - lam_end) * u
    lo = torch.full_like(u, min(t_start, t_end))
    hi = torch.full_like(u, max(t_start, t_end))
    for _ in range(60):  # bisection down to float64 resolution
        mid = 0.5 * (lo + hi)
        too_early = path.log_snr(mid) > target  # SNR still too high: the time sought is later
        lo, hi = torch.where(too_early, mid, lo), torch.where(too_early, hi, mid)
    return 0.5 * (lo + hi)


# -- samplers --------------------------------------------------------------------------------------
def sample_ode(velocity: Field, x_T: torch.Tensor, t_grid, method: str = "heun", return_trajectory: bool = False,
               rtol: float = 1e-5, atol: float = 1e-5):
    """Integrate dx/dt = velocity(x, t) from t_grid[0] to t_grid[-1], starting at x_T [N, ...].

    method: "euler" (order 1, one evaluation a step), "heun" (order 2, two), "rk4" (order 4, four), or
    "adaptive" (Dormand–Prince 5(4) from torchdiffeq with tolerances rtol, atol; t_grid then only
    says where to report x, Song et al. use rtol = atol = 1e-5).
    Returns x at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]) when return_trajectory.
    """
    times = _as_times(t_grid)
    if method == "adaptive":
        trajectory = _odeint(velocity, x_T, times, rtol, atol)
        return (trajectory[-1], trajectory) if return_trajectory else trajectory[-1]
    if method not in ODE_STEPS:
        raise ValueError(f"unknown ODE method {method!r}; valid methods: {', '.join(ODE_METHODS)}")
    step = ODE_STEPS[method]
    x, trajectory = x_T, [x_T]
    for t, t_next in zip(times[:-1], times[1:]):
        x = step(velocity, x, t, t_next)
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def _odeint(velocity, x_T, times, rtol, atol):
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise ImportError('sample_ode(method="adaptive") needs torchdiffeq: `pip install torchdiffeq`, '
                          'or use a fixed-step method ("heun", "rk4")') from err
    t = torch.tensor(times, dtype=x_T.dtype, device=x_T.device)
    # step_t: land a step exactly on the final time instead of stepping past it and interpolating,
    # so the field is never evaluated outside the grid (paths are defined on [0, 1] only).
    return odeint(lambda s, x: velocity(x, float(s)), x_T, t, rtol=rtol, atol=atol, method="dopri5",
                  options={"step_t": t[-1:]})


# -- DPM-Solver++: the exponential integrator for a data-prediction model (MATH.md §7.2) -------------
DPM_ORDERS = (1, 2)


def _log_alpha_over_sigma(path: Path, t: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) as floats; lambda = -inf where alpha = 0, +inf where sigma = 0."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    if a <= 0:
        return a, s, -math.inf
    return a, s, (math.log(a) - math.log(s)) if s > 0 else math.inf


def dpm_solver_pp_step(x: torch.Tensor, x0_hat: torch.Tensor, t: float, t_next: float, path: Path,
                       previous: tuple[float, torch.Tensor] | None = None) -> torch.Tensor:
    """One DPM-Solver++ step t -> t_next of the PF-ODE of `path` (Lu et al. 2022b; MATH.md §7.2).

    x0_hat = x0_hat(x, t) is the data prediction at the current point. With lambda = log(alpha / sigma)
    and h = lambda(t_next) - lambda(t) (> 0 when generating):

        DPM-Solver++-1 (= DDIM):  x_next = (sigma_next / sigma_t) x - alpha_next (e^{-h} - 1) x0_hat;
        DPM-Solver++(2M), previous = (t_prev, x0_hat_prev), r = h_prev / h,
            D = (1 + 1 / (2r)) x0_hat - 1 / (2r) x0_hat_prev,
            x_next = (sigma_next / sigma_t) x - alpha_next (e^{-h} - 1) D.

    An infinite h is allowed: sigma_next = 0 (a last step onto the data, x_next = alpha_next x0_hat) or
    alpha_t = 0 (rectified flow at t = 1). A step with an infinite h is first order (the 2M
    correction has no limit there); an infinite h_prev makes r infinite and D = x0_hat.
    """
    a, s, lam = _log_alpha_over_sigma(path, t)
    a_next, s_next, lam_next = _log_alpha_over_sigma(path, t_next)
    if not s > 0:
        raise ValueError(f"a DPM-Solver++ step needs sigma(t) > 0 at its start; got t={t}")
    h = lam_next - lam
    d = x0_hat
    if previous is not None and math.isfinite(h):
        t_prev, x0_hat_prev = previous
        r = (lam - _log_alpha_over_sigma(path, t_prev)[2]) / h
        d = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_hat_prev
    return (s_next / s) * x - a_next * math.expm1(-h) * d


def sample_dpm_solver(field: Field, path: Path, x_T: torch.Tensor, t_grid, target: str = "x0", order: int = 2,
                      return_trajectory: bool = False):
    """DPM-Solver++ (Lu et al. 2022b; MATH.md §7.2): the PF-ODE of `path` along t_grid, one evaluation a step.

    field(x, t) predicts `target` ("x0", "eps", "score", "velocity" or "v"); it is turned into the
    data prediction x0_hat with dl.convert. order 1: DPM-Solver++-1, which is DDIM (eta = 0);
    order 2: DPM-Solver++(2M), multistep, reusing the previous step's x0_hat (the first step is first
    order). Lu et al. space the steps uniformly in lambda: time_grid(n, kind="log_snr", path=path).
    Each step is `dpm_solver_pp_step`. x_T: [N, ...] at t_grid[0].
    Returns x at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]) when return_trajectory.
    """
    if order not in DPM_ORDERS:
        raise ValueError(f"unknown DPM-Solver++ order {order!r}; valid orders: {', '.join(map(str, DPM_ORDERS))}")
    times = _as_times(t_grid)
    x, trajectory, previous = x_T, [x_T], None
    for t, t_next in zip(times[:-1], times[1:]):
        x0_hat = field(x, t)
        if target != "x0":
            x0_hat = convert(x0_hat, target, "x0", x, t, path)
        x_new = dpm_solver_pp_step(x, x0_hat, t, t_next, path, previous if order == 2 else None)
        x, previous = x_new, (t, x0_hat)
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def sample_sde(score: Field, path: Path, x_T: torch.Tensor, t_grid, method: str = "em", generator=None,
               snr: float = 0.16, corrector_steps: int = 1, return_trajectory: bool = False, denoise: bool = True,
               zeta: float = 1.0):
    """Integrate the reverse SDE dx = [f x - g^2 score] dt + g dw_bar along t_grid (from noise to data).

    method "em": Euler–Maruyama predictor only (one score evaluation a step);
           "pc": predictor–corrector (MATH.md §1.3): at each t_i, `corrector_steps` Langevin steps with
                 target signal-to-noise ratio `snr`, then the Euler–Maruyama step t_i -> t_{i+1}.
                 Song's alpha_i (1 for VE, 1 - beta_i for VP) is taken as (alpha_{t_i} / alpha_{t_{i+1}})^2,
                 which *is* 1 - beta_i for DDPM (abar_i / abar_{i-1}) and 1 for VE.
    zeta scales the noise of the family dx = [f x - (1+zeta^2)/2 g^2 s] dt + zeta g dw_bar (zeta = 0 is
    Euler on the PF-ODE). denoise=True: the last step adds no noise (returns its mean, as Song's code).
    Returns x [N, ...] at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]) when return_trajectory.
    """
    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE method {method!r}; valid methods: {', '.join(SDE_METHODS)}")
    times = _as_times(t_grid)
    drift = reverse_drift(score, path, zeta)
    g2 = lambda t: zeta**2 * path.g2(t)  # noqa: E731
    x, trajectory = x_T, [x_T]
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        if method == "pc":
            alpha_i = float(path.alpha(t) / path.alpha(t_next)) ** 2
            x = langevin(score, x, t, corrector_steps, snr=snr, alpha=alpha_i, generator=generator)
        last = i == len(times) - 2
        x = euler_maruyama_step(drift, g2, x, t, t_next, generator, noise=not (denoise and last))
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def simulate_forward_sde(path: Path, x0: torch.Tensor, t_grid, generator=None, return_trajectory: bool = False):
    """Euler–Maruyama for the forward SDE dx = f(t) x dt + g(t) dw along an increasing t_grid (MATH.md §1.1).

    Its law at time t should match the kernel N(alpha_t x0, sigma_t^2 I) up to O(dt) (check SDE-1).
    Returns x [N, ...] at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]).
    """
    times = _as_times(t_grid)
    if times[-1] < times[0]:
        raise ValueError("simulate_forward_sde runs data -> noise: t_grid must increase, e.g. torch.linspace(0, t, n)")
    drift = lambda x, t: path.f(expand_time(t, x)) * x  # noqa: E731
    x, trajectory = x0, [x0]
    for t, t_next in zip(times[:-1], times[1:]):
        x = euler_maruyama_step(drift, path.g2, x, t, t_next, generator)
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x
