"""Checks for the exercises in which the reader writes the code (chapters 2-5).

Each `check_*` runs the reader's function on a problem whose answer is known exactly: Gaussian data
N(0, nu I), for which every loss has a closed-form value at the exact predictor and at the zero
predictor, the probability-flow map is linear, and the divergence of a field is a formula. It prints
one line per thing it measured and returns a dict of the numbers; when something is off it raises
`ExerciseError` (an AssertionError, so a wrong solution fails the book build) saying what was
expected, what was measured and where to look.

Monte Carlo values are compared within `N_SE` standard errors, estimated from independent batches
of the reader's own function (so a loss with a larger variance than necessary is not mistaken for a
wrong one).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .ddpm import DDPMSchedule, ddpm_elbo_weights
from .paths import VP, RectifiedFlow, as_time

__all__ = ["ExerciseError", "check_elbo_loss", "check_dsm_loss", "check_euler_sampler", "check_hutchinson"]

N_SE = 4.5  # tolerance of every Monte Carlo comparison, in standard errors
DATA_VAR = 0.5  # nu, the variance of the Gaussian data N(0, nu I) the losses are checked on
DIM = 2


class ExerciseError(AssertionError):
    """The reader's function does not do what the exercise asks; the message says what is off."""


def _fail(message: str) -> None:
    raise ExerciseError(message)


def _scalar(value, who: str) -> float:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        _fail(f"{who} must return a scalar tensor (one number: the mean over the batch); got "
              f"{type(value).__name__ if not isinstance(value, torch.Tensor) else list(value.shape)}")
    value = float(value)
    if not math.isfinite(value):
        _fail(f"{who} returned {value}; a loss of finite predictions on finite data is finite")
    return value


def _batch_means(call: Callable[[torch.Generator], torch.Tensor], who: str, batches: int, seed: int):
    """Mean and standard error of `call(generator)` over independent batches (one generator per batch)."""
    values = np.array([_scalar(call(torch.Generator().manual_seed(seed + k)), who) for k in range(batches)])
    return values.mean(), values.std(ddof=1) / math.sqrt(batches)


def _compare(name: str, measured: float, se: float, expected: float, hint: str) -> None:
    ok = abs(measured - expected) <= N_SE * se
    print(f"{name}: expected {expected:.5f}, yours {measured:.5f} +- {se:.5f} (tolerance {N_SE} standard errors): "
          f"{'ok' if ok else 'WRONG'}")
    if not ok:
        _fail(f"{name}: expected {expected:.5f}, got {measured:.5f} (standard error {se:.5f}). {hint}")


# -- chapter 2: the ELBO-weighted loss -----------------------------------------------------------
def _exact_eps_on_chain(schedule: DDPMSchedule, nu: float):
    """E[eps | x_i] for x_0 ~ N(0, nu I): sqrt(1 - abar_i) x / (abar_i nu + 1 - abar_i), i an int or a tensor [B]."""
    def eps_model(x, i):
        abar = schedule.alpha_bar.to(x.dtype)[torch.as_tensor(i, dtype=torch.long)]
        abar = abar.reshape(-1, *([1] * (x.dim() - 1))) if abar.dim() else abar
        return (1 - abar).sqrt() * x / (abar * nu + 1 - abar)
    return eps_model


