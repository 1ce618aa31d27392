"""The course's trained models, by name: every model a chapter trains, and two image models worth showing.

A recipe builds, for a budget, the exact `fit` call its chapter makes (same model, data, path and
arguments, hence the same cache key), so that `train(name)` writes the very cache entry the chapter
later loads, and `diffusion-lessons pretrain` can fill the cache before the book is built:

    recipes.names()                                   # ["ch02-eps-gmm2", ..., "digits32-unet", "procedural-unet"]
    recipes.describe("digits32-unet")                 # one line: what it is and where it is used
    result = recipes.train("ch02-eps-gmm2", budget="smoke")       # a FitResult, from the cache when there
    quality = recipes.evaluate("ch02-eps-gmm2", result)           # Quality("SW2", value, floor, baseline)
    recipes.get("ch02-eps-gmm2").claim.check(quality)             # (holds, "SW2 0.06 vs ... ") or no claim

Quality is measured against a known answer: for 2-D sets the sliced W2 between PF-ODE samples (Heun)
and exact samples of the data law (and between exact sets: the floor); for images the classifier-based
Fréchet distance (metrics.classifier_frechet_distance) between samples (DPM-Solver++(2M), 25 steps,
clipped) and real images held out from training, with the real-vs-real value beside it as the floor.
Beside both stands a no-learning baseline: the same figure for samples of the Gaussian with the data's
mean and covariance. A recipe's `claim` says by what factor its model must beat that baseline; the
shipped weights (diffusion_lessons/weights, shipped.py) are tested against it.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from .. import baselines, metrics
from ..budget import pick, resolve
from ..distributions import gmm2
from ..paths import convert
from ..sampling import sample, sample_ode, time_grid
from ..training import FitResult, fit

__all__ = [
    "Claim",
    "FitCall",
    "Quality",
    "Recipe",
    "describe",
    "evaluate",
    "fit_call",
    "get",
    "names",
    "shipped_names",
    "train",
]


@dataclasses.dataclass
class FitCall:
    """The arguments of one `fit` call, fit(model, data, path, **kwargs), and what evaluating its result
    needs besides (`extra`: held-out images, a sampler of the data law, ...)."""

    model: torch.nn.Module
    data: object
    path: object
    kwargs: dict
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Quality:
    """A quality figure, lower is better: `metric` ("SW2" or "FD") of model samples, of real data against
    itself (`floor`: what a perfect model would get, up to sampling noise) and of samples of the
    moment-matched Gaussian (`baseline`: what a model that learned only the mean and covariance gets).
    A recipe that measures something else names its two references (floor_name, baseline_name): e.g. a
    restoration's RMSE beside the best linear restoration's and the degraded input's."""

    metric: str
    value: float
    floor: float
    baseline: float | None = None
    floor_name: str = "exact data"
    baseline_name: str = "moment-matched Gaussian"

    def __str__(self) -> str:
        baseline = "" if self.baseline is None else f", {self.baseline_name} {self.baseline:.3g}"
        return f"{self.metric} {self.value:.3g} ({self.floor_name} {self.floor:.3g}{baseline})"


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a recipe's trained model must show: its quality figure at most its no-learning baseline's
    (Quality.baseline: the moment-matched Gaussian's, unless the Quality names another) divided by `factor`.
    factor None: no claim on its samples, for the reason in `note` (e.g. a model the chapter shows failing)."""

    factor: float | None
    note: str = ""

    def statement(self, metric: str = "quality figure") -> str:
        if self.factor is None:
            return f"no claim on its samples: {self.note}"
        return f"{metric} below the moment-matched Gaussian's by a factor {self.factor:g}"

    def check(self, quality: Quality) -> tuple[bool, str]:
        """(holds, one line with the numbers)."""
        if self.factor is None:
            return True, self.statement(quality.metric)
        if quality.baseline is None:
            return False, f"{quality.metric} has no baseline to compare with"
        holds = quality.value * self.factor <= quality.baseline
        return holds, (f"{quality.metric} {quality.value:.4g} vs the {quality.baseline_name}'s {quality.baseline:.4g}: "
                       f"factor {quality.baseline / quality.value:.3g} (claim: at least {self.factor:g})")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named model: build(budget) -> FitCall; evaluate(result, call, budget) -> Quality (or None);
    default_dtype: torch's default dtype while the call is built and run (two chapters build their
    networks under float64, which changes the initial weights, not the cache key); claim: what its
    trained model must show (Claim, or None); ship: whether `pretrain --ship` ships its weights;
    trainer: what runs the call, trainer(model, data, path, **kwargs) -> FitResult (None: `fit`; a
    noise-conditional classifier: classifiers.fit_noisy_classifier)."""

    name: str
    description: str
    build: Callable[[str], FitCall]
    evaluate: Callable[[FitResult, FitCall, str], Quality] | None = None
    default_dtype: torch.dtype = torch.float32
    claim: Claim | None = None
    ship: bool = True
    trainer: Callable[..., FitResult] | None = None


_RECIPES: dict[str, Recipe] = {}


def _recipe(name: str, description: str, evaluate=None, default_dtype=torch.float32, ship: bool = True,
            trainer=None):
    def register(build):
        _RECIPES[name] = Recipe(name, description, build, evaluate, default_dtype, ship=ship, trainer=trainer)
        return build
    return register


def _claim(name: str, factor: float | None, note: str = "") -> None:
    """State recipe `name`'s claim: its quality figure beats the moment-matched Gaussian's by `factor`
    (None: no claim, for the reason `note`)."""
    if factor is None and not note:
        raise ValueError(f"a recipe without a claim ({name}) needs a note saying why")
    _RECIPES[name] = dataclasses.replace(get(name), claim=Claim(None if factor is None else float(factor), note))


def names() -> list[str]:
    """Every recipe's name, in the order of the book (the two image models last)."""
    return list(_RECIPES)


def shipped_names() -> list[str]:
    """The recipes whose weights `diffusion-lessons pretrain --ship` ships (every chapter's models)."""
    return [name for name, recipe in _RECIPES.items() if recipe.ship]


def get(name: str) -> Recipe:
    """The recipe called `name`; ValueError naming the valid ones when there is none."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(_RECIPES)}")
    return _RECIPES[name]


def describe(name: str) -> str:
    """One line: what the recipe trains and which chapter uses it."""
    return get(name).description


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def fit_call(name: str, budget: str | None = None) -> FitCall:
    """The `fit` call of recipe `name` at `budget` (default: budget.current()), built but not run.

    kwargs carry the budget too, so that fit's own defaults (batch size, learning rate) follow it
    exactly as they follow $DIFFUSION_LESSONS_BUDGET in the chapter.
    """
    recipe, budget = get(name), resolve(budget)
    with _default_dtype(recipe.default_dtype):
        call = recipe.build(budget)
    call.kwargs = {**call.kwargs, "budget": budget}
    return call


def train(name: str, budget: str | None = None, call: FitCall | None = None, **fit_overrides) -> FitResult:
    """Train recipe `name` at `budget` (default: budget.current()) with `fit` (or the recipe's own trainer),
    or load it from the cache.

    fit_overrides replace the recipe's own arguments (device, progress, ...); one that enters the
    cache key (steps, batch_size, seed, ...) makes a cache entry different from the chapter's.
    call: the recipe's FitCall when already built (fit_call(name, budget)).
    """
    recipe = get(name)
    call = fit_call(name, budget) if call is None else call
    with _default_dtype(recipe.default_dtype):
        return (recipe.trainer or fit)(call.model, call.data, call.path, **{**call.kwargs, **fit_overrides})


def evaluate(name: str, result: FitResult, budget: str | None = None, call: FitCall | None = None) -> Quality | None:
    """The recipe's quality figure for its trained `result` (None for a recipe without one)."""
    recipe, budget = get(name), resolve(budget)
    if recipe.evaluate is None:
        return None
    call = fit_call(name, budget) if call is None else call
    return recipe.evaluate(result, call, budget)


# -- sampling and measuring ----------------------------------------------------------------------------

def pf_ode_samples(model, target: str, path, shape, n: int, steps: int, seed: int = 0, t_min: float = 1e-3,
                   kind: str = "uniform", batch: int = 500) -> torch.Tensor:
    """n samples [n, *shape] (CPU) of the probability-flow ODE of a network predicting `target`.

    Heun's method on time_grid(steps, t_start, t_end, kind) (NFE = 2 steps - 1) from x ~ N(0,
    sigma(t_start)^2 I), on the model's device. t_start, t_end = 1, t_min; on a path with alpha(1) = 0
    (rectified flow) 0.99, max(t_min, 0.01), as in chapter 4: there the conversion to a velocity
    divides by alpha (eps, score) or by sigma (x0) at one end of the interval.
    """
    weights = next(model.parameters())
    edge = 0.01 if float(path.alpha(1.0)) < 1e-6 else 0.0
    t_start, t_end = 1.0 - edge, max(t_min, edge)
    grid = time_grid(steps, t_start, t_end, kind=kind, path=path if kind == "log_snr" else None)
    gen = torch.Generator().manual_seed(seed)

    def velocity(x, t):
        return convert(model(x, t), target, "velocity", x, t, path)

    out = []
    for m in torch.arange(n).split(batch):
        x = float(path.sigma(t_start)) * torch.randn(len(m), *shape, generator=gen, dtype=weights.dtype)
        with torch.no_grad():  # an EnergyNet switches gradients on inside its forward
            out.append(sample_ode(velocity, x.to(weights.device), grid, method="heun").cpu())
    return torch.cat(out)


def _sliced_w2_quality(draw, clamp: float | None = None):
    """evaluate(): sliced W2 of PF-ODE samples (clamped to [-clamp, clamp] when given, as images are)
    vs exact samples of the data law, draw(n, generator); the floor is the mean over three more exact
    sets of the same size; the baseline, samples of the Gaussian with the moments of 20 000 exact ones."""

    def evaluate(result, call, budget):
        n = pick(smoke=2000, laptop=5000, gpu=10000, budget=budget)
        steps = pick(smoke=50, laptop=100, gpu=100, budget=budget)
        dim = call.model.config["dim"]
        x = pf_ode_samples(result.ema, call.kwargs["target"], call.path, (dim,), n, steps,
                           t_min=call.kwargs.get("t_min", 1e-3))
        x = x if clamp is None else x.clamp(-clamp, clamp)
        reference = draw(n, torch.Generator().manual_seed(1)).double()
        fresh = [draw(n, torch.Generator().manual_seed(seed)).double() for seed in (2, 3, 4)]
        gaussian = baselines.gaussian_samples(draw(20_000, torch.Generator().manual_seed(5)), n,
                                              torch.Generator().manual_seed(6))
        gaussian = gaussian if clamp is None else gaussian.clamp(-clamp, clamp)

        def sw2(a):
            return metrics.sliced_w2(a.double(), reference, generator=torch.Generator().manual_seed(0))

        return Quality("SW2", sw2(x), sum(map(sw2, fresh)) / len(fresh), sw2(gaussian))  # floor: mean over 3 sets

    return evaluate


def image_samples(model, target: str, path, shape, n: int, steps: int, seed: int = 0, t_min: float = 1e-3,
                  batch: int = 500) -> torch.Tensor:
    """n images [n, *shape] in [-1, 1] (CPU) from a network predicting `target`: DPM-Solver++(2M) (NFE =
    steps) on a log-SNR grid from t = 1 to t_min, with the data prediction x0_hat clipped to [-1, 1]
    at every step (the thresholding of pixel-space samplers: an eps-network's small errors near t = 1
    become large ones in x0_hat = (x - sigma eps_hat) / alpha)."""
    weights = next(model.parameters())
    grid = time_grid(steps, 1.0, t_min, kind="log_snr", path=path)
    gen = torch.Generator().manual_seed(seed)

    def clipped_x0(x, t):
        return convert(model(x, t), target, "x0", x, t, path).clamp(-1, 1)

    out = []
    for m in torch.arange(n).split(batch):
        x = float(path.sigma(1.0)) * torch.randn(len(m), *shape, generator=gen, dtype=weights.dtype)
        with torch.no_grad():
            out.append(sample(clipped_x0, path, x.to(weights.device), grid, "dpm++2m", target="x0").x.cpu().clamp(-1, 1))
    return torch.cat(out)


def _frechet_quality(classifier):
    """evaluate(): classifier Fréchet distance of samples (image_samples) vs held-out images, and of as
    many real images (extra["real"]) vs the same held-out ones (the floor) and of as many samples of the
    Gaussian with the pixel mean and covariance of the real images, clipped to [-1, 1] (the baseline)."""

    def evaluate(result, call, budget):
        held_out, real = call.extra["held_out"], call.extra["real"]
        n = min(len(real), pick(smoke=200, laptop=600, gpu=1500, budget=budget))
        steps = pick(smoke=6, laptop=25, gpu=25, budget=budget)
        model = result.ema if held_out.dim() == call.data.dim() else _AsImages(result.ema)  # a TimeMLP on pixels
        x = image_samples(model, call.kwargs["target"], call.path, tuple(held_out.shape[1:]), n, steps,
                          t_min=call.kwargs.get("t_min", 1e-3))
        clf = classifier()
        return Quality("FD", metrics.classifier_frechet_distance(x, held_out, clf),
                       *_fd_floor_and_baseline(real, held_out, n, clf))

    return evaluate


def _fd_floor_and_baseline(real, held_out, n: int, classifier) -> tuple[float, float]:
    """The classifier Fréchet distances to `held_out` of n real images (a random subset, seed 3: the floor) and of
    as many samples of the Gaussian with the pixel mean and covariance of `real`, clipped to [-1, 1] (the
    no-learning baseline): the two reference figures of every image recipe's quality."""
    subset = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(3))[:n]]
    gaussian = baselines.gaussian_samples(real, n, torch.Generator().manual_seed(6))
    gaussian = gaussian.reshape(n, *held_out.shape[1:]).clamp(-1, 1)
    return (metrics.classifier_frechet_distance(subset, held_out, classifier),
            metrics.classifier_frechet_distance(gaussian.float(), held_out, classifier))


def _draw_gmm2(n, generator):
    return gmm2().sample(n, generator=generator)


def _chapter_function(fn, name: str):
    """The chapters define their weighting functions in the notebook, so fit's cache key names them
    `__main__.<name>`; a recipe names its copy the same way, to share the chapter's cache entry."""
    fn.__module__, fn.__qualname__, fn.__name__ = "__main__", name, name
    return fn


def _sigma_squared(path):
    def sigma_squared(t):  # Song et al.'s weight on the score loss: sigma^2 |s_hat - s|^2 = |eps_hat - eps|^2
        return path.sigma(t) ** 2
    return _chapter_function(sigma_squared, "sigma_squared")


class _AsImages(torch.nn.Module):
    """A field on flat vectors [N, D] seen as one on images [N, ...] of D pixels (to sample it as images)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        return self.model(x.flatten(1), t).reshape(x.shape)


# -- the recipes, one module per part of the book (each registers its recipes when imported) -------------
from . import foundations, guidance, images  # noqa: E402,F401  (registration order = book order)
from . import flow_maps  # noqa: E402,F401  (chapter 12)
from . import beyond_gaussian  # noqa: E402,F401  (chapter 13)
