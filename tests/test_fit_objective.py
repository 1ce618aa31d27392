"""fit(..., objective=...): a pluggable training loss that leaves the default loss untouched."""
import pytest
import torch

from diffusion_lessons.distributions import gmm2
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.objectives import draw_noise, loss
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import fit

SMALL = {"steps": 30, "batch_size": 64, "lr": 3e-3, "progress": False}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))


class DefaultLoss:
    """The default eps loss written as an objective: training with it must be the same arithmetic."""

    def __init__(self, path, decay=None, tag=0):
        self.path, self.decay, self.tag, self.seen = path, decay, tag, []

    def config(self):
        return {"tag": self.tag}

    def draw(self, x0, generator, step, steps):
        self.seen.append((step, steps))
        return draw_noise(x0, generator)

    def loss(self, model, ema, x0, u, eps):
        assert not any(p.requires_grad for p in ema.parameters())
        return loss(model, x0, self.path, "eps", noise=(u, eps))

    def ema_decay(self, step, steps):
        return self.decay


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_an_objective_equal_to_the_default_loss_trains_the_same_weights():
    path = make_path("vp")
    plain = fit(TimeMLP(2, hidden=16), gmm2(), path, cache=False, **SMALL)
    objective = DefaultLoss(path)
    hooked = fit(TimeMLP(2, hidden=16), gmm2(), path, cache=False, objective=objective, **SMALL)
    assert torch.equal(_weights(plain.model), _weights(hooked.model))
    assert torch.equal(_weights(plain.ema), _weights(hooked.ema))
    assert objective.seen == [(k, SMALL["steps"]) for k in range(1, SMALL["steps"] + 1)]


def test_the_objective_sets_the_ema_rate():
    path = make_path("vp")
    result = fit(TimeMLP(2, hidden=16), gmm2(), path, cache=False, objective=DefaultLoss(path, decay=0.0), **SMALL)
    assert torch.equal(_weights(result.model), _weights(result.ema))  # decay 0: the EMA copy is the model


def test_the_objective_config_joins_the_cache_key():
    path = make_path("vp")
    first = fit(TimeMLP(2, hidden=16), gmm2(), path, objective=DefaultLoss(path, tag=1), **SMALL)
    again = fit(TimeMLP(2, hidden=16), gmm2(), path, objective=DefaultLoss(path, tag=1), **SMALL)
    other = fit(TimeMLP(2, hidden=16), gmm2(), path, objective=DefaultLoss(path, tag=2), **SMALL)
    plain = fit(TimeMLP(2, hidden=16), gmm2(), path, **SMALL)
    assert again.from_cache and again.checkpoint == first.checkpoint
    assert not other.from_cache and len({first.checkpoint, other.checkpoint, plain.checkpoint}) == 3
    assert first.config["objective"]["config"] == {"tag": 1} and "objective" not in plain.config


def test_an_object_without_the_methods_is_refused():
    with pytest.raises(ValueError, match="objective must have the methods config, draw, loss and ema_decay"):
        fit(TimeMLP(2, hidden=16), gmm2(), make_path("vp"), objective=object(), **SMALL)
