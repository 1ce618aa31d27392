"""What the noisy point x_t says about the clean one: exact posteriors for guidance and inverse problems.

Guidance and inverse-problem solvers add a likelihood term to the score (Song et al. 2021, §5):

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),

with y a class (classifier guidance) or a measurement y = A x0 + noise (inpainting, denoising,
forecasting). For a Gaussian-mixture prior both terms are exact, which is what this module provides:

* ``exact_classifier``: the noisy classifier p_t(y = k | x) = w_k(x, t), the responsibility of
  component k in the noised mixture;
* ``exact_likelihood_score``: grad_x log p_t(y | x_t) for y = A x0 + noise, as the score of the noised
  exact posterior minus the score of the noised prior (the posterior is ``GaussianMixture.posterior``);
* ``tweedie_covariance``: the second-order Tweedie formula (Efron 2011; the idea behind STSL, Rout et
  al. 2024), Cov[x0 | x_t] = sigma_t^2 / alpha_t^2 (I + sigma_t^2 grad^2 log p_t(x_t));
* ``score_jacobian``: grad^2 log p_t of any score field (a network) by automatic differentiation;
* ``score_difference_trace``: the trace of that Hessian from score differences along random
  probes, (1/c) E[eps^T (s(x + c eps) - s(x))], the O(1)-cost estimator STSL builds on. Its bias
  depends on the probe size c, and not monotonically (check GD-5b).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .distributions import GaussianMixture, _time_args, exact_prediction, exact_score
from .paths import Path, as_time

__all__ = [
    "exact_class_conditional",
    "exact_classifier",
    "exact_likelihood_score",
    "score_difference_trace",
    "score_jacobian",
    "tweedie_covariance",
]

Field = Callable[[torch.Tensor, object], torch.Tensor]


def exact_classifier(dist: GaussianMixture, path: Path) -> Field:
    """classifier(x, t) -> log p_t(y = k | x) [N, K], the classes being the mixture's components.

    log w_k = log pi_k + log N(x; alpha_t mu_k, C_k(t)) - log p_t(x) (a log-softmax, so it can be used
    wherever a classifier's logits are). Its gradient is s_k - s, the component score minus the score.
    """

    def classifier(x, t):
        _, a, s = _time_args(dist, path, x, t, "exact_classifier")
        return torch.log_softmax(dist._parts(x, a, s)[0], dim=1)

    return classifier


def exact_likelihood_score(dist: GaussianMixture, path: Path, A, y, noise_std: float) -> Field:
    """grad_x log p_t(y | x_t = x) [N, D] for the measurement y = A x0 + noise_std n (A [M, D], y [M]).

    Bayes' rule at every t: p_t(y | x) = p_t(x | y) p(y) / p_t(x), so the gradient is the score of the
    noised posterior minus the score of the noised prior, both exact for a mixture prior. Adding it to
    the prior score gives the posterior score: a sampler then draws exactly from p(x0 | y).
    """
    prior_score = exact_score(dist, path)
    posterior_score = exact_score(dist.posterior(A, y, noise_std), path)

    def likelihood_score(x, t):
        return posterior_score(x, t) - prior_score(x, t)

    return likelihood_score


def tweedie_covariance(hessian: Field, path: Path) -> Field:
    """covariance(x, t) = Cov[x0 | x_t = x] = sigma_t^2 / alpha_t^2 (I + sigma_t^2 H(x, t))  [N, D, D].

    H = grad^2 log p_t, e.g. ``dl.exact_score_jacobian(mixture, path)`` or ``score_jacobian(network)``.
    Second-order Tweedie: differentiating E[x0 | x_t] = (x_t + sigma^2 grad log p_t) / alpha once more in
    x_t gives Cov[x0 | x_t] alpha / sigma^2 (check GD-5a). Exact for the exact Hessian, whatever p_0.
    """

    def covariance(x, t):
        tt = as_time(t, x)
        a, s = path.alpha(tt), path.sigma(tt)
        a, s = (torch.as_tensor(v, dtype=x.dtype).reshape(-1, 1, 1) for v in (a, s))
        eye = torch.eye(x[0].numel(), dtype=x.dtype, device=x.device)
        return s**2 / a**2 * (eye + s**2 * hessian(x, t))

    return covariance


def score_jacobian(score: Field) -> Field:
    """hessian(x, t) -> d score / d x [N, D, D] of a field on vectors x [N, D], by D backward passes.

    Samples do not interact, so row i of every sample's Jacobian is the gradient of sum_n score_i(x_n).
    Works inside torch.no_grad() (it switches gradients on); the result is detached.
    """

    def hessian(x, t):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = score(xg, t)
            rows = [torch.autograd.grad(out[:, i].sum(), xg, retain_graph=i < x.shape[1] - 1)[0]
                    for i in range(x.shape[1])]
        return torch.stack(rows, dim=1).detach()

    return hessian


def score_difference_trace(score: Field, x: torch.Tensor, t, c: float, probes: torch.Tensor,
                           weights: torch.Tensor | None = None) -> torch.Tensor:
    """(1/c) sum_j w_j probe_j . (s(x + c probe_j, t) - s(x, t))  [N]: an estimate of tr grad^2 log p_t(x).

    probes [P, ...] (the shape of one sample), e.g. P standard normal draws with weights 1/P (the
    default), or Gauss-Hermite nodes with their weights for the exact expectation over eps ~ N(0, I).
    As c -> 0 the expectation is tr H(x) (E[eps eps^T] = I); at finite c it is the trace of H averaged
    over a Gaussian blob of radius c, exact for every c when p_t is Gaussian (H constant) and biased
    otherwise, by an amount that need not shrink monotonically with c (check GD-5b).
    """
    if not c > 0:
        raise ValueError(f"the probe size c must be positive; got {c}")
    n, p = x.shape[0], probes.shape[0]
    w = torch.full((p,), 1.0 / p, dtype=x.dtype, device=x.device) if weights is None else weights.to(x)
    moved = (x[:, None] + c * probes.to(x)[None]).reshape(n * p, *x.shape[1:])
    tt = as_time(t, x)
    t_moved = tt.repeat_interleave(p) if tt.dim() else t
    diff = score(moved, t_moved).reshape(n, p, -1) - score(x, t).reshape(n, 1, -1)
    return (diff * probes.to(x).reshape(1, p, -1)).sum(-1) @ w / c


def exact_class_conditional(dist: GaussianMixture, path: Path, target: str = "eps"):
    """model(x, t, y) -> the exact prediction of `target` for p_t(x | y): the classes are the mixture's
    components (y = k: component k alone), and y = K (= dist.n_components, the null label) or None
    is the whole mixture. What a class-conditional network trained with label dropout should learn;
    model.config["num_classes"] = K, so it can be guided like one.
    """
    K = dist.n_components
    parts = [GaussianMixture(dist.weights[k:k + 1], dist.means[k:k + 1], dist.covs[k:k + 1]) for k in range(K)]
    fields = [exact_prediction(p, path, target) for p in parts] + [exact_prediction(dist, path, target)]

    def model(x, t, y=None):
        if y is None:
            return fields[K](x, t)
        y = torch.as_tensor(y, device=x.device).long().expand(x.shape[0])
        if bool(((y < 0) | (y > K)).any()):
            raise ValueError(f"labels must lie in 0..{K} ({K} = no class); got {int(y.min())}..{int(y.max())}")
        tt = as_time(t, x)
        out = torch.empty_like(x)
        for k in y.unique().tolist():
            rows = (y == k).nonzero().squeeze(1)
            out[rows] = fields[k](x[rows], tt[rows] if tt.dim() else t)
        return out

    model.config = {"class": "exact_class_conditional", "num_classes": K}
    return model
