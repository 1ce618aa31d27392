"""One trainer, `fit`, and one checkpoint format.

`fit(model, data, path, target)` minimises `objectives.loss` with AdamW, keeps an exponential moving
average (EMA) of the weights, and caches the result: a run is identified by the SHA-256 of a
canonical JSON of everything that determines it (model config, path, target, steps, batch size,
learning rate, seed, EMA decay, weighting, t_min, a fingerprint of the data, package version), so
a chapter that asks twice for the same model trains it once.

Checkpoints are plain dicts of tensors, strings, numbers, lists and dicts, written atomically
(a temporary file in the same folder, then os.replace) and read with torch.load(weights_only=True):

    {"diffusion_lessons_checkpoint": 1, "config": {..., "model": {"class": "TimeMLP", ...}},
     "state_dict": {...}, "ema_state_dict": {...} or None, "history": {"step": [...], "loss": [...]}}
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path as FilePath

import torch
from tqdm.auto import tqdm

from .budget import pick
from .nets import build_model
from .objectives import loss
from .paths import TARGETS, Path

__all__ = ["fit", "FitResult", "TrainingError", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "cache_dir", "CACHE_ENV", "CHECKPOINT_MARKER"]

CACHE_ENV = "DIFFUSION_LESSONS_CACHE"
CHECKPOINT_MARKER = "diffusion_lessons_checkpoint"
CHECKPOINT_VERSION = 1


class TrainingError(RuntimeError):
    """Training diverged (a NaN or infinite loss)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, foreign, or does not match what was asked for."""


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


def cache_dir() -> FilePath:
    """Where `fit` caches checkpoints: ``$DIFFUSION_LESSONS_CACHE``, else ``~/.cache/diffusion-lessons``."""
    return FilePath(os.environ.get(CACHE_ENV) or "~/.cache/diffusion-lessons").expanduser()


# -- run identity: settings, fingerprints, cache key ----------------------------------------------

def _settings(budget, steps, batch_size, lr) -> tuple[int, int, float]:
    """Steps, batch size and learning rate; the ones not given come from the budget."""
    steps = pick(smoke=300, laptop=3000, gpu=20000, budget=budget) if steps is None else int(steps)
    batch_size = pick(smoke=256, laptop=512, gpu=4096, budget=budget) if batch_size is None else int(batch_size)
    lr = pick(smoke=3e-3, laptop=2e-3, gpu=1e-3, budget=budget) if lr is None else float(lr)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"fit needs steps >= 1, batch_size >= 1 and lr > 0; got {steps}, {batch_size}, {lr}")
    return steps, batch_size, lr


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _fingerprint(data):
    """What identifies the data in the cache key.

    Tensor: shape, dtype and SHA-256 of its bytes; object with config(): its class and config;
    functools.partial: function name and arguments; other callables: their qualified name (so two
    different lambdas look alike: give such data a config() method); anything else: its repr.
    """
    if isinstance(data, torch.Tensor):
        raw = data.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
        return {"shape": list(data.shape), "dtype": str(data.dtype), "sha256": hashlib.sha256(raw).hexdigest()}
    if callable(getattr(data, "config", None)):
        return {"class": type(data).__qualname__, "config": data.config()}
    if isinstance(data, functools.partial):
        return {"callable": _qualname(data.func), "args": list(data.args), "keywords": data.keywords}
    if callable(data) and hasattr(data, "__qualname__"):
        return {"callable": _qualname(data)}
    return repr(data)


def _plain(value, what: str = "checkpoint config"):
    """value as plain JSON types (tuples become lists); objects without a JSON form are an error."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"the {what} must be JSON-like (dicts, lists, strings, numbers): {err}") from None


def _version() -> str:
    import diffusion_lessons  # the package, imported by now; read lazily to avoid an import cycle

    return str(getattr(diffusion_lessons, "__version__", "0"))


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
        "init": start, "version": _version(),
    }, sort_keys=True, default=repr))


def _cache_file(config: dict, name: str) -> FilePath:
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"checkpoint name {name!r} may use letters, digits, '_', '-' and '.' only")
    key = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return cache_dir() / f"{name}-{key[:16]}.pt"


# -- the training loop ----------------------------------------------------------------------------

