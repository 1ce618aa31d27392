"""The course's trained models, by name: every model a chapter trains, and two image models worth showing.

A recipe builds, for a budget, the exact `fit` call its chapter makes (same model, data, path and
arguments, hence the same cache key), so that `train(name)` writes the very cache entry the chapter
later loads, and `diffusion-lessons pretrain` can fill the cache before the book is built:

    recipes.names()                                   # ["ch02-eps-gmm2", ..., "digits32-unet", "procedural-unet"]
    recipes.describe("digits32-unet")                 # one line: what it is and where it is used
    result = recipes.train("ch02-eps-gmm2", budget="smoke")       # a FitResult, from the cache when there
    quality = recipes.evaluate("ch02-eps-gmm2", result)           # Quality("SW2", value, floor) or None

Quality is measured against a known answer: for 2-D sets the sliced W2 between PF-ODE samples (Heun)
and exact samples of the data law (and between exact sets: the floor); for images the classifier-based
Fréchet distance (metrics.classifier_frechet_distance) between samples (DPM-Solver++(2M), 25 steps,
clipped) and real images held out from training, with the real-vs-real value beside it as the floor.
"""
from __future__ import annotations

import contextlib
import dataclasses
from functools import partial
from typing import Callable

import torch

from . import metrics
from .budget import pick, resolve
from .datasets import PROCEDURAL_FAMILIES, digits, procedural_images
from .distributions import gmm2, toy_data
from .nets import EnergyNet, TimeMLP, UNet
from .paths import VP, RectifiedFlow, convert
from .solvers import sample_dpm_solver, sample_ode, time_grid
from .training import FitResult, fit