def check_elbo_loss(loss_fn: Callable, batch: int = 4096, batches: int = 24, seed: int = 0) -> dict:
    """Check `loss_fn(eps_model, x0, schedule, generator)`: an unbiased one-sample estimate of the ELBO's
    step terms sum_{i=1}^N w_i E||eps - eps_model(x_i, i)||^2, with w_i = `ddpm_elbo_weights(schedule)`
    (nu_i^2 = beta_i), i drawn uniformly from 1..N for each data point and multiplied by N.

    Exact references, for data N(0, nu I) in D dimensions on a coarse 20-step chain (so that an
    off-by-one step index shows): at eps_model = 0 the expectation is D sum_i w_i; at the exact
    predictor E[eps | x_i] it is D sum_i w_i abar_i nu / (abar_i nu + 1 - abar_i).
    """
    schedule = DDPMSchedule.linear(20, 1e-3, 0.3)
    weights, abar = ddpm_elbo_weights(schedule), schedule.alpha_bar[1:]
    expected = {"zero": DIM * weights.sum().item(),
                "exact": DIM * (weights * abar * DATA_VAR / (abar * DATA_VAR + 1 - abar)).sum().item()}
    models = {"zero": lambda x, i: torch.zeros_like(x), "exact": _exact_eps_on_chain(schedule, DATA_VAR)}
    hints = {"zero": "With eps_hat = 0 the loss is N E[w_i] E||eps||^2 = D sum_i w_i: check the weights "
                     "(w_i of step i, from ddpm_elbo_weights(schedule)), the factor N, and that i runs over 1..N.",
             "exact": "At the exact predictor only x_i matters: check x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps "
                      "with abar_i = schedule.alpha_bar[i], the same i for the weight and the model, and i in 1..N."}
    result = {}
    for name in ("zero", "exact"):
        def call(gen, model=models[name]):
            x0 = math.sqrt(DATA_VAR) * torch.randn(batch, DIM, generator=gen, dtype=torch.float64)
            return loss_fn(model, x0, schedule, gen)
        measured, se = _batch_means(call, "loss_fn", batches, seed)
        _compare(f"ELBO loss at the {name} predictor", measured, se, expected[name], hints[name])
        result[name] = (measured, expected[name])
    return result


# -- chapter 3: the denoising score-matching loss ----------------------------------------------------
def _gauss_legendre_mean(fn: Callable, a: float, b: float, nodes: int = 200) -> float:
    u, w = np.polynomial.legendre.leggauss(nodes)
    t = torch.as_tensor(0.5 * (b - a) * u + 0.5 * (b + a), dtype=torch.float64)
    return 0.5 * float((torch.as_tensor(w) * fn(t)).sum())


def check_dsm_loss(loss_fn: Callable, batch: int = 4096, batches: int = 24, seed: int = 0) -> dict:
    """Check `loss_fn(score_model, x0, path, generator, t_min=1e-3)`: the denoising score-matching loss with
    Song's weight, mean over the batch of sigma_t^2 ||score_model(x_t, t) + eps / sigma_t||^2, where
    t ~ U[t_min, 1] (one per data point), eps ~ N(0, I) and x_t = alpha_t x0 + sigma_t eps.

    Exact references, for data N(0, nu I) on VP and on rectified flow: at score_model = 0 the
    expectation is D; at the exact score -x / (alpha_t^2 nu + sigma_t^2) it is
    D (1 - t_min)^{-1} int_{t_min}^1 alpha_t^2 nu / (alpha_t^2 nu + sigma_t^2) dt (Gauss-Legendre quadrature).
    """
    t_min, result = 1e-3, {}
    for path in (VP(), RectifiedFlow()):
        def floor(t, path=path):
            a2, sig2 = path.alpha(t) ** 2, path.sigma(t) ** 2
            return a2 * DATA_VAR / (a2 * DATA_VAR + sig2)
        expected = {"zero": float(DIM), "exact": DIM * _gauss_legendre_mean(floor, t_min, 1.0) / (1 - t_min)}

        def exact_score(x, t, path=path):
            t = as_time(t).to(x.dtype)
            t = t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t
            return -x / (path.alpha(t) ** 2 * DATA_VAR + path.sigma(t) ** 2)
        models = {"zero": lambda x, t: torch.zeros_like(x), "exact": exact_score}
        hints = {"zero": "With s = 0 the loss is E[sigma_t^2 |eps|^2 / sigma_t^2] = D: check the weight sigma_t^2 "
                         "and the target -eps / sigma_t.",
                 "exact": "At the exact score only x_t and t matter: check x_t = alpha_t x0 + sigma_t eps with "
                          "path.alpha(t), path.sigma(t), t ~ U[t_min, 1] one per point, and that the model gets "
                          "that t."}
        for name in ("zero", "exact"):
            def call(gen, model=models[name], path=path):
                x0 = math.sqrt(DATA_VAR) * torch.randn(batch, DIM, generator=gen, dtype=torch.float64)
                return loss_fn(model, x0, path, gen, t_min=t_min)
            measured, se = _batch_means(call, "loss_fn", batches, seed)
            label = f"DSM loss on {type(path).__name__} at the {name} score"
            _compare(label, measured, se, expected[name], hints[name])
            result[label] = (measured, expected[name])
    return result