def _batches(data, batch_size: int, device, dtype, seed: int):
    """A function returning one minibatch [batch_size, ...] on `device`, drawn reproducibly from `seed`.

    Tensor [N, ...]: rows drawn uniformly with replacement; an object with .sample(n, generator=...);
    or a callable data(n, generator). Objects and callables get a CPU generator.
    """
    if isinstance(data, torch.Tensor):
        if data.dim() < 2 or len(data) == 0:
            raise ValueError(f"data must be a tensor [N, ...] with N >= 1 (N samples); got shape {list(data.shape)}")
        data = data.to(device=device, dtype=dtype)
        gen = torch.Generator(device=device).manual_seed(seed)
        return lambda: data[torch.randint(len(data), (batch_size,), generator=gen, device=device)]
    gen = torch.Generator().manual_seed(seed)
    if callable(getattr(data, "sample", None)):
        return lambda: data.sample(batch_size, generator=gen).to(device=device, dtype=dtype)
    if callable(data):
        return lambda: data(batch_size, gen).to(device=device, dtype=dtype)
    raise ValueError(f"data must be a tensor [N, ...], an object with .sample(n, generator=...) or a callable "
                     f"data(n, generator); got {type(data).__name__}")


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, for every parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _record(history, window, step, lr, bar) -> None:
    """Append the window's mean loss to history; raise TrainingError at the first non-finite loss."""
    values = torch.stack(window).float().cpu()  # one device sync per window, not per step
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        first = step - len(window) + 1 + int(bad[0])
        raise TrainingError(f"training diverged at step {first}: the loss is {values[bad[0]].item()}. "
                            f"Try a lower learning rate than lr={lr:g} (e.g. lr={lr / 10:g}); nothing was saved")
    history["step"].append(step)
    history["loss"].append(values.mean().item())
    bar.update(len(window))
    bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")


