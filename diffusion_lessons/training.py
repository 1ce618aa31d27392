"""One trainer, `fit`, with a checkpoint cache that survives being killed.

`fit(model, data, path, target)` minimises `objectives.loss` with AdamW, keeps an exponential moving
average (EMA) of the weights, and caches the result: a run is identified by the SHA-256 of a
canonical JSON of everything that determines it (model config, path, target, steps, batch size,
learning rate, seed, EMA decay, weighting, t_min, logging interval, a fingerprint of the data, the
package version and a hash of the source of the modules that compute it), so a chapter that asks
twice for the same model trains it once. The checkpoint format (atomic writes, weights-only loads)
is in checkpoints.py; save_checkpoint, load_checkpoint and CheckpointError are exported from here too.

Faults. While it trains the cache entry `<name>-<key>.pt`, `fit` holds an exclusive lock on
`<name>-<key>.pt.lock`, so a second process asking for the same model waits and then loads the
first one's result. Every `checkpoint_every` steps it writes `<name>-<key>.partial.pt`: the same
format plus a "resume" section (optimizer state, step, the losses not yet logged and the states of
the random generators, all tensors). A killed run, called again, resumes there and ends in the same
state, bit for bit on CPU, as a run that was never interrupted; the partial file goes when the
final checkpoint is written. A NaN or infinite loss stops training before anything is written.

Hardware. On CUDA one step runs in bf16 autocast with fused AdamW, a compiled loss, the data on the
device and no host synchronisation between logging steps (train_step.py); under torchrun the ranks
share each global batch and average their gradients with DistributedDataParallel (distributed.py).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path as FilePath

import torch
from tqdm.auto import tqdm

from . import distributed, train_step
from .budget import pick
from .checkpoints import (CHECKPOINT_MARKER, CheckpointError, checkpoint_payload, exclusive_lock, load_checkpoint,
                          read_checkpoint, remove_temporaries, save_checkpoint, write_atomically)
from .nets import build_model
from .objectives import draw_noise
from .paths import TARGETS, Path
from .validate import check_data, check_fit_settings, positive_real, whole_number

__all__ = ["fit", "FitResult", "TrainingError", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "cache_dir", "CACHE_ENV", "CHECKPOINT_MARKER"]

CACHE_ENV = "DIFFUSION_LESSONS_CACHE"
# With the default checkpoint_every, resume checkpoints come every 10% of the steps but at most
# once per this many seconds: a run of a few seconds writes none, a long one loses little.
PARTIAL_MIN_SECONDS = 30.0
MAX_LR = 1e30  # larger learning rates are refused by name (near float32's range Adam's step overflows in torch)
# The modules whose source determines what a run computes; their hash joins the cache key.
_CODE_MODULES = ("nets.py", "objectives.py", "paths.py", "training.py", "train_step.py", "distributed.py")


class TrainingError(RuntimeError):
    """Training diverged (a NaN or infinite loss)."""


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the trained model, its EMA copy, the loss history and the checkpoint file."""

    model: torch.nn.Module
    ema: torch.nn.Module
    history: dict
    checkpoint: FilePath | None
    seconds: float
    from_cache: bool
    config: dict | None  # the run's settings, as hashed for the cache key and stored in the checkpoint
    resumed_from: int = 0  # the step a killed run was resumed from (0: trained from the start)
    clock: list | None = None  # [(step, seconds since the run started)] at each logged step; None from the cache

    def steps_per_second(self, after: int = 0) -> float:
        """Training speed between the first logged step >= `after` and the last one (after: skip warm-up
        and compilation). Each logged step reads the loss back to the host, so on CUDA the clock is synced."""
        points = [(k, t) for k, t in (self.clock or []) if k >= after]
        if len(points) < 2:
            raise ValueError(f"need two logged steps at or after step {after} to measure the speed; "
                             f"got {len(points)} (use a smaller log_every or more steps)")
        (k0, t0), (k1, t1) = points[0], points[-1]
        return (k1 - k0) / (t1 - t0)


