"""Recipes of chapter 12 (flow maps): few-step generators on GMM2 and on the 16 x 16 digits, all shipped.

Five methods per data set, each a fit call with a flow-map objective:

* consistency distillation (CD) and progressive distillation (PD) start from the chapter-2 / chapter-6
  diffusion model (the teacher, itself a recipe: ch02-eps-gmm2, ch06-unet-digits16);
* consistency training (CT), shortcut models and MeanFlow learn from the data alone.

PD is a chain of rounds (16 -> 8 -> 4 -> 2 -> 1 DDIM steps), one recipe per round, each round's
teacher the previous round's student. Quality: sliced W2 (GMM2) or the classifier Fréchet distance
(digits) of one-step samples (PD: of its own number of steps), against exact data / real digits.
"""
from __future__ import annotations

import copy

import torch

from .. import baselines, metrics, paths
from ..budget import pick
from ..datasets import digits
from ..distributions import gmm2
from ..flow_maps import (
    ConsistencyDistillation,
    ConsistencyModel,
    ConsistencyTraining,
    MeanFlowObjective,
    ProgressiveDistillation,
    ShortcutObjective,
    EDMDenoiser,
    generator_of,
)
from ..nets import FlowMapMLP, FlowMapUNet, TimeMLP, UNet
from ..paths import VP, RectifiedFlow
from . import FitCall, Quality, _claim, _draw_gmm2, _fd_floor_and_baseline, _recipe, train
from .foundations import _digits16_extra

PD_ROUNDS = (8, 4, 2, 1)  # students' steps; the first teacher runs 16 DDIM steps
SIGMA_DATA = {"gmm2": 1.5, "digits16": 0.5}  # EDM's sigma_data: about the data's standard deviation
# CT on GMM2 at these budgets: N grows to 40 levels (not 150) and the target network follows faster (EMA
# rate mu0 = 0.5): with 150 levels and mu0 = 0.95 the target's information does not climb from sigma_min to
# sigma_max within 6000 steps, and one-step samples are worse than the moment-matched Gaussian.
CT_SCHEDULE = {"start_scales": 2, "end_scales": 40, "start_ema": 0.5}


def _consistency_path():
    """The path consistency models live on: EDM's alpha = 1, sigma = 80 t (only the cache key reads it)."""
    edm = getattr(paths, "EDM", None)
    return edm(80.0) if edm is not None else paths.VE(sigma_min=0.002, sigma_max=80.0)


def _trained(name: str, budget: str | None):
    """A recipe's trained model as the chapter gets it: dl.pretrained (shipped weights when there are, else
    trained; budget None takes the shipped ones whatever budget they were trained at), on the device `fit`
    trains on (a teacher or a previous round runs inside the student's training)."""
    try:
        from ..shipped import pretrained
    except ImportError:  # before shipped weights exist
        return train(name, budget)
    return pretrained(name, budget, device=None)


# -- what each data set trains on ------------------------------------------------------------------------

def _data(kind: str):
    return gmm2() if kind == "gmm2" else digits(16)


def _net(kind: str, two_times: bool, budget: str):
    if kind == "gmm2":
        return FlowMapMLP(2) if two_times else TimeMLP(2)
    base = pick(smoke=8, laptop=16, gpu=32, budget=budget)
    return FlowMapUNet(1, base=base) if two_times else UNet(1, base=base)


def _teacher_name(kind: str) -> str:
    return "ch02-eps-gmm2" if kind == "gmm2" else "ch06-unet-digits16"


def _fit_kwargs(kind: str, budget: str, steps_2d, steps_digits) -> dict:
    if kind == "gmm2":
        return {"steps": pick(**steps_2d, budget=budget), "batch_size": pick(smoke=256, laptop=512, gpu=2048,
                                                                                   budget=budget),
                "lr": 1e-3, "seed": 0, "progress": False}
    return {"steps": pick(**steps_digits, budget=budget),
            "batch_size": pick(smoke=32, laptop=64, gpu=256, budget=budget),
            "lr": pick(smoke=2e-3, laptop=5e-4, gpu=2e-4, budget=budget), "seed": 0, "progress": False}


_SCRATCH_2D = {"smoke": 400, "laptop": 6000, "gpu": 20000}
_SCRATCH_DIGITS = {"smoke": 30, "laptop": 3000, "gpu": 20000}


# -- quality ----------------------------------------------------------------------------------------------