def _train(model, ema, next_batch, path, s: dict, generator, device, bar, log_every: int) -> dict:
    """AdamW on objectives.loss for s["steps"] steps; EMA decay warms up as min(decay, (1+k)/(10+k))."""
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], fused=cuda or None)
    history, window = {"step": [], "loss": []}, []
    for step in range(1, s["steps"] + 1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            value = loss(model, next_batch(), path, s["target"], s["weighting"], s["t_min"], generator)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        _ema_update(ema, model, min(s["ema_decay"], (1 + step) / (10 + step)))
        window.append(value.detach())
        if step % log_every == 0 or step == s["steps"]:
            _record(history, window, step, s["lr"], bar)
            window = []
    return history


def _reinitialise(model, seed: int) -> None:
    """Fresh weights drawn with `seed` (the model's own initialisation), leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(model.config)
    model.load_state_dict(fresh.state_dict())


def fit(model, data, path: Path, target: str = "eps", budget: str | None = None, steps: int | None = None,
        seed: int = 0, batch_size: int | None = None, lr: float | None = None, ema_decay: float = 0.999,
        cache: bool = True, name: str | None = None, device=None, progress: bool = True,
        weighting=None, t_min: float = 1e-3, log_every: int | None = None, reinit: bool = True) -> FitResult:
    """Train `model` to predict `target` on `data` along `path`; cached by the run's settings.

    data: a tensor [N, ...], an object with .sample(n, generator=...), or a callable data(n, generator).
    steps, batch_size, lr: default per budget (smoke 300 / 256 / 3e-3, laptop 3000 / 512 / 2e-3,
    gpu 20000 / 4096 / 1e-3). reinit: start from fresh weights drawn with `seed`, so that the settings
    determine the run (same seed, same weights on CPU); False continues from the current weights
    (their hash joins the cache key). Models without a `.config` are neither reinitialised nor cached.
    device: default cuda when available (with bf16 autocast and fused AdamW), else cpu in float32.
    Returns FitResult(model, ema, history, checkpoint, seconds, from_cache, config); both models in eval mode.
    Raises TrainingError (naming the step) when the loss becomes NaN or infinite.
    """
    started = time.perf_counter()
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    steps, batch_size, lr = _settings(budget, steps, batch_size, lr)
    settings = dict(target=target, steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema_decay,
                    weighting=weighting, t_min=t_min)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = _run_config(model, data, path, settings, reinit) if hasattr(model, "config") else None
    if cache and config is None:
        warnings.warn(f"{type(model).__name__} has no .config, so fit cannot cache it", stacklevel=2)
    file = _cache_file(config, name or type(model).__name__) if cache and config else None
    model.to(device)
    if file is not None and file.exists():
        cached = _from_cache(file, model, config)
        if cached is not None:
            return FitResult(model, cached[0], cached[1], file, time.perf_counter() - started, True, config)
    if reinit and config is not None:
        _reinitialise(model, seed)
    ema = copy.deepcopy(model.train()).requires_grad_(False)
    next_batch = _batches(data, batch_size, device, next(model.parameters()).dtype, seed)
    generator = torch.Generator(device=device).manual_seed(seed + 1)  # noise and times; data has `seed`
    with tqdm(total=steps, disable=not progress, desc=name or type(model).__name__) as bar:
        history = _train(model, ema, next_batch, path, settings, generator, device, bar,
                         log_every or max(1, steps // 100))
    model.eval()
    ema.eval()
    if file is not None:
        save_checkpoint(file, model, config, ema=ema, history=history)
    return FitResult(model, ema, history, file, time.perf_counter() - started, False, config)


def _from_cache(file: FilePath, model, config: dict):
    """(ema, history) loaded into `model` from a cached checkpoint, or None (with a warning) if unusable."""
    try:
        payload = _read_checkpoint(file)
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


# -- checkpoints ----------------------------------------------------------------------------------

def _cpu_state(module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(file, model, config: dict, ema=None, history: dict | None = None) -> FilePath:
    """Write model (and EMA) weights with `config` to `file` atomically; returns the file.

    config: JSON-like dict of the run's settings; config["model"] is set to model.config, which
    load_checkpoint uses to rebuild the model. A failed write leaves any existing file untouched.
    """
    file = FilePath(file)
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no .config, so a checkpoint could not rebuild it; "
                         "use a model from diffusion_lessons.nets")
    payload = {
        CHECKPOINT_MARKER: CHECKPOINT_VERSION,
        "config": {**_plain(config), "model": _plain(model.config, "model config")},
        "state_dict": _cpu_state(model),
        "ema_state_dict": None if ema is None else _cpu_state(ema),
        "history": _plain(history or {}, "history"),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        FilePath(tmp).unlink(missing_ok=True)
        raise
    return file


def _read_checkpoint(file) -> dict:
    """The validated payload of a checkpoint file (weights-only load); CheckpointError otherwise."""
    file = FilePath(file)
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {file}: the file does not exist "
                              "(train one with fit(...) or `diffusion-lessons train`)")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ...
        first = (str(err).splitlines() or [""])[0]
        reason = ("the weights-only loader refused it: it holds pickled Python objects, or is garbage"
                  if "Weights only load failed" in first else f"{type(err).__name__}: {first[:120]}")
        raise CheckpointError(f"cannot read {file}: it is truncated, corrupt or not a diffusion-lessons "
                              f"checkpoint ({reason}); delete it and train again") from None
    if not isinstance(payload, dict) or CHECKPOINT_MARKER not in payload:
        raise CheckpointError(f"{file} is not a diffusion-lessons checkpoint (no {CHECKPOINT_MARKER!r} key); "
                              "write checkpoints with save_checkpoint or fit")
    if payload[CHECKPOINT_MARKER] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{file} has checkpoint format {payload[CHECKPOINT_MARKER]!r}; this version of "
                              f"diffusion-lessons reads format {CHECKPOINT_VERSION}")
    config = payload.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "state_dict" not in payload:
        raise CheckpointError(f"{file} is incomplete: it needs 'config' (with 'model') and 'state_dict'")
    return payload


def _check_expected(config: dict, expect: dict, file) -> None:
    wanted = _plain(expect, "expect")
    diffs = [f"{k}: file has {config.get(k)!r}, expected {v!r}" for k, v in wanted.items() if config.get(k) != v]
    if diffs:
        raise CheckpointError(f"{file} does not match what was asked for: " + "; ".join(diffs))


def load_checkpoint(file, expect: dict | None = None, which: str = "model", device="cpu"):
    """(model, config) from a checkpoint: the model rebuilt from config["model"], in eval mode.

    which: "model" for the trained weights, "ema" for their moving average. expect: keys of the
    config that must have these values (e.g. {"target": "eps", "path": path.config()}).
    Raises CheckpointError for a missing, truncated, corrupt or foreign file, weights that do not fit
    the config, or a config that differs from `expect`.
    """
    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema'; got {which!r}")
    payload = _read_checkpoint(file)
    config = payload["config"]
    if expect:
        _check_expected(config, expect, file)
    state = payload.get("state_dict" if which == "model" else "ema_state_dict")
    if state is None:
        raise CheckpointError(f"{file} has no EMA weights; use which='model'")
    try:
        model = build_model(config["model"])
    except ValueError as err:
        raise CheckpointError(f"{file}: cannot rebuild its model: {err}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: the weights do not fit the model its config describes "
                              f"({config['model']}): {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), config
