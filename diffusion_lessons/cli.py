"""The command line: train a model on a 2-D toy set, then sample it with the probability-flow ODE.

    diffusion-lessons train --data moons --target eps --steps 2000 [--path vp] [--seed 0]
                            [--budget laptop] [--checkpoint-every 500] [--out model.pt]
    diffusion-lessons sample model.pt --n 2000 --out samples.png [--steps 100] [--method heun] [--seed 0]
    diffusion-lessons pretrain [--budget smoke|laptop|gpu] [--only NAME ...] [--list]
    diffusion-lessons bench [ARGS ...]

`train` fits a TimeMLP with `training.fit` (so the checkpoint lands in the cache and a second run
is instant; an interrupted run, started again, resumes from its last resume checkpoint) and prints
where the checkpoint is. `sample` rebuilds the model from the checkpoint, turns its prediction into
the PF-ODE velocity u = alpha' x0_hat + sigma' eps_hat with `paths.convert`, and integrates
dx/dt = u from noise to data (Heun's method unless --method says otherwise). `pretrain` trains every
chapter's models (recipes.py) into the cache and prints a summary table (pretrain.py); `bench` hands
its arguments to diffusion_lessons.bench.

Every error the user can cause (an unknown name, a bad number, a missing or damaged file) ends the
program with one line on stderr, naming the bad value and the valid ones, and a non-zero status.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path as FilePath

import numpy as np
import torch

from .distributions import TOY_DATASETS, toy_data
from .nets import TimeMLP
from .paths import PATHS, convert, make_path
from .solvers import ODE_METHODS, sample_ode, time_grid
from .training import CheckpointError, TrainingError, fit, load_checkpoint, save_checkpoint

__all__ = ["main"]

PROG = "diffusion-lessons"
CLI_TARGETS = ("eps", "x0", "score", "velocity")
SAMPLE_FORMATS = (".npz", ".png", ".pdf", ".svg")


class ToySet:
    """A 2-D toy set as a data source for `fit`: fresh samples every batch; its name joins the cache key."""

    def __init__(self, name: str):
        if name not in TOY_DATASETS:
            raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(TOY_DATASETS)}")
        self.name = name

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return toy_data(self.name, n, generator=generator)

    def config(self) -> dict:
        return {"name": self.name}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors (unknown command or choice, a missing or malformed argument) on one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train and sample the course's diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a TimeMLP on a 2-D toy set (cached)")
    train.add_argument("--data", required=True, help=f"toy set: {', '.join(TOY_DATASETS)}")
    train.add_argument("--target", default="eps", help=f"what the network predicts: {', '.join(CLI_TARGETS)}")
    train.add_argument("--steps", type=int, help="training steps (default: from the budget)")
    train.add_argument("--path", default="vp", help=f"noising path: {', '.join(PATHS)} (default: vp)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--budget", help="smoke, laptop or gpu (default: $DIFFUSION_LESSONS_BUDGET, else by device)")
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="write a resume checkpoint every N steps (default: every 10%% of the steps, "
                            "at most every 30 s); an interrupted run, started again, resumes there")
    train.add_argument("--out", type=FilePath, help="also write the checkpoint to this file")
    train.set_defaults(run=_train)
    sample = commands.add_parser("sample", help="sample a trained checkpoint with the probability-flow ODE")
    sample.add_argument("checkpoint", type=FilePath)
    sample.add_argument("--n", type=int, default=1000, help="number of samples (default: 1000)")
    sample.add_argument("--out", type=FilePath, required=True,
                        help="output: .npz (array 'samples') or a scatter plot (.png, .pdf, .svg)")
    sample.add_argument("--steps", type=int, default=100, help="solver steps from t = 1 to t_min (default: 100)")
    sample.add_argument("--method", default="heun", help=f"ODE solver: {', '.join(ODE_METHODS)} (default: heun)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--weights", choices=("ema", "model"), default="ema",
                        help="the EMA weights (default) or the last training weights")
    sample.set_defaults(run=_sample)
    pretrain = commands.add_parser("pretrain", help="train every chapter's models into the cache, then print a summary")
    pretrain.add_argument("--budget", help="smoke, laptop or gpu (default: $DIFFUSION_LESSONS_BUDGET, else by device)")
    pretrain.add_argument("--only", nargs="+", metavar="NAME", help="train these recipes only (see --list)")
    pretrain.add_argument("--list", action="store_true", help="list the recipes and exit")
    pretrain.set_defaults(run=_pretrain)
    commands.add_parser("bench", help="run the benchmarks (all arguments go to diffusion_lessons.bench)", add_help=False)
    return parser


def _pretrain(args) -> int:
    from . import pretrain  # the recipes build data sets: import them only when asked

    if args.list:
        print(pretrain.list_recipes())
        return 0
    rows = pretrain.pretrain(args.only, budget=args.budget)
    print(pretrain.format_table(rows))
    return 1 if any(row.source == "failed" for row in rows) else 0


def _bench(argv: list[str]) -> int:
    import importlib

    try:
        bench = importlib.import_module(f"{__package__}.bench")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.bench":
            raise
        print(f"{PROG}: error: the benchmarks are not installed here (no module {err.name})", file=sys.stderr)
        return 1
    return bench.main(argv)


def _train(args) -> int:
    if args.target not in CLI_TARGETS:
        raise ValueError(f"unknown target {args.target!r}; valid targets: {', '.join(CLI_TARGETS)}")
    data, path = ToySet(args.data), make_path(args.path)
    result = fit(TimeMLP(2), data, path, target=args.target, budget=args.budget, steps=args.steps, seed=args.seed,
                 name=f"{args.data}-{args.target}-{path.name}", checkpoint_every=args.checkpoint_every)
    file = result.checkpoint
    if args.out is not None:
        file = save_checkpoint(args.out, result.model, result.config, ema=result.ema, history=result.history)
    how = "loaded from the cache" if result.from_cache else f"trained in {result.seconds:.1f} s"
    if result.resumed_from:
        how = f"resumed from step {result.resumed_from}, {how}"
    print(f"{how}; final loss {result.history['loss'][-1]:.4f}\ncheckpoint: {file}")
    return 0


def _start_time(path, target: str, t_min: float) -> float:
    """t = 1, except where an eps or score model has no velocity there.

    Where alpha(1) = 0 (rf, cosine) the velocity needs x0_hat = (x - sigma eps_hat) / alpha, undefined
    at t = 1; those start at 1 - t_min, inside the range of times the model was trained on.
    """
    return 1.0 if target in ("x0", "velocity") or float(path.alpha(1.0)) > 1e-6 else 1.0 - t_min


def _sample(args) -> int:
    if args.out.suffix.lower() not in SAMPLE_FORMATS:
        raise ValueError(f"cannot write samples to {args.out}: use one of {', '.join(SAMPLE_FORMATS)}")
    if args.n < 1 or args.steps < 1:
        raise ValueError(f"--n and --steps must be positive; got {args.n} and {args.steps}")
    if args.method not in ODE_METHODS:
        raise ValueError(f"unknown method {args.method!r}; valid methods: {', '.join(ODE_METHODS)}")
    model, config = load_checkpoint(args.checkpoint, which=args.weights)
    missing = [k for k in ("path", "target", "t_min") if k not in config]
    if missing or "dim" not in config["model"]:
        raise CheckpointError(f"{args.checkpoint} cannot be sampled here: its config lacks "
                              f"{missing or ['model.dim']} (write it with `{PROG} train` or fit)")
    path, target, t_min = make_path(config["path"]), config["target"], float(config["t_min"])
    t_start = _start_time(path, target, t_min)
    generator = torch.Generator().manual_seed(args.seed)
    x = float(path.sigma(t_start)) * torch.randn(args.n, config["model"]["dim"], generator=generator)

    def velocity(x, t):
        return convert(model(x, t), target, "velocity", x, t, path)

    # the adaptive solver picks its own steps: its grid only says where to report x
    grid = [t_start, t_min] if args.method == "adaptive" else time_grid(args.steps, t_start, t_min)
    with torch.no_grad():
        x = sample_ode(velocity, x, grid, method=args.method)
    _write_samples(x.numpy(), args.out, title=f"{config['model']['class']}, {path.name}, {target}")
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _write_samples(samples: np.ndarray, out: FilePath, title: str) -> None:
    """samples [n, d] to .npz (array "samples") or a scatter plot of the first two coordinates."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        np.savez(out, samples=samples)
        return
    from matplotlib.figure import Figure  # no pyplot: no global backend, works headless

    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.savefig(out, dpi=150, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, status 2 or 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after it belongs to the benchmarks' own parser
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, CheckpointError, TrainingError, OSError) as err:
        print(f"{PROG}: error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    except KeyboardInterrupt:
        hint = "; run the same command again to resume from its last resume checkpoint" if args.command == "train" \
            else ""
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