# -- chapter 4: an Euler sampler for a velocity field ------------------------------------------------
def check_euler_sampler(sampler: Callable, seed: int = 0) -> dict:
    """Check `sampler(velocity, x1, n_steps)`: Euler's method for dx/dt = velocity(x, t) from t = 1 to t = 0
    in n_steps uniform steps, returning x at t = 0 ([N, D], like x1). velocity takes (x [N, D], t a float).

    Exact references, for Gaussian data N(mu, Sigma) on rectified flow, whose velocity is
    u_t(x) = dm_t + (1/2) dC_t C_t^{-1} (x - m_t) with m_t = (1 - t) mu, C_t = (1 - t)^2 Sigma + t^2 I:
    one step is exactly x1 - u_1(x1); and the exact flow map is x0 = mu + Sigma^{1/2} x1 (the standardised
    position is conserved, chapter 6), which Euler must approach at order 1 (error halves when n doubles).
    """
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    rot = torch.tensor([[math.cos(0.5), -math.sin(0.5)], [math.sin(0.5), math.cos(0.5)]], dtype=torch.float64)
    nu = torch.tensor([2.0, 0.3], dtype=torch.float64)  # the eigenvalues of Sigma
    sigma = rot @ torch.diag(nu) @ rot.T
    sqrt_sigma = rot @ torch.diag(nu.sqrt()) @ rot.T
    eye = torch.eye(2, dtype=torch.float64)

    def velocity(x, t):
        t = float(t)
        cov, dcov = (1 - t) ** 2 * sigma + t**2 * eye, -2 * (1 - t) * sigma + 2 * t * eye
        return -mu + 0.5 * (x - (1 - t) * mu) @ torch.linalg.solve(cov, dcov)  # cov, dcov commute (symmetric)

    x1 = torch.randn(256, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = mu + x1 @ sqrt_sigma

    def run(n):
        out = sampler(velocity, x1.clone(), n)
        if not isinstance(out, torch.Tensor) or out.shape != x1.shape:
            _fail(f"sampler must return x at t = 0 with the shape of x1, {list(x1.shape)}; got "
                  f"{list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if not bool(torch.isfinite(out).all()):
            _fail("sampler returned NaN or inf: does it evaluate the velocity where it is defined (t in [0, 1])?")
        return out

    one_step_error = (run(1) - (x1 - velocity(x1, 1.0))).abs().max().item()
    print(f"one step from t = 1 to 0 against x1 - u_1(x1): max difference {one_step_error:.1e} (tolerance 1e-10): "
          f"{'ok' if one_step_error < 1e-10 else 'WRONG'}")
    if one_step_error > 1e-10:
        _fail("With n_steps = 1 Euler is x0 = x1 + (0 - 1) u_1(x1) = x1 - velocity(x1, 1.0): check the sign of the "
              "step (time runs from 1 down to 0) and that the velocity is read at the start of the step.")
    errors = {n: (run(n) - exact).norm(dim=1).mean().item() for n in (25, 50, 100)}
    order = math.log2(errors[50] / errors[100])
    print(f"mean distance to the exact flow map: {', '.join(f'n = {n}: {e:.2e}' for n, e in errors.items())}; "
          f"observed order {order:.2f} (expected 1 for Euler, between 0.85 and 1.15): "
          f"{'ok' if 0.85 < order < 1.15 and errors[100] < 0.05 else 'WRONG'}")
    if not (0.85 < order < 1.15 and errors[100] < 0.05):
        _fail(f"Euler converges to the exact map at order 1; yours gives errors {errors} (order {order:.2f}). "
              "Check the step size 1 / n_steps, that every step reads the velocity at its own start time, and "
              "that the last step ends at t = 0.")
    return {"one_step_error": one_step_error, "errors": errors, "order": order}


# -- chapter 5: Hutchinson's divergence estimator -----------------------------------------------------
def check_hutchinson(estimator: Callable, n_points: int = 4000, seed: int = 0) -> dict:
    """Check `estimator(field, x, t, n_probes, generator)`: Hutchinson's estimate of div_x field(x, t) at each
    point of x [N, D] with n_probes Rademacher probes xi (entries +-1), averaging xi^T (d field/dx) xi,
    returned as [N].

    Exact references: for a linear field J x the estimate averages to tr J and, with K Rademacher probes, has
    variance (1/K) sum_{i<j} (J_ij + J_ji)^2 (Gaussian probes add 2 sum_i J_ii^2 / K); for the nonlinear field
    tanh(W x + b) the divergence is sum_k W_kk (1 - tanh^2((W x + b)_k)).
    """
    gen = torch.Generator().manual_seed(seed)
    jac = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 1.5], [0.5, 0.0, -2.0]], dtype=torch.float64)
    x = torch.randn(n_points, 3, generator=gen, dtype=torch.float64)
    k = 4

    def linear(x, t):
        return x @ jac.T

    est = estimator(linear, x, 0.5, k, torch.Generator().manual_seed(seed + 1))
    if not isinstance(est, torch.Tensor) or est.shape != (n_points,):
        _fail(f"estimator must return one estimate per point, shape [{n_points}]; got "
              f"{list(est.shape) if isinstance(est, torch.Tensor) else type(est).__name__}")
    est = est.detach().to(torch.float64)
    off = jac + jac.T
    var_rademacher = (off.triu(1) ** 2).sum().item() / k
    var_gauss = var_rademacher + 2 * (jac.diag() ** 2).sum().item() / k
    mean, var = est.mean().item(), est.var().item()
    centred = est - est.mean()
    se_mean = math.sqrt(var / n_points)
    se_var = math.sqrt(max((centred**4).mean().item() - var**2, 0.0) / n_points)  # of the sample variance
    trace = jac.trace().item()
    print(f"linear field: mean {mean:.4f} (tr J = {trace:.4f}, tolerance {N_SE * se_mean:.4f}); variance with "
          f"{k} probes {var:.3f} (Rademacher: {var_rademacher:.3f}, Gaussian probes would give {var_gauss:.3f})")
    if var < 1e-12:
        _fail("Your estimates have no variance: that is the exact trace, not Hutchinson's estimator. Draw random "
              "probes xi, and average xi^T (d field/dx) xi over them.")
    if abs(mean - trace) > N_SE * se_mean:
        _fail(f"The estimates average {mean:.4f}, not the divergence tr J = {trace:.4f}: check that xi^T J xi uses "
              "the same xi on both sides (a vector-Jacobian product with xi, then a dot product with xi).")
    if abs(var - var_rademacher) > N_SE * se_var:
        which = " (that is what Gaussian probes give)" if abs(var - var_gauss) <= N_SE * se_var else ""
        _fail(f"The variance with {k} probes is {var:.3f}{which}; Rademacher probes give {var_rademacher:.3f}. "
              "Draw entries +-1 with equal probability and average over the n_probes probes.")

    weight = torch.tensor([[0.8, -0.4], [0.3, 1.2]], dtype=torch.float64)
    bias = torch.tensor([0.1, -0.2], dtype=torch.float64)
    x2 = torch.randn(n_points, 2, generator=gen, dtype=torch.float64)

    def nonlinear(x, t):
        return torch.tanh(x @ weight.T + bias)

    exact = ((1 - torch.tanh(x2 @ weight.T + bias) ** 2) * weight.diag()).sum(1)
    est2 = estimator(nonlinear, x2, 0.5, k, torch.Generator().manual_seed(seed + 2)).detach().to(torch.float64)
    err = est2 - exact
    z_mean = err.mean().item() / (err.std().item() / math.sqrt(n_points))
    print(f"tanh field: mean error {err.mean().item():.2e} = {z_mean:.2f} standard errors (tolerance {N_SE}): "
          f"{'ok' if abs(z_mean) <= N_SE else 'WRONG'}")
    if abs(z_mean) > N_SE:
        _fail("On a nonlinear field the estimates are biased: take the Jacobian at each point x (with "
              "x.requires_grad_()), not at one shared point, and use fresh probes for every point.")
    return {"mean": mean, "trace": trace, "variance": var, "variance_rademacher": var_rademacher,
            "tanh_z": z_mean}