def _quality(kind: str, nfe: int | None = None):
    """evaluate(result, call, budget): SW2 (GMM2) or classifier FD (digits) of samples with nfe evaluations
    (default: 1; a PD student: its own steps), with the floor of real data against itself and the
    no-learning baseline: as many samples of the moment-matched Gaussian, scored the same way."""

    def evaluate(result, call, budget):
        config = result.config["objective"]["config"]
        steps = config.get("student_steps", nfe or 1)
        gen = generator_of(result)
        if kind == "gmm2":
            n = pick(smoke=2000, laptop=5000, gpu=10000, budget=budget)
            z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
            reference = _draw_gmm2(n, torch.Generator().manual_seed(1))
            fresh = _draw_gmm2(n, torch.Generator().manual_seed(2))

            def sw2(a):
                return metrics.sliced_w2(a.double(), reference, generator=torch.Generator().manual_seed(0))

            gaussian = baselines.gaussian_samples(_draw_gmm2(20_000, torch.Generator().manual_seed(5)), n,
                                                  torch.Generator().manual_seed(6))
            return Quality("SW2", sw2(gen(z, steps)), sw2(fresh), sw2(gaussian))
        held_out, real = call.extra["held_out"], call.extra["real"]
        n = min(len(real), pick(smoke=200, laptop=600, gpu=1000, budget=budget))
        z = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        clf = metrics.train_digit_classifier(size=16)
        x = gen(z, steps).clamp(-1, 1)
        return Quality("FD", metrics.classifier_frechet_distance(x, held_out, clf),
                       *_fd_floor_and_baseline(real, held_out, n, clf))

    return evaluate


def _extra(kind: str) -> dict:
    return {} if kind == "gmm2" else _digits16_extra()


# -- the recipes ------------------------------------------------------------------------------------------

def _cd(kind: str):
    def build(budget):
        teacher = _trained(_teacher_name(kind), budget).ema
        objective = ConsistencyDistillation(EDMDenoiser(teacher, "eps", VP()), n_scales=18)
        model = ConsistencyModel(_net(kind, False, budget), sigma_data=SIGMA_DATA[kind])
        kw = _fit_kwargs(kind, budget, {"smoke": 300, "laptop": 4000, "gpu": 20000},
                         {"smoke": 20, "laptop": 2000, "gpu": 20000})
        return FitCall(model, _data(kind), _consistency_path(), {**kw, "objective": objective,
                                                                 "name": f"ch12-cd-{kind}"}, _extra(kind))
    return build


def _ct(kind: str):
    def build(budget):
        model = ConsistencyModel(_net(kind, False, budget), sigma_data=SIGMA_DATA[kind])
        kw = _fit_kwargs(kind, budget, _SCRATCH_2D, _SCRATCH_DIGITS)
        return FitCall(model, _data(kind), _consistency_path(),
                       {**kw, "objective": ConsistencyTraining(**CT_SCHEDULE), "name": f"ch12-ct-{kind}"}, _extra(kind))
    return build


def _average_velocity(kind: str, method: str):
    def build(budget):
        objective = ShortcutObjective() if method == "shortcut" else MeanFlowObjective()
        kw = _fit_kwargs(kind, budget, _SCRATCH_2D, _SCRATCH_DIGITS)
        return FitCall(_net(kind, True, budget), _data(kind), RectifiedFlow(),
                       {**kw, "objective": objective, "name": f"ch12-{method}-{kind}"}, _extra(kind))
    return build


# MeanFlow with two changes that make it train on GMM2 (chapter 12 shows why each is needed): plain squared
# error (norm_p = 0; the code's adaptive weight 1 / (error + 0.01) pulls a two-dimensional regression towards a
# mode of v given z_t instead of its mean) and time features of low frequency (max_freq 20, not 1000: the JVP
# differentiates the network in t, and high frequencies make the target's d/dt term large and noisy).
MEANFLOW_SMOOTH = {"norm_p": 0.0, "max_freq": 20.0}


def _meanflow_smooth(budget):
    objective = MeanFlowObjective(norm_p=MEANFLOW_SMOOTH["norm_p"])
    kw = _fit_kwargs("gmm2", budget, _SCRATCH_2D, _SCRATCH_DIGITS)
    return FitCall(FlowMapMLP(2, max_freq=MEANFLOW_SMOOTH["max_freq"]), _data("gmm2"), RectifiedFlow(),
                   {**kw, "objective": objective, "name": "ch12-meanflow-smooth-gmm2"}, _extra("gmm2"))


def _pd(kind: str, student_steps: int):
    def build(budget):
        if student_steps == PD_ROUNDS[0]:
            teacher, target = _trained(_teacher_name(kind), budget).ema, "eps"
        else:
            teacher, target = _trained(f"ch12-pd{2 * student_steps}-{kind}", budget).ema, "v"
        objective = ProgressiveDistillation(teacher, target, VP(), student_steps)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        kw = _fit_kwargs(kind, budget, {"smoke": 100, "laptop": 1500, "gpu": 5000},
                         {"smoke": 10, "laptop": 600, "gpu": 5000})
        return FitCall(student, _data(kind), VP(), {**kw, "objective": objective, "reinit": False,
                                                    "name": f"ch12-pd{student_steps}-{kind}"}, _extra(kind))
    return build


