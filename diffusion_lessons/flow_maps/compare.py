"""Few-step generators side by side: every method as a function of the same noise and the same budget.

A generator is gen(z, nfe) -> samples, with z ~ N(0, I) [N, ...] (each method scales it to its own
prior) and nfe the number of network evaluations allowed. This is what the chapter's trade-off table
measures: sample quality against NFE for the learned flow maps and for the ODE solvers of chapter 10
applied to the diffusion model they were distilled from.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..baselines import beats_baseline
from ..paths import Path, convert, make_path
from ..sampling import sample, sample_ode, time_grid
from .consistency import ct_schedule, sample_consistency
from .progressive import sample_ddim
from .samplers import AverageVelocityMap, sample_flow_map

__all__ = [
    "ODE_SOLVERS",
    "average_velocity_generator",
    "check_few_step_claims",
    "consistency_generator",
    "generator_of",
    "ode_generator",
    "progressive_generator",
    "spread_indices",
    "training_evaluations",
]

ODE_SOLVERS = ("euler", "heun", "ddim", "dpm++2m")


def spread_indices(nfe: int, steps: int) -> tuple[int, ...]:
    """ts for an nfe-step consistency sampler: nfe + 1 indices spread evenly over the Karras grid of `steps`
    points (0, ..., steps - 1); for nfe = 2 and 40 points (0, 20, 39), near the code's tuned (0, 22, 39)."""
    if not 1 <= nfe <= steps - 1:
        raise ValueError(f"nfe must lie in 1..{steps - 1} for a grid of {steps} points; got {nfe}")
    return tuple(round(i * (steps - 1) / nfe) for i in range(nfe + 1))


def consistency_generator(model, steps: int = 40, generator: torch.Generator | None = None) -> Callable:
    """gen(z, nfe): x_T = sigma_max z, then sample_consistency with ts = spread_indices(nfe, steps)."""
    def gen(z, nfe):
        x_T = model.sigma_max * z
        return sample_consistency(model, x_T, spread_indices(nfe, steps), steps, model.sigma_min, model.sigma_max,
                                  generator=generator).x
    return gen


def average_velocity_generator(net, path: Path) -> Callable:
    """gen(z, nfe): nfe equal steps of x - (t - r) net(x, t, r) from t = 1 (x_1 = sigma_1 z) to 0."""
    flow = AverageVelocityMap(net)

    def gen(z, nfe):
        return sample_flow_map(flow, float(path.sigma(1.0)) * z, torch.linspace(1.0, 0.0, nfe + 1)).x
    return gen


def progressive_generator(students: dict, path: Path, target: str = "v") -> Callable:
    """gen(z, nfe): DDIM in nfe steps with the student distilled for nfe steps (students: {nfe: model})."""
    def gen(z, nfe):
        if nfe not in students:
            raise ValueError(f"no student distilled for {nfe} steps; have {sorted(students)}")
        return sample_ddim(students[nfe], target, path, float(path.sigma(1.0)) * z, nfe)
    return gen