__all__ = ["Recipe", "FitCall", "Quality", "names", "get", "describe", "fit_call", "train", "evaluate"]


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
    """A sample-quality figure: `metric` ("SW2" or "FD") of model samples, and of real data against
    itself (`floor`: what a perfect model would get, up to sampling noise)."""

    metric: str
    value: float
    floor: float

    def __str__(self) -> str:
        return f"{self.metric} {self.value:.3g} (floor {self.floor:.3g})"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named model: build(budget) -> FitCall; evaluate(result, call, budget) -> Quality (or None);
    default_dtype: torch's default dtype while the call is built and run (two chapters build their
    networks under float64, which changes the initial weights, not the cache key)."""

    name: str
    description: str
    build: Callable[[str], FitCall]
    evaluate: Callable[[FitResult, FitCall, str], Quality] | None = None
    default_dtype: torch.dtype = torch.float32


_RECIPES: dict[str, Recipe] = {}


def _recipe(name: str, description: str, evaluate=None, default_dtype=torch.float32):
    def register(build):
        _RECIPES[name] = Recipe(name, description, build, evaluate, default_dtype)
        return build
    return register


def names() -> list[str]:
    """Every recipe's name, in the order of the book (the two image models last)."""
    return list(_RECIPES)


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
    """Train recipe `name` at `budget` (default: budget.current()) with `fit`, or load it from the cache.

    fit_overrides replace the recipe's own arguments (device, progress, ...); one that enters the
    cache key (steps, batch_size, seed, ...) makes a cache entry different from the chapter's.
    call: the recipe's FitCall when already built (fit_call(name, budget)).
    """
    recipe = get(name)
    call = fit_call(name, budget) if call is None else call
    with _default_dtype(recipe.default_dtype):
        return fit(call.model, call.data, call.path, **{**call.kwargs, **fit_overrides})


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
    sets of the same size."""

    def evaluate(result, call, budget):
        n = pick(smoke=2000, laptop=5000, gpu=10000, budget=budget)
        steps = pick(smoke=50, laptop=100, gpu=100, budget=budget)
        dim = call.model.config["dim"]
        x = pf_ode_samples(result.ema, call.kwargs["target"], call.path, (dim,), n, steps,
                           t_min=call.kwargs.get("t_min", 1e-3))
        x = x if clamp is None else x.clamp(-clamp, clamp)
        reference = draw(n, torch.Generator().manual_seed(1)).double()
        fresh = [draw(n, torch.Generator().manual_seed(seed)).double() for seed in (2, 3, 4)]

        def sw2(a):
            return metrics.sliced_w2(a.double(), reference, generator=torch.Generator().manual_seed(0))

        return Quality("SW2", sw2(x), sum(map(sw2, fresh)) / len(fresh))  # floor: mean over 3 exact sets

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
            out.append(sample_dpm_solver(clipped_x0, path, x.to(weights.device), grid, target="x0").cpu().clamp(-1, 1))
    return torch.cat(out)


def _frechet_quality(classifier):
    """evaluate(): classifier Fréchet distance of samples (image_samples) vs held-out images, and of as
    many real images (extra["real"]) vs the same held-out ones (the floor)."""

    def evaluate(result, call, budget):
        held_out, real = call.extra["held_out"], call.extra["real"]
        n = min(len(real), pick(smoke=200, laptop=600, gpu=1500, budget=budget))
        steps = pick(smoke=6, laptop=25, gpu=25, budget=budget)
        model = result.ema if held_out.dim() == call.data.dim() else _AsImages(result.ema)  # a TimeMLP on pixels
        x = image_samples(model, call.kwargs["target"], call.path, tuple(held_out.shape[1:]), n, steps,
                          t_min=call.kwargs.get("t_min", 1e-3))
        clf = classifier()
        subset = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(3))[:n]]
        return Quality("FD", metrics.classifier_frechet_distance(x, held_out, clf),
                       metrics.classifier_frechet_distance(subset, held_out, clf))

    return evaluate


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


# -- chapter 2 and 3: DDPM and the score view ---------------------------------------------------------

def _ch02_steps(budget):
    return pick(smoke=1000, laptop=4000, gpu=20_000, budget=budget)


@_recipe("ch02-eps-gmm2", "TimeMLP predicting eps on GMM2, VP path (chapters 2 and 3)", _sliced_w2_quality(_draw_gmm2))
def _ch02_eps_gmm2(budget):
    return FitCall(TimeMLP(2), gmm2(), VP(), dict(target="eps", steps=_ch02_steps(budget), name="ch02-eps-gmm2"))


@_recipe("ch02-eps-moons", "TimeMLP predicting eps on two moons, VP path (chapter 2)",
         _sliced_w2_quality(partial(toy_data, "moons")))
def _ch02_eps_moons(budget):
    return FitCall(TimeMLP(2), partial(toy_data, "moons"), VP(),
                   dict(target="eps", steps=_ch02_steps(budget), name="ch02-eps-moons"))


@_recipe("ch03-score-gmm2", "TimeMLP predicting the score on GMM2, weight sigma^2, VP path (chapter 3)",
         _sliced_w2_quality(_draw_gmm2))
def _ch03_score_gmm2(budget):
    vp = VP()
    return FitCall(TimeMLP(2), gmm2(), vp, dict(target="score", weighting=_sigma_squared(vp), steps=_ch02_steps(budget),
                                                name="ch03-score-gmm2"))


# -- chapter 4: one field, four targets (rectified flow) ------------------------------------------------

def _ch04(target: str, weighted: bool = False):
    def build(budget):
        path = RectifiedFlow()
        steps = pick(smoke=400, laptop=4000, gpu=20000, budget=budget)
        return FitCall(TimeMLP(2), gmm2(), path,
                       dict(target=target, weighting=_sigma_squared(path) if weighted else None, steps=steps, seed=0,
                            name=f"ch04-{target}" + ("-sigma2" if weighted else ""), progress=False))
    return build


for _target, _weighted in (("eps", False), ("x0", False), ("score", False), ("velocity", False), ("score", True)):
    _name = f"ch04-{_target}" + ("-sigma2" if _weighted else "")
    _recipe(_name, f"TimeMLP predicting {_target}{' with weight sigma^2' if _weighted else ''} on GMM2, "
                   "rectified-flow path (chapter 4)", _sliced_w2_quality(_draw_gmm2))(_ch04(_target, _weighted))


# -- chapter 5: likelihoods ----------------------------------------------------------------------------

def dequantised_digits8():
    """Chapter 5's data: the 8 x 8 digits as grey levels 0..16 (L = 17), split 1500 / 297 by a
    permutation with seed 0, dequantised as x = (k + u) 2 / L - 1 with u ~ U[0, 1): eight copies of the
    training images (noise seed 0) and one of the held-out ones (seed 1). Returns (train [12000, 64],
    test [297, 64]), byte for byte the chapter's."""
    levels = 17
    grey = torch.round((digits(size=8).flatten(1) + 1) * 8).long()
    perm = torch.randperm(len(grey), generator=torch.Generator().manual_seed(0))
    train_k, test_k = grey[perm[:1500]], grey[perm[1500:]]

    def dequantise(k, copies=1, seed=0):
        k = k.repeat(copies, 1)
        return (k + torch.rand(k.shape, generator=torch.Generator().manual_seed(seed))) * 2 / levels - 1

    return dequantise(train_k, copies=8), dequantise(test_k, seed=1)