def cache_dir() -> FilePath:
    """Where `fit` caches checkpoints: ``$DIFFUSION_LESSONS_CACHE``, else ``~/.cache/diffusion-lessons``."""
    return FilePath(os.environ.get(CACHE_ENV) or "~/.cache/diffusion-lessons").expanduser()


# -- run identity: settings, fingerprints, cache key ----------------------------------------------

def _settings(budget, steps, batch_size, lr, log_every) -> tuple[int, int, float, int]:
    """Steps, batch size, learning rate and logging interval; the ones not given come from the budget."""
    steps = pick(smoke=300, laptop=3000, gpu=20000, budget=budget) if steps is None else whole_number("steps", steps, 1)
    batch_size = (pick(smoke=256, laptop=512, gpu=4096, budget=budget) if batch_size is None
                  else whole_number("batch_size", batch_size, 1))
    lr = pick(smoke=3e-3, laptop=2e-3, gpu=1e-3, budget=budget) if lr is None else positive_real("lr", lr, "1e-3")
    if lr > MAX_LR:  # beyond float32's range the optimizer's step itself overflows, inside torch
        raise ValueError(f"lr must be at most {MAX_LR:g} (learning rates are around 1e-3); got {lr!r}")
    log_every = max(1, steps // 100) if log_every is None else whole_number("log_every", log_every, 1)
    return steps, batch_size, float(lr), log_every


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _fingerprint(data):
    """What identifies the data in the cache key.

    Tensor: shape, dtype and SHA-256 of its bytes; a pair (x, labels): the list of both;
    object with config(): its class and config;
    functools.partial: function name and arguments; other callables: their qualified name (so two
    different lambdas look alike: give such data a config() method); anything else: its repr.
    """
    if isinstance(data, torch.Tensor):
        raw = data.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
        return {"shape": list(data.shape), "dtype": str(data.dtype), "sha256": hashlib.sha256(raw).hexdigest()}
    if isinstance(data, (tuple, list)):  # (x, labels) of a class-conditional model
        return [_fingerprint(v) for v in data]
    if callable(getattr(data, "config", None)):
        return {"class": type(data).__qualname__, "config": data.config()}
    if isinstance(data, functools.partial):
        return {"callable": _qualname(data.func), "args": list(data.args), "keywords": data.keywords}
    if callable(data) and hasattr(data, "__qualname__"):
        return {"callable": _qualname(data)}
    return repr(data)


def _version() -> str:
    import diffusion_lessons  # the package, imported by now; read lazily to avoid an import cycle

    return str(getattr(diffusion_lessons, "__version__", "0"))


@functools.lru_cache(maxsize=None)
def _code_hash() -> str:
    """SHA-256 (16 hex digits) of the source of the modules that compute a run: an edit retrains."""
    digest = hashlib.sha256()
    for name in _CODE_MODULES:
        try:
            digest.update((FilePath(__file__).with_name(name)).read_bytes())
        except OSError:  # installed without sources: the version alone identifies the code
            digest.update(name.encode())
    return digest.hexdigest()[:16]


def _run_config(model, data, path, settings: dict, reinit: bool) -> dict:
    """Everything that determines a run, as plain JSON (hashed into the cache key)."""
    weighting = settings["weighting"]
    start = "seed" if reinit else hashlib.sha256(
        b"".join(v.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes()
                 for v in model.state_dict().values())).hexdigest()
    return json.loads(json.dumps({
        **settings,
        "weighting": _qualname(weighting) if callable(weighting) else weighting,
        "model": model.config, "path": path.config(), "data": _fingerprint(data),
        "init": start, "version": _version(), "code": _code_hash(),
    }, sort_keys=True, default=repr))


def _objective_config(objective) -> dict:
    """fit's objective= argument checked (see fit) and described for the cache key."""
    missing = [m for m in ("config", "draw", "loss", "ema_decay") if not callable(getattr(objective, m, None))]
    if missing:
        raise ValueError(f"objective must have the methods config, draw, loss and ema_decay; "
                         f"{type(objective).__name__} lacks {', '.join(missing)}")
    return {"class": _qualname(type(objective)), "config": objective.config()}


def _cache_file(config: dict, name: str) -> FilePath:
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"checkpoint name {name!r} may use letters, digits, '_', '-' and '.' only")
    key = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return cache_dir() / f"{name}-{key[:16]}.pt"


