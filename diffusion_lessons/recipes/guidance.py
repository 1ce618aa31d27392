"""Recipes of chapter 11 (guidance and inverse problems): two class-conditional models, a time-series model and
the noise-conditional digit classifier of classifier guidance.

* ``ch11-cond-gmm2``: TimeMLP predicting eps on GMM2 with its components as classes (label dropout 0.2);
* ``ch11-cond-digits16``: UNet predicting eps on the 16 x 16 digits with their labels (1500 train / 297
  held out, the split of the image recipes), label dropout 0.1;
* ``ch11-sines``: an unconditional TimeMLP predicting x0 on random sums of sines (timeseries.SineSeries);
* ``ch11-noisy-digit-classifier``: an ImageTimeClassifier of the digits' labels at every noise level, trained by
  classifiers.fit_noisy_classifier instead of `fit` (cross-entropy on noised training digits).

Their laptop configurations train in about 1, 4, 1 and 1 minutes on two CPU cores; the weights are shipped.
"""
from __future__ import annotations

import torch

from .. import metrics
from ..budget import pick
from ..classifiers import ImageTimeClassifier, fit_noisy_classifier
from ..datasets import digits
from ..distributions import gmm2
from ..nets import TimeMLP, UNet
from ..paths import VP
from ..timeseries import SineSeries
from . import FitCall, Quality, _claim, _draw_gmm2, _fd_floor_and_baseline, _recipe, _sliced_w2_quality

HELD_OUT = 297  # digits kept out of training: the first 297 of a permutation drawn with seed 0


def digits16_split():
    """(train images [1500, 1, 16, 16], train labels, held-out images [297, 1, 16, 16], held-out labels)."""
    images, labels = digits(16, return_labels=True)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    held, train = perm[:HELD_OUT], perm[HELD_OUT:]
    return images[train], labels[train], images[held], labels[held]


def sine_series() -> SineSeries:
    """The chapter's series: 32 points, periods 16 and 6 with amplitudes 1 and 0.5, noise 0.2."""
    return SineSeries(length=32, periods=(16.0, 6.0), amplitudes=(1.0, 0.5), noise_std=0.2)


@_recipe("ch11-cond-gmm2", "class-conditional TimeMLP predicting eps on GMM2, classes = components, label dropout "
         "0.2, VP path (chapter 11)", _sliced_w2_quality(_draw_gmm2))
def _ch11_cond_gmm2(budget):
    steps = pick(smoke=1500, laptop=6000, gpu=20_000, budget=budget)
    return FitCall(TimeMLP(2, num_classes=2), gmm2(), VP(),
                   {"target": "eps", "steps": steps, "seed": 0, "label_dropout": 0.2, "name": "ch11-cond-gmm2",
                    "progress": False})


def _conditional_frechet_quality(result, call, budget):
    """evaluate() of the class-conditional digit model: the classifier Fréchet distance to the held-out digits of
    n class-conditional samples (sample_images, DPM-Solver++(2M)) whose labels are those of n training digits
    drawn at random, so that the samples pooled over their labels follow the data law; floor: those n training
    digits; baseline: as many samples of the moment-matched Gaussian of the training digits, clipped to [-1, 1]."""
    (real, labels), held_out = call.data, call.extra["held_out"]
    n = min(len(real), pick(smoke=200, laptop=600, gpu=1500, budget=budget))
    steps = pick(smoke=6, laptop=25, gpu=25, budget=budget)
    rows = torch.randperm(len(real), generator=torch.Generator().manual_seed(3))[:n]
    model, y = result.ema, labels[rows].to(next(result.ema.parameters()).device)
    x = sample_images(lambda z, t: model(z, t, y), n, steps=steps, seed=0).cpu()
    clf = metrics.train_digit_classifier(16)
    return Quality("FD", metrics.classifier_frechet_distance(x, held_out, clf),
                   *_fd_floor_and_baseline(real, held_out, n, clf))  # the floor: the digits whose labels were used


@_recipe("ch11-cond-digits16", "class-conditional UNet predicting eps on the 16x16 digits (1500 train / 297 held out), "
         "label dropout 0.1, VP path (chapter 11; FD of class-conditional samples, labels as in the training set)",
         _conditional_frechet_quality)
def _ch11_cond_digits16(budget):
    # laptop: base 16 (as chapter 6's UNet), about 0.1 s a step of 128 on two CPU cores: 2000 steps in 3-4 minutes
    base, steps, batch, lr = pick(smoke=(16, 300, 64, 2e-3), laptop=(16, 2000, 128, 2e-3),
                                  gpu=(64, 30_000, 256, 5e-4), budget=budget)
    x, y, held_x, _ = digits16_split()
    return FitCall(UNet(1, base=base, mults=(1, 2), num_classes=10), (x, y), VP(),
                   {"target": "eps", "steps": steps, "batch_size": batch, "lr": lr, "seed": 0, "label_dropout": 0.1,
                        "name": "ch11-cond-digits16", "progress": False}, {"held_out": held_x, "real": x})


