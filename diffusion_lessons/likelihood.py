"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension (Song et al. 2021, App. D.2).

The PF-ODE dx/dt = v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t) carries p_t to p_s for every pair of
times (Song et al. 2021, eq. 13). Along one of its solutions the density obeys the *instantaneous change of
variables* (Chen et al. 2018; Song et al. 2021, eq. 39)

    d/dt log p_t(x(t)) = -div v(x(t), t),

so, solving from the data point x(t_min) = x up to t = 1 and adding the prior's log-density there,

    log p_{t_min}(x) = log p_1(x(1)) + int_{t_min}^1 div v(x(t), t) dt.

`log_likelihood` integrates the augmented state (x, Delta log p) with an adaptive Runge-Kutta
solver from torchdiffeq. The divergence is either the exact trace of the Jacobian (D vector-Jacobian
products per evaluation: fine for small D) or Hutchinson's estimator z^T (dv/dx) z with probes z
drawn once and kept fixed for the whole solve (one product per probe; unbiased for log p).

Units: log-densities in nats, in the coordinates of x; `bits_per_dim` converts them to bits per
dimension of the quantised data.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .paths import TARGETS, Path, convert
from .sampling.ode import pf_velocity

__all__ = ["log_likelihood", "LikelihoodResult", "divergence", "draw_probes", "bits_per_dim",
           "LIKELIHOOD_METHODS", "PROBES"]

# the adaptive Runge-Kutta methods of torchdiffeq (all accept the "step_t" option used below)
LIKELIHOOD_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
PROBES = ("rademacher", "gaussian")

Field = Callable[[torch.Tensor, object], torch.Tensor]


@dataclasses.dataclass
class LikelihoodResult:
    """Details of one likelihood solve; every tensor has shape [N] except x_1 (like x)."""

    log_prob: torch.Tensor  # log p_{t_min}(x) = prior_log_prob + delta_log_prob  (nats)
    prior_log_prob: torch.Tensor  # log p_1(x(1)) under the prior
    delta_log_prob: torch.Tensor  # int_{t_min}^1 div v(x(t), t) dt
    x_1: torch.Tensor  # where the PF-ODE carries x at t = 1
    nfe: int  # number of evaluations of the field (each with its divergence)


# -- divergence ------------------------------------------------------------------------------------
def draw_probes(x: torch.Tensor, n_probes: int = 1, probe: str = "rademacher",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """n_probes Hutchinson probes like x, shape [n_probes, *x.shape], with E[z z^T] = I per sample.

    probe "rademacher": entries +-1 with probability 1/2 (the smaller variance, 2 sum_{i!=j} J_s,ij^2);
          "gaussian":   entries N(0, 1) (variance 2 ||J_s||_F^2), J_s = (J + J^T) / 2 (Hutchinson 1989).
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid probes: {', '.join(PROBES)}")
    if int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer; got {n_probes}")
    shape = (int(n_probes), *x.shape)
    where = generator.device if generator is not None else x.device
    if probe == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=x.dtype, device=where)
    else:
        z = torch.randint(0, 2, shape, generator=generator, device=where).to(x.dtype) * 2 - 1
    return z.to(x.device)


def _value_and_divergence(field: Field, x: torch.Tensor, t, probes: torch.Tensor | None):
    """(field(x, t), div_x field(x, t) [N]), both detached; exact trace if probes is None, else Hutchinson."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("the divergence needs autograd, which torch.inference_mode() switches off; "
                           "call this under torch.no_grad() or no context instead")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        value = field(xg, t)
        if not isinstance(value, torch.Tensor) or value.shape != x.shape:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"the field must return a tensor shaped like x {list(x.shape)}; got {got}")
        if not value.requires_grad:
            raise RuntimeError("the field's output does not depend on x through autograd, so its divergence "
                               "cannot be taken; is the field wrapped in torch.no_grad() or detached?")
        n, flat = x.shape[0], value.reshape(x.shape[0], -1)

        def vjp(direction):  # direction^T (d value / dx), one backward pass
            (g,) = torch.autograd.grad(value, xg, direction, retain_graph=True, allow_unused=True)
            return torch.zeros_like(x) if g is None else g

        if probes is None:  # tr J = sum_i e_i^T J e_i, one basis direction per pass
            div = torch.zeros(n, dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                e = torch.zeros_like(flat)
                e[:, i] = 1
                div = div + vjp(e.reshape(x.shape)).reshape(n, -1)[:, i]
        else:  # mean over probes of z^T J z
            div = torch.stack([(vjp(z) * z).reshape(n, -1).sum(1) for z in probes]).mean(0)
    return value.detach(), div.detach()


def divergence(field: Field, x: torch.Tensor, t, exact: bool = True, n_probes: int = 1,
               probe: str = "rademacher", generator: torch.Generator | None = None,
               probes: torch.Tensor | None = None) -> torch.Tensor:
    """div_x field(x, t) = tr(d field / dx) per sample, shape [N], for x [N, ...].

    exact=True: the trace, one vector-Jacobian product per dimension (cost D backward passes).
    exact=False: Hutchinson's estimator (1/K) sum_k z_k^T (d field / dx) z_k with K = n_probes probes
    drawn by `draw_probes` (or the given `probes` [K, *x.shape]); unbiased, one backward pass a probe.
    Works for nn.Modules and plain callables, under torch.no_grad() too; the result is detached.
    Samples must not interact inside the field (no batch statistics).
    """
    _check_x(x)
    if not exact and probes is None:
        probes = draw_probes(x, n_probes, probe, generator)
    if probes is not None and (probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape):
        raise ValueError(f"probes must have shape [K, {', '.join(map(str, x.shape))}]; got {list(probes.shape)}")
    return _value_and_divergence(field, x, t, None if exact else probes)[1]


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
        got = f"shape {list(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor [N, ...] with N >= 1 points (use x[None] for one "
                         f"point); got {got}")