def _partial_file(file: FilePath) -> FilePath:
    """Where the resume checkpoint of cache entry `<name>-<key>.pt` lives: `<name>-<key>.partial.pt`."""
    return file.with_suffix(".partial.pt")


# -- the training loop ----------------------------------------------------------------------------

@dataclasses.dataclass
class _Run:
    """A run between two steps: what a resume checkpoint holds besides the settings.

    generators: "data" draws the minibatches, "noise" the times and the noise; with their states,
    the optimizer's moments and the losses not yet logged, a resumed run repeats the same arithmetic.
    """

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict
    step: int = 0
    history: dict = dataclasses.field(default_factory=lambda: {"step": [], "loss": []})
    window: list = dataclasses.field(default_factory=list)  # losses of the steps since the last log
    clock: list = dataclasses.field(default_factory=list)  # (step, time.perf_counter()) at each log; not saved

    def resume_state(self, window: torch.Tensor) -> dict:
        """What a resume checkpoint holds besides the weights; window: the pending losses (_check_finite)."""
        rng = {name: g.get_state() for name, g in self.generators.items()}  # uint8 tensors
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "rng": {**rng, "global": torch.get_rng_state()}, "window": window}

    def restore(self, payload: dict) -> None:
        resume = payload["resume"]
        self.model.load_state_dict(payload["state_dict"])
        self.ema.load_state_dict(payload["ema_state_dict"])
        self.optimizer.load_state_dict(resume["optimizer"])
        for name, g in self.generators.items():
            g.set_state(resume["rng"][name])
        torch.set_rng_state(resume["rng"]["global"])
        self.step, self.history = int(resume["step"]), payload["history"]
        device = next(self.model.parameters()).device
        self.window = list(resume["window"].to(device).unbind())


def _diverged(step: int, what: str, lr: float) -> TrainingError:
    return TrainingError(f"training diverged at step {step}: {what}. Try a lower learning rate than lr={lr:g} "
                         f"(e.g. lr={lr / 10:g}); no checkpoint was written from the diverged weights")


def _check_window(run: _Run, lr: float) -> torch.Tensor:
    """The losses of the steps since the last log, averaged over the ranks, on the CPU (one device
    sync, one all-reduce); TrainingError naming the first non-finite one."""
    values = distributed.mean_over_ranks(torch.stack(run.window)).cpu() if run.window else torch.zeros(0)
    bad = (~torch.isfinite(values.float())).nonzero()
    if len(bad):
        raise _diverged(run.step - len(values) + 1 + int(bad[0]), f"the loss is {values[bad[0]].item()}", lr)
    return values


def _check_finite(run: _Run, lr: float) -> torch.Tensor:
    """Before anything is written: the pending losses (returned) and all weights, EMA included, must be finite."""
    values = _check_window(run, lr)
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise _diverged(run.step, "the weights are no longer finite", lr)
    if not all(bool(torch.isfinite(p).all()) for p in run.ema.parameters()):
        raise _diverged(run.step, "the EMA weights are no longer finite", lr)
    return values


def _record(run: _Run, lr: float, bar) -> None:
    """Append the window's mean loss to the history; raise TrainingError at the first non-finite loss."""
    values = _check_window(run, lr).float()
    run.history["step"].append(run.step)
    run.history["loss"].append(values.mean().item())
    run.clock.append((run.step, time.perf_counter()))  # after .item(): the device has finished the step
    run.window = []
    bar.update(run.step - bar.n)
    bar.set_postfix(loss=f"{run.history['loss'][-1]:.4f}")