def ode_generator(model, target: str, path: Path, solver: str, t_end: float = 1e-3) -> Callable:
    """gen(z, nfe): a chapter-10 ODE solver on the diffusion model(x, t) predicting `target`, from t = 1 to t_end.

    euler: nfe steps of the PF-ODE (uniform grid); heun: nfe // 2 steps (2 evaluations each; None for nfe = 1);
    ddim and dpm++2m: DPM-Solver++ of order 1 and 2 in nfe steps on a log-SNR grid. Returns x at t_end.
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(ODE_SOLVERS)}")

    def velocity(x, t):
        return convert(model(x, t), target, "velocity", x, t, path)

    def gen(z, nfe):
        x_T = float(path.sigma(1.0)) * z
        with torch.no_grad():
            if solver in ("euler", "heun"):
                steps = nfe if solver == "euler" else nfe // 2
                if steps < 1:
                    return None
                return sample_ode(velocity, x_T, time_grid(steps, 1.0, t_end), method=solver)
            grid = time_grid(nfe, 1.0, t_end, kind="log_snr", path=path)
            return sample(model, path, x_T, grid, method="ddim" if solver == "ddim" else "dpm++2m", target=target).x
    return gen


def generator_of(results) -> Callable:
    """gen(z, nfe) for models trained by fit with a flow-map objective, read from their run config.

    results: one FitResult (consistency, shortcut or MeanFlow; its EMA weights are sampled), or a list of
    progressive-distillation rounds (one student per number of steps). A consistency model samples on
    the Karras grid it was trained on (N = n_scales for CD, the final N(K) for CT).
    """
    rounds = list(results) if isinstance(results, (list, tuple)) else [results]
    configs = [r.config["objective"]["config"] if r.config and "objective" in r.config else None for r in rounds]
    if any(c is None for c in configs):
        raise ValueError("generator_of needs results of fit(..., objective=...) (their config names the method)")
    method = configs[0]["method"]
    if method == "progressive distillation":
        students = {c["student_steps"]: r.ema for c, r in zip(configs, rounds)}
        return progressive_generator(students, make_path(configs[0]["path"]), configs[0]["student_target"])
    if len(rounds) != 1:
        raise ValueError(f"give one FitResult for a {method} model; got {len(rounds)}")
    (result,), (config,) = rounds, configs
    if method == "consistency distillation":
        return consistency_generator(result.ema, steps=config["n_scales"])
    if method == "consistency training":
        k = result.config["steps"]
        return consistency_generator(result.ema, steps=ct_schedule(k, k, config["start_scales"], config["end_scales"],
                                                                   config["start_ema"])[1])
    if method in ("shortcut", "meanflow"):
        return average_velocity_generator(result.ema, make_path(config["path"]))
    raise ValueError(f"no generator for method {method!r}")


# network evaluations per training sample and step (forward passes; a JVP counted as two)
_EVALUATIONS = {"consistency distillation": 4,  # online, target network, two for the teacher's Heun step
                "consistency training": 2,  # online, target network
                "meanflow": 2,  # one forward pass carrying its JVP
                "progressive distillation": 3}  # student, two teacher DDIM steps


def training_evaluations(results) -> float:
    """Network evaluations spent in training, steps x batch x evaluations per sample, summed over the
    rounds of a progressive distillation (a teacher's own training not included). Shortcut models pay
    1 + 2 / bootstrap_every per sample (the bootstrap rows evaluate two half steps)."""
    total = 0.0
    for result in (results if isinstance(results, (list, tuple)) else [results]):
        config = result.config
        objective = config.get("objective", {}).get("config", {})
        method = objective.get("method")
        per_sample = (1 + 2 / objective["bootstrap_every"]) if method == "shortcut" else _EVALUATIONS.get(method, 1)
        total += config["steps"] * config["batch_size"] * per_sample
    return total


def check_few_step_claims(table: dict, models, solvers, baseline: float, margin: float | None, factor: float | None,
                          label: str, nfes=(1, 2), no_claim: dict | None = None) -> dict:
    """The chapter's two claims on a quality table {name: {nfe: value or None}} (lower is better), printed and
    asserted; returns {nfe: best solver's value / best model's value}.

    * at each NFE of `nfes`, the best of `models` beats the best of `solvers` by at least `margin`;
    * each model beats the no-learning `baseline` by `factor` (``beats_baseline``), judged at its best NFE, except
      progressive distillation (a list of students, one per NFE): at its worst student.

    margin or factor None: that claim is printed, not asserted (weights trained for seconds); a model named in
    `no_claim` is printed with the reason given there.
    """
    no_claim = no_claim or {}
    ratios = {}
    for nfe in nfes:
        scored = {name: table[name][nfe] for name in (*models, *solvers) if table[name][nfe] is not None}
        best_model = min((name for name in models if name in scored), key=scored.get)
        best_solver = min((name for name in solvers if name in scored), key=scored.get)
        ratios[nfe] = scored[best_solver] / scored[best_model]
        claim = "no claim on smoke-test weights" if margin is None else f"asserted >= {margin:g}"
        print(f"NFE {nfe}: best trained model {best_model} {label} {scored[best_model]:.4g}, best ODE solver "
              f"{best_solver} {scored[best_solver]:.4g}: ratio {ratios[nfe]:.2f} ({claim})")
        assert margin is None or ratios[nfe] >= margin, (f"NFE {nfe}: {best_model} beats {best_solver} by "
                                                         f"{ratios[nfe]:.2f}, not the required {margin:g}")
    for name in models:
        values = [v for v in table[name].values() if v is not None]
        worst = name == "progressive distillation"
        value = max(values) if worst else min(values)
        which = "its worst student" if worst else "its best NFE"
        if factor is None or name in no_claim:
            why = no_claim.get(name, "smoke-test weights, no claim")
            print(f"{name} ({which}): {label} {value:.4g} vs the moment-matched Gaussian's {baseline:.4g} "
                  f"(factor {baseline / value if value > 0 else math.inf:.2f}; {why})")
        else:
            beats_baseline(f"{name} ({which}), {label}", value, baseline, factor)
    return ratios
