"""Runge–Kutta integrators of an ODE dx/dt = v(x, t) in t: Euler, Heun, RK4, and an adaptive solver.

A *field* is any callable field(x, t) -> tensor like x, with x of shape [N, ...] and t a Python float
(one time for the whole batch) or a tensor [N]. For a diffusion model the ODE is the probability-flow
ODE (Song et al. 2021, eq. 13)

    dx/dt = v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t),

whose velocity is also the flow-matching velocity alpha' x0_hat + sigma' eps_hat. Steps h = t_next - t
are negative when generating (t from 1 to 0); every formula is written for a signed h.

Heun follows Karras et al. (2022), Alg. 1: a step that lands where sigma = 0 (the data, t = 0) is an
Euler step, so the field is never evaluated at sigma = 0, where a network was never trained and the
conversions to a velocity divide by sigma. The integrators do not switch off autograd: sample a network
under torch.no_grad().
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from ..paths import Path, expand_time, field_time
from .grids import as_times

__all__ = ["ODE_METHODS", "euler_step", "heun_step", "pf_velocity", "rk4_step", "sample_ode"]

Field = Callable[[torch.Tensor, object], torch.Tensor]


def pf_velocity(score: Field, path: Path) -> Field:
    """Probability-flow ODE velocity: v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t) (Song et al. 2021, eq. 13).

    For the exact score, v is also the flow-matching velocity E[alpha' x0 + sigma' eps | x_t = x].
    """

    def velocity(x, t):
        t = field_time(t, x)
        tt = expand_time(t, x)
        return path.f(tt) * x - 0.5 * path.g2(tt) * score(x, t)

    return velocity


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


def integrate(velocity: Field, x: torch.Tensor, times: list[float], method: str, record: Callable | None = None,
              on_data: Callable[[float], bool] = lambda t: t == 0.0, rtol: float = 1e-5,
              atol: float = 1e-5) -> torch.Tensor:
    """x at times[-1] from x at times[0] with one of ODE_METHODS; record(x) after every step if given.

    on_data(t) says whether sigma = 0 at t: Heun then takes an Euler step there (Karras et al. 2022,
    Alg. 1). Without a path, t = 0 is the data on every path of the package.
    """
    if method == "adaptive":
        trajectory = _odeint(velocity, x, times, rtol, atol)
        for state in trajectory[1:] if record else ():
            record(state)
        return trajectory[-1]
    if method not in ODE_STEPS:
        raise ValueError(f"unknown ODE method {method!r}; valid methods: {', '.join(ODE_METHODS)}")
    step = ODE_STEPS[method]
    for t, t_next in pairwise(times):
        x = euler_step(velocity, x, t, t_next) if method == "heun" and on_data(t_next) else step(velocity, x, t, t_next)
        if record:
            record(x)
    return x


def _odeint(velocity, x_T, times, rtol, atol):
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise ImportError('method="adaptive" needs torchdiffeq: `pip install torchdiffeq`, '
                          'or use a fixed-step method ("heun", "rk4")') from err
    t = torch.tensor(times, dtype=x_T.dtype, device=x_T.device)
    # step_t: land a step exactly on the final time instead of stepping past it and interpolating,
    # so the field is never evaluated outside the grid (paths are defined on [0, 1] only).
    return odeint(lambda s, x: velocity(x, float(s)), x_T, t, rtol=rtol, atol=atol, method="dopri5",
                  options={"step_t": t[-1:]})


def sample_ode(velocity: Field, x_T: torch.Tensor, t_grid, method: str = "heun", return_trajectory: bool = False,
               rtol: float = 1e-5, atol: float = 1e-5):
    """Integrate dx/dt = velocity(x, t) from t_grid[0] to t_grid[-1], starting at x_T [N, ...].

    method: "euler" (order 1, one evaluation a step), "heun" (order 2, two; an Euler step onto t = 0, as
    in EDM's Alg. 1), "rk4" (order 4, four), or "adaptive" (Dormand–Prince 5(4) from torchdiffeq with
    tolerances rtol, atol; t_grid then only says where to report x; Song et al. use rtol = atol = 1e-5).
    Any field works (no path needed); for a model that predicts eps, x0 or a score use dl.sample.
    Returns x at t_grid[-1], or (x, trajectory [len(t_grid), N, ...]) when return_trajectory.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid methods: {', '.join(ODE_METHODS)}")
    times = as_times(t_grid)
    states = [x_T]
    x = integrate(velocity, x_T, times, method, states.append if return_trajectory else None, rtol=rtol, atol=atol)
    return (x, torch.stack(states)) if return_trajectory else x


# -- the methods of dl.sample: the PF-ODE of the model, in t ------------------------------------------
def _ode_method(name: str):
    def run(pred, x, times, generator, record):
        path = pred.path
        return integrate(pred.field("velocity"), x, times, name, record,
                         on_data=lambda t: float(path.sigma(t)) == 0.0)

    run.__name__ = name
    run.__doc__ = f"{name}: the PF-ODE dx/dt = alpha' x0_hat + sigma' eps_hat integrated in t ({name}_step)."
    return run


def _adaptive(pred, x, times, generator, record, rtol: float = 1e-5, atol: float = 1e-5):
    """adaptive: Dormand–Prince 5(4) (torchdiffeq) on the PF-ODE in t, reporting x at the grid's times."""
    return integrate(pred.field("velocity"), x, times, "adaptive", record, rtol=rtol, atol=atol)


run_euler, run_heun, run_rk4 = (_ode_method(name) for name in ODE_STEPS)
run_adaptive = _adaptive
