"""Gaussian paths x_t = alpha(t) x0 + sigma(t) eps and the conversions between prediction targets.

Time convention, for every path in the package: t = 0 is data, t = 1 is noise (Song et al. 2021 use the same direction).

A path fixes the forward process three equivalent ways:

* the perturbation kernel  x_t | x0 ~ N(alpha_t x0, sigma_t^2 I);
* the linear Ito SDE       dx = f(t) x dt + g(t) dw  with
  f = alpha'/alpha  and  g^2 = 2 sigma sigma' - 2 f sigma^2;
* the log signal-to-noise ratio  log SNR(t) = log(alpha_t^2 / sigma_t^2).

Given x_t, the prediction targets are affine in one another (Kingma et al. 2021, App.; check PR-1):

    score = -eps / sigma,   x0 = (x + sigma^2 score) / alpha   (Tweedie),
    velocity = alpha' x0 + sigma' eps = f x - g^2 / 2 * score,
    v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2)   (see `convert`).

`convert` implements these maps once, so no other module needs an `if target == ...` chain.
"""
from __future__ import annotations

import inspect
import math

import torch

__all__ = ["Path", "VP", "SubVP", "VE", "RectifiedFlow", "Cosine", "EDM", "convert", "TARGETS", "PATHS", "make_path"]

TARGETS = ("eps", "x0", "score", "velocity", "v")


def as_time(t, like: torch.Tensor | None = None, extend: bool = False) -> torch.Tensor:
    """Return `t` as a tensor (float64 for Python numbers, else on `like`'s device and dtype).

    Raises ValueError when any time lies outside [0, 1], the only interval on which paths are defined.
    extend=True is for fields (exact scores, PF-ODE velocities): any finite time is accepted and clamped
    into [0, 1], so a field is extended past each end by its value there. Adaptive solvers need this:
    torchdiffeq's dopri5 steps past the final time and interpolates back, and on a smooth field its
    last step can reach far outside (t = -76 on [1, 1e-3] for Gaussian data at rtol 1e-10). The ODE
    with the extended field has the same solution on [0, 1]. NaN and infinite times still raise.
    """
    if like is not None and not like.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (float32 or float64); got {like.dtype}: "
                         "convert it with x.float() or x.double()")
    if type(t) in (float, int):  # a plain number (the samplers' loops): checked without a tensor round trip
        if not (math.isfinite(t) if extend else 0 <= t <= 1):
            _bad_time(extend, [float(t)])
        return torch.tensor(min(max(t, 0.0), 1.0) if extend else t, dtype=torch.float64 if like is None else like.dtype,
                            device=None if like is None else like.device)
    if isinstance(t, torch.Tensor):
        out = t if like is None else t.to(device=like.device, dtype=like.dtype)
    else:
        dtype = torch.float64 if like is None else like.dtype
        device = None if like is None else like.device
        out = torch.as_tensor(t, dtype=dtype, device=device)
    if not out.is_floating_point():
        out = out.to(torch.get_default_dtype())
    # the check reads a device value back to the host; torch.compile traces it as a graph break, so it is
    # skipped while compiling (fit's compiled loss gets its times from torch.rand, always in [0, 1])
    if out.numel() and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(out) if extend else ~((out >= 0) & (out <= 1))
        if bool(bad.any()):
            _bad_time(extend, out[bad].flatten()[:3].tolist())
    return out.clamp(0.0, 1.0) if extend else out


def _bad_time(extend: bool, values: list) -> None:
    where = "a finite time (a field clamps it into [0, 1])" if extend else "in [0, 1]"
    raise ValueError(f"time must lie {where} (t = 0 data, t = 1 noise); got {values}")


def field_time(t, like: torch.Tensor | None = None):
    """`t` clamped into [0, 1] for evaluating a field (`as_time(..., extend=True)`), in t's own type:
    a Python float stays a float (fields and networks treat a float as one time for the whole batch)."""
    if isinstance(t, torch.Tensor):
        return as_time(t, like, extend=True)
    return float(as_time(t, extend=True))


def expand_time(t, x: torch.Tensor, extend: bool = False) -> torch.Tensor:
    """Time as a tensor shaped to broadcast against x ([N] -> [N, 1, ..., 1]); scalar stays scalar.
    extend: clamp times just outside [0, 1] into it, as fields do (`as_time`)."""
    t = as_time(t, x, extend)
    if t.dim() == 0:
        return t
    if x.dim() == 0:
        raise ValueError(f"x must be a batch [N, ...] to take one time per sample; got a 0-d x and t of shape "
                         f"{list(t.shape)}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must be a float or a tensor of shape [N] = [{x.shape[0]}] matching x's batch; "
            f"got shape {list(t.shape)}"
        )
    return t.reshape(-1, *([1] * (x.dim() - 1)))


