"""Chapter 11's recipes: what they build (without training), the digit split and the image sampler helper."""
import torch

from diffusion_lessons import recipes
from diffusion_lessons.nets import UNet
from diffusion_lessons.paths import VP
from diffusion_lessons.recipes.guidance import (
    digits16_split,
    sample_images,
    sine_series,
    snr_plus_one,
)


def test_chapter_11_recipes_build_conditional_models_with_labelled_data():
    gmm = recipes.fit_call("ch11-cond-gmm2", "smoke")
    assert gmm.model.config["num_classes"] == 2 and gmm.kwargs["label_dropout"] == 0.2
    x, y = gmm.data.sample(10, generator=torch.Generator().manual_seed(0), return_labels=True)
    assert x.shape == (10, 2) and set(y.tolist()) <= {0, 1}
    digits = recipes.fit_call("ch11-cond-digits16", "laptop")
    assert isinstance(digits.model, UNet) and digits.model.config["num_classes"] == 10
    images, labels = digits.data
    assert images.shape == (1500, 1, 16, 16) and labels.shape == (1500,) and digits.kwargs["label_dropout"] == 0.1
    sines = recipes.fit_call("ch11-sines", "smoke")
    assert sines.kwargs["target"] == "x0" and sines.kwargs["weighting"] is snr_plus_one
    assert sines.data.config() == sine_series().config()


def test_the_digit_split_is_disjoint_and_complete():
    train_x, _, held_x, held_y = digits16_split()
    assert len(train_x) + len(held_x) == 1797 and len(held_x) == 297
    flat = torch.cat([train_x, held_x]).flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(torch.unique(flat[:1500], dim=0)) + len(torch.unique(flat[1500:], dim=0))
    assert set(held_y.tolist()) == set(range(10))


def test_sample_images_clips_and_follows_the_field():
    """A field predicting a constant x0 = v: DPM-Solver++ lands exactly on alpha_end v + (sigma_end / sigma_1)
    (x_T - alpha_1 v) (its data prediction is constant); the prediction and the images are clipped to [-1, 1]."""
    vp = VP()
    x_T = vp.sigma(1.0).item() * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a1, s1, a0, s0 = (v.item() for v in (vp.alpha(1.0), vp.sigma(1.0), vp.alpha(1e-3), vp.sigma(1e-3)))
    for value in (0.5, 3.0):
        images = sample_images(lambda x, t, v=value: torch.full_like(x, v), 4, steps=5, target="x0", seed=0)
        v = min(value, 1.0)  # the data prediction itself is clipped at every step
        expected = (a0 * v + s0 / s1 * (x_T - a1 * v)).clamp(-1, 1)
        assert images.shape == (4, 1, 16, 16) and torch.allclose(images, expected, atol=1e-5)