@_recipe("ch05-eps-gmm2", "TimeMLP(hidden 128, depth 3) predicting eps on GMM2, VP path (chapter 5)",
         _sliced_w2_quality(_draw_gmm2))
def _ch05_eps_gmm2(budget):
    steps = pick(smoke=400, laptop=4000, gpu=20000, budget=budget)
    return FitCall(TimeMLP(dim=2, hidden=128, depth=3), gmm2(), VP(), dict(target="eps", steps=steps, seed=0,
                                                                            progress=False))


class _AsImages(torch.nn.Module):
    """A field on flat vectors [N, D] seen as one on images [N, ...] of D pixels (to sample it as images)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        return self.model(x.flatten(1), t).reshape(x.shape)


@_recipe("ch05-eps-digits8", "TimeMLP predicting eps on dequantised 8x8 digits, VP path (chapter 5)",
         _frechet_quality(partial(metrics.train_digit_classifier, size=8)))
def _ch05_eps_digits8(budget):
    hidden, depth, steps = pick(smoke=(128, 3, 300), laptop=(256, 3, 4000), gpu=(1024, 4, 20000), budget=budget)
    x_train, x_test = dequantised_digits8()
    return FitCall(TimeMLP(dim=64, hidden=hidden, depth=depth), x_train, VP(),
                   dict(target="eps", steps=steps, seed=0, progress=False),
                   {"held_out": x_test.reshape(-1, 1, 8, 8), "real": x_train[:1500].reshape(-1, 1, 8, 8)})


# -- chapters 6 and 7: a UNet on the 16 x 16 digits; conservativity ---------------------------------------

def _digits16_extra():
    """The 16 x 16 digits the chapters train on (all of them), split for the Fréchet distance: 500 to
    compare with (seen in training: these chapters train on every digit) and the rest as real samples."""
    images = digits(16)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return {"held_out": images[perm[:500]], "real": images[perm[500:]]}


_digits16_quality = _frechet_quality(partial(metrics.train_digit_classifier, size=16))


@_recipe("ch06-unet-digits16", "UNet predicting eps on the 16x16 digits, VP path (chapter 6; FD vs training digits)",
         _digits16_quality)
def _ch06_unet(budget):
    base, steps, batch = pick(smoke=(8, 200, 64), laptop=(16, 2000, 128), gpu=(32, 20000, 256), budget=budget)
    return FitCall(UNet(channels=1, base=base), digits(16), VP(),
                   dict(target="eps", steps=steps, batch_size=batch, seed=0, progress=False), _digits16_extra())


def _ch07_steps(budget):
    return pick(smoke=200, laptop=3000, gpu=20000, budget=budget)


@_recipe("ch07-free", "TimeMLP predicting the velocity on GMM2, VP path (chapter 7)", _sliced_w2_quality(_draw_gmm2))
def _ch07_free(budget):
    return FitCall(TimeMLP(2), gmm2(), VP(), dict(target="velocity", steps=_ch07_steps(budget), seed=0,
                                                  name="ch07-free", progress=False))


@_recipe("ch07-energy", "EnergyNet (a gradient field) predicting the velocity on GMM2, VP path (chapter 7)",
         _sliced_w2_quality(_draw_gmm2))
def _ch07_energy(budget):
    return FitCall(EnergyNet(2), gmm2(), VP(), dict(target="velocity", steps=_ch07_steps(budget), seed=0,
                                                    name="ch07-energy", progress=False))


@_recipe("ch07-unet", "UNet predicting eps on the 16x16 digits, VP path (chapter 7; FD vs training digits)",
         _digits16_quality)
def _ch07_unet(budget):
    base = pick(smoke=8, laptop=16, gpu=32, budget=budget)
    steps = pick(smoke=30, laptop=1000, gpu=10000, budget=budget)
    batch = pick(smoke=32, laptop=64, gpu=256, budget=budget)
    return FitCall(UNet(1, base=base, mults=(1, 2)), digits(size=16), VP(),
                   dict(target="eps", steps=steps, batch_size=batch, seed=0, name="ch07-unet", progress=False),
                   _digits16_extra())


# -- chapters 8 and 9 (built in float64, like the chapters) --------------------------------------------------

def _draw_blobs8(n, generator):
    return procedural_images(n, size=8, generator=generator).flatten(1)


@_recipe("ch08-eps-blobs8", "TimeMLP(64, hidden 256) predicting eps on 8x8 procedural blobs, VP path (chapter 8)",
         _sliced_w2_quality(_draw_blobs8, clamp=1.0), default_dtype=torch.float64)
def _ch08_eps_blobs8(budget):
    flat = procedural_images(20000, size=8, generator=torch.Generator().manual_seed(11)).flatten(1).double()
    steps = pick(smoke=200, laptop=3000, gpu=20000, budget=budget)
    return FitCall(TimeMLP(dim=64, hidden=256, depth=3).float(), flat.float(), VP(),
                   dict(target="eps", steps=steps, seed=0, progress=False))


@_recipe("ch09-velocity-gmm2", "TimeMLP predicting the velocity on GMM2 by flow matching, VP path (chapter 9)",
         _sliced_w2_quality(_draw_gmm2), default_dtype=torch.float64)
def _ch09_velocity_gmm2(budget):
    steps = pick(smoke=400, laptop=4000, gpu=20000, budget=budget)
    return FitCall(TimeMLP(dim=2).float(), gmm2(), VP(), dict(target="velocity", steps=steps, seed=0, progress=False))


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
         _frechet_quality(partial(metrics.train_digit_classifier, size=32)))
def _digits32_unet(budget):
    images = digits(32)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train_images = images[perm[297:]]
    return _image_call("digits32-unet", train_images, budget, {"held_out": images[perm[:297]], "real": train_images})


@_recipe("procedural-unet", "UNet predicting eps on 32x32 procedural images (blobs, rings, squares, bars), VP path",
         _frechet_quality(partial(metrics.train_procedural_classifier, size=32, families=PROCEDURAL_FAMILIES)))
def _procedural_unet(budget):
    n_train = pick(smoke=1000, laptop=10_000, gpu=50_000, budget=budget)
    n_eval = pick(smoke=300, laptop=1000, gpu=2000, budget=budget)

    def draw(n, seed):
        return procedural_images(n, size=32, families=PROCEDURAL_FAMILIES, generator=torch.Generator().manual_seed(seed))

    return _image_call("procedural-unet", draw(n_train, 0), budget, {"held_out": draw(n_eval, 1), "real": draw(n_eval, 2)})