_WHERE = {"gmm2": "GMM2", "digits16": "the 16x16 digits"}
KINDS = ("gmm2", "digits16")


def builders(kind: str) -> dict:
    """{recipe name: build(budget) -> FitCall} of chapter 12 on `kind` ("gmm2" or "digits16"), registered or not."""
    out = {f"ch12-cd-{kind}": _cd(kind), f"ch12-ct-{kind}": _ct(kind)}
    out.update({f"ch12-{m}-{kind}": _average_velocity(kind, m) for m in ("shortcut", "meanflow")})
    out.update({f"ch12-pd{n}-{kind}": _pd(kind, n) for n in PD_ROUNDS})
    return out


for _kind in KINDS:
    _net_name = "TimeMLP" if _kind == "gmm2" else "UNet"
    _recipe(f"ch12-cd-{_kind}", f"Consistency model ({_net_name}) distilled from {_teacher_name(_kind)} with a Heun "
                                f"teacher on {_WHERE[_kind]} (chapter 12)", _quality(_kind))(_cd(_kind))
    _recipe(f"ch12-ct-{_kind}", f"Consistency model ({_net_name}) trained without a teacher on {_WHERE[_kind]} "
                                f"(chapter 12)", _quality(_kind))(_ct(_kind))
    for _method, _title in (("shortcut", "Shortcut model"), ("meanflow", "MeanFlow model")):
        _recipe(f"ch12-{_method}-{_kind}", f"{_title} (two-time {_net_name}) on {_WHERE[_kind]}, rectified flow "
                                           f"(chapter 12)", _quality(_kind))(_average_velocity(_kind, _method))
    if _kind == "gmm2":
        _recipe("ch12-meanflow-smooth-gmm2", "MeanFlow model (two-time TimeMLP) on GMM2 with plain squared error and "
                "low-frequency time features, rectified flow (chapter 12)", _quality("gmm2"))(_meanflow_smooth)
    for _n in PD_ROUNDS:
        _recipe(f"ch12-pd{_n}-{_kind}", f"Progressive distillation round to {_n} DDIM step{'s' * (_n > 1)} from "
                                        f"{_teacher_name(_kind)} on {_WHERE[_kind]}, VP path (chapter 12)",
                _quality(_kind))(_pd(_kind, _n))


def pd_rounds(kind: str, budget: str | None = None) -> list:
    """The trained PD rounds of `kind` ("gmm2" or "digits16"), 8 -> 1 steps, as dl.pretrained gives them."""
    return [_trained(f"ch12-pd{n}-{kind}", budget) for n in PD_ROUNDS]


# What the shipped models must show: the quality figure of their one-step samples (a PD student: with its own
# number of steps) below the moment-matched Gaussian's by these factors. GMM2, SW2 at laptop: CD 6.4, CT 2.3,
# shortcut 3.8, PD 4.0 or more. Digits, classifier FD at laptop (the Gaussian's 70.8): CD 32.3, CT 47.4,
# PD 41.0 / 42.9 / 43.5 / 44.5 (8 / 4 / 2 / 1 steps).
CLAIMS = {"gmm2": {"cd": 3, "ct": 1.5, "shortcut": 3, "pd8": 3, "pd4": 3, "pd2": 3, "pd1": 3},
          "digits16": {"cd": 1.8, "ct": 1.3, "pd8": 1.4, "pd4": 1.4, "pd2": 1.4, "pd1": 1.4}}
for _kind in KINDS:
    for _name, _factor in CLAIMS[_kind].items():
        _claim(f"ch12-{_name}-{_kind}", _factor)
_claim("ch12-meanflow-smooth-gmm2", 3)  # laptop: 3.9 (SW2 0.138 at one step against the Gaussian's 0.54)
_claim("ch12-meanflow-gmm2", None,
       "chapter 12 shows MeanFlow failing on GMM2 with the authors' settings (adaptive loss weight, "
       "high-frequency time features): its samples are worse than the moment-matched Gaussian's at 1 to 8 steps")
_claim("ch12-meanflow-digits16", None,
       "chapter 12 shows MeanFlow with the authors' settings failing on the digits too at one step (laptop "
       "budget: classifier FD 220 against the moment-matched Gaussian's 70.8); from two steps on it beats the Gaussian")
_claim("ch12-shortcut-digits16", None,
       "at the laptop budget its one-step digits are barely better than the moment-matched Gaussian's (classifier "
       "FD 64.5 against 70.8, a factor 1.1); chapter 12 shows it beside the other methods")
