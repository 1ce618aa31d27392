"""The one front door: dl.sample(model, path, x_T, grid, method=..., target=...).

    out = dl.sample(model, path, x_T, grid, method="dpm++2m", target="eps")
    out.x            # [N, ...] at grid[-1]
    out.nfe          # calls to model
    out.trajectory   # [len(grid), N, ...] with trajectory=True, else None

model(x, t) predicts `target` (eps, x0, score, velocity or v); t is a Python float, x [N, ...]. The grid
is a decreasing sequence of times (t = 1 noise, t = 0 data), e.g. dl.time_grid(n, kind="log_snr",
path=path). Each method is one function run(pred, x, times, generator, record, **options) in its
module; `method_kwargs` are its options.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch

from ..paths import TARGETS, Path
from . import deis, edm, evodiff, exponential, ode, sde
from .grids import as_times
from .prediction import Prediction

__all__ = ["METHODS", "SampleResult", "register_method", "sample"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A sampler: its run function, whether it may end where sigma = 0 (it never evaluates the model
    there), and a one-line summary."""

    run: Callable
    ends_on_data: bool
    summary: str


_METHODS: dict[str, Method] = {}


def register_method(name: str, run: Callable, ends_on_data: bool, summary: str) -> None:
    """Add a sampler to dl.sample (the research samplers register themselves this way)."""
    _METHODS[name] = Method(run, ends_on_data, summary)


for _name, _run, _ends, _summary in [
    ("euler", ode.run_euler, True, "Euler on the PF-ODE in t (order 1, 1 NFE a step)"),
    ("heun", ode.run_heun, True, "Heun on the PF-ODE in t, Euler onto sigma = 0 (EDM Alg. 1; order 2, 2 NFE)"),
    ("rk4", ode.run_rk4, False, "classical Runge-Kutta on the PF-ODE in t (order 4, 4 NFE a step)"),
    ("adaptive", ode.run_adaptive, False, "Dormand-Prince 5(4), torchdiffeq (rtol, atol)"),
    ("ddim", exponential.run_ddim, True, "DDIM (eta = 0: = DPM-Solver-1; eta > 0 stochastic; 1 NFE)"),
    ("dpm2", exponential.run_dpm2, True, "singlestep DPM-Solver-2, noise prediction (2 NFE a step)"),
    ("dpm2m", exponential.run_dpm2m, True, "multistep DPM-Solver-2M, noise prediction (1 NFE)"),
    ("dpm++2m", exponential.run_dpmpp_2m, True, "DPM-Solver++(2M), data prediction (variant dpmsolver|taylor)"),
    ("dpm++3m", exponential.run_dpmpp_3m, True, "DPM-Solver++(3M), data prediction"),
    ("deis", deis.run_deis, True, "tAB-DEIS: exponential integrator, noise prediction Adams-Bashforth in t (order)"),
    ("edm", edm.run_edm, True, "EDM Alg. 2: Heun in sigma / alpha with churn (churn, s_tmin, s_tmax, s_noise)"),
    ("evodiff", evodiff.run_evodiff, False, "EVODiff order 2, data prediction, variance gates (denoise_to_zero)"),
    ("em", sde.run_em, True, "Euler-Maruyama on the reverse SDE (zeta, denoise)"),
    ("pc", sde.run_pc, True, "predictor-corrector: Langevin (snr, corrector_steps) + Euler-Maruyama"),
]:
    register_method(_name, _run, _ends, _summary)

METHODS = _METHODS  # name -> Method; `", ".join(dl.METHODS)` lists them


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """What dl.sample returns: x [N, ...] at the grid's last time, nfe (calls to the model), and the
    trajectory [len(grid), N, ...] when asked for (else None)."""

    x: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None


def _options(name: str, run: Callable, given: dict) -> dict:
    params = inspect.signature(run).parameters
    valid = [p for p in list(params)[5:]]  # after (pred, x, times, generator, record)
    unknown = [k for k in given if k not in valid]
    if unknown:
        takes = f"its options are: {', '.join(valid)}" if valid else "it takes no options"
        raise ValueError(f"method {name!r} takes no argument {unknown[0]!r}; {takes}")
    return given


def _check_grid(path: Path, times: list[float], name: str, method: Method) -> None:
    if times[-1] > times[0]:
        raise ValueError("the grid must decrease, from noise (t = 1) to data (t = 0): e.g. dl.time_grid(n)")
    sigmas = [float(path.sigma(t)) for t in times]
    if not all(s > 0 for s in sigmas[:-1]):
        t_bad = times[next(i for i, s in enumerate(sigmas[:-1]) if not s > 0)]
        raise ValueError(f"every grid time but the last must have sigma > 0; sigma({t_bad}) = 0")
    if sigmas[-1] == 0 and not method.ends_on_data:
        able = ", ".join(k for k, m in _METHODS.items() if m.ends_on_data)
        raise ValueError(f"method {name!r} would evaluate the model at t = {times[-1]}, where sigma = 0; end the "
                         f"grid where sigma > 0 (e.g. dl.time_grid(n, t_end=1e-3)) or use one of: {able}")


def sample(model: Callable, path: Path, x_T: torch.Tensor, grid, method: str = "dpm++2m", target: str = "eps",
           generator: torch.Generator | None = None, trajectory: bool = False, **method_kwargs) -> SampleResult:
    """Sample by `method` from x_T [N, ...] at grid[0] down the decreasing times of `grid` (t = 1 noise, 0 data).

    model(x, t) predicts `target` in {eps, x0, score, velocity, v}; it is converted once, with dl.convert,
    into what the method needs. `generator` drives the noise of the stochastic methods (ddim with eta > 0,
    edm with churn > 0, em, pc, ...). method_kwargs are the method's options (see dl.METHODS[name].run).
    Autograd is left as it is: sample a network under torch.no_grad().
    Returns SampleResult(x, nfe, trajectory).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(_METHODS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if not isinstance(x_T, torch.Tensor) or x_T.dim() < 1 or not x_T.is_floating_point():
        raise ValueError(f"x_T must be a floating-point tensor [N, ...]; got {getattr(x_T, 'dtype', type(x_T))}")
    entry = _METHODS[method]
    options = _options(method, entry.run, method_kwargs)
    times = as_times(grid)
    _check_grid(path, times, method, entry)
    pred = Prediction(model, path, target)
    states = [x_T]
    record = states.append if trajectory else (lambda x: None)
    x = entry.run(pred, x_T, times, generator, record, **options)
    return SampleResult(x, pred.nfe, torch.stack(states) if trajectory else None)
