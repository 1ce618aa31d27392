"""Classifier-free and classifier guidance as fields, against independent float64 references.

Checks GD-1 (the laws CFG samples), GD-2 (classifier guidance = the posterior score) and SDE-7
(class-conditional scores and guided PF-ODE samples of GMM2).
"""
import math

import numpy as np
import pytest
import torch
from reference import GMM2, gmm_logpdf_score, gmm_t, vp_alpha_sigma
from scipy.integrate import solve_ivp

import diffusion_lessons as dl
from diffusion_lessons.guidance import (
    classifier_free_guidance,
    classifier_gradient,
    classifier_guidance,
    null_label,
)
from diffusion_lessons.metrics import moment_errors
from diffusion_lessons.posterior import exact_class_conditional, exact_classifier

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

BMIN, BMAX = 0.1, 20.0


def _gaussian_pair_model(vp, cond, uncond):
    """model(x, t, y): the exact score of `cond` for y = 0 and of `uncond` for y = 1 (the null label)."""
    fields = [dl.exact_score(cond, vp), dl.exact_score(uncond, vp)]

    def model(x, t, y):
        out = torch.empty_like(x)
        for k in (0, 1):
            rows = y == k
            out[rows] = fields[k](x[rows], t)
        return out

    return model


def test_cfg_scale_convention_gamma_is_one_plus_w():
    """gamma = 1 is the conditional model, gamma = 0 the unconditional one, w = gamma - 1 (Ho & Salimans)."""
    vp = dl.VP()
    cond = dl.Gaussian(torch.tensor([1.0, -1.0]), torch.eye(2))
    uncond = dl.Gaussian(torch.zeros(2), 2 * torch.eye(2))
    model = _gaussian_pair_model(vp, cond, uncond)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    t = 0.4
    def close(a, b):
        return torch.allclose(a, b, rtol=0, atol=1e-14)
    assert close(classifier_free_guidance(model, 0, 1.0, null=1)(x, t), dl.exact_score(cond, vp)(x, t))
    assert close(classifier_free_guidance(model, 0, 0.0, null=1)(x, t), dl.exact_score(uncond, vp)(x, t))
    gamma3 = classifier_free_guidance(model, 0, 3.0, null=1)(x, t)
    assert close(classifier_free_guidance(model, 0, w=2.0, null=1)(x, t), gamma3)
    assert not close(classifier_free_guidance(model, 0, 2.0, null=1)(x, t), gamma3)
    with pytest.raises(ValueError, match="exactly one"):
        classifier_free_guidance(model, 0, 3.0, w=2.0, null=1)
    with pytest.raises(ValueError, match="not class-conditional"):
        classifier_free_guidance(model, 0, 3.0)


def test_gd1a_equal_covariances_cfg_is_the_score_of_a_shifted_gaussian():
    """Check GD-1 (a): with p(x|c) = N(mu_c, s^2 I), p(x) = N(mu_u, s^2 I), s_u + gamma (s_c - s_u) is the
    score of the noised N(mu_u + gamma (mu_c - mu_u), s^2 I), for every t (numpy reference)."""
    vp, s2 = dl.VP(BMIN, BMAX), 0.7
    mu_c, mu_u = np.array([1.0, -2.0]), np.array([-0.5, 0.5])
    model = _gaussian_pair_model(vp, dl.Gaussian(torch.tensor(mu_c), s2 * torch.eye(2)),
                                 dl.Gaussian(torch.tensor(mu_u), s2 * torch.eye(2)))
    x = np.random.default_rng(0).normal(size=(100, 2)) * 2
    worst = 0.0
    for gamma in (0.5, 2.0, 4.0):
        field = classifier_free_guidance(model, 0, gamma, null=1)
        for t in (0.05, 0.3, 0.8):
            a, s = vp_alpha_sigma(t, BMIN, BMAX)
            shifted = mu_u + gamma * (mu_c - mu_u)
            expected = -(x - a * shifted) / (a**2 * s2 + s**2)
            worst = max(worst, np.abs(field(torch.tensor(x), t).numpy() - expected).max())
    assert worst < 1e-12, worst