def snr_plus_one(t):
    """The weight 1 + alpha^2 / sigma^2 = 1 / sigma^2 (VP) on the x0 error: the eps loss at low noise, the x0
    loss at high noise (Salimans & Ho's v-prediction weighting)."""
    return 1 / VP().sigma(t) ** 2


@_recipe("ch11-sines", "TimeMLP(32, hidden 256) predicting x0 (weight 1 + SNR) on random sums of sines, VP path "
         "(chapter 11)", _sliced_w2_quality(lambda n, generator: sine_series().sample(n, generator=generator)))
def _ch11_sines(budget):
    # x0-prediction: guidance differentiates x0_hat, which an eps-network only gives as (x - sigma eps) / alpha,
    # multiplying its errors by 1 / alpha (150 at t = 1 on the VP path)
    steps = pick(smoke=1500, laptop=8000, gpu=30_000, budget=budget)
    return FitCall(TimeMLP(32, hidden=256, depth=3), sine_series(), VP(),
                   {"target": "x0", "weighting": snr_plus_one, "steps": steps, "seed": 0, "name": "ch11-sines",
                    "progress": False})


# The times at which the noisy classifier is scored (held-out error, mean over the two): signal-to-noise ratio
# alpha^2 / sigma^2 above 0.5 on the VP path. Later (chapter 11 also prints t = 0.6, 0.9) the noise hides the digit
# from any classifier, so the error there says little about what training achieved.
CLASSIFIER_TIMES = (0.05, 0.3)


def _noisy_classifier_quality(result, call, budget):
    """evaluate() of the noise-conditional classifier: its error on the 297 held-out digits, noised once per time
    (seed 0) at CLASSIFIER_TIMES, averaged over the times. Floor: the clean-digit classifier's error on its own
    held-out digits (metrics.train_digit_classifier; noise only removes information); no-learning baseline: the
    error of always answering the training set's most frequent label."""
    from ..classifiers import classifier_accuracy

    _, y = call.data
    held_x, held_y = call.extra["held_out"]
    error = sum(1 - classifier_accuracy(result.ema, held_x, held_y, call.path, t) for t in CLASSIFIER_TIMES)
    majority = int(torch.bincount(y).argmax())
    return Quality("error", error / len(CLASSIFIER_TIMES), 1 - metrics.train_digit_classifier(16).test_accuracy,
                   float((held_y != majority).double().mean()), floor_name="clean-digit classifier",
                   baseline_name="majority label")


@_recipe("ch11-noisy-digit-classifier", "noise-conditional ImageTimeClassifier of the 16x16 digits' labels on the VP "
         "path (1500 train / 297 held out), for classifier guidance (chapter 11; held-out error at t = 0.05 and 0.3)",
         _noisy_classifier_quality, trainer=fit_noisy_classifier)
def _ch11_noisy_digit_classifier(budget):
    # laptop: about 45 s on two CPU cores, 70 s on one
    base, steps = pick(smoke=(16, 300), laptop=(16, 800), gpu=(32, 10_000), budget=budget)
    x, y, held_x, held_y = digits16_split()
    return FitCall(ImageTimeClassifier(1, 10, base=base), (x, y), VP(),
                   {"target": "label", "steps": steps, "batch_size": 128, "seed": 0,
                    "name": "ch11-noisy-digit-classifier"}, {"held_out": (held_x, held_y)})


def sample_images(field, n: int, steps: int = 20, seed: int = 0, shape=(1, 16, 16), path=None, target: str = "eps"):
    """n images [n, *shape] in [-1, 1] from a field(x, t) predicting `target` (e.g. a guided one, whose labels
    fix n): DPM-Solver++(2M) on a log-SNR grid from t = 1 to 1e-3, x0_hat clipped to [-1, 1] at every step
    (as recipes.image_samples does for a network). Gradients stay available to fields that need them."""
    from ..paths import convert
    from ..sampling import sample, time_grid

    path = VP() if path is None else path
    grid = time_grid(steps, 1.0, 1e-3, kind="log_snr", path=path)
    x = float(path.sigma(1.0)) * torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))

    def clipped_x0(z, t):
        return convert(field(z, t), target, "x0", z, t, path).clamp(-1, 1)

    with torch.no_grad():
        return sample(clipped_x0, path, x, grid, method="dpm++2m", target="x0").x.clamp(-1, 1)


_claim("ch11-cond-gmm2", 3)
_claim("ch11-cond-digits16", 2)
_claim("ch11-noisy-digit-classifier", 5)
_claim("ch11-sines", None, "the series are exactly Gaussian (sines with Gaussian amplitudes plus white noise), so the "
       "moment-matched Gaussian is the data law itself and no model can beat it; chapter 11 scores the model's "
       "forecasts against persistence and climatology instead")