def _partial_schedule(checkpoint_every: int | None, steps: int):
    """due(step) -> bool: whether to write a resume checkpoint after `step`.

    An int: every that many steps (0: never). None: every 10% of the steps, at most once per
    PARTIAL_MIN_SECONDS. Under DDP every rank gets rank 0's answer (the ranks check their losses
    together before rank 0 writes).
    """
    every, gap = (max(1, steps // 10), PARTIAL_MIN_SECONDS) if checkpoint_every is None else (int(checkpoint_every), 0)
    last = [time.monotonic()]

    def due(step: int) -> bool:
        if every <= 0 or step % every or step >= steps:
            return False
        if not distributed.from_rank0(time.monotonic() - last[0] >= gap):
            return False
        last[0] = time.monotonic()
        return True

    return due


def _train(run: _Run, next_batch, loss_step, s: dict, bar, save_partial) -> None:
    """AdamW on objectives.loss from run.step to s["steps"]; EMA decay warms up as min(decay, (1+k)/(10+k)).

    Each step draws a global batch and its noise (u, eps) with the run's generators (or what
    s["objective"].draw draws, with the EMA rate it asks for), and for a class-conditional model drops
    each label with probability s["label_dropout"] by a draw of the noise generator; loss_step
    (train_step.LossStep) takes this rank's rows, runs forward and backward and returns the loss.
    save_partial(run, window), when given (under DDP on every rank, writing on rank 0 only), is called at
    the steps the schedule picks, after the checks.
    """
    due = _partial_schedule(s["checkpoint_every"], s["steps"])
    ema_update, objective = train_step.ema_updater(run.ema, run.model), s.get("objective")
    num_classes = _num_classes(run.model)
    for step in range(run.step + 1, s["steps"] + 1):
        x0, y = next_batch() if num_classes else (next_batch(), None)
        if objective is None:
            noise, decay = draw_noise(x0, run.generators["noise"]), None
        else:
            noise = objective.draw(x0, run.generators["noise"], step, s["steps"])
            decay = objective.ema_decay(step, s["steps"])
        if num_classes:
            y = train_step.drop_labels(y, s["label_dropout"], num_classes, run.generators["noise"])
        run.optimizer.zero_grad(set_to_none=True)
        value = loss_step(x0, *noise, y=y)
        run.optimizer.step()
        ema_update(min(s["ema_decay"], (1 + step) / (10 + step)) if decay is None else decay)
        run.step = step
        run.window.append(value)
        if step % s["log_every"] == 0 or step == s["steps"]:
            _record(run, s["lr"], bar)
        if save_partial is not None and due(step):
            save_partial(run, _check_finite(run, s["lr"]))
    _check_finite(run, s["lr"])


def _num_classes(model) -> int | None:
    """K for a class-conditional model (built with num_classes = K), else None."""
    return (getattr(model, "config", None) or {}).get("num_classes") or None


def _reinitialise(model, seed: int) -> None:
    """Fresh weights drawn with `seed` (the model's own initialisation), leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(model.config)
    model.load_state_dict(fresh.state_dict())


def _start(model, data, s: dict, seed: int, device):
    """(run, next_batch) at step 0 from the model's current weights (channels_last on CUDA when convolutional)."""
    train_step.to_channels_last(model, device)
    ema = copy.deepcopy(model.train()).requires_grad_(False)
    next_batch, data_generator = train_step.batches(data, s["batch_size"], device, next(model.parameters()).dtype,
                                                    seed, s["steps"], _num_classes(model))
    noise_generator = torch.Generator(device=device).manual_seed(seed + 1)  # times and noise; data has `seed`
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], fused=device.type == "cuda" or None)
    return _Run(model, ema, optimizer, {"data": data_generator, "noise": noise_generator}), next_batch


