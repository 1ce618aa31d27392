"""No-learning baselines: what a model that learned only the data's mean and covariance would score.

A claim about a trained model ("its samples match the data", "it learned the field") means little
unless a model that learned nothing of interest would fail it. The natural such model is the
moment-matched Gaussian N(m, C) of the data:

* for samples, draw from N(m, C) and score them exactly as the model's samples are scored;
* for predicted fields, the exact field of N(m, C) is the best *affine* predictor: E[eps | x_t] is
  linear in x_t for Gaussian data, and linear regression depends on the data only through m and C,
  so no network restricted to affine functions of x_t can have a smaller mean squared error.

`beats_baseline` states a claim as "lower than the baseline by at least a factor k", prints the
measured value, the baseline and the factor, and raises AssertionError (in a chapter: a failed
build) when the claim does not hold.
"""
from __future__ import annotations

import math

import torch

from . import metrics
from .distributions import Gaussian, exact_prediction

__all__ = ["moment_matched_gaussian", "gaussian_samples", "sliced_w2_baseline", "linear_field",
           "beats_baseline"]


def moment_matched_gaussian(data, dtype=torch.float64) -> Gaussian:
    """N(m, C) with the mean and covariance of `data`: samples [N, D] (flattened to [N, D]) or a
    distribution with mean() and covariance() (e.g. dl.GaussianMixture, whose exact moments are used)."""
    if isinstance(data, torch.Tensor):
        x = data.detach().reshape(len(data), -1).to(dtype)
        if len(x) < 2:
            raise ValueError(f"moment_matched_gaussian needs at least 2 samples; got {len(x)}")
        mean, cov = x.mean(0), torch.atleast_2d(torch.cov(x.T))
    elif callable(getattr(data, "mean", None)) and callable(getattr(data, "covariance", None)):
        mean, cov = data.mean().to(dtype), data.covariance().to(dtype)
    else:
        raise ValueError(f"data must be samples [N, D] or a distribution with mean() and covariance(); "
                         f"got {type(data).__name__}")
    return Gaussian(mean, cov)


def gaussian_samples(data, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """n samples [n, D] of the moment-matched Gaussian of `data` (see moment_matched_gaussian)."""
    return moment_matched_gaussian(data, dtype).sample(int(n), generator=generator)


def sliced_w2_baseline(data, reference: torch.Tensor, n: int | None = None, generator: torch.Generator | None = None,
                       n_projections: int = 256, projection_seed: int = 0) -> float:
    """Sliced W2 between n samples of the moment-matched Gaussian of `data` and `reference` [M, D].

    Compare with metrics.sliced_w2(model_samples, reference) computed with the same n and the same
    projections (generator seeded with projection_seed), so both numbers carry the same sampling noise.
    """
    reference = reference.reshape(len(reference), -1).double()
    n = len(reference) if n is None else int(n)
    x = gaussian_samples(data, n, generator)
    return metrics.sliced_w2(x, reference, n_projections, generator=torch.Generator().manual_seed(projection_seed))


def linear_field(data, path, target: str = "eps"):
    """The best affine prediction of `target` from x_t at each t: the exact field of the
    moment-matched Gaussian of `data`, a callable field(x, t) (float64)."""
    return exact_prediction(moment_matched_gaussian(data), path, target)


def beats_baseline(name: str, value: float, baseline: float, factor: float, higher_is_better: bool = False) -> float:
    """Assert that `value` beats the no-learning `baseline` by at least `factor`, and print both.

    Lower is better by default (errors, distances): the claim is value * factor <= baseline. With
    higher_is_better (accuracies, likelihoods) it is value >= factor * baseline. Returns the achieved
    factor (baseline / value, or value / baseline).
    """
    value, baseline, factor = float(value), float(baseline), float(factor)
    if not (math.isfinite(value) and math.isfinite(baseline)) or factor < 1:
        raise ValueError(f"{name}: value and baseline must be finite and factor >= 1; "
                         f"got {value}, {baseline}, {factor}")
    if higher_is_better:
        achieved = value / baseline if baseline > 0 else math.inf
    else:
        achieved = baseline / value if value > 0 else math.inf
    better = "higher" if higher_is_better else "lower"
    print(f"{name}: {value:.4g} vs no-learning baseline {baseline:.4g}: {achieved:.3g}x {better} "
          f"(required: at least {factor:g}x)")
    assert achieved >= factor, (f"{name}: {value:.4g} does not beat the no-learning baseline {baseline:.4g} "
                                f"by the required factor {factor:g} (achieved {achieved:.3g}x)")
    return achieved
