"""Two image models worth showing (not used by a chapter, so not shipped): 32x32 digits and 32x32 procedural images."""
from __future__ import annotations

from functools import partial

import torch

from .. import metrics
from ..budget import pick
from ..datasets import PROCEDURAL_FAMILIES, digits, procedural_images
from ..nets import UNet
from ..paths import VP
from . import FitCall, _frechet_quality, _recipe


# -- image models worth showing -----------------------------------------------------------------------------
# smoke: seconds on a CPU; laptop: a few minutes on a CPU; gpu: about 2-4 minutes each on one H100.
# The UNet has 3 levels (32, 16, 8 pixels); base 64 is 3.2 M parameters, 3.5 GFLOP per image per step.

def _image_settings(budget):
    """(base width, steps, batch size, learning rate) of the two image models."""
    return pick(smoke=(8, 40, 16, 2e-3), laptop=(16, 3000, 32, 1e-3), gpu=(64, 8000, 512, 5e-4), budget=budget)


def _image_call(name, train_images, budget, extra):
    base, steps, batch, lr = _image_settings(budget)
    return FitCall(UNet(1, base=base, mults=(1, 2, 2)), train_images, VP(),
                   dict(target="eps", steps=steps, batch_size=batch, lr=lr, seed=0, name=name), extra)


@_recipe("digits32-unet", "UNet predicting eps on the digits upsampled to 32x32 (1500 train / 297 held out), VP path",
         _frechet_quality(partial(metrics.train_digit_classifier, size=32)), ship=False)
def _digits32_unet(budget):
    images = digits(32)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train_images = images[perm[297:]]
    return _image_call("digits32-unet", train_images, budget, {"held_out": images[perm[:297]], "real": train_images})


@_recipe("procedural-unet", "UNet predicting eps on 32x32 procedural images (blobs, rings, squares, bars), VP path",
         _frechet_quality(partial(metrics.train_procedural_classifier, size=32, families=PROCEDURAL_FAMILIES)),
         ship=False)
def _procedural_unet(budget):
    n_train = pick(smoke=1000, laptop=10_000, gpu=50_000, budget=budget)
    n_eval = pick(smoke=300, laptop=1000, gpu=2000, budget=budget)

    def draw(n, seed):
        return procedural_images(n, size=32, families=PROCEDURAL_FAMILIES, generator=torch.Generator().manual_seed(seed))

    return _image_call("procedural-unet", draw(n_train, 0), budget, {"held_out": draw(n_eval, 1), "real": draw(n_eval, 2)})