def _resume(model, data, s: dict, seed: int, device, partial: FilePath | None, config: dict):
    """(run, next_batch): from the resume checkpoint `partial` when it holds this run, else from step 0."""
    run, next_batch = _start(model, data, s, seed, device)
    if partial is None or not partial.exists():
        return run, next_batch
    initial = copy.deepcopy(model.state_dict())
    try:
        payload = read_checkpoint(partial)
        resume = payload.get("resume")
        if payload["config"] != config or not isinstance(resume, dict) or not 0 < resume.get("step", 0) < s["steps"]:
            raise CheckpointError("it holds a different run")
        run.restore(payload)
        train_step.match_layouts(run.optimizer)
    except (CheckpointError, RuntimeError, KeyError, TypeError, ValueError) as err:
        warnings.warn(f"ignoring the resume checkpoint {partial} ({err}); training from the start", stacklevel=4)
        model.load_state_dict(initial)
        return _start(model, data, s, seed, device)
    return run, next_batch


def _run_training(model, data, path, s: dict, seed: int, device, config, file, desc: str, progress: bool):
    """(run, resumed_from): train, from file's partial checkpoint when there is one; write file at the end
    (rank 0 only, under DDP; every rank reads the partial checkpoint)."""
    writer = distributed.rank_and_world()[0] == 0
    partial = None if file is None else _partial_file(file)
    with torch.random.fork_rng(devices=[]):  # a model that draws from the global RNG draws the same numbers
        torch.default_generator.manual_seed(seed + 2)
        run, next_batch = _resume(model, data, s, seed, device, partial, config)
        resumed_from = run.step
        if resumed_from and progress:
            tqdm.write(f"{desc}: resuming from step {run.step} of {s['steps']} ({partial.name})", file=sys.stderr)

        def save_partial(r: _Run, window: torch.Tensor) -> None:
            if writer:
                write_atomically(checkpoint_payload(r.model, config, r.ema, r.history, resume=r.resume_state(window)),
                                 partial)

        channels_last = train_step.to_channels_last(model, device)  # done by _start; says whether
        loss_step = train_step.LossStep(distributed.wrap(model, device), model.parameters(), path, s, device,
                                        train_step.compile_mode(s["compile"], device, s["steps"] - run.step),
                                        channels_last, ema=run.ema)
        with tqdm(total=s["steps"], initial=run.step, disable=not (progress and writer), desc=desc) as bar:
            _train(run, next_batch, loss_step, s, bar, save_partial if partial is not None else None)
    if channels_last:  # back to the usual layout for whoever uses the model next
        for m in (model, run.ema):
            m.to(memory_format=torch.contiguous_format)
    model.eval()
    run.ema.eval()
    if file is not None and writer:
        save_checkpoint(file, model, config, ema=run.ema, history=run.history)
        partial.unlink(missing_ok=True)
    distributed.barrier()  # every rank returns once the checkpoint is written
    return run, resumed_from


# -- fit: the cache, its lock, and the run ---------------------------------------------------------