# -- log-likelihood --------------------------------------------------------------------------------
def _gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; 0, std^2 I) per sample, x [N, ...]."""
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * (flat / std).square().sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))


def _start_time(t_min, eps) -> float:
    """The solve's start time: t_min, or `eps`, its old name (kept for old calls; eps is the noise elsewhere)."""
    if eps is None:
        name, value = "t_min", t_min
    elif t_min != 1e-3:
        raise ValueError("give the start time once: t_min (eps is its old name)")
    else:
        name, value = "eps", eps
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1): the solve runs from t = {name} to t = 1; got {value}")
    return float(value)


def _check_settings(path, method, rtol, atol, target, prior):
    if not isinstance(path, Path):
        raise TypeError(f"path must be a diffusion_lessons Path (e.g. dl.VP()); got {type(path).__name__}")
    if method not in LIKELIHOOD_METHODS:
        raise ValueError(f"unknown method {method!r}; valid (adaptive) methods: {', '.join(LIKELIHOOD_METHODS)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive; got {rtol}, {atol}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if prior is not None and not callable(getattr(prior, "log_prob", None)):
        raise TypeError(f"prior must be None or have a log_prob(x) method; got {type(prior).__name__}")


def log_likelihood(field: Field, path: Path, x: torch.Tensor, t_min: float = 1e-3, prior=None,
                   exact_divergence: bool = True, n_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                   method: str = "dopri5", generator: torch.Generator | None = None, probe: str = "rademacher",
                   target: str = "score", return_details: bool = False, eps: float | None = None):
    """log p_{t_min}(x) [N] of the model defined by `field` and `path`, through the PF-ODE (Song et al. 2021,
    eq. 39; check SDE-4).

    Solves d/dt (x, Delta) = (v(x, t), div v(x, t)) from t = t_min (x(t_min) = x, Delta = 0) to t = 1 with
    v = f x - g^2 / 2 * score (`pf_velocity`), and returns log p_1(x(1)) + Delta(1).

    field: field(x, t) -> tensor like x predicting `target`: the score by default; with target="eps" /
      "x0" / "velocity" it is converted with `convert` (so a network trained with `fit` is passed as is).
    x: [N, ...] points at time t_min (float32 or float64; the solve runs in x's dtype).
    t_min: where the solve starts; the density is that of the data smoothed to t_min, p_{t_min}, which
      differs from p_0 by O(t_min) (check SDE-4). eps: the old name of t_min (accepted, not both).
    prior: None for N(0, sigma_1^2 I), which is *not* p_1 when alpha_1 != 0: on VP(0.1, 20),
      alpha_1 = 6.6e-3 and log p_1(y) - log N(y; 0, sigma_1^2 I) ~ alpha_1 E[x0].y / sigma_1^2 to first
      order, about 7e-3 nats at |y| = 1 for data with |E x0| = 1 (zero to first order for centred data).
      When the data law is known, pass the exact one, e.g. `dist.noised(path, 1.0)`; else any object
      whose log_prob takes x(1) flattened to [N, D].
    exact_divergence: exact trace (D backward passes an evaluation) or Hutchinson with n_probes probes
      of kind `probe` drawn once from `generator` and fixed for the whole solve.
    rtol, atol, method: of torchdiffeq's adaptive solver (Song et al. use RK45 with 1e-5, 1e-5).
    return_details: return a LikelihoodResult (log_prob, prior_log_prob, delta_log_prob, x_1, nfe).
    The result is detached: this evaluates a density, it does not give gradients for training.
    """
    t_min = _start_time(t_min, eps)
    _check_x(x)
    _check_settings(path, method, rtol, atol, target, prior)
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise ImportError("log_likelihood needs torchdiffeq: `pip install torchdiffeq`") from err
    if target == "score":
        velocity = pf_velocity(field, path)
    else:
        def velocity(y, t):
            return convert(field(y, t), target, "velocity", y, t, path)
    probes = None if exact_divergence else draw_probes(x, n_probes, probe, generator)
    nfe = 0

    def augmented(s, state):
        nonlocal nfe
        nfe += 1
        t = min(max(float(s), 0.0), 1.0)  # stage times may round an ulp past the ends
        return _value_and_divergence(velocity, state[0], t, probes)

    times = torch.tensor([t_min, 1.0], dtype=x.dtype, device=x.device)
    start = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    # step_t: land exactly on t = 1 instead of stepping past it (paths are defined on [0, 1] only)
    xs, deltas = odeint(augmented, start, times, rtol=rtol, atol=atol, method=method,
                        options={"step_t": times[-1:]})
    x_1, delta = xs[-1], deltas[-1]
    if prior is None:
        prior_lp = _gaussian_log_prob(x_1, float(path.sigma(1.0)))
    else:
        prior_lp = prior.log_prob(x_1.reshape(x.shape[0], -1)).to(x.dtype)
        if prior_lp.shape != (x.shape[0],):
            raise ValueError(f"prior.log_prob must return shape [N] = [{x.shape[0]}]; got {list(prior_lp.shape)}")
    log_prob = prior_lp + delta
    if return_details:
        return LikelihoodResult(log_prob, prior_lp, delta, x_1, nfe)
    return log_prob


# -- bits per dimension ------------------------------------------------------------------------------
def bits_per_dim(log_likelihood, D: int, data_range_width: float = 2.0, levels: int = 256):
    """Bits per dimension of quantised data from a continuous log-density (Theis et al. 2016; Song et al. 2021):

        bpd = -log p(x) / (D ln 2) + log2(levels / w),

    log p(x) in nats (a tensor or a float) for x in the continuous range of width w = data_range_width
    (w = 2 for data in [-1, 1]: +7 bits at 256 levels; w = 1 for [0, 1]: +8), D the dimension of one
    sample, `levels` the number of grey levels of the quantised data (256 for 8-bit images).
    The offset rescales the density to one unit per quantisation bin.

    Caveat (dequantisation): the number is an upper bound on the code length of the *discrete* data
    only if the density was fitted and evaluated on uniformly dequantised data, x = (k + u) w / levels
    + lower end, u ~ U[0, 1)^D, averaged over u. A density fitted to the raw quantised values can pile
    up on the grid points, and then log p grows without bound and the "bpd" can even go negative:
    it measures nothing. Also, log_likelihood gives log p_{t_min}, the data smoothed at noise level
    sigma(t_min); that is the standard convention, and it is harmless while sigma(t_min) << w / levels.
    """
    if int(D) != D or D < 1:
        raise ValueError(f"D (dimensions per sample) must be a positive integer; got {D}")
    if not data_range_width > 0:
        raise ValueError(f"data_range_width must be positive (2 for data in [-1, 1]); got {data_range_width}")
    if int(levels) != levels or levels < 2:
        raise ValueError(f"levels must be an integer >= 2 (256 for 8-bit data); got {levels}")
    return -log_likelihood / (D * math.log(2)) + math.log2(levels / data_range_width)
