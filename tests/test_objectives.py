"""Losses of the three views, checked on a 2-D Gaussian whose MMSE predictors are known in closed form.

For x0 ~ N(mu, Sigma) and x_t = alpha x0 + sigma eps: x_t ~ N(alpha mu, C), C = alpha^2 Sigma + sigma^2 I,
score = -C^{-1}(x - alpha mu), eps_hat = sigma C^{-1}(x - alpha mu), x0_hat = mu + alpha Sigma C^{-1}(x - alpha mu),
and the MMSE of eps is tr(I - sigma^2 C^{-1}).
"""
import math

import numpy as np
import pytest
import torch

from diffusion_lessons.objectives import draw, loss, target_value
from diffusion_lessons.paths import convert, make_path

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA0 = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


def _sample_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA0).T


def _posterior(path, x, t):
    """(alpha, sigma, C^{-1}(x - alpha mu)) per sample, t a tensor [N]."""
    a, s = path.alpha(t)[:, None, None], path.sigma(t)[:, None, None]
    C = a**2 * SIGMA0 + s**2 * torch.eye(2, dtype=torch.float64)
    r = torch.linalg.solve(C, (x - a[:, :, 0] * MU)[:, :, None])[:, :, 0]
    return a[:, :, 0], s[:, :, 0], r


def exact(path, target):
    """The MMSE predictor of `target`, written from the Gaussian formulas (not via paths.convert)."""
    def model(x, t):
        a, s, r = _posterior(path, x, t)
        eps_hat, x0_hat = s * r, MU + a * (r @ SIGMA0)
        tt = t[:, None]
        return {"eps": eps_hat, "score": -r, "x0": x0_hat,
                "velocity": path.dalpha(tt) * x0_hat + path.dsigma(tt) * eps_hat}[target]
    return model


def _crn(seed=1):
    return torch.Generator().manual_seed(seed)  # common random numbers: the same draw for every loss


@pytest.mark.parametrize("name", ["vp", "cosine"])
def test_exact_eps_predictor_beats_perturbed_ones(name):
    path, x0 = make_path(name), _sample_data(100_000)
    best = exact(path, "eps")
    at_best = loss(best, x0, path, generator=_crn()).item()
    for worse in (lambda x, t: 1.05 * best(x, t), lambda x, t: best(x, t) + 0.05):
        assert loss(worse, x0, path, generator=_crn()).item() > at_best


def test_mmse_loss_matches_posterior_variance():
    """E_t tr(I - sigma^2 C^{-1}) / D by quadrature == the Monte-Carlo loss within 5 standard errors."""
    path, t_min, x0 = make_path("vp"), 1e-3, _sample_data(200_000)
    ts = torch.linspace(t_min, 1, 4001, dtype=torch.float64)
    a, s = path.alpha(ts)[:, None, None], path.sigma(ts)[:, None, None]
    C_inv = torch.linalg.inv(a**2 * SIGMA0 + s**2 * torch.eye(2, dtype=torch.float64))
    per_t = (2 - s[:, 0, 0] ** 2 * C_inv.diagonal(dim1=1, dim2=2).sum(1)) / 2
    reference = np.trapezoid(per_t.numpy(), ts.numpy()) / (1 - t_min)

    got = loss(exact(path, "eps"), x0, path, t_min=t_min, generator=_crn()).item()
    t, eps, x_t = draw(x0, path, t_min, generator=_crn())  # the same draw, errors computed by hand
    errors = (exact(path, "eps")(x_t, t) - eps).square().mean(1)
    assert got == pytest.approx(errors.mean().item(), rel=1e-12)
    assert abs(got - reference) < 5 * errors.std().item() / math.sqrt(len(errors))


@pytest.mark.parametrize("name", ["vp", "rf", "cosine", "ve"])
def test_four_targets_are_one_loss_up_to_known_weights(name):
    path, x0 = make_path(name), _sample_data(20_000)
    eps_loss = loss(exact(path, "eps"), x0, path, generator=_crn())
    weights = {
        "score": lambda t: path.sigma(t) ** 2,
        "x0": lambda t: path.alpha(t) ** 2 / path.sigma(t) ** 2,
        "velocity": lambda t: (path.dsigma(t) - path.dalpha(t) * path.sigma(t) / path.alpha(t)) ** -2,
    }
    for target, w in weights.items():
        other = loss(exact(path, target), x0, path, target=target, weighting=w, generator=_crn())
        assert other.item() == pytest.approx(eps_loss.item(), rel=1e-9), target


@pytest.mark.parametrize("name", ["vp", "rf"])
def test_likelihood_weighting_is_g2_on_the_score_error(name):
    path, x0 = make_path(name), _sample_data(20_000)

    def off(x, t):  # a non-optimal eps model, so that the errors are not those of the MMSE
        return 0.9 * exact(path, "eps")(x, t) + 0.1 * x

    as_eps = loss(off, x0, path, weighting=lambda t: path.g2(t) / path.sigma(t) ** 2, generator=_crn())
    for target in ("eps", "x0", "score", "velocity"):
        def model(x, t, target=target):
            return convert(off(x, t), "eps", target, x, t, path)
        got = loss(model, x0, path, target=target, weighting="likelihood", generator=_crn())
        assert got.item() == pytest.approx(as_eps.item(), rel=1e-9), target


def test_targets_against_their_definitions():
    """velocity = d x_t / dt (finite difference); score = grad log N(x_t; alpha x0, sigma^2 I) (autograd)."""
    path, x0 = make_path("vp"), _sample_data(64)
    eps = torch.randn(x0.shape, generator=_crn(), dtype=torch.float64)
    t = torch.rand(64, generator=_crn(2), dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    fd = (path.sample(x0, t + h, eps)[0] - path.sample(x0, t - h, eps)[0]) / (2 * h)
    torch.testing.assert_close(target_value("velocity", x0, eps, t, path), fd, rtol=1e-7, atol=1e-7)

    x_t = path.sample(x0, t, eps)[0].requires_grad_(True)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    log_kernel = (-((x_t - a * x0) ** 2) / (2 * s**2)).sum()
    (grad,) = torch.autograd.grad(log_kernel, x_t)
    torch.testing.assert_close(target_value("score", x0, eps, t, path), grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(target_value("eps", x0, eps, t, path), eps)
    assert torch.equal(target_value("x0", x0, eps, t, path), x0)


def test_draw_times_and_shapes():
    x0 = torch.zeros(5000, 3, dtype=torch.float32)
    t, eps, x_t = draw(x0, make_path("rf"), t_min=0.2, generator=_crn())
    assert t.shape == (5000,) and eps.shape == x_t.shape == x0.shape
    assert float(t.min()) >= 0.2 and float(t.max()) < 1
    torch.testing.assert_close(x_t, t[:, None] * eps)  # rf: alpha = 1 - t, sigma = t, x0 = 0


def test_bad_arguments_say_what_is_wrong():
    path, x0 = make_path("vp"), _sample_data(8)
    with pytest.raises(ValueError, match="unknown target 'noise'.*eps, x0, score, velocity"):
        loss(exact(path, "eps"), x0, path, target="noise")
    with pytest.raises(ValueError, match="unknown weighting 'elbo'"):
        loss(exact(path, "eps"), x0, path, weighting="elbo")
    with pytest.raises(ValueError, match=r"tensor like x \[8, 2\]; got \[8, 1\]"):
        loss(lambda x, t: x[:, :1], x0, path)
    with pytest.raises(ValueError, match="t_min"):
        draw(x0, path, t_min=1.0)