def fit(model, data, path: Path, target: str = "eps", budget: str | None = None, steps: int | None = None,
        seed: int = 0, batch_size: int | None = None, lr: float | None = None, ema_decay: float = 0.999,
        cache: bool = True, name: str | None = None, device=None, progress: bool = True,
        weighting=None, t_min: float = 1e-3, log_every: int | None = None, reinit: bool = True,
        checkpoint_every: int | None = None, compile: bool | str | None = None, objective=None,
        label_dropout: float = 0.1) -> FitResult:
    """Train `model` to predict `target` on `data` along `path`; cached by the run's settings.

    data: a tensor [N, ...], an object with .sample(n, generator=...), or a callable data(n, generator).
    Class-conditional models (built with num_classes = K, e.g. TimeMLP(2, num_classes=2)) train on
    labelled data: a pair (x [N, ...], labels [N]) of tensors, an object asked for
    .sample(n, generator=..., return_labels=True) (a GaussianMixture's labels are its components),
    or a callable data(n, generator) returning (x, labels); each label is replaced by the null label
    K with probability label_dropout (joins the cache key; Ho & Salimans 2022 use 0.1 to 0.2), so the
    network learns p(x | y) and p(x) at once, as classifier-free guidance needs. label_dropout is
    ignored for unconditional models.
    steps, batch_size, lr: default per budget (smoke 300 / 256 / 3e-3, laptop 3000 / 512 / 2e-3,
    gpu 20000 / 4096 / 1e-3). reinit: start from fresh weights drawn with `seed`, so that the settings
    determine the run (same seed, same weights on CPU); False continues from the current weights
    (their hash joins the cache key). Models without a `.config` are neither reinitialised nor cached.
    device: default cuda when available, else cpu in float32. On CUDA: bf16 autocast, fused AdamW,
    channels_last for convolutional models and the data on the device (a sampler is drawn once into
    a pool of up to train_step.POOL_SAMPLES samples). compile: torch.compile the loss; None (auto):
    with CUDA graphs ("reduce-overhead") for runs of train_step.COMPILE_MIN_STEPS steps or more on
    one GPU, else not; True: the default mode; False: never; a string: that mode. If compiling
    fails, fit warns and trains without it. Neither the device nor compile joins the cache key.
    checkpoint_every: steps between resume checkpoints of a cached run (0: none; default: every 10%
    of the steps, at most once per PARTIAL_MIN_SECONDS); a killed run called again resumes there.
    Under torchrun (or an initialised torch.distributed) the W processes train one model with DDP:
    batch_size is the global batch, split into W shards (see distributed.py); rank 0 writes the cache.
    objective: another training loss than objectives.loss (e.g. a flow-map objective), an object with
    config() -> dict (joins the cache key), draw(x0, generator, step, steps) -> tuple of tensors [N, ...]
    (one step's randomness), loss(model, ema, x0, *drawn) -> scalar (ema: the frozen EMA copy, a target
    network) and ema_decay(step, steps) -> the EMA rate, or None for fit's; target is then not used.
    Returns FitResult(model, ema, history, checkpoint, seconds, from_cache, config, resumed_from);
    both models in eval mode. Raises ValueError naming the argument for a bad setting (steps 1.5, seed
    2**70, ema_decay outside [0, 1], t_min outside [0, 1), negative checkpoint_every, NaN in a data
    tensor) before any work, and CheckpointError when the cache path cannot hold a file. Raises
    TrainingError (naming the step) when the loss, the weights or the EMA become NaN or infinite;
    nothing is then written from the diverged weights. A KeyboardInterrupt that stops a cached run
    carries `.resume_checkpoint`: the resume checkpoint a new call will resume from, or None.
    """
    started = time.perf_counter()
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    steps, batch_size, lr, log_every = _settings(budget, steps, batch_size, lr, log_every)
    check_fit_settings(seed, ema_decay, t_min, checkpoint_every)
    check_data(data, batch_size)
    settings = dict(target=target, steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema_decay,
                    weighting=weighting, t_min=t_min, log_every=log_every)
    if objective is not None:
        settings["objective"] = _objective_config(objective)
    if _num_classes(model):
        if objective is not None:
            raise ValueError("class labels (a model built with num_classes) cannot be combined with a custom "
                             "objective yet: its loss takes no labels")
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout is a probability in [0, 1]; got {label_dropout}")
        settings["label_dropout"] = float(label_dropout)
    device = distributed.setup(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    world = distributed.rank_and_world()[1]
    if batch_size % world:
        nearest = batch_size // world * world or world
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {world} processes training together "
                         f"(each takes an equal share of the global batch); try batch_size={nearest}")
    train_step.compile_mode(compile, device, steps)  # a bad value fails before any work
    config = _run_config(model, data, path, settings, reinit) if hasattr(model, "config") else None
    if cache and config is None:
        warnings.warn(f"{type(model).__name__} has no .config, so fit cannot cache it", stacklevel=2)
    desc = name or type(model).__name__
    file = _cache_file(config, desc) if cache and config else None
    if file is not None:
        _check_cache_paths(file)
    model.to(device)
    s = {**settings, "checkpoint_every": checkpoint_every, "compile": compile, "objective": objective}

    def result(ema, history, from_cache, resumed_from=0, run=None):
        clock = None if run is None else [(k, t - started) for k, t in run.clock]
        return FitResult(model, ema, history, file, time.perf_counter() - started, from_cache, config, resumed_from,
                         clock)

    if file is None:
        if reinit and config is not None:
            _reinitialise(model, seed)
        run, _ = _run_training(model, data, path, s, seed, device, config, None, desc, progress)
        return result(run.ema, run.history, False, run=run)
    seen = _stamp(file)
    cached = _from_cache(file, model, config) if seen else None  # a finished entry needs no lock
    if distributed.everyone(cached is not None):
        _drop_stale_partial(file)
        return result(*cached, True)
    with distributed.on_rank0(exclusive_lock(file, desc if progress else None)):
        cached = _written_meanwhile(file, model, config, seen)
        if cached is not None:
            _drop_stale_partial(file)
            return result(*cached, True)
        if distributed.rank_and_world()[0] == 0:
            remove_temporaries(file)
            remove_temporaries(_partial_file(file))
        if reinit:
            _reinitialise(model, seed)
        try:
            run, resumed_from = _run_training(model, data, path, s, seed, device, config, file, desc, progress)
        except KeyboardInterrupt as interrupt:  # tell the caller whether a resume checkpoint exists
            partial = _partial_file(file)
            interrupt.resume_checkpoint = partial if partial.is_file() else None
            raise
    return result(run.ema, run.history, False, resumed_from, run)


