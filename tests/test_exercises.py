"""The exercise checks accept a right answer and reject the mistakes a reader is likely to make."""
import math

import pytest
import torch

from diffusion_lessons import exercises
from diffusion_lessons.ddpm import ddpm_elbo_weights
from diffusion_lessons.exercises import ExerciseError


# -- chapter 2 ------------------------------------------------------------------------------------
def elbo_loss(eps_model, x0, schedule, generator, first=1, noise_power=0.5, weighted=True):
    n = schedule.n_steps
    i = torch.randint(first, first + n, (x0.shape[0],), generator=generator)
    abar = schedule.alpha_bar[i.clamp(max=n)][:, None]
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_i = abar**noise_power * x0 + (1 - abar).sqrt() * eps
    w = ddpm_elbo_weights(schedule)[i.clamp(max=n) - 1] if weighted else torch.ones(len(i), dtype=x0.dtype)
    return n * (w * ((eps - eps_model(x_i, i)) ** 2).sum(1)).mean()


def test_elbo_loss_check_accepts_the_right_loss():
    result = exercises.check_elbo_loss(elbo_loss)
    assert set(result) == {"zero", "exact"}


@pytest.mark.parametrize("mistake", [
    dict(first=0),  # steps 0..N-1: the data step counted, the last step missed
    dict(noise_power=1.0),  # abar x0 instead of sqrt(abar) x0
    dict(weighted=False),  # the simple loss, not the ELBO
])
def test_elbo_loss_check_rejects_mistakes(mistake):
    with pytest.raises(ExerciseError):
        exercises.check_elbo_loss(lambda *a: elbo_loss(*a, **mistake))


def test_elbo_loss_check_rejects_a_non_scalar():
    with pytest.raises(ExerciseError, match="scalar"):
        exercises.check_elbo_loss(lambda m, x0, s, g: torch.zeros(len(x0)))


# -- chapter 3 ------------------------------------------------------------------------------------
def dsm_loss(score_model, x0, path, generator, t_min=1e-3, weight_power=2, vp_sigma=False):
    t = t_min + (1 - t_min) * torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    alpha = path.alpha(t)[:, None]
    sigma = (1 - alpha**2).sqrt() if vp_sigma else path.sigma(t)[:, None]
    x_t = alpha * x0 + sigma * z
    return (sigma[:, 0] ** weight_power * ((score_model(x_t, t) + z / sigma) ** 2).sum(1)).mean()


def test_dsm_check_accepts_the_right_loss():
    assert len(exercises.check_dsm_loss(dsm_loss)) == 4  # two paths, two references each


@pytest.mark.parametrize("mistake", [dict(weight_power=0), dict(vp_sigma=True)])
def test_dsm_check_rejects_mistakes(mistake):
    with pytest.raises(ExerciseError):
        exercises.check_dsm_loss(lambda *a, **k: dsm_loss(*a, **k, **mistake))


# -- chapter 4 ------------------------------------------------------------------------------------
def euler(velocity, x1, n_steps, read_at_end=False, sign=1.0):
    x, h = x1, 1.0 / n_steps
    for k in range(n_steps):
        t = 1.0 - k * h
        x = x - sign * h * velocity(x, t - h if read_at_end else t)
    return x


def heun(velocity, x1, n_steps):
    x, h = x1, 1.0 / n_steps
    for k in range(n_steps):
        t = 1.0 - k * h
        d = velocity(x, t)
        x_pred = x - h * d
        x = x - 0.5 * h * (d + velocity(x_pred, t - h))
    return x


def test_euler_check_accepts_euler():
    result = exercises.check_euler_sampler(euler)
    assert result["one_step_error"] < 1e-12 and 0.85 < result["order"] < 1.15


@pytest.mark.parametrize("sampler", [
    lambda v, x, n: euler(v, x, n, read_at_end=True),  # backward-looking velocity
    lambda v, x, n: euler(v, x, n, sign=-1.0),  # integrates forward in time
    heun,  # a better method, but not the one asked for (order 2)
])
def test_euler_check_rejects_other_methods(sampler):
    with pytest.raises(ExerciseError):
        exercises.check_euler_sampler(sampler)


# -- chapter 5 ------------------------------------------------------------------------------------
def hutchinson(field, x, t, n_probes, generator, probe="rademacher", shared_point=False):
    if shared_point:  # the Jacobian taken at the batch mean, for every point
        x = x.mean(0, keepdim=True).expand_as(x)
    x = x.detach().requires_grad_(True)
    out = field(x, t)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for _ in range(n_probes):
        if probe == "rademacher":
            z = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
        else:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        (vjp,) = torch.autograd.grad(out, x, z, retain_graph=True)
        total = total + (vjp * z).sum(1)
    return total / n_probes


def exact_trace(field, x, t, n_probes, generator):
    x = x.detach().requires_grad_(True)
    out = field(x, t)
    rows = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)[0][:, k] for k in range(x.shape[1])]
    return sum(rows)


def test_hutchinson_check_accepts_rademacher_probes():
    result = exercises.check_hutchinson(hutchinson)
    assert abs(result["mean"] - result["trace"]) < 0.1
    assert math.isclose(result["variance"], result["variance_rademacher"], rel_tol=0.15)


@pytest.mark.parametrize("estimator, message", [
    (lambda *a: hutchinson(*a, probe="gauss"), "Gaussian probes"),
    (exact_trace, "no variance"),
    (lambda *a: hutchinson(*a, shared_point=True), "biased"),
    (lambda f, x, t, k, g: hutchinson(f, x, t, k, g)[:10], "one estimate per point"),
])
def test_hutchinson_check_rejects_mistakes(estimator, message):
    with pytest.raises(ExerciseError, match=message):
        exercises.check_hutchinson(estimator)
