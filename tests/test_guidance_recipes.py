"""Chapter 11's recipes: what they build (without training), the digit split and the image sampler helper."""
import pytest
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


def test_the_noisy_classifier_recipe_trains_through_its_own_trainer(tmp_path, monkeypatch):
    """ch11-noisy-digit-classifier is not a `fit` run: recipes.train runs classifiers.fit_noisy_classifier, whose
    FitResult carries the run configuration (target "label") and comes from the cache the second time."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    first = recipes.train("ch11-noisy-digit-classifier", "smoke", steps=3)
    assert not first.from_cache and first.model is first.ema and first.history["step"][-1] == 3
    assert first.config["target"] == "label" and first.config["model"]["class"] == "ImageTimeClassifier"
    again = recipes.train("ch11-noisy-digit-classifier", "smoke", steps=3)
    assert again.from_cache and again.config == first.config
    assert all(torch.equal(a, b) for a, b in zip(first.model.parameters(), again.model.parameters()))
    with pytest.raises(ValueError, match="predicts the label"):
        recipes.train("ch11-noisy-digit-classifier", "smoke", steps=3, target="eps")


def test_a_classifier_that_learned_nothing_fails_the_claim(tmp_path, monkeypatch):
    """The classifier's claim (held-out error 5x below always answering the majority label) fails for 3 steps of
    training, i.e. a classifier that has learned nothing; the quality names its two references."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    untrained = recipes.train("ch11-noisy-digit-classifier", "smoke", steps=3)
    quality = recipes.evaluate("ch11-noisy-digit-classifier", untrained, "smoke")
    holds, line = recipes.get("ch11-noisy-digit-classifier").claim.check(quality)
    assert not holds and "majority label" in line, line
    assert 0.5 < quality.value <= 1 and 0 < quality.floor < 0.1 and 0.85 < quality.baseline < 0.95
    assert "(clean-digit classifier " in str(quality) and ", majority label " in str(quality)