def _variance_ode_reference(gamma, v_c, v_u, stochastic):
    """Terminal variance of the CFG-guided PF-ODE / reverse SDE for 1-D zero-mean Gaussians on the VP path,
    solved independently (DOP853): the guided score is -kappa(t) x, kappa = gamma / C_c + (1 - gamma) / C_u,
    C = alpha^2 v + sigma^2, so dV/dt = 2 (f + g^2 kappa / 2) V (ODE) or 2 (f + g^2 kappa) V - g^2 (SDE)."""
    def coefficients(t):
        B = BMIN * t + 0.5 * (BMAX - BMIN) * t**2
        beta, a2 = BMIN + t * (BMAX - BMIN), math.exp(-B)
        kappa = gamma / (a2 * v_c + 1 - a2) + (1 - gamma) / (a2 * v_u + 1 - a2)
        return beta, kappa

    def rhs(t, V):
        beta, kappa = coefficients(t)
        if stochastic:
            return [2 * (-beta / 2 + beta * kappa) * V[0] - beta]
        return [2 * (-beta / 2 + beta * kappa / 2) * V[0]]

    a2 = math.exp(-(BMIN + 0.5 * (BMAX - BMIN)))
    start = a2 * v_c + 1 - a2  # p_1(. | c)
    sol = solve_ivp(rhs, (1.0, 1e-3), [start], method="DOP853", rtol=1e-11, atol=1e-13)
    return sol.y[0, -1]


def test_gd1b_cfg_pf_ode_reverse_sde_and_tilted_law_have_three_different_variances():
    """Check GD-1 (b): v_c = 0.25, v_u = 1, VP, t: 1 -> 1e-3, start from p_1(.|c). The package's guided
    PF-ODE (RK4 on the CFG field, a linear map x_T -> k x_T, so Var = k^2 Var(x_T)) and its guided
    reverse-SDE drift reproduce the independent ODE for the variance to 1e-6; for gamma > 1 the tilted law
    p(x|c)^gamma p(x)^(1 - gamma) at t = 1e-3, the PF-ODE and the SDE all differ."""
    vp, v_c, v_u = dl.VP(BMIN, BMAX), 0.25, 1.0
    model = _gaussian_pair_model(vp, dl.Gaussian(torch.zeros(1), torch.tensor([[v_c]])),
                                 dl.Gaussian(torch.zeros(1), torch.tensor([[v_u]])))
    grid = dl.time_grid(400, 1.0, 1e-3)
    a_end, s_end = vp_alpha_sigma(1e-3, BMIN, BMAX)
    v_start = float(vp.alpha(1.0)) ** 2 * v_c + float(vp.sigma(1.0)) ** 2
    for gamma in (1.0, 2.0, 3.0, 5.0):
        field = classifier_free_guidance(model, 0, gamma, null=1)
        k = dl.sample_ode(dl.pf_velocity(field, vp), torch.ones(1, 1), grid, method="rk4").item()
        ode = k**2 * v_start
        ode_ref, sde_ref = (_variance_ode_reference(gamma, v_c, v_u, s) for s in (False, True))
        assert abs(ode / ode_ref - 1) < 1e-6, (gamma, ode, ode_ref)

        drift = dl.reverse_drift(field, vp)  # the package's guided reverse-SDE drift is linear: slope b(t)

        def rhs(t, V, drift=drift):
            return [2 * drift(torch.ones(1, 1), t).item() * V[0] - vp.g2(t).item()]
        sde = solve_ivp(rhs, (1.0, 1e-3), [v_start], method="DOP853", rtol=1e-9, atol=1e-12).y[0, -1]
        assert abs(sde / sde_ref - 1) < 1e-6, (gamma, sde, sde_ref)

        C_c, C_u = a_end**2 * v_c + s_end**2, a_end**2 * v_u + s_end**2
        tilted = 1 / (gamma / C_c + (1 - gamma) / C_u)
        if gamma == 1.0:
            assert abs(ode_ref / tilted - 1) < 1e-6 and abs(sde_ref / tilted - 1) < 1e-6
        else:  # three different laws, each gap far above the tolerance
            assert min(abs(ode_ref - sde_ref), abs(ode_ref - tilted), abs(sde_ref - tilted)) > 0.01 * tilted


