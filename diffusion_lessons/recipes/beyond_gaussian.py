"""Recipes of chapter 13 (beyond Gaussian noise): a restoration UNet on the mean-reverting path, and a model
of positive data on the log-space path of geometric Brownian motion."""
from __future__ import annotations

import torch

from .. import metrics
from ..budget import pick
from ..degradations import DegradedDigits, LinearRestoration, degraded_digits, rmse
from ..nets import TimeMLP, UNet
from ..processes import GBM, MeanReverting, lognormal_mixture2
from ..baselines import sliced_w2_baseline
from . import FitCall, Quality, _claim, _recipe

# The chapter's two processes. Digits live in [-1, 1], so the paper's stationary std 50/255 (for [0, 1]) doubles.
RESTORATION_PROCESS = {"lam": 100 / 255, "T": 100, "schedule": "cosine", "eps": 0.005}
GBM_SIGMA = 0.8


def restoration_process() -> MeanReverting:
    """The IR-SDE of the chapter's restoration model: cosine rates, T = 100, alpha_1 = 0.005, lam = 100/255."""
    return MeanReverting(**RESTORATION_PROCESS)


def _restoration_quality(result, call, budget):
    """RMSE to the clean test digits of one MRS restoration (2nd-order ODE, 10 steps). The baseline is the
    no-learning answer, the degraded input itself; the floor column holds the best linear restoration's RMSE
    (the posterior mean under the moment-matched Gaussian law of the pairs: a reference, not a floor)."""
    from ..restoration import restore

    clean, degraded = degraded_digits("test", 16)
    train_clean, train_degraded = degraded_digits("train", 16, seed=1)
    linear = LinearRestoration(train_clean, train_degraded)
    out = restore(result.ema, restoration_process(), degraded, "mrs", n_steps=10,
                  generator=torch.Generator().manual_seed(0))
    return Quality("RMSE", rmse(out.x.clamp(-1, 1), clean).mean().item(), rmse(linear(degraded), clean).mean().item(),
                   rmse(degraded, clean).mean().item(), floor_name="best linear restoration",
                   baseline_name="degraded input")


@_recipe("ch13-restoration-unet", "UNet that sees the degraded digit, predicting eps on the mean-reverting path of "
         "x - mu (16x16 digits, blur + noise + a 6x6 hole; chapter 13)", _restoration_quality)
def _ch13_restoration(budget):
    from ..restoration import ConditionalDenoising

    # laptop: 215 s of training on a 2-core CPU when shipped (base 32, 6000 steps would take far longer there)
    base, steps, batch = pick(smoke=(8, 300, 32), laptop=(16, 4000, 64), gpu=(64, 30000, 256), budget=budget)
    process = restoration_process()
    return FitCall(UNet(1, base=base, mults=(1, 2), cond_channels=1), DegradedDigits(size=16), process.path,
                   {"objective": ConditionalDenoising(process), "steps": steps, "batch_size": batch, "seed": 0,
                    "name": "ch13-restoration-unet", "progress": False})


def _gbm_quality(result, call, budget):
    """Sliced W2, in log space, of Dale–Langevin samples (500 steps) against exact samples of the log-normal
    mixture; the floor is that of an independent exact set of the same size, the baseline that of the
    moment-matched Gaussian of log X (i.e. the moment-matched log-normal), on the same projections."""
    from ..multiplicative import dale_langevin

    n = pick(smoke=2000, laptop=4000, gpu=10000, budget=budget)
    law, gbm = lognormal_mixture2(), GBM(sigma=GBM_SIGMA)
    starts = gbm_prior_sample(law.sample(20000, generator=torch.Generator().manual_seed(6)), gbm, n, 500)
    x = dale_langevin(gbm_model_score(result.ema, gbm), gbm, starts, 500, generator=torch.Generator().manual_seed(3)).x
    reference = law.sample(n, generator=torch.Generator().manual_seed(1))
    proj = torch.Generator().manual_seed(0)
    floor = metrics.sliced_w2(law.sample(n, generator=torch.Generator().manual_seed(2)), reference, generator=proj)
    baseline = sliced_w2_baseline(law, reference, n, generator=torch.Generator().manual_seed(5))
    return Quality("SW2", metrics.sliced_w2(torch.log(x), reference, generator=torch.Generator().manual_seed(0)), floor,
                   baseline)


def gbm_model_score(model, gbm: GBM, t_min: float = 1e-3):
    """score(x, tau) = grad_x log p_tau(x) of a network trained on the log-space path of `gbm`, queried at
    max(tau, t_min): the samplers' last step asks for tau = 0, where sigma = 0 and a noise prediction says
    nothing (fit trains on t >= t_min = 1e-3)."""
    score = gbm.score_of(model)

    def clamped(x, tau):
        return score(x, max(float(tau), t_min))

    return clamped


def gbm_prior_sample(log_data: torch.Tensor, gbm: GBM, n: int, n_steps: int, seed: int = 4) -> torch.Tensor:
    """n positive starts at tau = (n_steps - 1) / n_steps: the log-normal whose log has the mean and covariance
    of the log data noised to that time (the authors fit such a log-normal; exact for log-normal data)."""
    tau = (n_steps - 1) / n_steps
    mean = log_data.mean(0) + gbm.log_drift * tau
    cov = torch.cov(log_data.T) + gbm.sigma**2 * tau * torch.eye(log_data.shape[1], dtype=log_data.dtype)
    z = torch.randn(n, log_data.shape[1], generator=torch.Generator().manual_seed(seed), dtype=log_data.dtype)
    return torch.exp(mean + z @ torch.linalg.cholesky(cov).T)


@_recipe("ch13-gbm-lognormal", "TimeMLP predicting eps on the log-space (Lamperti) path of geometric Brownian motion "
         "(s = 0.8, m = s^2/2), 2-D log-normal mixture (chapter 13)", _gbm_quality)
def _ch13_gbm(budget):
    steps = pick(smoke=400, laptop=4000, gpu=20000, budget=budget)
    return FitCall(TimeMLP(2).float(), lognormal_mixture2(), GBM(sigma=GBM_SIGMA).path,
                   {"target": "eps", "steps": steps, "seed": 0, "name": "ch13-gbm-lognormal", "progress": False})


_claim("ch13-restoration-unet", 1.2)  # RMSE below the degraded input's (the no-learning answer) by 1.2
_claim("ch13-gbm-lognormal", 3)  # sliced W2 below the moment-matched log-normal's by 3