def _check_cache_paths(file: FilePath) -> None:
    """Before training: the cache entry and its resume checkpoint must be files (or absent), its folder a
    folder, or the trained model could not be saved at the end."""
    folder = file.parent
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"the model cache {folder} is not a folder; remove it or set ${CACHE_ENV} to a folder")
    for path in (file, _partial_file(file)):
        if path.exists() and not path.is_file():
            raise CheckpointError(f"the cache path {path} is a directory (or another non-file), so the trained "
                                  f"model could not be saved there; remove it, or set ${CACHE_ENV} elsewhere")


def _drop_stale_partial(file: FilePath) -> None:
    """Delete a resume checkpoint left beside a finished, valid cache entry (a run killed between writing
    the entry and deleting its resume file): nobody resumes from it any more. Rank 0 only."""
    if distributed.rank_and_world()[0] == 0:
        _partial_file(file).unlink(missing_ok=True)


def _written_meanwhile(file: FilePath, model, config: dict, seen):
    """(ema, history) of the cache entry when another process wrote it while this one waited for the
    lock, else None. Under DDP rank 0 (holding the lock) looks and the other ranks load what it found."""
    rank, world = distributed.rank_and_world()
    now = _stamp(file)
    if world == 1:
        return _from_cache(file, model, config) if now and now != seen else None
    mine = _from_cache(file, model, config) if rank == 0 and now else None
    if not distributed.from_rank0(mine is not None):
        return None
    return mine if rank == 0 else _from_cache(file, model, config)


def _stamp(file: FilePath):
    """(inode, mtime, size) of file, or None when it does not exist: tells whether it was rewritten."""
    try:
        st = file.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _from_cache(file: FilePath, model, config: dict):
    """(ema, history) loaded into `model` from a cached checkpoint, or None (with a warning) if unusable."""
    try:
        payload = read_checkpoint(file)
        if payload["config"] != config or payload.get("ema_state_dict") is None:
            raise CheckpointError(f"{file} holds a different run")
        model.load_state_dict(payload["state_dict"])
        ema = copy.deepcopy(model)
        ema.load_state_dict(payload["ema_state_dict"])
    except RuntimeError as err:  # CheckpointError, or load_state_dict's mismatch
        warnings.warn(f"ignoring the cached checkpoint {file} ({err}); training again", stacklevel=3)
        return None
    model.eval()
    return ema.eval().requires_grad_(False), payload.get("history") or {"step": [], "loss": []}


