"""fit with class labels: labelled data, label dropout (Ho & Salimans 2022), the cache key, bad input."""
import math

import pytest
import torch

from diffusion_lessons.distributions import GaussianMixture, exact_prediction, gmm2
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.paths import VP
from diffusion_lessons.train_step import batches, drop_labels
from diffusion_lessons.training import fit

SMALL = {"steps": 30, "batch_size": 64, "lr": 3e-3, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread_and_a_private_cache")  # tests/conftest.py


def _labelled(n=2000, seed=0):
    x, y = gmm2().sample(n, generator=torch.Generator().manual_seed(seed), return_labels=True)
    return x.float(), y


def test_label_dropout_replaces_labels_by_the_null_label_at_the_stated_rate():
    n, p, k = 200_000, 0.3, 10
    y = torch.randint(k, (n,), generator=torch.Generator().manual_seed(0))
    out = drop_labels(y, p, k, torch.Generator().manual_seed(1))
    dropped = out == k
    rate, se = dropped.double().mean().item(), math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) < 4.5 * se, (rate, p, se)
    assert torch.equal(out[~dropped], y[~dropped])  # the kept labels are untouched
    assert not bool((drop_labels(y, 0.0, k, torch.Generator()) == k).any())
    assert bool((drop_labels(y, 1.0, k, torch.Generator()) == k).all())


@pytest.mark.parametrize("form", ["pair", "sampler", "callable"])
def test_batches_keep_each_label_with_its_sample(form):
    """x[:, 0] carries the label: every batch must pair them as the data do."""
    n = 500
    y = torch.randint(3, (n,), generator=torch.Generator().manual_seed(0))
    x = torch.stack([y.float(), torch.randn(n, generator=torch.Generator().manual_seed(1))], 1)

    def draw(m, generator):
        rows = torch.randint(n, (m,), generator=generator)
        return x[rows], y[rows]

    class Sampler:
        def sample(self, m, generator=None, return_labels=False):
            assert return_labels, "a class-conditional run must ask the sampler for labels"
            return draw(m, generator)

    data = {"pair": (x, y), "sampler": Sampler(), "callable": draw}[form]
    next_batch, _ = batches(data, 64, torch.device("cpu"), torch.float32, seed=0, steps=5, num_classes=3)
    for _ in range(5):
        xb, yb = next_batch()
        assert xb.shape == (64, 2) and yb.shape == (64,) and yb.dtype == torch.int64
        assert torch.equal(xb[:, 0], yb.float())


def test_a_conditional_model_learns_each_class_and_the_null_label_the_mixture():
    """Classes = GMM2's components. With label dropout one network learns the noise predictor of each
    component (y = k) and of the whole mixture (y = null); each is compared with the exact one, relative
    to the gap between the exact conditional and unconditional predictors it has to tell apart."""
    vp, mixture = VP(), gmm2()
    result = fit(TimeMLP(2, hidden=64, num_classes=2), mixture, vp, steps=1500, batch_size=256, lr=3e-3,
                 label_dropout=0.2, cache=False, progress=False)
    model, t, gen = result.ema, 0.3, torch.Generator().manual_seed(2)
    exact_mix = exact_prediction(mixture, vp, "eps")
    for k in range(2):
        component = GaussianMixture(mixture.weights[k:k + 1], mixture.means[k:k + 1], mixture.covs[k:k + 1])
        x_t, _ = vp.sample(component.sample(4000, generator=gen), t, generator=gen)
        exact_k, exact_u = exact_prediction(component, vp, "eps")(x_t, t), exact_mix(x_t, t)
        with torch.no_grad():
            cond = model(x_t.float(), t, torch.full((4000,), k)).double()
            null = model(x_t.float(), t, torch.full((4000,), 2)).double()
        gap = (exact_k - exact_u).pow(2).sum(1).mean()
        err_cond = (cond - exact_k).pow(2).sum(1).mean() / gap
        err_null = (null - exact_u).pow(2).sum(1).mean() / gap
        assert err_cond < 0.15 and err_null < 0.15, (k, err_cond.item(), err_null.item())


def test_label_dropout_joins_the_cache_key_and_same_seed_same_weights():
    vp, data = VP(), _labelled()
    first = fit(TimeMLP(2, hidden=16, num_classes=2), data, vp, label_dropout=0.1, **SMALL)
    again = fit(TimeMLP(2, hidden=16, num_classes=2), data, vp, label_dropout=0.1, **SMALL)
    other = fit(TimeMLP(2, hidden=16, num_classes=2), data, vp, label_dropout=0.2, **SMALL)
    assert first.config["label_dropout"] == 0.1 and again.from_cache and not other.from_cache
    assert first.checkpoint == again.checkpoint != other.checkpoint
    fresh = fit(TimeMLP(2, hidden=16, num_classes=2), data, vp, label_dropout=0.1, cache=False, **SMALL)
    for a, b in zip(first.ema.parameters(), fresh.ema.parameters()):
        assert torch.equal(a, b)
    unconditional = fit(TimeMLP(2, hidden=16), data[0], vp, cache=False, **SMALL)
    assert "label_dropout" not in unconditional.config


def test_bad_labelled_input_names_the_problem():
    vp, (x, y) = VP(), _labelled(200)
    cases = [
        (TimeMLP(2, num_classes=2), x, {}, "needs labelled data"),
        (TimeMLP(2), (x, y), {}, "built without num_classes"),
        (TimeMLP(2, num_classes=2), (x, y + 1), {}, r"in 0\.\.1.*values 1\.\.2"),
        (TimeMLP(2, num_classes=2), (x, y.float()), {}, "labels must be integers"),
        (TimeMLP(2, num_classes=2), (x, y[:10]), {}, r"shape \[200\]"),
        (TimeMLP(2, num_classes=2), gmm2(), {"label_dropout": 1.5}, "label_dropout is a probability"),
        (TimeMLP(2, num_classes=2), lambda n, generator: torch.randn(n, 2), {}, "needs labelled data"),
    ]
    for model, data, extra, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(model, data, vp, steps=2, batch_size=8, progress=False, cache=False, **extra)