class Path:
    """Base class: subclasses define alpha, sigma and their time derivatives dalpha, dsigma.

    Every method takes t as a float or a tensor and returns a tensor of the same shape.
    """

    name = "path"

    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def dsigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def f(self, t) -> torch.Tensor:
        """Drift coefficient of the forward SDE dx = f x dt + g dw: f = alpha' / alpha."""
        return self.dalpha(t) / self.alpha(t)

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion coefficient g^2 = d(sigma^2)/dt - 2 f sigma^2 (Song et al. 2021, App. B)."""
        sigma = self.sigma(t)
        return 2 * sigma * self.dsigma(t) - 2 * self.f(t) * sigma**2

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio alpha^2 / sigma^2."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def log_snr(self, t) -> torch.Tensor:
        """log SNR = 2 log(alpha / sigma) = 2 lambda_t."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def sample(self, x0: torch.Tensor, t, eps: torch.Tensor | None = None, generator=None):
        """Draw x_t = alpha_t x0 + sigma_t eps.  t: float or tensor [N]. Returns (x_t, eps)."""
        tt = expand_time(t, x0)  # checks t and x0 before any noise is drawn
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif eps.shape != x0.shape:
            raise ValueError(f"eps must have x0's shape {list(x0.shape)}; got {list(eps.shape)}")
        return self.alpha(tt) * x0 + self.sigma(tt) * eps, eps

    def prior_std(self) -> float:
        """Standard deviation of x_1 for unit-variance-free data: sigma(1) (the usual prior N(0, sigma_1^2 I))."""
        return float(self.sigma(1.0))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def config(self) -> dict:
        """A JSON-friendly description, enough to rebuild the path with `make_path`."""
        return {"name": self.name, **vars(self)}


class VP(Path):
    """Variance-preserving path of Song et al. (2021): alpha = exp(-B/2), sigma = sqrt(1 - exp(-B)).

    beta(t) = beta_min + t (beta_max - beta_min), B(t) = int_0^t beta; f = -beta/2, g^2 = beta.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not (0 <= beta_min <= beta_max < math.inf and beta_max > 0):
            raise ValueError(f"{type(self).__name__} needs finite 0 <= beta_min <= beta_max with beta_max > 0 "
                             f"(beta(t) >= 0, so alpha falls from 1 and sigma grows from 0); "
                             f"got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t):
        t = as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def B(self, t):
        t = as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return torch.exp(-0.5 * self.B(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self.B(t)))

    def dalpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def dsigma(self, t):
        # d/dt sqrt(1 - e^{-B}) = beta e^{-B} / (2 sigma)
        return 0.5 * self.beta(t) * torch.exp(-self.B(t)) / self.sigma(t)

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)


class SubVP(VP):
    """Sub-VP path of Song et al. (2021): alpha as VP, sigma = 1 - exp(-B); g^2 = beta (1 - e^{-2B})."""

    name = "subvp"

    def sigma(self, t):
        return -torch.expm1(-self.B(t))

    def dsigma(self, t):
        return self.beta(t) * torch.exp(-self.B(t))

    def g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self.B(t))


class VE(Path):
    """Variance-exploding path (SMLD): alpha = 1, sigma = sqrt(sigma_bar(t)^2 - sigma_min^2) with the
    geometric scale sigma_bar(t) = sigma_min (sigma_max/sigma_min)^t.

    With this sigma the kernel is exact for the SDE dx = sqrt(d sigma_bar^2/dt) dw started at t = 0
    (Song et al.'s code uses sigma_bar(t) itself as the kernel std).
    g^2 = 2 sigma_bar(t)^2 log(sigma_max / sigma_min).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ValueError(f"VE needs finite 0 < sigma_min < sigma_max (sigma(t) = sqrt(sigma_bar(t)^2 - "
                             f"sigma_min^2) grows from 0); got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _sigma_bar(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** as_time(t)

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def dalpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        # sigma_bar^2 - sigma_min^2 = sigma_min^2 expm1(2 t log(sigma_max/sigma_min)): exact (and >= 0) near t = 0
        t = as_time(t)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * t * math.log(self.sigma_max / self.sigma_min)))

    def dsigma(self, t):
        return self.g2(t) / (2 * self.sigma(t))

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2 * self._sigma_bar(t) ** 2 * math.log(self.sigma_max / self.sigma_min)


