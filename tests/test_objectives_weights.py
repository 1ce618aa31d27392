"""objectives.sigma_squared_weight: Song et al.'s weight sigma_t^2 on the score loss, shared by chapters 3 and 4."""
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import recipes, training
from diffusion_lessons.objectives import loss, sigma_squared_weight
from diffusion_lessons.paths import make_path

PATHS = ("vp", "subvp", "ve", "rf", "cosine")


@pytest.mark.parametrize("name", PATHS)
def test_it_is_sigma_squared(name):
    path = make_path(name)
    t = torch.linspace(0.01, 0.99, 17, dtype=torch.float64)
    assert torch.allclose(sigma_squared_weight(path)(t), path.sigma(t) ** 2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", PATHS)
def test_the_weighted_score_loss_is_the_eps_loss(name):
    """sigma^2 |s_hat + eps / sigma|^2 = |eps_hat - eps|^2 for eps_hat = -sigma s_hat, on the same draws."""
    path = make_path(name)
    x0 = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def score_model(x, t):
        return -x / (1 + t[:, None])  # any field will do

    def eps_model(x, t):
        return -path.sigma(t)[:, None] * score_model(x, t)

    weighted = loss(score_model, x0, path, "score", weighting=sigma_squared_weight(path),
                    generator=torch.Generator().manual_seed(1))
    plain_eps = loss(eps_model, x0, path, "eps", generator=torch.Generator().manual_seed(1))
    assert abs(weighted.item() - plain_eps.item()) < 1e-12 * plain_eps.item()


def test_it_keeps_the_cache_key_of_the_shipped_weights():
    """fit names a callable weighting in its cache key; the shipped models were trained with the chapters'
    notebook function `__main__.sigma_squared`, which the recipes name the same way."""
    weight = sigma_squared_weight(dl.VP())
    assert training._qualname(weight) == "__main__.sigma_squared"
    assert training._qualname(weight) == training._qualname(recipes._sigma_squared(dl.VP()))
    assert dl.objectives.sigma_squared_weight is sigma_squared_weight
