"""The command line: train a model on a 2-D toy set, then sample it with the probability-flow ODE.

    diffusion-lessons train --data moons --target eps --steps 2000 [--path vp] [--seed 0]
                            [--budget laptop] [--checkpoint-every 500] [--out model.pt]
    diffusion-lessons sample model.pt --n 2000 --out samples.png [--steps 100] [--method heun] [--seed 0]
    diffusion-lessons pretrain [--budget smoke|laptop|gpu] [--only NAME ... | --book] [--list] [--ship]
    diffusion-lessons bench [ARGS ...]

`train` fits a TimeMLP with `training.fit` (so the checkpoint lands in the cache and a second run
is instant; an interrupted run, started again, resumes from its last resume checkpoint) and prints
where the checkpoint is. `sample` rebuilds the model from the checkpoint, turns its prediction into
the PF-ODE velocity u = alpha' x0_hat + sigma' eps_hat with `paths.convert`, and integrates
dx/dt = u from noise to data (Heun's method unless --method says otherwise). `pretrain` trains every
recipe (the recipes package) into the cache and prints a summary table (pretrain.py), `--book` only those the
chapters load (the shipped set: what `DIFFUSION_LESSONS_WEIGHTS=train make book` trains); with
--ship it writes them as the package's shipped weights (shipped.py); `bench` hands
its arguments to diffusion_lessons.bench.

Every error the user can cause (an unknown name, a bad number, a missing, damaged or unusable file, an
output that cannot be written) ends the program with one line on stderr, naming the bad value and the
valid ones, and a non-zero status; `sample` writes nothing unless every sample is finite. Warnings
(e.g. a damaged cache entry that is retrained) are one line too.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path as FilePath

import numpy as np
import torch

from .checkpoints import read_checkpoint
from .distributions import TOY_DATASETS, toy_data
from .nets import TimeMLP
from .paths import PATHS, TARGETS, convert, make_path
from .solvers import ODE_METHODS, sample_ode, time_grid
from .training import (
    CheckpointError,
    TrainingError,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from .validate import check_seed, real_in, whole_number

__all__ = ["main"]

PROG = "diffusion-lessons"
CLI_TARGETS = ("eps", "x0", "score", "velocity")
SAMPLE_FORMATS = (".npz", ".png", ".pdf", ".svg")
MAX_SAMPLES = 10_000_000  # more in one run: run again with another --seed
MAX_STEPS = 100_000  # far past where the solvers' error stops changing the samples
CHUNK = 65_536  # samples integrated at once: memory stays near the size of the output
T_EDGE = 1e-3  # where sampling stops (and, on rf and cosine, starts) when the checkpoint's t_min is 0


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
    from . import __version__

    parser = _Parser(prog=PROG, description="Train and sample the course's diffusion models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
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
    which = pretrain.add_mutually_exclusive_group()
    which.add_argument("--only", nargs="+", metavar="NAME", help="train these recipes only (see --list)")
    which.add_argument("--book", action="store_true",
                       help="train only the recipes the chapters load (those whose weights ship), not the extra ones")
    pretrain.add_argument("--list", action="store_true", help="list the recipes and exit")
    pretrain.add_argument("--ship", action="store_true",
                          help="also write the weights shipped with the package (diffusion_lessons/weights, MANIFEST.json)")
    pretrain.set_defaults(run=_pretrain)
    commands.add_parser("bench", help="run the benchmarks (all arguments go to diffusion_lessons.bench)", add_help=False)
    return parser


def _pretrain(args) -> int:
    from . import pretrain  # the recipes build data sets: import them only when asked

    if args.list:
        print(pretrain.list_recipes())
        return 0
    from . import recipes

    # --book is the shipped set, which is also what --ship writes by default (replacing the whole set)
    names = recipes.shipped_names() if args.book and not args.ship else args.only
    rows = (pretrain.ship if args.ship else pretrain.pretrain)(names, budget=args.budget)
    print(pretrain.format_table(rows))
    return 1 if any(row.source in ("failed", "claim fails") for row in rows) else 0


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


def _time_range(path, target: str, t_min: float) -> tuple[float, float]:
    """(t_start, t_end) of the PF-ODE solve, both where the model's velocity is defined.

    It ends at t_min, the smallest time the model was trained on, or at T_EDGE when t_min = 0: where
    sigma = 0 the velocity of an eps, score or x0 model divides by sigma. It starts at t = 1, except
    where an eps or score model has no velocity there: where alpha(1) = 0 (rf, cosine) the velocity
    needs x0_hat = (x - sigma eps_hat) / alpha, undefined at t = 1; those start at 1 - t_end.
    """
    t_end = t_min if t_min > 0 else T_EDGE
    t_start = 1.0 if target in ("x0", "velocity") or float(path.alpha(1.0)) > 1e-6 else 1.0 - t_end
    return t_start, t_end


def _check_sample_args(args) -> None:
    """Everything `sample` is given on the command line, checked before the checkpoint is read."""
    if args.out.suffix.lower() not in SAMPLE_FORMATS:
        raise ValueError(f"cannot write samples to {args.out}: use one of {', '.join(SAMPLE_FORMATS)}")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a file name such as {args.out / 'samples.npz'}")
    whole_number("--n", args.n, 1, MAX_SAMPLES, f"a whole number from 1 to {MAX_SAMPLES} (for more, run again "
                                                 "with another --seed)")
    whole_number("--steps", args.steps, 1, MAX_STEPS, f"a whole number from 1 to {MAX_STEPS}")
    check_seed(args.seed, "--seed")
    if args.method not in ODE_METHODS:
        raise ValueError(f"unknown method {args.method!r}; valid methods: {', '.join(ODE_METHODS)}")


def _sampling_config(file, config: dict):
    """(path, target, t_min, dim) from a checkpoint's config; CheckpointError naming what is unusable."""
    missing = [k for k in ("path", "target", "t_min") if k not in config]
    if missing or "dim" not in config["model"]:
        raise CheckpointError(f"{file} cannot be sampled here: its config lacks "
                              f"{missing or ['model.dim']} (write it with `{PROG} train` or fit)")
    try:
        path = make_path(config["path"])
    except ValueError as err:
        raise CheckpointError(f"{file} has an unusable path in its config: {err}") from None
    target, t_min = config["target"], config["t_min"]
    if target not in TARGETS:
        raise CheckpointError(f"{file} has an unknown target {target!r} in its config; valid: {', '.join(TARGETS)}")
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not real_in("t_min", t_min, 0, 1) \
            or t_min == 1:
        raise CheckpointError(f"{file} has t_min = {t_min!r} in its config; it must be a number in [0, 1)")
    return path, target, float(t_min), config["model"]["dim"]