def test_gd1b_reverse_sde_samples_have_the_sde_variance():
    """Check GD-1 (b), Monte Carlo: Euler-Maruyama (1000 steps, 20 000 samples) on the CFG field at gamma = 2
    has the reverse-SDE variance, within 4.5 standard errors (s.e. of a variance: V sqrt(2 / n))."""
    vp, n = dl.VP(BMIN, BMAX), 20_000
    model = _gaussian_pair_model(vp, dl.Gaussian(torch.zeros(1), torch.tensor([[0.25]])),
                                 dl.Gaussian(torch.zeros(1), torch.tensor([[1.0]])))
    gen = torch.Generator().manual_seed(0)
    v_start = float(vp.alpha(1.0)) ** 2 * 0.25 + float(vp.sigma(1.0)) ** 2
    x_T = math.sqrt(v_start) * torch.randn(n, 1, generator=gen)
    x = dl.sample_sde(classifier_free_guidance(model, 0, 2.0, null=1), vp, x_T, dl.time_grid(1000, 1.0, 1e-3),
                      generator=gen)
    expected = _variance_ode_reference(2.0, 0.25, 1.0, True)
    assert abs(x.var().item() - expected) < 4.5 * expected * math.sqrt(2 / n), (x.var().item(), expected)


def test_gd2_classifier_guidance_is_the_component_score():
    """Check GD-2: GMM2, VP t = 0.3, the exact noisy classifier w_k: eps_hat - sigma grad log w_k = -sigma s_k
    (the component score, numpy) to 1e-12; at scale 2 the guided score equals grad [log p_t + 2 log w_k] by
    central differences (h = 1e-5) of the numpy log-densities, to 1e-7."""
    vp, t, mixture = dl.VP(BMIN, BMAX), 0.3, dl.gmm2()
    a, s = vp_alpha_sigma(t, BMIN, BMAX)
    pis, mus, covs = gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s)
    x = np.random.default_rng(1).normal(size=(60, 2)) * 2 + np.array([0.5, 0.5])
    _, _, _, sk = gmm_logpdf_score(x, pis, mus, covs)
    eps_model, classifier = dl.exact_prediction(mixture, vp, "eps"), exact_classifier(mixture, vp)
    for k in (0, 1):
        guided = classifier_guidance(eps_model, classifier, k, 1.0, vp, target="eps")(torch.tensor(x), t).numpy()
        assert np.abs(guided - (-s * sk[:, k])).max() < 1e-12

    def log_target(z, k, scale):
        logp, _, w, _ = gmm_logpdf_score(z, pis, mus, covs)
        return logp + scale * np.log(w[:, k])

    h = 1e-5
    for k in (0, 1):
        fd = np.stack([(log_target(x + h * e, k, 2.0) - log_target(x - h * e, k, 2.0)) / (2 * h) for e in np.eye(2)], 1)
        score_model = dl.exact_score(mixture, vp)
        guided = classifier_guidance(score_model, classifier, k, 2.0, vp, target="score")(torch.tensor(x), t).numpy()
        assert np.abs(guided - fd).max() < 1e-7


def test_classifier_gradient_of_logits_is_the_log_softmax_gradient():
    """Logits need not be normalised: grad log softmax(Wx)_y = W_y - sum_k softmax_k W_k (closed form)."""
    W = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, -3.0]])
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(2))
    grad = classifier_gradient(lambda z, t: z @ W.T + 7.0, x, 0.5, 2)
    expected = W[2] - torch.softmax(x @ W.T, 1) @ W
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0)