class RectifiedFlow(Path):
    """Straight path alpha = 1 - t, sigma = t (rectified flow; flow matching with t = 0 data, t = 1 noise).

    f = -1 / (1 - t) and g^2 = 2 t / (1 - t) blow up at t = 1: the SDE view needs t < 1, the
    velocity u = eps - x0 does not.
    """

    name = "rf"

    def alpha(self, t):
        return 1 - as_time(t)

    def sigma(self, t):
        return as_time(t).clone()

    def dalpha(self, t):
        return -torch.ones_like(as_time(t))

    def dsigma(self, t):
        return torch.ones_like(as_time(t))


class Cosine(Path):
    """Trigonometric path alpha = cos(pi t / 2), sigma = sin(pi t / 2) (alpha^2 + sigma^2 = 1).

    This is the continuous-time form of Nichol & Dhariwal's cosine schedule without the offset s,
    and the trigonometric stochastic interpolant of Albergo et al.
    """

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * as_time(t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * as_time(t))

    def dalpha(self, t):
        return -0.5 * math.pi * self.sigma(t)

    def dsigma(self, t):
        return 0.5 * math.pi * self.alpha(t)


class EDM(Path):
    """The path of Karras et al. (2022), EDM: alpha = 1, sigma = sigma_max * t (their sigma(t) = t, s(t) = 1,
    with time rescaled to [0, 1]). f = 0, g^2 = d sigma^2 / dt = 2 sigma_max^2 t.

    The PF-ODE in sigma is EDM's dx/dsigma = (x - D(x; sigma)) / sigma with D = x0_hat.
    """

    name = "edm"

    def __init__(self, sigma_max: float = 80.0):
        if not 0 < sigma_max < math.inf:
            raise ValueError(f"EDM needs a finite sigma_max > 0 (sigma = sigma_max * t); got sigma_max={sigma_max}")
        self.sigma_max = float(sigma_max)

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def sigma(self, t):
        return self.sigma_max * as_time(t)

    def dalpha(self, t):
        return torch.zeros_like(as_time(t))

    def dsigma(self, t):
        return torch.full_like(as_time(t), self.sigma_max)

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2 * self.sigma_max**2 * as_time(t)


PATHS = {"vp": VP, "subvp": SubVP, "ve": VE, "rf": RectifiedFlow, "cosine": Cosine, "edm": EDM}


def make_path(name: str | dict | Path, **kwargs) -> Path:
    """Build a path from its name ("vp", "subvp", "ve", "rf", "cosine", "edm"), a `Path.config()` dict, or a Path.

    kwargs (or the dict's other keys) are the path's parameters; an unknown one is a ValueError naming it.
    """
    if isinstance(name, Path):
        return name
    if isinstance(name, dict):
        if "name" not in name:
            raise ValueError(f"a path config needs a 'name' key (one of {', '.join(PATHS)}), as Path.config() "
                             f"writes it; got keys {sorted(map(str, name))}")
        kwargs = {**{k: v for k, v in name.items() if k != "name"}, **kwargs}
        name = name["name"]
    if not isinstance(name, str):
        raise ValueError(f"a path is a name ({', '.join(PATHS)}), a Path.config() dict or a Path; got {name!r}")
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"rectifiedflow": "rf", "flow": "rf", "vesde": "ve", "vpsde": "vp"}
    key = aliases.get(key, key)
    if key not in PATHS:
        raise ValueError(f"unknown path {name!r}; valid paths: {', '.join(PATHS)}")
    allowed = list(inspect.signature(PATHS[key]).parameters)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for path {key!r}; "
                         + (f"valid parameters: {', '.join(allowed)}" if allowed else "it takes no parameters"))
    try:
        return PATHS[key](**kwargs)
    except TypeError as err:  # e.g. a string where a number belongs
        raise ValueError(f"bad parameters {kwargs} for path {key!r}: they must be numbers ({err})") from None