def _sample(args) -> int:
    _check_sample_args(args)
    with _output(args.out) as out:  # a file that cannot be written fails here, before any work
        model, config = load_checkpoint(args.checkpoint, which=args.weights)
        path, target, t_min, dim = _sampling_config(args.checkpoint, config)
        t_start, t_end = _time_range(path, target, t_min)

        def velocity(x, t):
            prediction = model(x, t)
            if not bool(torch.isfinite(prediction).all()):
                raise CheckpointError(f"the model in {args.checkpoint} predicts NaN or infinite values at t = "
                                      f"{float(t):.3g}; nothing was written (retrain it)")
            try:
                return convert(prediction, target, "velocity", x, t, path)
            except ValueError as err:  # its predictions overflow on the way to the velocity
                raise CheckpointError(f"sampling the model in {args.checkpoint} failed: {err}; nothing was "
                                      "written (retrain it)") from None

        # the adaptive solver picks its own steps: its grid only says where to report x
        grid = [t_start, t_end] if args.method == "adaptive" else time_grid(args.steps, t_start, t_end)
        x = _integrate(velocity, path, t_start, (args.n, dim), grid, args)
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        if bad:
            raise CheckpointError(f"the model in {args.checkpoint} gave NaN or infinite values for {bad} of {args.n} "
                                  f"samples ({args.method}, {args.steps} steps from t = {t_start:g} to {t_end:g}); "
                                  "nothing was written: try more --steps, or retrain the model")
        _write_samples(x.numpy(), out, args.out.suffix.lower(),
                       title=f"{config['model']['class']}, {path.name}, {target}")
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _integrate(velocity, path, t_start: float, shape: tuple, grid, args) -> torch.Tensor:
    """x(t_end) [n, dim] from x(t_start) ~ N(0, sigma(t_start)^2 I), in chunks of CHUNK samples; a failed
    allocation is a ValueError naming --n."""
    generator = torch.Generator().manual_seed(args.seed)
    try:
        x = float(path.sigma(t_start)) * torch.randn(shape, generator=generator)
        with torch.no_grad():
            return torch.cat([sample_ode(velocity, chunk, grid, method=args.method) for chunk in x.split(CHUNK)])
    except (MemoryError, RuntimeError) as err:  # the CPU allocator raises RuntimeError("... can't allocate ...")
        if isinstance(err, RuntimeError) and "alloc" not in str(err).lower():
            raise
        raise ValueError(f"not enough memory to sample --n {args.n} points of dimension {shape[1]}; "
                         "use a smaller --n") from None


@contextlib.contextmanager
def _output(out: FilePath):
    """An open temporary file beside `out`, renamed to `out` when the block succeeds and deleted when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(f"cannot write to the folder of --out {out}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        FilePath(tmp).unlink(missing_ok=True)


def _write_samples(samples: np.ndarray, f, suffix: str, title: str) -> None:
    """samples [n, d] to the open file f: .npz (array "samples") or a scatter plot of the first two coordinates."""
    if suffix == ".npz":
        np.savez(f, samples=samples)
        return
    from matplotlib.figure import Figure  # no pyplot: no global backend, works headless

    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.savefig(f, format=suffix[1:], dpi=150, bbox_inches="tight")


def _interrupted(args, interrupt: KeyboardInterrupt) -> str:
    """The line printed on Ctrl-C: for `train`, whether running it again resumes, and from which step."""
    if args.command != "train":
        return f"{PROG}: interrupted"
    partial = getattr(interrupt, "resume_checkpoint", None)
    try:
        step = read_checkpoint(partial)["resume"]["step"] if partial is not None else None
    except (CheckpointError, KeyError, TypeError):
        step = None
    if step is None:
        return (f"{PROG}: interrupted before the first resume checkpoint (written after 10% of the steps and at "
                "least 30 s, or every N steps with --checkpoint-every N); the same command starts again from step 0")
    return f"{PROG}: interrupted; run the same command again to resume from its resume checkpoint at step {step}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, without the line of source Python would print under them."""
    print(f"{PROG}: warning: " + " ".join(str(message).split()), file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, status 2 or 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after it belongs to the benchmarks' own parser
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():  # restores the usual warning display when main returns
        warnings.showwarning = _show_warning
        try:
            return args.run(args)
        except (ValueError, CheckpointError, TrainingError, OSError) as err:
            print(f"{PROG}: error: " + " ".join(str(err).split()), file=sys.stderr)
            return 2 if isinstance(err, ValueError) else 1
        except KeyboardInterrupt as interrupt:
            print(_interrupted(args, interrupt), file=sys.stderr)
            return 130