def test_sde7_class_conditional_scores_and_guided_pf_ode_samples():
    """Check SDE-7: the exact class-conditional score of component k is s + grad log w_k (numpy, 1e-12);
    the PF-ODE (Heun, 200 steps, 20 000 samples) of the CFG field at gamma = 1 samples component 1
    (mean and covariance within 0.03) and gamma = 3 has a smaller covariance trace."""
    vp, mixture, t = dl.VP(BMIN, BMAX), dl.gmm2(), 0.3
    model = exact_class_conditional(mixture, vp, "score")
    assert null_label(model) == 2
    a, s = vp_alpha_sigma(t, BMIN, BMAX)
    x = np.random.default_rng(3).normal(size=(40, 2)) * 2
    *_, sk = gmm_logpdf_score(x, *gmm_t(GMM2["pis"], GMM2["mus"], GMM2["covs"], a, s))
    for k in (0, 1):
        got = model(torch.tensor(x), t, torch.full((40,), k)).numpy()
        assert np.abs(got - sk[:, k]).max() < 1e-12
    n, grid = 20_000, dl.time_grid(200, 1.0, 1e-3)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    traces = {}
    for gamma in (1.0, 3.0):
        field = classifier_free_guidance(model, 0, gamma)
        out = dl.sample_ode(dl.pf_velocity(field, vp), x_T, grid, method="heun")
        if gamma == 1.0:
            err = moment_errors(out, dl.Gaussian(mixture.means[0], mixture.covs[0]))
            assert err["mean"] < 0.03 and err["cov"] < 0.03, err
        traces[gamma] = torch.cov(out.T).trace().item()
    assert traces[3.0] < traces[1.0]


@pytest.mark.parametrize("sampler", ["euler", "heun", "rk4", "dpm1", "dpm2", "em", "pc", "ddpm"])
def test_guided_fields_go_through_every_sampler(sampler):
    """A CFG field (gamma = 1, exact class-conditional eps of GMM2) and a classifier-guided one (scale 1, the exact
    classifier) both sample component 1 with every sampler: mean within 0.1, covariance within 0.15 (4000 samples,
    200 steps; the windows hold the samplers' own discretisation errors, not only Monte Carlo)."""
    vp, mixture = dl.VP(BMIN, BMAX), dl.gmm2()
    eps = exact_class_conditional(mixture, vp, "eps")
    fields = {"cfg": dl.classifier_free_guidance(eps, 0, 1.0),
              "classifier": dl.classifier_guidance(dl.exact_prediction(mixture, vp, "eps"), exact_classifier(mixture, vp),
                                                   0, 1.0, vp, target="eps")}
    component = dl.Gaussian(mixture.means[0], mixture.covs[0])
    gen = torch.Generator().manual_seed(5)
    x_T = torch.randn(4000, 2, generator=gen)
    grid = dl.time_grid(200, 1.0, 1e-3)
    for name, field in fields.items():
        if sampler in ("euler", "heun", "rk4"):
            velocity = dl.pf_velocity(lambda x, t, f=field: dl.convert(f(x, t), "eps", "score", x, t, vp), vp)
            out = dl.sample_ode(velocity, x_T, grid, method=sampler)
        elif sampler.startswith("dpm"):
            log_grid = dl.time_grid(50, 1.0, 1e-3, kind="log_snr", path=vp)
            out = dl.sample(field, vp, x_T, log_grid, method="ddim" if sampler == "dpm1" else "dpm++2m", target="eps").x
        elif sampler in ("em", "pc"):
            score = lambda x, t, f=field: dl.convert(f(x, t), "eps", "score", x, t, vp)
            out = dl.sample_sde(score, vp, x_T, grid, method=sampler, generator=gen)
        else:
            chain = dl.DDPMSchedule.linear(200, 5e-4, 0.1)
            out = dl.ancestral_sample(dl.eps_on_chain(field, chain, vp), chain, x_T, generator=gen)
        err = moment_errors(out, component)
        assert err["mean"] < 0.1 and err["cov"] < 0.15, (sampler, name, err)