def _to_x0_eps(value, src, x, t, path):
    """Express a prediction of type src as the pair (x0_hat, eps_hat), using x = alpha x0 + sigma eps."""
    a, s = path.alpha(t), path.sigma(t)
    if src == "eps":
        return (x - s * value) / a, value
    if src == "x0":
        return value, (x - a * value) / s
    if src == "score":
        eps = -s * value
        return (x - s * eps) / a, eps
    if src == "velocity":
        # solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; u]
        da, ds = path.dalpha(t), path.dsigma(t)
        det = a * ds - s * da
        return (ds * x - s * value) / det, (a * value - da * x) / det
    if src == "v":  # (x / r, v) is (x0, eps) turned by the angle phi = atan2(sigma, alpha): turn it back
        r = torch.sqrt(a**2 + s**2)
        c, sn, z = a / r, s / r, x / r
        return c * z - sn * value, sn * z + c * value
    raise ValueError(f"unknown target {src!r}; valid targets: {', '.join(TARGETS)}")


def from_x0_eps(x0, eps, dst: str, t, path):
    """The prediction of type dst that the pair (x0, eps) gives at t (t shaped to broadcast against x0)."""
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "score":
        return -eps / path.sigma(t)
    if dst == "velocity":
        return path.dalpha(t) * x0 + path.dsigma(t) * eps
    if dst == "v":
        a, s = path.alpha(t), path.sigma(t)
        return (a * eps - s * x0) / torch.sqrt(a**2 + s**2)
    raise ValueError(f"unknown target {dst!r}; valid targets: {', '.join(TARGETS)}")


def convert(value: torch.Tensor, src: str, dst: str, x: torch.Tensor, t, path: Path) -> torch.Tensor:
    """Convert a prediction at (x, t) from one target to another (check PR-1).

    value, x: tensors [N, ...] of the same shape; t: float or tensor [N];
    src, dst in {"eps", "x0", "score", "velocity", "v"}.

    "v" is Salimans & Ho's (2022, Appendix D) v-prediction, defined on every path as

        v = (alpha eps - sigma x0) / r,   r = sqrt(alpha^2 + sigma^2):

    with cos(phi) = alpha / r and sin(phi) = sigma / r, x / r = cos(phi) x0 + sin(phi) eps is a
    variance-preserving path and v = d(x / r)/d(phi) is its v, so where alpha^2 + sigma^2 = 1 (VP, cosine)
    this is their v = alpha eps - sigma x0. Unlike alpha eps - sigma x0, it has unit variance for
    unit-variance data on every path (not sigma_max on VE), and on VE it is minus the target of
    Karras et al.'s (2022, Table 1) preconditioned network F with sigma_data = 1. (x0, eps) -> (x / r, v)
    is a rotation by phi, so v converts to and from the other targets without loss wherever they exist.
    """
    for name in (src, dst):
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}")
    if value.shape != x.shape:
        raise ValueError(f"value and x must have the same shape; got {list(value.shape)} and {list(x.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"value must be a floating-point tensor (a prediction); got {value.dtype}: "
                         "convert it with value.float() or value.double()")
    if src == dst:
        return value
    tt = expand_time(t, x)
    x0, eps = _to_x0_eps(value, src, x, tt, path)
    out = from_x0_eps(x0, eps, dst, tt, path)
    # one check (a host sync, skipped while torch.compile traces): finite in, finite out, or say why not
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(out).all()):
        _refuse_non_finite(out, value, x, tt, src, dst, path)
    return out


def _refuse_non_finite(out, value, x, tt, src: str, dst: str, path: Path) -> None:
    """ValueError naming the time when `out` is NaN or infinite where value and x are finite: the map from src
    to dst divides there by a coefficient that vanishes (sigma_t = 0 at t = 0; alpha_t = 0 at t = 1 on rf
    and cosine) or overflows the dtype. Non-finite input stays the caller's: it passes through, row by row."""
    bad = ~torch.isfinite(out) & torch.isfinite(value) & torch.isfinite(x)
    if not bool(bad.any()):
        return
    row = int(bad.reshape(len(bad) if bad.dim() else 1, -1).any(dim=1).nonzero()[0]) if tt.dim() else 0
    at = tt.flatten()[row] if tt.dim() else tt
    t, a, s = float(at), float(path.alpha(at)), float(path.sigma(at))
    raise ValueError(f"convert from {src!r} to {dst!r} is undefined at t = {t:g} on {path.name} (alpha_t = {a:g}, "
                     f"sigma_t = {s:g}): it divides by a coefficient that is 0 or infinite there, or overflows "
                     f"{out.dtype}; use times inside (0, 1), away from where alpha_t or sigma_t vanish")
