"""Inverse problems: sampling p(x0 | y) for a linear measurement y = A x0 + noise_std n with a prior model.

The posterior score is the prior score plus grad_x log p_t(y | x_t) (Song et al. 2021, §5). The methods
differ in how they treat that likelihood, which is intractable for a learned prior:

* ``replacement_inpainting`` ignores it and overwrites the observed coordinates with a noised copy of
  the data after every update (Song et al. 2021, App. I.2, in the order of their code
  ``controllable_generation.get_pc_inpainter``). Exact only when observed and hidden coordinates are
  independent (check GD-3); ``replacement_inpainting_moments`` gives its exact output moments for a
  Gaussian prior.
* ``dps_guidance`` approximates p_t(y | x_t) by a Gaussian around A x0_hat(x_t) (Chung et al. 2023,
  "DPS"): with covariance noise_std^2 I (first-order Tweedie, biased: check GD-4), with the
  second-order Tweedie covariance noise_std^2 I + A Cov[x0 | x_t] A^T (exact for a Gaussian prior;
  the idea of STSL, Rout et al. 2024, who released no code: this is our reading of the abstract), or with
  an isotropic Cov = c(x_t) I whose trace comes from score differences (STSL's O(1) estimator). It is a
  field(x, t) like the model's, for any sampler; the same first-order form with a free scale is the
  self-guidance of TSDiff (Kollovieh et al. 2023).
* ``dps_sample`` is DPS as the authors' code runs it (``condition_methods.PosteriorSampling``): a DDPM
  ancestral step, then x_{i-1} -= zeta grad_{x_i} ||y - A x0_hat(x_i)|| with the norm, not its square,
  zeta = 0.5 (inpainting) or 0.3 (super-resolution, deblurring) in their configs.

A measurement operator ``A`` is a matrix [M, D] acting on flattened samples, or a 0/1 mask shaped like
one sample (y = mask * x: the entries of y where mask = 0 are ignored).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .ddpm import DDPMSchedule, eps_on_chain, reverse_mean
from .paths import VP, Path, as_time, convert
from .posterior import score_difference_trace, score_jacobian

__all__ = [
    "SECOND_ORDER",
    "Measurement",
    "dps_guidance",
    "dps_sample",
    "replacement_inpainting",
    "replacement_inpainting_moments",
    "selection_matrix",
]

Field = Callable[[torch.Tensor, object], torch.Tensor]
SECOND_ORDER = (None, "full", "trace")


class Measurement:
    """y = A x + noise_std n for samples of shape `sample_shape`; A a matrix [M, D] or a 0/1 mask.

    y: for a matrix, one measurement [M] shared by every sample or one per sample [N, M]; for a mask, shaped like
    one sample or like the samples [N, ...].
    forward(x) [N, M] (matrix) or [N, ...] (mask); residual(x) = y - A x, zero where mask = 0;
    gram(): A A^T [M, M] (the mask's own values for a mask, i.e. a diagonal).
    """

    def __init__(self, A: torch.Tensor, y: torch.Tensor, noise_std: float, sample_shape):
        self.sample_shape, self.noise_std = tuple(sample_shape), float(noise_std)
        numel = math.prod(self.sample_shape)
        self.is_mask = tuple(A.shape) == self.sample_shape and not (A.dim() == 2 and A.shape == (1, numel))
        if not self.is_mask and (A.dim() != 2 or A.shape[1] != numel):
            raise ValueError(f"A must be a mask shaped like one sample {list(self.sample_shape)} or a matrix "
                             f"[M, {numel}]; got {list(A.shape)}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0; got {noise_std}")
        if not self.is_mask and (y.dim() not in (1, 2) or y.shape[-1] != A.shape[0]):
            raise ValueError(f"y must be one measurement [{A.shape[0]}] or one per sample [N, {A.shape[0]}] for A of "
                             f"shape {list(A.shape)}; got {list(y.shape)}")
        self.A, self.y = A, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.A.to(x) if self.is_mask else x.flatten(1) @ self.A.to(x).T

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """y - A x, [N, M] or [N, ...] (zero off the mask)."""
        y = self.y.to(x)
        per_sample = y.dim() == x.dim() if self.is_mask else y.dim() == 2
        if per_sample and y.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"y holds {y.shape[0]} measurements for {x.shape[0]} samples: give one measurement for "
                             f"all samples or one per sample")
        return (y - x) * self.A.to(x) if self.is_mask else y - self.forward(x)

    def gram(self, like: torch.Tensor) -> torch.Tensor:
        return self.A.to(like) if self.is_mask else self.A.to(like) @ self.A.to(like).T


def selection_matrix(size: int, observed) -> torch.Tensor:
    """A [M, size] (float64): the rows of the identity that pick the entries `observed` (M indices, or a 0/1
    mask tensor of `size` entries), so that A x is the observed part of a flattened sample x."""
    observed = torch.as_tensor(observed)
    if observed.dtype == torch.bool or (observed.is_floating_point() and observed.numel() == size):
        observed = observed.reshape(-1).nonzero().squeeze(1)
    index = observed.long().reshape(-1)
    if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= size:
        raise ValueError(f"observed must be indices in 0..{size - 1} or a mask of {size} entries")
    return torch.eye(int(size), dtype=torch.float64)[index]


# -- replacement (Song et al. 2021) ------------------------------------------------------------------------

def _song_betas(path: VP, n: int) -> torch.Tensor:
    """Song et al.'s discrete VP betas beta_j = beta(j / (n - 1)) / n, j = 0..n-1 (float64)."""
    j = torch.arange(n, dtype=torch.float64)
    return (path.beta_min + j / (n - 1) * (path.beta_max - path.beta_min)) / n


def _replacement_grid(path: Path, n_steps: int, t_end: float):
    if not isinstance(path, VP):
        raise TypeError(f"replacement_inpainting follows Song et al.'s reverse-diffusion predictor for the VP path; "
                         f"got {type(path).__name__}")
    if n_steps < 2 or not 0 < t_end < 1:
        raise ValueError(f"need n_steps >= 2 and 0 < t_end < 1; got {n_steps}, {t_end}")
    times = torch.linspace(1.0, t_end, n_steps, dtype=torch.float64).tolist()
    betas = _song_betas(path, n_steps)
    # the predictor at grid time t uses the chain's beta number floor(t (N - 1)), as score_sde's discretize
    return [(t, float(betas[int(t * (n_steps - 1))])) for t in times]


def replacement_inpainting(model: Field, path: VP, y: torch.Tensor, mask: torch.Tensor, x_T: torch.Tensor,
                           n_steps: int = 1000, t_end: float = 1e-5, target: str = "score", generator=None):
    """Inpainting by replacement, in the order of score_sde's ``get_pc_inpainter`` (reverse-diffusion
    predictor, no corrector). With t_i = linspace(1, t_end, n_steps) and beta_i Song's discrete beta at t_i:

        x = y m + x_T (1 - m);   for each t_i:  x <- R_i(x);  x <- P_i(x);  x <- R_i(x),
        P_i(x) = (2 - sqrt(1 - beta_i)) x + beta_i s(x, t_i) + sqrt(beta_i) z,
        R_i(x) = x (1 - m) + (alpha(t_i) y + sigma(t_i) xi) m     (fresh xi each time),

    i.e. the data are re-noised at the pre-update time t_i although the predictor moved x towards t_{i+1}.
    Returns the code's ``x_mean``: the last x with the observed entries set to alpha(t_end) y (noise-free).
    model(x, t) predicts `target`; y, mask: like x (or like one sample), mask = 1 on observed entries.
    """
    grid = _replacement_grid(path, n_steps, t_end)
    mask = mask.to(x_T)
    y = y.to(x_T)

    def replace(x, t):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x * (1 - mask) + (path.alpha(t).item() * y + path.sigma(t).item() * noise) * mask

    x = y * mask + x_T * (1 - mask)
    for t, beta in grid:
        x = replace(x, t)
        score = convert(model(x, t), target, "score", x, t, path)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = (2 - math.sqrt(1 - beta)) * x + beta * score + math.sqrt(beta) * noise
        x = replace(x, t)
    return x * (1 - mask) + path.alpha(grid[-1][0]).item() * y * mask


def replacement_inpainting_moments(prior, path: VP, y: torch.Tensor, mask: torch.Tensor, n_steps: int = 1000,
                                   t_end: float = 1e-5):
    """Exact (mean [D], covariance [D, D]) of `replacement_inpainting`'s output for a Gaussian prior
    N(mu, Sigma) (a dl.Gaussian) with its exact score, started from x_T ~ N(0, I).

    Every step is affine in x plus independent Gaussian noise, so the state stays Gaussian and its
    moments follow the recursion m <- M m + b, P <- M P M^T + Q (float64, D x D).
    """
    mu, cov = prior.mean_vector.double(), prior.cov.double()
    m = mask.double().reshape(-1).bool()
    y = y.double().reshape(-1)
    eye = torch.eye(len(mu), dtype=torch.float64)
    mean, P = torch.where(m, y, 0.0), torch.diag((~m).double())

    def replace(mean, P, t):
        a, s = path.alpha(t).item(), path.sigma(t).item()
        mean = torch.where(m, a * y, mean)
        P = P * (~m).double()[:, None] * (~m).double()[None, :] + torch.diag(m.double() * s**2)
        return mean, P

    for t, beta in _replacement_grid(path, n_steps, t_end):
        mean, P = replace(mean, P, t)
        a, s = path.alpha(t).item(), path.sigma(t).item()
        precision = torch.linalg.inv(a**2 * cov + s**2 * eye)  # score = -precision (x - a mu)
        M = (2 - math.sqrt(1 - beta)) * eye - beta * precision
        mean = M @ mean + beta * precision @ (a * mu)
        P = M @ P @ M.T + beta * eye
        mean, P = replace(mean, P, t)
    keep = (~m).double()
    return torch.where(m, path.alpha(t_end).item() * y, mean), P * keep[:, None] * keep[None, :]


# -- DPS and its second-order variants (Chung et al. 2023; Rout et al. 2024) ---------------------------------

def _as_selection(meas: Measurement) -> Measurement:
    """A mask on vectors [D] as the selection matrix of its observed entries (for a full covariance)."""
    if not meas.is_mask:
        return meas
    if len(meas.sample_shape) != 1:
        raise ValueError("the full second-order covariance needs vectors [N, D]; for images use second_order='trace'")
    rows = meas.A.reshape(-1).nonzero().squeeze(1)
    A = torch.eye(meas.sample_shape[0], dtype=meas.y.dtype, device=meas.y.device)[rows]
    return Measurement(A, meas.y[..., rows], meas.noise_std, meas.sample_shape)


def _model_x0(model: Field, target: str, path: Path) -> Field:
    def x0(x, t):
        return convert(model(x, t), target, "x0", x, t, path)
    return x0


def _inverse_covariance_times(meas, second_order, x0_field, hessian, probes, probe_size, path):
    """weigh(r, x, t) -> Sigma_t(x)^{-1} r, with Sigma_t held fixed (computed without gradients).

    Cov[x0 | x] = sigma^2 / alpha^2 (I + sigma^2 H) = (sigma^2 / alpha) d x0_hat / dx (second-order Tweedie). With
    an exact Hessian H it is used as such; for a network it is computed from the Jacobian of x0_hat (autograd,
    "full") or its trace (differences along probes, "trace"), which avoids the cancellation in I + sigma^2 H.
    """
    var_y = meas.noise_std**2

    def coefficients(x, t):
        tt = as_time(t, x)
        return path.alpha(tt).reshape(-1).expand(x.shape[0]), path.sigma(tt).reshape(-1).expand(x.shape[0])

    if second_order is None:
        if var_y == 0:
            raise ValueError("first-order DPS needs noise_std > 0 (its likelihood variance is noise_std^2)")
        return lambda r, x, t: r / var_y
    if second_order == "trace":
        if probes is None:
            raise ValueError("second_order='trace' needs probes [P, ...] (e.g. torch.randn(P, *sample_shape))")

        def weigh_trace(r, x, t):
            with torch.no_grad():
                a, s = coefficients(x, t)
                trace = score_difference_trace(x0_field, x.detach(), t, probe_size, probes)  # tr d x0_hat / dx
                c = (s**2 / a * trace / x[0].numel()).clamp_min(0.0)  # Cov[x0 | x] ~ c I
            if meas.is_mask:
                return r / (var_y + c.reshape(-1, *([1] * (r.dim() - 1))))
            eye = torch.eye(r.shape[1], dtype=r.dtype, device=r.device)
            sigma = var_y * eye + c[:, None, None] * meas.gram(r)
            return torch.linalg.solve(sigma, r[..., None])[..., 0]

        return weigh_trace

    def weigh_full(r, x, t):
        with torch.no_grad():
            a, s = coefficients(x, t)
            eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
            if hessian is None:  # (sigma^2 / alpha) J, J the Jacobian of x0_hat, made symmetric
                jac = score_jacobian(x0_field)(x.detach(), t)
                cov = (s**2 / a)[:, None, None] * 0.5 * (jac + jac.transpose(1, 2))
            else:
                cov = (s**2 / a**2)[:, None, None] * (eye + (s**2)[:, None, None] * hessian(x.detach(), t))
            if bool(torch.linalg.cholesky_ex(cov).info.any()):  # a network's estimate need not be positive definite
                evals, evecs = torch.linalg.eigh(cov)  # its negative eigenvalues are set to 0
                cov = (evecs * evals.clamp_min(0.0)[:, None, :]) @ evecs.transpose(1, 2)
            A = meas.A.to(x)
            sigma = var_y * torch.eye(A.shape[0], dtype=x.dtype, device=x.device) + A @ cov @ A.T
        return torch.linalg.solve(sigma, r[..., None])[..., 0]

    return weigh_full


def dps_guidance(model: Field, path: Path, A: torch.Tensor, y: torch.Tensor, noise_std: float, target: str = "eps",
                 scale: float = 1.0, second_order: str | None = None, hessian: Field | None = None,
                 probes: torch.Tensor | None = None, probe_size: float = 0.01, clip: float | None = None) -> Field:
    """field(x, t): the model's prediction with its score moved by scale * grad_x log N(y; A x0_hat(x), Sigma_t(x)).

    y: one measurement [M] for all samples, or one per sample [N, M] (N problems solved in one batch); for a mask
    A, shaped like one sample or like the samples.
    x0_hat = Tweedie's estimate from the model (predicting `target`), differentiated through the model.
    Sigma_t, held fixed in the gradient:

    * second_order=None: noise_std^2 I (DPS's first-order Tweedie approximation; biased, check GD-4);
    * "full": noise_std^2 I + A Cov[x0 | x] A^T with the second-order Tweedie covariance
      sigma^2 / alpha^2 (I + sigma^2 H) of `hessian(x, t)` when given (e.g. dl.exact_score_jacobian), else
      (sigma^2 / alpha) d x0_hat / dx by autograd (the same matrix; vectors only). For a Gaussian prior and
      the exact score this is exactly grad log p_t(y | x) (check GD-4);
    * "trace": Cov ~ c I, c = (sigma^2 / alpha) tr(d x0_hat / dx) / D = sigma^2 / alpha^2 (1 + sigma^2 tr H / D),
      the trace from differences of x0_hat along `probes` [P, ...] at `probe_size` (``score_difference_trace``;
      STSL's O(1) estimator).

    The gradient is grad_x x0_hat^T A^T Sigma^{-1} (y - A x0_hat). scale = 1 is the Bayesian weight; TSDiff's
    self-guidance is second_order=None with scale / noise_std^2 playing the role of their scale.
    clip: clamp x0_hat to [-clip, clip] first, as DPS's image code does (``clip_denoised``). Near t = 1 a
    network's x0_hat = (x - sigma eps_hat) / alpha multiplies its errors by 1 / alpha (150 on the VP path),
    and an unclipped first-order likelihood can then throw the sampler off; clipping switches the
    guidance off wherever the estimate saturates.
    """
    if second_order not in SECOND_ORDER:
        raise ValueError(f"unknown second_order {second_order!r}; valid: {', '.join(map(str, SECOND_ORDER))}")
    A, y = torch.as_tensor(A), torch.as_tensor(y)
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0; got {noise_std}")
    x0_field = _model_x0(model, target, path)
    state = {}

    def field(x, t):
        if state.get("shape") != x.shape[1:]:  # the operator is checked against the samples' shape once
            m = Measurement(A.to(x), y.to(x), noise_std, x.shape[1:])
            state.update(shape=x.shape[1:], meas=_as_selection(m) if second_order == "full" else m)
            state["weigh"] = _inverse_covariance_times(state["meas"], second_order, x0_field, hessian, probes,
                                                       probe_size, path)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = model(xg, t)
            x0_hat = convert(out, target, "x0", xg, t, path)
            r = state["meas"].residual(x0_hat if clip is None else x0_hat.clamp(-clip, clip))
            log_likelihood = -0.5 * (r * state["weigh"](r, xg, t)).sum()
            (grad,) = torch.autograd.grad(log_likelihood, xg)
        guided = convert(out.detach(), target, "score", x, t, path) + scale * grad
        return convert(guided, "score", target, x, t, path)

    return field


def dps_sample(model: Field, schedule: DDPMSchedule, A: torch.Tensor, y: torch.Tensor, zeta: float,
               x_T: torch.Tensor, path: Path, target: str = "eps", variance: str = "beta",
               clip: float | None = None, generator=None) -> torch.Tensor:
    """DPS as its authors' code runs it (``p_sample_loop`` + ``PosteriorSampling``): for i = N, ..., 1,

        x0_hat = x0_hat(x_i);   x' = DDPM ancestral step from x_i (no noise at i = 1);
        x_{i-1} = x' - zeta grad_{x_i} ||y - A x0_hat(x_i)||_2        (the norm, not its square)

    per sample. zeta = 0.5 for inpainting, 0.3 for super-resolution and deblurring in their configs
    (with measurement noise 0.05, 1000 steps); the step is the paper's zeta_i = zeta' / ||y - A x0_hat||
    on the squared norm, up to a factor 2. model(x, t) predicts `target`, read on the chain at t = i / N
    (``eps_on_chain``); variance: "beta" or "tilde" (the reverse variance; their models learn it).
    clip: clamp x0_hat to [-clip, clip] before both uses, as their image code does (``clip_denoised``).
    """
    meas = Measurement(torch.as_tensor(A).to(x_T), torch.as_tensor(y).to(x_T), 0.0, x_T.shape[1:])
    eps_model = eps_on_chain(model, schedule, path, target)
    x = x_T
    for i in range(schedule.n_steps, 0, -1):
        ab = float(schedule.alpha_bar[i])
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            eps = eps_model(xg, i)
            x0 = (xg - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            x0 = x0 if clip is None else x0.clamp(-clip, clip)
            norm = meas.residual(x0).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(norm.sum(), xg)
        if clip is None:
            x_next = reverse_mean(schedule, x, i, eps.detach())
        else:
            x_next = schedule.posterior_mean(x0.detach(), x, i)
        if i > 1:
            std = math.sqrt(float(schedule.reverse_variance(i, variance)))
            x_next = x_next + std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x_next - zeta * grad
    return x
